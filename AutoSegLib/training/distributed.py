"""Data-parallel training with torch.distributed when started under ``torchrun``.

``torchrun --nproc_per_node N -m AutoSegLib train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; each process
then trains on its share of every batch (the plans' batch split as evenly as possible, the forced-
foreground samples keeping their global positions), gradients are averaged by DistributedDataParallel,
losses and pseudo-Dice counts are summed over processes, and only rank 0 writes logs, plots and
checkpoints. Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Tuple

import torch


@dataclass(frozen=True)
class DistInfo:
    enabled: bool
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistInfo:
    """The torchrun environment (disabled when WORLD_SIZE is absent or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo(False)
    return DistInfo(True, int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(info: DistInfo, device_type: str) -> None:
    """Join the process group (idempotent)."""
    import torch.distributed as dist
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def shutdown(info: DistInfo) -> None:
    import torch.distributed as dist
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def split_batch(batch_size: int, forced: List[bool], info: DistInfo) -> Tuple[int, List[bool]]:
    """This process's share of a global batch: ``(local batch size, forced flags of its samples)``.

    Raises ValueError when the batch has fewer samples than processes."""
    if not info.enabled:
        return batch_size, list(forced)
    if batch_size < info.world_size:
        raise ValueError(f"batch size {batch_size} cannot be split over {info.world_size} processes")
    bounds = [round(i * batch_size / info.world_size) for i in range(info.world_size + 1)]
    lo, hi = bounds[info.rank], bounds[info.rank + 1]
    return hi - lo, list(forced[lo:hi])


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (returns it unchanged without DDP)."""
    if info.enabled:
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, for every process (for example: stop now)."""
    if not info.enabled:
        return flag
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, 0)
    return bool(t.item())
