"""Device calibration for budget planning: how long a training iteration takes on this machine.

The budget planner (``planning.budget``) must know what an iteration of a candidate plan costs on the
device the user trains on, at the precision training will use. FLOP counts alone do not say it: on a
2-core Zen 3 a plan with 24x fewer FLOPs per step than the stock LA plan was only ~4x faster
(performance-notes.md), and on this session's Xeon the measured throughput of the U-Net family ranged
from 158 GFLOP/s (stock LA plan, float32) to 274 GFLOP/s (a 48^3 patch, 32 base features). So
`calibrate` times real training steps of four probe U-Nets and one augmentation batch, and
`Calibration.step_seconds` predicts an iteration of any plan from them:

    network seconds = 6 x MACs(batch) / throughput
    log throughput  = bilinear in (log patch voxels, log first-stage features), through the four probes
                      (32^3 and 64^3 voxels x 16 and 32 features); features clamped to the probes' range,
                      voxels clamped below the smallest probe and extrapolated above the largest
    data seconds    = augmentation seconds per patch voxel x batch x patch voxels
    iteration       = network + data on the CPU (the augmentation worker shares the cores),
                      max(network, data / workers) on a GPU (the CPU augments while the GPU computes)

Why patch voxels and features, not MACs alone (version 1 interpolated in log MACs between two probes): on the
2-core Sapphire Rapids Xeon, float32, a step of the LA budget candidate 48x80x96 with 16 features (42 GMAC)
took 2.31 s where the 48^3 probe with 32 features (47 GMAC) took 1.08 s: throughput falls as the feature
maps outgrow the caches (111 GFLOP/s at 369k voxels against 158 at 98k, 16 features) and rises with the
features per voxel (154 against 111 GFLOP/s at 369k voxels, 32 against 16 features). Version 1 predicted
0.98 s for that step, so a 30-minute budget planned 1480 iterations and trained 755. A log-linear model in
voxels and features fitted to seven measured steps was within 15 % of each; `bench/calibration_check.py`
compares this model's predictions with measured steps of the budget candidates.

A measurement takes a few seconds; it is cached in a JSON file (one entry per machine, torch version,
device, precision and thread count), so planning again costs nothing. A training whose iterations ran 1.4x
off their planned time drops its entry (`forget`): the machine's speed drifts, and the next plan measures it.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple


log = logging.getLogger(__name__)

CACHE_VERSION = 2
# Probe U-Nets (plain, 1 input channel, 2 outputs, deep supervision, batch 2, SGD step): isotropic
# patches x first-stage features (doubling per stage, cap 320), a 2 x 2 grid spanning the budget plans'
# sizes (their patches hold 16k-524k voxels, their first stage 16 or 32 features).
PROBES = (((32, 32, 32), 16), ((32, 32, 32), 32), ((64, 64, 64), 16), ((64, 64, 64), 32))
PROBE_BATCH = 2
# A probe step longer than this is timed once after the warm-up instead of TIMED_STEPS times.
LONG_PROBE_S = 1.0
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
        Forward MACs of each probe step (whole batch), in `PROBES` order.
    probe_seconds : tuple of float
        Measured seconds of one training step (forward, backward, SGD) of each probe.
    probe_voxels : tuple of int
        Patch voxels of each probe (one sample).
    probe_features : tuple of int
        First-stage features of each probe.
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
    probe_voxels: Tuple[int, ...]
    probe_features: Tuple[int, ...]
    augment_seconds_per_voxel: float
    workers: int
    measured_at: str

    def gflops(self, patch_size: Sequence[int], features: int) -> float:
        """Training throughput (GFLOP/s, 6 FLOPs per forward MAC) expected for a network whose patch is
        ``patch_size`` and whose first stage has ``features`` features (see the module docstring)."""
        lv = [math.log(v) for v in self.probe_voxels]
        lf = [math.log(f) for f in self.probe_features]
        rate = [math.log(6.0 * m / s / 1e9) for m, s in zip(self.probe_macs, self.probe_seconds)]
        v_lo, v_hi, f_lo, f_hi = min(lv), max(lv), min(lf), max(lf)
        x = max(math.log(max(float(math.prod(int(p) for p in patch_size)), 1.0)), v_lo)
        y = min(max(math.log(max(float(features), 1.0)), f_lo), f_hi)
        u = (x - v_lo) / (v_hi - v_lo) if v_hi > v_lo else 0.0
        w = (y - f_lo) / (f_hi - f_lo) if f_hi > f_lo else 0.0

        def at(v, f):  # the probe at this corner of the grid
            return next(r for a, b, r in zip(lv, lf, rate) if a == v and b == f)
        value = (at(v_lo, f_lo) * (1 - u) * (1 - w) + at(v_hi, f_lo) * u * (1 - w)
                 + at(v_lo, f_hi) * (1 - u) * w + at(v_hi, f_hi) * u * w)
        return math.exp(value)

    def network_seconds(self, macs: float, patch_size: Sequence[int], features: int) -> float:
        """Seconds of one training step of a network whose forward pass of the whole batch is ``macs``."""
        return 6.0 * float(macs) / (self.gflops(patch_size, features) * 1e9)

    def data_seconds(self, patch_size: Sequence[int], batch_size: int) -> float:
        return self.augment_seconds_per_voxel * batch_size * float(math.prod(int(p) for p in patch_size))

    def step_seconds(self, macs: float, patch_size: Sequence[int], batch_size: int, features: int) -> float:
        """Predicted seconds per training iteration (see the module docstring)."""
        net, data = self.network_seconds(macs, patch_size, features), self.data_seconds(patch_size, batch_size)
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
        d["probe_voxels"] = tuple(int(v) for v in d["probe_voxels"])
        d["probe_features"] = tuple(int(v) for v in d["probe_features"])
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
        "auto", "cpu", "cuda", "cuda:N" or "mps" (must exist: see `device.resolve_device`).
    precision : str
        "auto" resolves as training would (`device.choose_execution`).
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
    from AutoSegLib.io.cache import read_entries, write_entries
    cache = read_entries(path, CACHE_VERSION)
    if not force and key in cache:
        try:
            return Calibration.from_dict(cache[key])
        except (TypeError, KeyError, ValueError):
            log.warning("%s: unreadable calibration entry for %s; measuring again", path, key)
    emit(progress, "stage", stage="calibrate",
         message=f"measuring training speed on {dev} ({resolved}, {threads} threads): up to half a minute, once")
    old_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        macs, seconds, voxels = [], [], []
        for patch, base in PROBES:
            m, s = _time_probe(patch, base, ex)
            macs.append(float(m))
            seconds.append(float(s))
            voxels.append(int(math.prod(probe_topology(patch, base)[1])))
        per_voxel = _time_augmentation()
    finally:
        torch.set_num_threads(old_threads)
    cal = Calibration(key=key, device=str(dev), precision=resolved, threads=threads, probe_macs=tuple(macs),
                      probe_seconds=tuple(seconds), probe_voxels=tuple(voxels),
                      probe_features=tuple(base for _, base in PROBES), augment_seconds_per_voxel=per_voxel,
                      workers=workers,
                      measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    emit(progress, "log", level="info", message=(
        "calibration: " + ", ".join(f"{6 * m / s / 1e9:.0f} GFLOP/s at {p[0]}^3 x {b}" for m, s, (p, b) in
                                    zip(macs, seconds, PROBES)) + f"; augmentation {per_voxel * 1e9:.1f} ns/voxel"))
    cache[key] = cal.to_dict()
    write_entries(path, CACHE_VERSION, cache, "training calibration")
    return cal


def forget(key: str, cache_path: "str | os.PathLike | None" = None) -> bool:
    """Drop the cached measurement ``key`` (`cache_key`) from the cache at ``cache_path`` (default
    `default_cache_path()`), so that the next `calibrate` measures the device again; True when there was one.
    Training calls it when its iterations ran well off their planned time, slower or faster (`trainer.off_plan`)."""
    from AutoSegLib.io.cache import read_entries, write_entries
    path = Path(cache_path) if cache_path is not None else default_cache_path()
    cache = read_entries(path, CACHE_VERSION)
    if key not in cache:
        return False
    del cache[key]
    write_entries(path, CACHE_VERSION, cache, "training calibration")
    return True


def probe_topology(patch: Sequence[int], base: int):
    """The plain U-Net of a probe: the planner's pooling rule at 1 mm, ``base`` features doubling per stage."""
    from AutoSegLib.planning.budget import candidate_topology
    from AutoSegLib.planning.topology import pooling_plan

    pool = pooling_plan((1.0,) * len(patch), patch)
    return candidate_topology(pool, base), pool.patch_size


