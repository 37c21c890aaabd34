"""Cropping to the non-zero region (the union over channels, holes filled), as the recipe prescribes.

Bounding boxes are half-open ``[[start, end), ...]`` per spatial axis, in the array order the data has
when cropped (after ``transpose_forward`` inside preprocessing).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

BACKGROUND_OUTSIDE = -1  # label value written outside the non-zero region (training reads it as 0)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background (face connectivity) in a boolean mask.

    Same result as ``scipy.ndimage.binary_fill_holes`` with its default structure, computed with one
    connected-component labelling pass instead of an iterated dilation.
    """
    from scipy import ndimage

    background = ~mask
    if not background.any():
        return mask.copy()
    labels, n = ndimage.label(background)
    touching = set()
    for axis in range(mask.ndim):
        for index in (0, -1):
            touching.update(np.unique(np.take(labels, index, axis=axis)).tolist())
    touching.discard(0)
    if len(touching) == n:
        return mask.copy()
    keep = np.zeros(n + 1, dtype=bool)
    keep[list(touching)] = True
    keep[0] = True  # foreground itself
    # a voxel is in the filled mask unless it belongs to a background component touching the border
    return ~(keep[labels] & background)


def bbox_of_mask(mask: np.ndarray) -> List[List[int]]:
    """Half-open bounding box of the True voxels; the full extent when the mask is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, int(mask.shape[axis])])
    return box


def crop_to_nonzero(data: np.ndarray, seg: Optional[np.ndarray] = None,
                    outside_value: int = BACKGROUND_OUTSIDE) -> Tuple[np.ndarray, np.ndarray, List[List[int]]]:
    """Crop ``data`` (and ``seg``) to the bounding box of the non-zero region.

    The non-zero region is the union over channels of ``data != 0`` with enclosed holes filled. In the
    returned label, background voxels (0) outside that region are set to ``outside_value``.

    Parameters
    ----------
    data : ndarray, shape (C, *spatial)
    seg : ndarray, shape (1, *spatial), integer, optional

    Returns
    -------
    data : ndarray, shape (C, *cropped), a view of the input
    seg : ndarray, shape (1, *cropped): the cropped label (a copy), or, without one, int8 with 0 inside the
        region and ``outside_value`` outside
    bbox : list of [start, end) per spatial axis
    """
    if data.ndim < 3:
        raise ValueError(f"data must be (C, *spatial) with 2 or 3 spatial axes, got shape {data.shape}")
    if seg is not None and seg.shape[1:] != data.shape[1:]:
        raise ValueError(f"label shape {seg.shape[1:]} differs from image shape {data.shape[1:]}")
    nonzero = data[0] != 0
    for c in range(1, data.shape[0]):
        nonzero |= data[c] != 0
    bbox = bbox_of_mask(nonzero)
    region = tuple(slice(a, b) for a, b in bbox)
    # filling holes commutes with cropping to the bounding box: background on the box's faces touches the
    # (all-background) outside, which reaches the array border
    mask = fill_holes(nonzero[region])
    data = data[(slice(None),) + region]
    if seg is not None:
        seg = seg[(slice(None),) + region].copy()
        if not mask.all():
            seg[0][(seg[0] == 0) & ~mask] = outside_value
    else:
        seg = np.where(mask, np.int8(0), np.int8(outside_value))[None]
    return data, seg, bbox
