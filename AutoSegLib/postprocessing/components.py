"""Connected components: keep only the largest component of a mask or of some labels of a label map.

Connectivity is full (26-neighbourhood in 3D, 8 in 2D), as the reference's post-processing
(``skimage.measure.label`` with its default connectivity). When several components share the largest
size, all of them are kept (the reference's rule too).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np

LabelsOrRegions = Union[int, Sequence[Union[int, Sequence[int]]]]


def _bounding_box(mask: np.ndarray):
    """Slices of the smallest box holding every True voxel of ``mask`` (None when it is empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other)) if other else np.flatnonzero(mask)
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask (full connectivity).

    Parameters
    ----------
    mask : ndarray of bool (or anything whose non-zero voxels are the mask), shape (z, y, x) or (y, x)

    Returns
    -------
    ndarray of bool, same shape
        True on the voxels of the largest component (all tied largest components when several share the
        maximal size); all False when ``mask`` is empty.
    """
    from scipy import ndimage

    mask = np.asarray(mask).astype(bool, copy=False)
    out = np.zeros(mask.shape, dtype=bool)
    box = _bounding_box(mask)
    if box is None:
        return out
    sub = mask[box]  # label only the bounding box: the rest of the volume holds no component
    structure = ndimage.generate_binary_structure(sub.ndim, sub.ndim)
    labelled, n = ndimage.label(sub, structure=structure)
    if n <= 1:
        out[box] = sub
        return out
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes == sizes.max())
    out[box] = np.isin(labelled, keep) if keep.size > 1 else labelled == keep[0]
    return out


def labels_mask(label_map: np.ndarray, labels_or_regions: LabelsOrRegions) -> np.ndarray:
    """Union of the voxels whose value is one of ``labels_or_regions``.

    ``labels_or_regions`` is one label value, or a list whose items are label values or regions (lists of
    label values); a region's mask is the union of its values, so nesting only groups.
    """
    values = sorted(set(_flatten(labels_or_regions)))
    if len(values) == 1:
        return np.asarray(label_map) == values[0]
    return np.isin(label_map, values)


def _flatten(item) -> Iterable[int]:
    if isinstance(item, (list, tuple, np.ndarray)):
        for sub in item:
            yield from _flatten(sub)
    else:
        yield int(item)


def remove_all_but_largest_component(label_map: np.ndarray, labels_or_regions: LabelsOrRegions,
                                     background: int = 0, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Merge ``labels_or_regions`` into one mask, keep its largest component, set the rest to background.

    Parameters
    ----------
    label_map : ndarray of int, shape (z, y, x) or (y, x)
    labels_or_regions : int or list of (int or list of int)
        Label values (or regions) merged into one mask.
    background : int
        Value written on removed voxels.
    out : ndarray, optional
        Where to write the result (may be ``label_map`` itself, for in-place); default a copy.

    Returns
    -------
    ndarray, same shape and dtype as ``label_map``
        Voxels of the merged mask outside its largest connected component set to ``background``; every
        other voxel unchanged (the input is not modified unless passed as ``out``).
    """
    label_map = np.asarray(label_map)
    mask = labels_mask(label_map, labels_or_regions)
    keep = largest_component(mask)
    result = np.array(label_map, copy=True) if out is None else out
    if out is not None and out is not label_map:
        np.copyto(result, label_map)
    result[mask & ~keep] = background
    return result
