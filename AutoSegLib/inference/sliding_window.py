"""Sliding-window prediction with Gaussian importance weighting and test-time mirroring.

Pure: takes an array and a predictor callable, returns the stitched logits. The numerics follow the
nnU-Net v2 reference so that results agree with it: the array is padded (zeros, centred, the extra voxel
after) to at least the patch size; window starts per axis are ``round(i * (size - patch) / (n - 1))``
with ``n = ceil((size - patch) / (patch * step)) + 1``; each window's logits (averaged over the mirror
combinations, in float32) are multiplied by a Gaussian (sigma = patch / 8 per axis, peak scaled to 10,
zeros replaced by the smallest non-zero value) and summed into a float16 accumulator together with the
weights; the result is the weighted mean, cropped back. A 2D patch over 3D data predicts every slice
along axis 0.

Two stitchers, the same arithmetic: `predict_sliding_window` (torch tensors, any torch device) and
`predict_sliding_window_numpy` (numpy, for the compiled CPU runtimes: no torch import). torch is imported
only inside the torch functions, so that this module loads without it.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.progress import ProgressCallback, ProgressTracker

if TYPE_CHECKING:  # torch is imported inside the functions that use it
    import torch

GAUSSIAN_PEAK = 10.0  # float16 accumulation: keeps weighted sums well inside the float16 range


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> List[List[int]]:
    """Window start positions per axis.

    Parameters
    ----------
    image_size, patch_size : sequence of int
        Same length; ``image_size >= patch_size`` on every axis (pad first).
    step_size : float
        In (0, 1]: the largest step as a fraction of the patch.

    Returns
    -------
    list of list of int
        Per axis, the window starts; the first is 0 and the last is ``image_size - patch_size``.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; pad first")
        n = int(math.ceil((size - patch) / (patch * step_size))) + 1
        actual = (size - patch) / (n - 1) if n > 1 else 0.0
        steps.append([int(np.round(actual * i)) for i in range(n)])
    return steps


