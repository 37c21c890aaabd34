"""Dataset-level planning rules: target spacing (with the anisotropy rule), axis transposition,
resampled shapes, and the normalisation scheme per channel.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

ANISOTROPY_THRESHOLD = 3.0
MASK_RULE_RELATIVE_SIZE = 0.75   # crop kept < 3/4 of the voxels (median) -> normalise inside the mask

# dataset.json channel name (case-insensitive) -> scheme; anything else is z-scored
_SCHEME_BY_CHANNEL_NAME = {
    "ct": "ct",
    "nonorm": "none",
    "zscore": "zscore",
    "rescale_to_0_1": "rescale_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
}
# schemes that set the outside of the non-zero mask to 0 when normalising inside it
_MASKABLE = {"zscore"}


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray,
                           threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Target spacing of the full-resolution configuration.

    The median spacing per axis; except when the coarsest axis' median spacing is more than
    ``threshold`` times the coarsest of the other axes *and* its median size (after cropping) times
    ``threshold`` is below the smallest other median size: then that axis gets the 10th percentile of
    its spacings, but never finer than the other axes (it becomes their coarsest spacing + 1e-5).

    Parameters
    ----------
    spacings : ndarray, shape (num_cases, ndim)
        Per-case spacing in array order.
    shapes : ndarray, shape (num_cases, ndim)
        Per-case shape after cropping to the non-zero box.

    Returns
    -------
    ndarray, shape (ndim,), float64
    """
    spacings = np.asarray(spacings, np.float64)
    target = np.percentile(spacings, 50, axis=0)
    if spacings.shape[1] < 3:
        return target
    median_size = np.percentile(np.asarray(shapes, np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    aniso_spacing = target[worst] > threshold * max(target[a] for a in others)
    aniso_voxels = median_size[worst] * threshold < min(median_size[a] for a in others)
    if aniso_spacing and aniso_voxels:
        tenth = float(np.percentile(spacings[:, worst], 10))
        coarsest_other = max(target[a] for a in others)
        if tenth < coarsest_other:
            tenth = max(coarsest_other, tenth) + 1e-5
        target[worst] = tenth
    return target


def transpose_axes(target_spacing: Sequence[float]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(transpose_forward, transpose_backward): the coarsest axis (first if tied) becomes axis 0, the
    others keep their order. 2D data is never transposed."""
    n = len(target_spacing)
    if n < 3:
        return tuple(range(n)), tuple(range(n))
    worst = int(np.argmax(target_spacing))
    forward = (worst,) + tuple(a for a in range(n) if a != worst)
    backward = tuple(int(i) for i in np.argsort(forward))
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> Tuple[int, ...]:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (rounded per axis)."""
    return tuple(int(round(float(old_sp) / float(new_sp) * int(n)))
                 for n, old_sp, new_sp in zip(shape, spacing, new_spacing))


def normalization_scheme(channel_name: str) -> str:
    """Scheme for a dataset.json channel name: "CT" -> "ct", "noNorm" -> "none", "zscore",
    "rescale_to_0_1" -> "rescale_0_1", "rgb_to_0_1"; any other name (MRI, T1, ...) -> "zscore"."""
    return _SCHEME_BY_CHANNEL_NAME.get(str(channel_name).casefold(), "zscore")


def normalization_plan(channel_names: Dict[str, str], median_relative_size_after_cropping: float
                       ) -> Tuple[Tuple[str, ...], Tuple[bool, ...]]:
    """Per channel (in channel order): the scheme and whether to normalise inside the non-zero mask.

    The mask is used when cropping to the non-zero box kept less than 3/4 of the voxels (median over
    cases), and only for schemes that leave the outside at 0 (z-score); CT never uses it.
    """
    names = [channel_names[str(i)] for i in range(len(channel_names))]
    schemes = tuple(normalization_scheme(n) for n in names)
    crop_shrank = median_relative_size_after_cropping < MASK_RULE_RELATIVE_SIZE
    return schemes, tuple(bool(crop_shrank and s in _MASKABLE) for s in schemes)


def median_resampled_shape(spacings: np.ndarray, shapes: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """Median over cases of the shape after cropping and resampling to ``target`` (float64, ndim)."""
    new_shapes: List[Tuple[int, ...]] = [resampled_shape(sh, sp, target) for sp, sh in zip(spacings, shapes)]
    return np.median(np.array(new_shapes, np.float64), axis=0)
