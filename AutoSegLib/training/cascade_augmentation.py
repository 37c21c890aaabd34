"""Augmentation of a cascade stage's extra inputs (the previous stage's label map), after the recipe's.

The sampler hands the previous stage's label map over as the second label channel (``seg[:, 1]``), so
the spatial augmentation and mirroring move it exactly like the reference label (per-label
interpolation: labels stay labels). Then, at the end of the pipeline (the intensity transforms have
touched only the image channels):

1. `PreviousStageToOneHot`: ``seg[:, 1]`` becomes one one-hot image channel per cascade label value
   (`models.folder.cascade_label_values`), appended after the image channels; ``seg`` keeps channel 0.
2. `RandomBinaryOperator` (p 0.4 per sample; then every one-hot channel, in random order): dilation,
   erosion, opening or closing with a ball whose radius is drawn from [1, 8] voxels. Voxels a channel
   gains are taken from the other channels, so the channels stay mutually exclusive.
3. `RemoveRandomComponent` (p 0.2 per sample; then every one-hot channel): one connected component
   (full connectivity), drawn among those smaller than 15 % of the patch, is erased.

The perturbations teach the network not to copy the previous stage's mistakes; the probabilities and
sizes are the reference recipe's cascade settings. Validation batches only get step 1
(`previous_stage_to_one_hot`). Like the rest of the pipeline the transforms draw from numpy's global
generator unless given one (``rng``: a numpy Generator or RandomState).

Morphology uses Euclidean distance transforms: dilating a mask by a ball of radius r keeps the voxels
within distance r of it, which is exactly the dilation by the discrete ball {offsets o : |o| <= r}, in
time linear in the voxels whatever the radius (and only over the mask's bounding box grown by 2r + 1:
~0.1 s for a 128^3 patch). Outside the patch counts as neither foreground for dilation nor background for
erosion (a patch border is not an object border).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

OPERATIONS = ("dilation", "erosion", "opening", "closing")


# ---- array functions -----------------------------------------------------------------------------------
def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt
    if not mask.any():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt
    if mask.all():
        return mask.copy()
    return distance_transform_edt(mask) > radius


def binary_operation(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """Morphological ``operation`` of a binary mask with a ball of ``radius`` voxels.

    Parameters
    ----------
    mask : ndarray bool (*spatial), 2D or 3D
    operation : str
        One of `OPERATIONS`: 'dilation', 'erosion', 'opening' (erosion, then dilation) or 'closing'
        (dilation, then erosion).
    radius : float
        Ball radius in voxels (> 0): the structure holds every offset o with |o| <= radius.

    Returns
    -------
    ndarray bool, shape of ``mask``.

    Raises
    ------
    ValueError
        Unknown operation or a radius <= 0.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown binary operation {operation!r}; choose one of {OPERATIONS}.")
    if not radius > 0:
        raise ValueError(f"structure radius must be > 0 voxels, got {radius}.")
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    box = _bounding_box(mask, 2 * int(np.ceil(radius)) + 1)
    if box is None:
        return out
    sub = mask[box]
    if operation == "dilation":
        res = _dilate(sub, radius)
    elif operation == "erosion":
        res = _erode(sub, radius)
    elif operation == "opening":
        res = _dilate(_erode(sub, radius), radius)
    else:
        res = _erode(_dilate(sub, radius), radius)
    out[box] = res
    return out


