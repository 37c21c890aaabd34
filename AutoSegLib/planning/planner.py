"""Rule-based experiment planning: fingerprint -> `Plans` (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres).

Patch and batch size follow from a memory budget: start from a patch with the aspect ratio of the
target spacing and the volume of 256^3 voxels (2D: 2048^2), clipped to the median image; while the
network's activation estimate (network.memory.feature_map_size) for a batch of 2 exceeds the budget,
shrink the axis that is largest relative to the median image by one divisibility step. The batch
size then uses the leftover budget, never covers more than 5% of the dataset's voxels, and is at
least 2. The budget is the reference value (3D: 560e6 elements at batch 2, 2D: 85e6 at batch 12)
scaled by ``gpu_memory_gb / 8``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.fingerprint.record import Fingerprint
from AutoSegLib.network.memory import feature_map_size
from AutoSegLib.planning.plans import ConfigurationPlan, Plans, ResamplingSettings
from AutoSegLib.planning.rules import (fullres_target_spacing, median_resampled_shape, normalization_plan,
                                       transpose_axes)
from AutoSegLib.planning.topology import FEATUREMAP_MIN_EDGE, plain_topology, pooling_plan

REFERENCE_ELEMENTS_3D = 560_000_000
REFERENCE_ELEMENTS_2D = 85_000_000
REFERENCE_MEMORY_GB = 8.0
REFERENCE_BATCH_3D = 2
REFERENCE_BATCH_2D = 12
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05
LOWRES_PATCH_COVERAGE = 0.25      # add 3d_lowres when the fullres patch covers less of the median image
LOWRES_SPACING_STEP = 1.03
LOWRES_MIN_SHRINK = 2.0           # drop 3d_lowres unless its median image is at least 2x smaller


def plan_configuration(name: str, spacing: Sequence[float], median_shape: Sequence[float], n_channels: int,
                       n_outputs: int, dataset_voxels: float, normalization: Tuple[str, ...],
                       use_mask: Tuple[bool, ...], gpu_memory_gb: float = REFERENCE_MEMORY_GB,
                       cache: Optional[dict] = None) -> ConfigurationPlan:
    """Patch size, topology and batch size for one configuration.

    Parameters
    ----------
    name : str
        Configuration name (goes into the plan).
    spacing : sequence of float, length 2 or 3
        Target spacing in the network's (transposed) axis order.
    median_shape : sequence of float
        Median image shape at that spacing, same order.
    n_channels, n_outputs : int
        Network input channels; output maps used for the memory estimate.
    dataset_voxels : float
        Approximate voxels of the whole dataset at that spacing (median shape x cases): the 5% cap.
    normalization, use_mask : tuple
        Per channel; copied into the plan.
    gpu_memory_gb : float
        Memory budget; the reference values correspond to 8 GB.
    cache : dict, optional
        Memoises estimates across calls (the lowres search re-evaluates the same patches).
    """
    ndim = len(spacing)
    if any(s <= 0 for s in spacing):
        raise AutoSegError(f"configuration {name}: spacing {tuple(spacing)} must be positive.")
    cache = {} if cache is None else cache
    median_shape = [float(m) for m in median_shape[:ndim]]
    inv = 1.0 / np.asarray(spacing, np.float64)
    volume = 256 ** 3 if ndim == 3 else 2048 ** 2
    initial = [round(float(v)) for v in inv * (volume / np.prod(inv)) ** (1.0 / ndim)]
    initial = [min(i, m) for i, m in zip(initial, median_shape)]

    def estimate(pool):
        topo = plain_topology(pool)
        key = (pool.patch_size, pool.strides)
        if key not in cache:
            cache[key] = feature_map_size(topo, pool.patch_size, n_channels, n_outputs)
        return topo, cache[key]

    pool = pooling_plan(spacing, initial, FEATUREMAP_MIN_EDGE)
    topo, est = estimate(pool)
    ref_bs = REFERENCE_BATCH_3D if ndim == 3 else REFERENCE_BATCH_2D
    budget = (REFERENCE_ELEMENTS_3D if ndim == 3 else REFERENCE_ELEMENTS_2D) * (gpu_memory_gb / REFERENCE_MEMORY_GB)
    patch = list(pool.patch_size)
    divisible = pool.divisible_by
    while est / ref_bs * MIN_BATCH_SIZE > budget:
        ratios = [p / m for p, m in zip(patch, median_shape)]
        axis = max(range(ndim), key=lambda a: (ratios[a], a))  # the largest; ties: the last axis
        # shrink by the divisibility the smaller patch will need (it may need less than now: 256 -> 224
        # is valid with 5 pools, 256 - 64 would skip it)
        trial = list(patch)
        trial[axis] -= divisible[axis]
        divisible = pooling_plan(spacing, trial, FEATUREMAP_MIN_EDGE).divisible_by
        patch[axis] -= divisible[axis]
        if patch[axis] < 1:
            raise AutoSegError(f"configuration {name}: no patch size fits {gpu_memory_gb} GB of memory; raise "
                               f"--gpu-memory-gb.")
        pool = pooling_plan(spacing, patch, FEATUREMAP_MIN_EDGE)
        patch, divisible = list(pool.patch_size), pool.divisible_by
        topo, est = estimate(pool)
    batch = round(budget / est * ref_bs)
    cap = round(dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / float(np.prod(pool.patch_size, dtype=np.float64)))
    batch = max(min(batch, cap), MIN_BATCH_SIZE)
    return ConfigurationPlan(
        name=name, spacing=tuple(float(s) for s in spacing), patch_size=tuple(int(p) for p in pool.patch_size),
        batch_size=int(batch), median_image_size=tuple(float(m) for m in median_shape),
        normalization=tuple(normalization), use_mask_for_norm=tuple(use_mask), network=topo,
        resampling=ResamplingSettings(), batch_dice=False)


def plan_experiment(fingerprint: Fingerprint, dataset=None, gpu_memory_gb: float = REFERENCE_MEMORY_GB,
                    budget_minutes: Optional[float] = None, calibration=None,
                    budget_target_iterations: Optional[int] = None, coarse_to_fine: bool = True) -> Plans:
    """Derive every configuration's plan from a dataset fingerprint.

    Parameters
    ----------
    fingerprint : Fingerprint
    dataset : io.datasets.Dataset, optional
        Only its name/channel names/labels are used; the fingerprint's copies otherwise.
    gpu_memory_gb : float
        Memory budget per training process (default 8, the reference's).
    budget_minutes : float, optional
        Training time budget: adds the budget configuration ('3d_budget', '2d_budget' for 2D data) sized
        by `planning.budget.plan_budget` for ``calibration`` (required with it), recorded in
        ``Plans.budget``; where it pays, a coarse-to-fine pair instead ('3d_budget' for a third of the
        time, '3d_budget_fine': `planning.coarse_to_fine`). Without it the plans are the stock ones.
    calibration : training.calibration.Calibration, optional
        The device's measured cost.
    budget_target_iterations : int, optional
        The budget rule's iteration target (default `planning.budget.target_iterations_for` the budget).
    coarse_to_fine : bool
        Allow the coarse-to-fine pair where it pays (False: always the single budget plan).

    Returns
    -------
    Plans
        '2d' always; '3d_fullres' for 3D data; '3d_lowres' + '3d_cascade_fullres' when the fullres patch
        covers less than 25% of the median image and a lowres image would be at least 2x smaller.
        Spatial tuples are in transposed order.
    """
    if gpu_memory_gb <= 0:
        raise AutoSegError(f"gpu_memory_gb must be positive; got {gpu_memory_gb}.")
    if fingerprint.num_cases == 0:
        raise AutoSegError("the fingerprint has no cases; cannot plan.")
    channel_names = dict(dataset.channel_names) if dataset is not None else dict(fingerprint.channel_names)
    labels = dict(dataset.raw_json["labels"]) if dataset is not None else dict(fingerprint.labels)
    name = dataset.name if dataset is not None else fingerprint.dataset_name
    n_channels = len(channel_names)
    n_outputs = len(labels)  # every dataset.json label entry, as the reference's estimate counts them
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_after_crop
    n_cases = fingerprint.num_cases

    target = fullres_target_spacing(spacings, shapes)
    fwd, bwd = transpose_axes(target)
    target_t = target[list(fwd)]
    median_t = median_resampled_shape(spacings, shapes, target)[list(fwd)]
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * n_cases)
    schemes, masks = normalization_plan(channel_names, fingerprint.median_relative_size_after_cropping)
    cache: dict = {}

    def plan(cfg, spacing, median, voxels):
        return plan_configuration(cfg, spacing, median, n_channels, n_outputs, voxels, schemes, masks,
                                  gpu_memory_gb, cache)

    configs: Dict[str, ConfigurationPlan] = {}
    configs["2d"] = replace(plan("2d", target_t[-2:], median_t[-2:], dataset_voxels), batch_dice=True)
    if fingerprint.ndim == 3 and median_t[0] != 1:
        fullres = plan("3d_fullres", target_t, median_t, dataset_voxels)
        lowres = _plan_lowres(fullres, median_t, n_cases, plan)
        if lowres is not None:
            configs["3d_fullres"] = replace(fullres, batch_dice=True, next_stages=())
            configs["3d_lowres"] = replace(lowres, next_stages=("3d_cascade_fullres",))
            configs["3d_cascade_fullres"] = replace(configs["3d_fullres"], name="3d_cascade_fullres",
                                                    previous_stage="3d_lowres")
        else:
            configs["3d_fullres"] = fullres
    budget = None
    if budget_minutes is not None:
        if calibration is None:
            raise AutoSegError("a time budget needs the device's calibration (training.calibration.calibrate).")
        from AutoSegLib.planning.budget import plan_budget
        three_d = "3d_fullres" in configs
        base = configs["3d_fullres"] if three_d else configs["2d"]
        spacing, median = (target_t, median_t) if three_d else (target_t[-2:], median_t[-2:])
        budget_plan, budget = plan_budget(budget_minutes, calibration, spacing, median, n_channels, n_outputs,
                                          n_cases, base, target_iterations=budget_target_iterations)
        configs[budget.configuration] = budget_plan
        if coarse_to_fine and three_d and fingerprint.has_foreground_boxes:
            from AutoSegLib.planning.coarse_to_fine import plan_coarse_to_fine
            extents = fingerprint.foreground_extents_mm()[:, list(fwd)]
            pair = plan_coarse_to_fine(budget_minutes, calibration, spacing, median, extents, n_channels,
                                       n_outputs, n_cases, base, budget, budget_target_iterations)
            if pair is not None:
                coarse_plan, coarse, fine_plan, fine = pair
                configs[coarse.configuration] = coarse_plan
                configs[fine.configuration] = fine_plan
                budget = replace(coarse, fine=fine)
    intensity = {str(k): dict(v) for k, v in fingerprint.intensity_properties.items()}
    configs = {k: replace(c, data_identifier=_data_identifier(k, c, fwd, intensity)) for k, c in configs.items()}
    return Plans(
        dataset_name=name, channel_names=channel_names, labels=labels, transpose_forward=tuple(int(a) for a in fwd),
        transpose_backward=tuple(int(a) for a in bwd),
        original_median_spacing=tuple(float(v) for v in np.median(spacings, 0)[list(fwd)]),
        original_median_shape=tuple(float(v) for v in np.median(shapes, 0)[list(fwd)]),
        intensity_properties=intensity, configurations=configs, file_ending=fingerprint.file_ending,
        regions_class_order=fingerprint.regions_class_order, planner_memory_gb=float(gpu_memory_gb), budget=budget)


def _plan_lowres(fullres: ConfigurationPlan, median_t: np.ndarray, n_cases: int, plan) -> Optional[ConfigurationPlan]:
    """Grow the spacing in 3% steps (the axes more than 2x finer than the coarsest first) until a patch
    covers at least 25% of the median image; None when not needed or not worth it (< 2x smaller)."""
    full_spacing = np.asarray(fullres.spacing, np.float64)
    spacing = full_spacing.copy()
    median_voxels = float(np.prod(median_t, dtype=np.float64))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    lowres = None
    while patch_voxels / median_voxels < LOWRES_PATCH_COVERAGE:
        coarse = spacing.max()
        fine = coarse / spacing > 2
        if fine.any():
            spacing[fine] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        scaled = full_spacing / spacing * median_t
        median_voxels = float(np.prod(scaled, dtype=np.float64))
        lowres = plan("3d_lowres", spacing.copy(), tuple(round(float(v)) for v in scaled), median_voxels * n_cases)
        patch_voxels = float(np.prod(lowres.patch_size, dtype=np.float64))
    if float(np.prod(median_t, dtype=np.float64)) / median_voxels < LOWRES_MIN_SHRINK:
        return None
    return lowres


def _data_identifier(name: str, cfg: ConfigurationPlan, transpose_forward, intensity: dict) -> str:
    """Folder name of the preprocessed data: the configuration name plus a short hash of everything
    that changes the preprocessed arrays (so re-planning with other settings never reuses stale data,
    and configurations with equal preprocessing share it, e.g. 3d_cascade_fullres with 3d_fullres)."""
    base = "3d_fullres" if name == "3d_cascade_fullres" else name
    key = {"ndim": len(cfg.spacing), "spacing": [round(s, 8) for s in cfg.spacing],
           "normalization": list(cfg.normalization), "mask": list(cfg.use_mask_for_norm),
           "resampling": cfg.resampling.__dict__, "transpose": list(transpose_forward),
           "intensity": intensity if "ct" in cfg.normalization else None}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{base}_{digest}"
