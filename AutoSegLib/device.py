"""Device, precision and memory-layout choices for training.

- Device: "auto" picks cuda, then mps, then cpu.
- Precision "auto": float16 autocast with a gradient scaler on CUDA (the recipe's mixed precision);
  bfloat16 autocast on a CPU with native bfloat16 support (AVX-512 BF16 / AMX: about 2x faster steps,
  see performance-notes.md); float32 elsewhere (mps, older CPUs).
- Layout: channels_last(_3d) on CPU when asked (``TrainingConfig.channels_last``; off by default, see there).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from AutoSegLib.errors import AutoSegError


@dataclass(frozen=True)
class Execution:
    """How the network runs: ``device``, ``autocast_dtype`` (None: float32), ``use_scaler`` (float16 on
    CUDA), ``memory_format``."""
    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    use_scaler: bool
    memory_format: torch.memory_format

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> best available; otherwise check that the named device exists."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AutoSegError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AutoSegError(f"--device {name}: this PyTorch (torch {torch.__version__}) sees no CUDA GPU. Use --device "
                               "cpu or auto, or install the CUDA build of torch.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AutoSegError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AutoSegError("--device mps: MPS is not available on this machine. Use --device cpu.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise AutoSegError(f"unsupported device {name!r}: expected auto, cpu, cuda, cuda:N or mps.")
    return dev


def choose_execution(device: torch.device, precision: str, channels_last: bool, ndim: int) -> Execution:
    """Build the `Execution` for ``device`` and a precision setting ("auto", "float32", "bfloat16",
    "float16")."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "float16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            precision = "bfloat16"
        else:
            precision = "float32"
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise AutoSegError("float16 training is not supported on the CPU; use bfloat16 or float32.")
    fmt = torch.contiguous_format
    if channels_last and device.type == "cpu":
        fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
    return Execution(device, dtype, dtype is torch.float16 and device.type == "cuda", fmt)