@lru_cache(maxsize=4)
def _gaussian_float64(patch_size: Tuple[int, ...], sigma_scale: float, peak: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    tmp = np.zeros(patch_size)
    tmp[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= np.max(g) / peak
    return g


@lru_cache(maxsize=4)
def _gaussian_cached(patch_size: Tuple[int, ...], sigma_scale: float, peak: float, dtype) -> "torch.Tensor":
    import torch
    t = torch.from_numpy(_gaussian_float64(patch_size, sigma_scale, peak)).to(dtype)
    zero = t == 0  # after the cast: float16 underflow at the corners would give 0/0 = NaN
    if zero.any():
        t[zero] = torch.min(t[~zero])
    return t


@lru_cache(maxsize=4)
def _gaussian_cached_numpy(patch_size: Tuple[int, ...], sigma_scale: float, peak: float, dtype) -> np.ndarray:
    # float64 -> float32 -> dtype: the cast torch's ``.to(float16)`` makes from float64, so both maps agree bit for bit
    g = _gaussian_float64(patch_size, sigma_scale, peak).astype(np.float32).astype(dtype)
    zero = g == 0
    if zero.any():
        g[zero] = g[~zero].min()
    g.flags.writeable = False
    return g


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, peak: float = GAUSSIAN_PEAK,
                            dtype=None) -> "torch.Tensor":
    """Gaussian weight map of shape ``patch_size``, peak ``peak`` at the centre voxel ``p // 2``, never 0;
    a torch tensor of ``dtype`` (default float16).

    Returns a cached tensor: do not modify it in place."""
    import torch
    return _gaussian_cached(tuple(int(p) for p in patch_size), float(sigma_scale), float(peak),
                            torch.float16 if dtype is None else dtype)


def gaussian_importance_map_numpy(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                                  peak: float = GAUSSIAN_PEAK, dtype=np.float16) -> np.ndarray:
    """`gaussian_importance_map` as a read-only numpy array (the same values)."""
    return _gaussian_cached_numpy(tuple(int(p) for p in patch_size), float(sigma_scale), float(peak), np.dtype(dtype))


def _padding(array, patch_size: Sequence[int]):
    """Per trailing axis (lo, hi) zero padding to reach ``patch_size``, and the original region's slices."""
    spatial = array.shape[array.ndim - len(patch_size):]
    pads, region = [], [slice(None)] * (array.ndim - len(patch_size))
    for size, patch in zip(spatial, patch_size):
        diff = max(int(patch) - size, 0)
        lo = diff // 2
        pads.append((lo, diff - lo))
        region.append(slice(lo, lo + size))
    return pads, tuple(region)


def pad_to_patch(array: "torch.Tensor", patch_size: Sequence[int]) -> Tuple["torch.Tensor", Tuple[slice, ...]]:
    """Zero-pad the trailing ``len(patch_size)`` axes of ``array`` to at least ``patch_size`` (content
    centred, odd remainder after). Returns the padded tensor and the slices of the original region
    (over all axes)."""
    import torch
    pads, region = _padding(array, patch_size)
    if not any(p for pair in pads for p in pair):
        return array, region
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants last axis first
    return torch.nn.functional.pad(array, flat, mode="constant", value=0), region


def pad_to_patch_numpy(array: np.ndarray, patch_size: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """`pad_to_patch` for numpy arrays."""
    pads, region = _padding(array, patch_size)
    if not any(p for pair in pads for p in pair):
        return array, region
    lead = [(0, 0)] * (array.ndim - len(patch_size))
    return np.pad(array, lead + pads, mode="constant", constant_values=0), region


def mirror_combinations(mirror_axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every non-empty combination of the mirror axes, by size then order (the reference's order)."""
    axes = list(mirror_axes)
    return [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]


def predict_with_mirroring(predictor: Callable[["torch.Tensor"], "torch.Tensor"], batch: "torch.Tensor",
                           mirror_axes: Sequence[int] = (), members: Optional[Callable] = None) -> "torch.Tensor":
    """Logits of ``batch`` (B, C, *patch) averaged over the original and every mirrored version
    (``mirror_axes`` are spatial axes, 0-based); each mirrored prediction is flipped back first.
    ``members``, when given, is called with each version's logits (flipped back) before they are summed."""
    import torch
    pred = predictor(batch)
    if members is not None:
        members(pred)
    combos = mirror_combinations(mirror_axes)
    for axes in combos:
        dims = [a + 2 for a in axes]
        one = torch.flip(predictor(torch.flip(batch, dims)), dims)
        if members is not None:
            members(one)
        pred += one
    if combos:
        pred /= len(combos) + 1
    return pred


def predict_with_mirroring_numpy(predictor: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
                                 mirror_axes: Sequence[int] = (), members: Optional[Callable] = None) -> np.ndarray:
    """`predict_with_mirroring` for numpy predictors (float32 sums in the same order)."""
    pred = np.array(predictor(batch), dtype=np.float32)  # a copy: updated in place below
    if members is not None:
        members(pred)
    combos = mirror_combinations(mirror_axes)
    for axes in combos:
        dims = tuple(a + 2 for a in axes)
        one = np.flip(predictor(np.ascontiguousarray(np.flip(batch, dims))), dims)
        if members is not None:
            members(one)
        pred += one
    if combos:
        pred /= np.float32(len(combos) + 1)
    return pred


def _windows(spatial: Sequence[int], patch_size: Sequence[int], step_size: float) -> Iterator[Tuple]:
    """Spatial slicers of every window, in the reference's order (slices of axis 0 first for 2D-on-3D)."""
    if len(patch_size) == len(spatial) - 1:
        steps = compute_steps(spatial[1:], patch_size, step_size)
        for d in range(spatial[0]):
            for starts in itertools.product(*steps):
                yield (d, *(slice(s, s + p) for s, p in zip(starts, patch_size)))
    else:
        steps = compute_steps(spatial, patch_size, step_size)
        for starts in itertools.product(*steps):
            yield tuple(slice(s, s + p) for s, p in zip(starts, patch_size))


def count_windows(spatial: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5) -> int:
    """Number of windows for an (unpadded) spatial shape."""
    padded = list(spatial)
    off = len(spatial) - len(patch_size)
    for i, p in enumerate(patch_size):
        padded[off + i] = max(padded[off + i], int(p))
    steps = compute_steps(padded[off:], patch_size, step_size)
    return int(np.prod([len(s) for s in steps])) * (padded[0] if off else 1)


def predict_sliding_window(array, predictor: Callable[["torch.Tensor"], "torch.Tensor"], patch_size: Sequence[int],
                           num_outputs: Optional[int] = None, step_size: float = 0.5, gaussian: bool = True,
                           mirror_axes: Sequence[int] = (), batch_size: int = 1,
                           accumulate_dtype=None, device: "str | torch.device" = "cpu",
                           results_device: "str | torch.device | None" = None,
                           progress: Optional[ProgressCallback] = None, stage: str = "predict",
                           statistics=None) -> "torch.Tensor":
    """Predict a whole array window by window and stitch the logits.

    Parameters
    ----------
    array : ndarray or Tensor, (C, *spatial) float
        Network input (preprocessed image). ``spatial`` has ``len(patch_size)`` axes, or one more for a 2D
        patch over 3D data (each slice along axis 0 is predicted on its own).
    predictor : callable
        ``predictor(batch) -> logits``: batch ``(B, C, *patch)`` on ``device``, logits ``(B, K, *patch)``
        float32, a new tensor (it is updated in place).
    patch_size : sequence of int
        Window size (2 or 3 axes).
    num_outputs : int, optional
        K; found from the first prediction when omitted.
    step_size : float
        Window step as a fraction of the patch (0.5: half-overlapping windows).
    gaussian : bool
        Gaussian importance weighting (else uniform weights).
    mirror_axes : sequence of int
        Spatial axes of the window (0-based) to mirror for test-time augmentation; every combination is
        predicted and the logits averaged.
    batch_size : int
        Windows per predictor call. Results equal batch size 1 up to float rounding of the predictor.
    accumulate_dtype : torch.dtype, optional
        Accumulator dtype (default float16); float16 reproduces the reference (and halves memory), float32
        is finer.
    device : str or torch.device
        Where windows are sent for the predictor.
    results_device : str or torch.device, optional
        Where the accumulator lives (default: the CPU).
    progress : callable, optional
        Receives ``progress`` events (one step per window batch).
    statistics : inference.uncertainty.EnsembleStatistics, optional
        Also receives every member's (mirroring's) window logits, for the uncertainty map.

    Returns
    -------
    Tensor, (K, *spatial), ``accumulate_dtype`` on ``results_device``
        Weighted mean logits, in the input's (unpadded) grid.
    """
    import torch
    accumulate_dtype = torch.float16 if accumulate_dtype is None else accumulate_dtype
    x = torch.as_tensor(array)
    _check_shapes(tuple(x.shape), patch_size, mirror_axes)
    results_device = torch.device(results_device or "cpu")
    device = torch.device(device)
    x, region = pad_to_patch(x, patch_size)
    spatial = tuple(x.shape[1:])
    slicers = list(_windows(spatial, patch_size, step_size))
    if gaussian:
        weight = gaussian_importance_map(patch_size, dtype=accumulate_dtype).to(results_device)
    else:
        weight = torch.ones(tuple(patch_size), dtype=accumulate_dtype, device=results_device)
    weights_sum = torch.zeros(spatial, dtype=accumulate_dtype, device=results_device)
    logits = None if num_outputs is None else torch.zeros((num_outputs, *spatial), dtype=accumulate_dtype,
                                                          device=results_device)
    members = None
    if statistics is not None:
        statistics.prepare(spatial, region, weight)
        members = statistics.add_member
    tracker = ProgressTracker(progress, stage, int(math.ceil(len(slicers) / max(batch_size, 1))))
    for b0 in range(0, len(slicers), max(batch_size, 1)):
        batch_slicers = slicers[b0:b0 + batch_size]
        batch = torch.stack([x[(slice(None), *sl)] for sl in batch_slicers]).to(device, torch.float32)
        pred = predict_with_mirroring(predictor, batch, mirror_axes, members).to(results_device)
        if statistics is not None:
            statistics.add_windows(batch_slicers)
        if logits is None:
            logits = torch.zeros((pred.shape[1], *spatial), dtype=accumulate_dtype, device=results_device)
        for sl, p in zip(batch_slicers, pred):
            if gaussian:
                p *= weight
            logits[(slice(None), *sl)] += p
            weights_sum[sl] += weight
        tracker.step(f"window {min(b0 + batch_size, len(slicers))}/{len(slicers)}")
    if statistics is not None:
        statistics.finish_pass()
    torch.div(logits, weights_sum, out=logits)
    if torch.isinf(logits).any():
        raise FloatingPointError("the stitched logits overflowed the accumulator dtype; predict with "
                                 "accumulate_dtype=torch.float32")
    return logits[(slice(None), *region[1:])]


def _check_shapes(shape: Tuple[int, ...], patch_size: Sequence[int], mirror_axes: Sequence[int]) -> None:
    nd_patch = len(patch_size)
    if len(shape) - 1 not in (nd_patch, nd_patch + 1):
        raise ValueError(f"array of shape {shape} (C, *spatial) does not fit a {nd_patch}D patch "
                         f"{tuple(patch_size)}: expected {nd_patch} or {nd_patch + 1} spatial axes")
    if mirror_axes and max(mirror_axes) >= nd_patch:
        raise ValueError(f"mirror axes {tuple(mirror_axes)} do not exist in a {nd_patch}D patch")


def predict_sliding_window_numpy(array: np.ndarray, predictor: Callable[[np.ndarray], np.ndarray],
                                 patch_size: Sequence[int], num_outputs: Optional[int] = None, step_size: float = 0.5,
                                 gaussian: bool = True, mirror_axes: Sequence[int] = (), batch_size: int = 1,
                                 accumulate_dtype=np.float16, progress: Optional[ProgressCallback] = None,
                                 stage: str = "predict", statistics=None) -> np.ndarray:
    """`predict_sliding_window` in numpy, for predictors that take and return numpy arrays (the compiled
    CPU runtimes). Same windows, Gaussian, mirroring and accumulation order and dtypes, so that for the same
    window logits the result is identical.

    Parameters
    ----------
    array : ndarray, (C, *spatial) float
    predictor : callable
        ``predictor(batch) -> logits``: batch ``(B, C, *patch)`` float32 numpy, logits ``(B, K, *patch)``.
    patch_size, num_outputs, step_size, gaussian, mirror_axes, batch_size, accumulate_dtype, progress, stage,
    statistics
        As in `predict_sliding_window` (``accumulate_dtype`` a numpy dtype).

    Returns
    -------
    ndarray, (K, *spatial), ``accumulate_dtype``
    """
    x = np.asarray(array)
    _check_shapes(tuple(x.shape), patch_size, mirror_axes)
    x, region = pad_to_patch_numpy(x, patch_size)
    spatial = tuple(x.shape[1:])
    slicers = list(_windows(spatial, patch_size, step_size))
    if gaussian:
        weight = gaussian_importance_map_numpy(patch_size, dtype=accumulate_dtype)
    else:
        weight = np.ones(tuple(patch_size), dtype=accumulate_dtype)
    weights_sum = np.zeros(spatial, dtype=accumulate_dtype)
    logits = None if num_outputs is None else np.zeros((num_outputs, *spatial), dtype=accumulate_dtype)
    members = None
    if statistics is not None:
        statistics.prepare(spatial, region, weight)
        members = statistics.add_member
    tracker = ProgressTracker(progress, stage, int(math.ceil(len(slicers) / max(batch_size, 1))))
    for b0 in range(0, len(slicers), max(batch_size, 1)):
        batch_slicers = slicers[b0:b0 + batch_size]
        batch = np.stack([x[(slice(None), *sl)] for sl in batch_slicers]).astype(np.float32, copy=False)
        pred = predict_with_mirroring_numpy(predictor, batch, mirror_axes, members)
        if statistics is not None:
            statistics.add_windows(batch_slicers)
        if logits is None:
            logits = np.zeros((pred.shape[1], *spatial), dtype=accumulate_dtype)
        for sl, p in zip(batch_slicers, pred):
            if gaussian:
                p *= weight  # float32 product, as torch's in-place multiply of a float32 tensor
            target = logits[(slice(None), *sl)]
            np.add(target, p, out=target, casting="same_kind")  # float32 sum rounded to the accumulator
            weights_sum[sl] += weight
        tracker.step(f"window {min(b0 + batch_size, len(slicers))}/{len(slicers)}")
    if statistics is not None:
        statistics.finish_pass()
    np.divide(logits, weights_sum, out=logits)
    if np.isinf(logits).any():
        raise FloatingPointError("the stitched logits overflowed the accumulator dtype; predict with "
                                 "accumulate_dtype=numpy.float32")
    return logits[(slice(None), *region[1:])]
