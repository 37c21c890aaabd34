"""Batch production (sampling + augmentation) in background worker processes.

Each worker process owns its memory-mapped cases and its random generator (seeded from the run's seed,
the worker index and a stream number), builds whole batches and puts them on its own bounded queue; the
trainer takes batches round-robin, so a run is reproducible for a given seed and worker count. Workers
import numpy/scipy/batchgenerators only (no torch) and run single-threaded. A worker that raises sends
its own traceback, which the trainer re-raises as `WorkerError`; a worker that dies silently (killed,
out of memory) is reported with its exit code.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class WorkerError(RuntimeError):
    """An augmentation worker failed; the message holds the worker's own traceback."""


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to produce batches (picklable).

    Attributes
    ----------
    folder : str
        Preprocessed-data folder.
    cases : tuple of str
        Cases to draw from.
    batch_size : int
        Samples per produced batch (this process's share under DDP).
    patch_size : tuple of int
        The network's patch.
    sample_patch_size : tuple of int
        Patch drawn before spatial augmentation (equal to ``patch_size`` without augmentation).
    forced : tuple of bool
        Per sample, force foreground.
    augment : bool
        Apply the training augmentation.
    max_angle, dummy_2d, mirror_axes
        See ``sampling.rotation_settings``.
    previous_folder : str, optional
        A cascade stage's previous-stage predictions (``training.cascade.previous_stage_folder``).
    cascade_values : tuple of int
        With ``previous_folder``: the label values of its one-hot input channels.
    box_margin : tuple of float
        Voxels: patches centred in each case's foreground box grown by this (``PatchSampler``); () for the
        forced/random rule.
    """
    folder: str
    cases: Tuple[str, ...]
    batch_size: int
    patch_size: Tuple[int, ...]
    sample_patch_size: Tuple[int, ...]
    forced: Tuple[bool, ...]
    augment: bool
    max_angle: float = 0.0
    dummy_2d: bool = False
    mirror_axes: Tuple[int, ...] = ()
    previous_folder: Optional[str] = None
    cascade_values: Tuple[int, ...] = ()
    box_margin: Tuple[float, ...] = ()


def make_batch_function(spec: BatchSpec) -> Callable[[np.random.Generator], Tuple[np.ndarray, np.ndarray]]:
    """A function ``rng -> (data (B, C, *patch) float32, seg (B, 1, *patch) int16)``; for a cascade stage
    ``data`` has ``C + len(cascade_values)`` channels (image, then the previous stage's one-hot map)."""
    from AutoSegLib.training.data import CaseStore
    from AutoSegLib.training.sampling import PatchSampler

    cascade = spec.previous_folder is not None
    store = CaseStore(spec.folder, spec.cases, previous_folder=spec.previous_folder)
    sampler = PatchSampler(store, spec.sample_patch_size, spec.patch_size, box_margin=spec.box_margin or None)
    transforms = None
    if spec.augment:
        from AutoSegLib.training.augmentation import training_transforms
        transforms = training_transforms(spec.patch_size, spec.max_angle, spec.dummy_2d, spec.mirror_axes,
                                         cascade_values=spec.cascade_values if cascade else None)

    def produce(rng: np.random.Generator):
        data, seg, _ = sampler.sample_batch(rng, spec.batch_size, spec.forced)
        if transforms is not None:
            from AutoSegLib.training.augmentation import augment_batch
            data, seg = augment_batch(transforms, data, seg)
        elif cascade:
            from AutoSegLib.training.cascade_augmentation import previous_stage_to_one_hot
            data, seg = previous_stage_to_one_hot(data, seg, spec.cascade_values)
        return data, seg

    return produce


def _seed(seed: int, worker: int, stream: int) -> Tuple[np.random.Generator, int]:
    ss = np.random.SeedSequence([int(seed), int(worker), int(stream)])
    return np.random.default_rng(ss), int(ss.generate_state(1)[0])


def _worker_main(spec: BatchSpec, seed: int, worker: int, stream: int, out: "mp.Queue", stop,
                 parent_pid: "int | None" = None) -> None:
    from AutoSegLib.processes import die_with_parent
    die_with_parent(parent_pid)  # a training killed with SIGKILL leaves no worker producing batches
    try:
        rng, legacy = _seed(seed, worker, stream)
        np.random.seed(legacy)  # batchgenerators draws from numpy's global generator
        produce = make_batch_function(spec)
        while not stop.is_set():
            item = ("batch", produce(rng))
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
    except BaseException:  # noqa: BLE001 - everything goes back to the trainer
        try:
            out.put(("error", traceback.format_exc()), timeout=5)
        except Exception:
            pass


class BatchStream:
    """An endless stream of batches from ``num_workers`` processes (0: produced in this process).

    Parameters
    ----------
    spec : BatchSpec
    num_workers : int
    seed, stream : int
        Seed the workers (a new ``stream`` per run segment gives fresh, reproducible randomness).
    queue_size : int
        Batches buffered per worker.

    Use as a context manager, or call `close`.
    """

    def __init__(self, spec: BatchSpec, num_workers: int, seed: int, stream: int = 0, queue_size: int = 2):
        self.spec = spec
        self.num_workers = int(num_workers)
        self.wait_s = 0.0  # time the consumer spent waiting for batches
        self._next = 0
        self._procs: List[mp.Process] = []
        self._queues: List["mp.Queue"] = []
        if self.num_workers == 0:
            self._rng, legacy = _seed(seed, 0, stream)
            np.random.seed(legacy)
            self._produce = make_batch_function(spec)
            return
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        try:
            for k in _THREAD_VARS:
                os.environ[k] = "1"
            for w in range(self.num_workers):
                q = ctx.Queue(maxsize=queue_size)
                p = ctx.Process(target=_worker_main, args=(spec, seed, w, stream, q, self._stop, os.getpid()),
                                daemon=True, name=f"autoseg-augment-{w}")
                p.start()
                self._procs.append(p)
                self._queues.append(q)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __iter__(self):
        return self

    def __next__(self) -> Tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        try:
            if self.num_workers == 0:
                return self._produce(self._rng)
            w = self._next
            self._next = (self._next + 1) % self.num_workers
            q, p = self._queues[w], self._procs[w]
            while True:
                try:
                    kind, payload = q.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not p.is_alive():
                        try:  # it may have sent its traceback just before exiting
                            kind, payload = q.get(timeout=1.0)
                            break
                        except queue.Empty:
                            pass
                        self.close()
                        raise WorkerError(f"augmentation worker {w} died without a message (exit code "
                                          f"{p.exitcode}; killed, or out of memory?)") from None
            if kind == "error":
                self.close()
                raise WorkerError(f"augmentation worker {w} failed:\n{payload}")
            return payload
        finally:
            self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        if not self._procs:
            return
        self._stop.set()
        for q in self._queues:  # drain so the workers can exit
            try:
                while True:
                    q.get_nowait()
            except Exception:
                pass
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        for q in self._queues:
            q.close()
            q.cancel_join_thread()
        self._procs, self._queues = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def choose_workers(device_type: str, cpu_count: Optional[int] = None) -> Tuple[int, int]:
    """Default ``(augmentation workers, torch threads)``.

    On CPU the network's step is compute-bound (augmenting a batch takes a small fraction of a training
    step), so one worker keeps the queue full and torch gets every core: the worker sleeps on a full
    queue, so cores are not oversubscribed for long. On a GPU the CPU only augments: up to 12 workers.
    """
    n = cpu_count or os.cpu_count() or 1
    if device_type == "cpu":
        return 1, n
    return max(1, min(12, n - 1)), max(1, min(4, n))