def _bounding_box(mask: np.ndarray, margin: int):
    """Slices of the mask's bounding box grown by ``margin`` (clipped to the array), or None when empty.

    Working inside it gives the same result as on the whole array (a speed-up of the distance
    transforms): every foreground voxel is inside, the result reaches at most 2 radii beyond them, and the
    nearest background voxel of any voxel inside is inside too (clamping a point to a box around both
    shortens the distance), or the array ends there as well."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def small_components(mask: np.ndarray, max_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """Connected components of ``mask`` (full connectivity) smaller than ``max_fraction`` of its size.

    Returns
    -------
    labels : ndarray int (*spatial), 0 background, components numbered from 1
    ids : ndarray int
        The component numbers with fewer than ``max_fraction * mask.size`` voxels.
    """
    from scipy.ndimage import generate_binary_structure, label

    mask = np.asarray(mask, dtype=bool)
    labels, n = label(mask, structure=generate_binary_structure(mask.ndim, mask.ndim))
    if n == 0:
        return labels, np.zeros(0, dtype=np.int64)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    ids = np.flatnonzero(sizes < max_fraction * mask.size) + 1
    return labels, ids


def previous_stage_to_one_hot(data: np.ndarray, seg: np.ndarray, values: Sequence[int]
                              ) -> Tuple[np.ndarray, np.ndarray]:
    """Move the previous stage's label map (``seg[:, 1]``) into one-hot image channels.

    Parameters
    ----------
    data : ndarray (B, C, *spatial)
    seg : ndarray (B, 2, *spatial)
        Channel 0 the reference label, channel 1 the previous stage's label map (-1 = outside).
    values : sequence of int
        Label values, one channel each (`cascade_label_values`).

    Returns
    -------
    data : ndarray float32 (B, C + len(values), *spatial)
    seg : ndarray (B, 1, *spatial), dtype of ``seg``
    """
    from AutoSegLib.io.labels import cascade_one_hot

    if seg.shape[1] != 2:
        raise ValueError(f"expected seg of shape (B, 2, *spatial) holding the previous stage's map in channel 1, "
                         f"got {seg.shape}.")
    one_hot = np.moveaxis(cascade_one_hot(np.rint(seg[:, 1]).astype(np.int32), values), 0, 1)
    data = np.concatenate([np.asarray(data, dtype=np.float32), one_hot], axis=1)
    return data, seg[:, :1]


# ---- transforms (batch dicts, as in augmentation.Compose) -------------------------------------------
class PreviousStageToOneHot:
    """``seg[:, 1]`` -> one-hot channels appended to ``data`` (`previous_stage_to_one_hot`)."""

    def __init__(self, values: Sequence[int]):
        self.values = tuple(int(v) for v in values)

    def __call__(self, **d):
        d["data"], d["seg"] = previous_stage_to_one_hot(d["data"], d["seg"], self.values)
        return d


class _OneHotPerturbation:
    """Shared by the perturbations of the last ``num_channels`` channels of ``data`` (one-hot, 0/1):
    each sample is perturbed with probability ``p_per_sample``, then each channel with ``p_per_channel``.

    Parameters
    ----------
    num_channels : int
        The one-hot channels (the last ones of ``data``).
    p_per_sample, p_per_channel : float
    rng : numpy Generator or RandomState, optional
        Default: numpy's global generator.
    """

    def __init__(self, num_channels: int, p_per_sample: float, p_per_channel: float = 1.0, rng=None):
        self.num_channels = int(num_channels)
        self.p_per_sample, self.p_per_channel = float(p_per_sample), float(p_per_channel)
        self.rng = rng

    def __call__(self, **d):
        rng = self.rng if self.rng is not None else np.random
        data = d["data"]
        first = data.shape[1] - self.num_channels
        for b in range(data.shape[0]):
            if rng.uniform() >= self.p_per_sample:
                continue
            for c in first + self._channel_order(rng):
                if rng.uniform() < self.p_per_channel:
                    self._perturb(data, b, int(c), first, rng)
        d["data"] = data
        return d

    def _channel_order(self, rng) -> np.ndarray:
        return np.arange(self.num_channels)

    def _perturb(self, data: np.ndarray, b: int, c: int, first: int, rng) -> None:
        raise NotImplementedError


class RandomBinaryOperator(_OneHotPerturbation):
    """Random morphology (dilation, erosion, opening or closing with a ball) on the one-hot channels,
    visited in random order; voxels a channel gains are taken from the others (they stay exclusive).

    Parameters
    ----------
    num_channels, p_per_sample, p_per_channel, rng : see `_OneHotPerturbation`
    radius_range : (float, float)
        Ball radius in voxels, drawn uniformly.
    """

    def __init__(self, num_channels: int, p_per_sample: float = 0.4, p_per_channel: float = 1.0,
                 radius_range: Tuple[float, float] = (1.0, 8.0), rng=None):
        super().__init__(num_channels, p_per_sample, p_per_channel, rng)
        self.radius_range = tuple(float(r) for r in radius_range)

    def _channel_order(self, rng) -> np.ndarray:
        return rng.permutation(self.num_channels)

    def _perturb(self, data, b, c, first, rng) -> None:
        operation = OPERATIONS[int(rng.choice(len(OPERATIONS)))]
        radius = float(rng.uniform(*self.radius_range))
        before = data[b, c] > 0.5
        after = binary_operation(before, operation, radius)
        data[b, c] = after
        gained = after & ~before
        if gained.any():
            for other in range(first, data.shape[1]):
                if other != c:
                    data[b, other][gained] = 0


class RemoveRandomComponent(_OneHotPerturbation):
    """Erase one random small connected component from the one-hot channels.

    Parameters
    ----------
    num_channels, p_per_sample, p_per_channel, rng : see `_OneHotPerturbation`
    max_fraction : float
        Only components with fewer voxels than this fraction of the patch are candidates.
    """

    def __init__(self, num_channels: int, p_per_sample: float = 0.2, p_per_channel: float = 1.0,
                 max_fraction: float = 0.15, rng=None):
        super().__init__(num_channels, p_per_sample, p_per_channel, rng)
        self.max_fraction = float(max_fraction)

    def _perturb(self, data, b, c, first, rng) -> None:
        labels, ids = small_components(data[b, c] > 0.5, self.max_fraction)
        if len(ids):
            data[b, c][labels == int(ids[int(rng.choice(len(ids)))])] = 0


def cascade_transforms(values: Sequence[int], rng=None) -> list:
    """The cascade steps of the training pipeline (module docstring), to run after the recipe's."""
    values = tuple(values)
    out = [PreviousStageToOneHot(values)]
    if values:
        out += [RandomBinaryOperator(len(values), rng=rng), RemoveRandomComponent(len(values), rng=rng)]
    return out


__all__ = ["OPERATIONS", "binary_operation", "small_components", "previous_stage_to_one_hot",
           "PreviousStageToOneHot", "RandomBinaryOperator", "RemoveRandomComponent", "cascade_transforms"]