def training_step(topology, patch_size: Sequence[int], ex):
    """A callable running one training step (forward under ``ex``'s autocast, backward, SGD) of a plain U-Net
    of ``topology`` (1 input channel, 2 outputs, deep supervision) on a random batch of ``PROBE_BATCH``
    patches: the step a probe times (`bench/calibration_check.py` times budget candidates with it too)."""
    import torch

    from AutoSegLib.network.unet import build_network

    torch.manual_seed(0)
    net = build_network(topology, 1, 2, deep_supervision=True).to(ex.device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(PROBE_BATCH, 1, *patch_size, device=ex.device)

    def step() -> None:
        with ex.autocast():
            out = net(x)
        loss = sum(o.float().square().mean() for o in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(ex.device)
    return step


def _time_probe(patch, base, ex) -> Tuple[float, float]:
    from AutoSegLib.network.memory import conv_macs

    topo, patch = probe_topology(patch, base)
    step = training_step(topo, patch, ex)
    best = math.inf
    for i in range(TIMED_STEPS + 1):  # the first step warms up (allocations, kernel selection)
        if i > 1 and best > LONG_PROBE_S:
            break
        _sync(ex.device)
        t0 = time.perf_counter()
        step()
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    return conv_macs(topo, patch, 1, 2) * PROBE_BATCH, best


def augmentation_batch(patch_size: Sequence[int]):
    """A callable augmenting one random batch of ``PROBE_BATCH`` samples (1 channel, a 30 % foreground
    label) into ``patch_size`` patches with the training transforms, as a training worker does; what the
    probe times (`bench/calibration_check.py` runs it in a worker process)."""
    import numpy as np

    from AutoSegLib.training.augmentation import augment_batch, training_transforms
    from AutoSegLib.training.sampling import augmentation_patch_size, rotation_settings

    max_angle, dummy_2d, mirror_axes = rotation_settings(patch_size)
    sample = augmentation_patch_size(patch_size, max_angle, dummy_2d)
    transforms = training_transforms(patch_size, max_angle, dummy_2d, mirror_axes)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((PROBE_BATCH, 1, *sample)).astype(np.float32)
    seg = (rng.random((PROBE_BATCH, 1, *sample)) > 0.7).astype(np.int16)
    return lambda: augment_batch(transforms, data.copy(), seg.copy())


def _time_augmentation() -> float:
    import numpy as np

    patch = AUGMENT_PROBE_PATCH
    augment = augmentation_batch(patch)
    # The transforms are random (rotation and scaling with probability 0.2 each...): the mean over
    # AUGMENT_BATCHES batches, not the minimum, is what a training run pays.
    np_state = np.random.get_state()  # batchgenerators draws from numpy's global generator
    try:
        np.random.seed(0)
        t0 = time.perf_counter()
        for _ in range(AUGMENT_BATCHES):
            augment()
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
