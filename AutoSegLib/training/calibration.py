"""Device calibration for budget planning: how long a training iteration takes on this machine.

The budget planner (``planning.budget``) must know what an iteration of a candidate plan costs on the
device the user trains on, at the precision training will use. FLOP counts alone do not say it: on a
2-core Zen 3 a plan with 24x fewer FLOPs per step than the stock LA plan was only ~4x faster
(performance-notes.md), and on this session's Xeon the measured throughput of the U-Net family ranged
from 158 GFLOP/s (stock LA plan, float32) to 274 GFLOP/s (a 48^3 patch, 32 base features). So
`calibrate` times real training steps of two probe U-Nets (a small one and a mid-sized one) and one
augmentation batch, and `Calibration.step_seconds` predicts an iteration of any plan from them:

    network seconds = 6 x MACs(batch) / throughput(MACs), throughput interpolated in log(MACs)
                      between the two probes and clamped outside them
    data seconds    = augmentation seconds per patch voxel x batch x patch voxels
    iteration       = network + data on the CPU (the augmentation worker shares the cores),
                      max(network, data / workers) on a GPU (the CPU augments while the GPU computes)

A measurement takes a few seconds; it is cached in a JSON file (one entry per machine, torch version,
device, precision and thread count), so planning again costs nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple


log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Probe U-Nets (plain, 1 input channel, 2 outputs, deep supervision, batch 2, SGD step): isotropic
# patches, base features (doubling per stage, cap 320). They span the budget plans' range of sizes.
PROBES = (((32, 32, 32), 16), ((48, 48, 48), 32))
PROBE_BATCH = 2
AUGMENT_PROBE_PATCH = (32, 48, 48)
TIMED_STEPS = 2
AUGMENT_BATCHES = 8


@dataclass(frozen=True)
class Calibration:
    """Measured cost of training on one device at one precision.

    Attributes
    ----------
    key : str
        Cache key: machine, torch version, device, precision, threads.
    device : str
        "cpu", "cuda", "cuda:1", "mps".
    precision : str
        "float32", "bfloat16" or "float16" (resolved, never "auto").
    threads : int
        torch intra-op threads during the measurement (CPU).
    probe_macs : tuple of float
        Forward MACs of each probe step (whole batch), ascending.
    probe_seconds : tuple of float
        Measured seconds of one training step (forward, backward, SGD) of each probe.
    augment_seconds_per_voxel : float
        Seconds to augment one patch voxel of one sample (one batch of ``AUGMENT_PROBE_PATCH`` measured).
    workers : int
        Augmentation workers training will use on this device.
    measured_at : str
        UTC time of the measurement.
    """
    key: str
    device: str
    precision: str
    threads: int
    probe_macs: Tuple[float, ...]
    probe_seconds: Tuple[float, ...]
    augment_seconds_per_voxel: float
    workers: int
    measured_at: str

    def gflops(self, macs: float) -> float:
        """Training throughput (GFLOP/s, 6 FLOPs per forward MAC) expected for a step of ``macs`` forward
        MACs: log-linear between the probes, the nearest probe's value outside them."""
        rates = [6.0 * m / s / 1e9 for m, s in zip(self.probe_macs, self.probe_seconds)]
        xs = [math.log(m) for m in self.probe_macs]
        x = math.log(max(float(macs), 1.0))
        if x <= xs[0]:
            return rates[0]
        if x >= xs[-1]:
            return rates[-1]
        for i in range(len(xs) - 1):
            if xs[i] <= x <= xs[i + 1]:
                w = (x - xs[i]) / (xs[i + 1] - xs[i])
                return rates[i] * (1 - w) + rates[i + 1] * w
        return rates[-1]  # unreachable

    def network_seconds(self, macs: float) -> float:
        """Seconds of one training step of a network whose forward pass of the whole batch is ``macs``."""
        return 6.0 * float(macs) / (self.gflops(macs) * 1e9)

    def data_seconds(self, patch_size: Sequence[int], batch_size: int) -> float:
        return self.augment_seconds_per_voxel * batch_size * float(math.prod(int(p) for p in patch_size))

    def step_seconds(self, macs: float, patch_size: Sequence[int], batch_size: int) -> float:
        """Predicted seconds per training iteration (see the module docstring)."""
        net, data = self.network_seconds(macs), self.data_seconds(patch_size, batch_size)
        if self.device.startswith("cpu"):
            return net + data
        return max(net, data / max(1, self.workers))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        d = dict(d)
        d["probe_macs"] = tuple(float(v) for v in d["probe_macs"])
        d["probe_seconds"] = tuple(float(v) for v in d["probe_seconds"])
        return cls(**d)


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/autoseg/calibration.json`` (``~/.cache`` when unset; the CLI's default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoseg" / "calibration.json"


def machine_id(device: str) -> str:
    """What makes one machine's timings differ from another's: the CPU model and the instruction-set
    extensions that matter for convolutions (AVX2, AVX-512, bfloat16, AMX), or the GPU's name."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"cuda:{torch.cuda.get_device_name(index)}"
    if device.startswith("mps"):
        return f"mps:{platform.machine()}"
    model, flags = platform.processor() or platform.machine(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and ":" in line:
                have = set(line.split(":", 1)[1].split())
                flags = ",".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
                                 if f in have)
            if model and flags:
                break
    except OSError:
        pass
    return f"cpu:{model} [{flags}] {os.cpu_count()} cores"


def cache_key(device: str, precision: str, threads: int) -> str:
    import torch
    return f"{machine_id(device)} | torch {torch.__version__} | {device} | {precision} | {threads} threads"


def calibrate(device: str = "cpu", precision: str = "auto", cache_path: "str | os.PathLike | None" = None,
              force: bool = False, threads: Optional[int] = None, progress=None) -> Calibration:
    """Measure (or read from the cache) what training costs on ``device`` at ``precision``.

    Parameters
    ----------
    device : str
        "auto", "cpu", "cuda", "cuda:N" or "mps" (must exist: see `training.device.resolve_device`).
    precision : str
        "auto" resolves as training would (`training.device.choose_execution`).
    cache_path : path, optional
        JSON cache (default `default_cache_path()`); None entries are measured and added. A cache that
        cannot be read is ignored (and replaced), one that cannot be written only logs a warning.
    force : bool
        Measure even when the cache has an entry.
    threads : int, optional
        torch threads on the CPU (default: what training uses, `training.workers.choose_workers`).

    Returns
    -------
    Calibration
    """
    import torch

    from AutoSegLib.progress import emit
    from AutoSegLib.device import choose_execution, resolve_device
    from AutoSegLib.training.workers import choose_workers

    dev = resolve_device(device)
    ex = choose_execution(dev, precision, False, 3)
    resolved = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[ex.autocast_dtype]
    workers, default_threads = choose_workers(dev.type)
    threads = int(threads or default_threads)
    path = Path(cache_path) if cache_path is not None else default_cache_path()
    key = cache_key(str(dev), resolved, threads)
    cache = _read_cache(path)
    if not force and key in cache:
        try:
            return Calibration.from_dict(cache[key])
        except (TypeError, KeyError, ValueError):
            log.warning("%s: unreadable calibration entry for %s; measuring again", path, key)
    emit(progress, "stage", stage="calibrate",
         message=f"measuring training speed on {dev} ({resolved}, {threads} threads): a few seconds, once")
    old_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        macs, seconds = [], []
        for patch, base in PROBES:
            m, s = _time_probe(patch, base, ex)
            macs.append(float(m))
            seconds.append(float(s))
        per_voxel = _time_augmentation()
    finally:
        torch.set_num_threads(old_threads)
    cal = Calibration(key=key, device=str(dev), precision=resolved, threads=threads, probe_macs=tuple(macs),
                      probe_seconds=tuple(seconds), augment_seconds_per_voxel=per_voxel, workers=workers,
                      measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    emit(progress, "log", level="info", message=(
        "calibration: " + ", ".join(f"{6 * m / s / 1e9:.0f} GFLOP/s at {m / 1e9:.0f} GMAC" for m, s in
                                    zip(macs, seconds)) + f"; augmentation {per_voxel * 1e9:.1f} ns/voxel"))
    cache[key] = cal.to_dict()
    _write_cache(path, cache)
    return cal


def probe_topology(patch: Sequence[int], base: int):
    """The plain U-Net of a probe: the planner's pooling rule at 1 mm, ``base`` features doubling per stage."""
    from dataclasses import replace

    from AutoSegLib.planning.topology import plain_topology, pooling_plan

    from AutoSegLib.planning.budget import features_for

    pool = pooling_plan((1.0,) * len(patch), patch)
    topo = plain_topology(pool)
    return replace(topo, features_per_stage=features_for(base, topo.n_stages, len(patch))), pool.patch_size


def _time_probe(patch, base, ex) -> Tuple[float, float]:
    import torch

    from AutoSegLib.network.memory import conv_macs
    from AutoSegLib.network.unet import build_network

    topo, patch = probe_topology(patch, base)
    torch.manual_seed(0)
    net = build_network(topo, 1, 2, deep_supervision=True).to(ex.device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(PROBE_BATCH, 1, *patch, device=ex.device)
    best = math.inf
    for i in range(TIMED_STEPS + 1):  # the first step warms up (allocations, kernel selection)
        _sync(ex.device)
        t0 = time.perf_counter()
        with ex.autocast():
            out = net(x)
        loss = sum(o.float().square().mean() for o in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(ex.device)
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    return conv_macs(topo, patch, 1, 2) * PROBE_BATCH, best


def _time_augmentation() -> float:
    import numpy as np

    from AutoSegLib.training.augmentation import augment_batch, training_transforms
    from AutoSegLib.training.sampling import augmentation_patch_size, rotation_settings

    patch = AUGMENT_PROBE_PATCH
    max_angle, dummy_2d, mirror_axes = rotation_settings(patch)
    sample = augmentation_patch_size(patch, max_angle, dummy_2d)
    transforms = training_transforms(patch, max_angle, dummy_2d, mirror_axes)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((PROBE_BATCH, 1, *sample)).astype(np.float32)
    seg = (rng.random((PROBE_BATCH, 1, *sample)) > 0.7).astype(np.int16)
    # The transforms are random (rotation and scaling with probability 0.2 each...): the mean over
    # AUGMENT_BATCHES batches, not the minimum, is what a training run pays.
    np_state = np.random.get_state()  # batchgenerators draws from numpy's global generator
    try:
        np.random.seed(0)
        t0 = time.perf_counter()
        for _ in range(AUGMENT_BATCHES):
            augment_batch(transforms, data.copy(), seg.copy())
        mean = (time.perf_counter() - t0) / AUGMENT_BATCHES
    finally:
        np.random.set_state(np_state)
    return mean / (PROBE_BATCH * float(np.prod(patch)))


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: calibration cache not readable (%s); measuring again", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return dict(data["entries"])


def _write_cache(path: Path, entries: dict) -> None:
    from AutoSegLib.io.atomic import write_json
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as exc:
        log.warning("%s: could not cache the calibration (%s); it will be measured again next time", path, exc)

