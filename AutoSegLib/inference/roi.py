"""Predicting only inside a box (region of interest) given in physical coordinates.

The box is two opposite corners ``((x0, y0, z0), (x1, y1, z1))`` in millimetres, in the image file's
physical (LPS) coordinates, the numbers ``image.TransformIndexToPhysicalPoint`` gives. Its eight corners are
mapped to continuous voxel indices through the image's spacing, origin and direction (any rotation), and the
voxels whose centres lie in their bounding box form the box in the array.

The ROI is axis-aligned in physical space, so for an image with a rotated direction matrix it is oblique in
the array: the voxels kept are those whose centres lie inside it (`roi_mask`). What is predicted
(`predict_in_roi`): the array box holding them, enlarged to at least one network patch (in millimetres, the
largest over the configurations used; a log event says so), plus a context margin of half a patch on every
side where the image has it, so that the windows covering the box see what a whole-volume prediction's
windows see. Image-dependent intensity normalisation (``zscore``, ``rescale_0_1``) takes its statistics from
the whole image, as a whole-volume prediction does, not from the crop. The label map is written on the full
input grid: the prediction inside the ROI, zero outside (probabilities: background 1, regions 0); a ROI
enlarged to one patch is predicted with that context but kept at its own size.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.progress import emit

IMAGE_DEPENDENT = ("zscore", "ZScoreNormalization", "rescale_0_1", "RescaleTo01Normalization")


def physical_extent(shape: Sequence[int], geometry: Geometry) -> Tuple[np.ndarray, np.ndarray]:
    """Lowest and highest LPS coordinates (x, y, z) of the voxel centres of an image of array ``shape``."""
    m = geometry.index_to_physical_matrix()
    n = geometry.ndim
    size_ijk = list(reversed([int(s) for s in shape[-n:]]))
    corners = np.array([[c * (s - 1) for c, s in zip(combo, size_ijk)] + [1.0]
                        for combo in itertools.product((0, 1), repeat=n)])
    pts = (m @ corners.T).T[:, :n]
    return pts.min(0), pts.max(0)


def _corners(roi, n: int):
    try:
        a, b = (np.asarray(c, dtype=float).reshape(n) for c in roi)
    except (TypeError, ValueError):
        raise AutoSegError(f"ROI {roi!r}: expected two corners of {n} physical coordinates (mm) each.") from None
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise AutoSegError(f"ROI {roi!r}: coordinates must be finite numbers.")
    return np.minimum(a, b), np.maximum(a, b)


def roi_mask(roi, shape: Sequence[int], geometry: Geometry, box) -> np.ndarray:
    """Boolean mask over the array ``box`` of the voxels whose centres lie inside the ROI (computed one slice
    along axis 0 at a time: for a rotated image the ROI, axis-aligned in physical space, is oblique)."""
    n = geometry.ndim
    lo_p, hi_p = _corners(roi, n)
    m = geometry.index_to_physical_matrix()
    axes = [np.arange(lo, hi, dtype=float) for lo, hi in box]
    mask = np.zeros(tuple(hi - lo for lo, hi in box), bool)
    rest = np.meshgrid(*axes[1:], indexing="ij")  # array axes 1.. (ITK index reversed)
    for i, z in enumerate(axes[0]):
        idx = [np.full(rest[0].shape, z), *rest][::-1]  # ITK order (i, j, k)
        pts = sum(m[:n, k, None] * idx[k].ravel()[None] for k in range(n)) + m[:n, n, None]
        ok = np.all((pts >= lo_p[:, None] - 1e-6) & (pts <= hi_p[:, None] + 1e-6), axis=0)
        mask[i] = ok.reshape(rest[0].shape)
    return mask


def roi_to_box(roi, shape: Sequence[int], geometry: Geometry, source: str = "input") -> Tuple[Tuple[int, int], ...]:
    """The array box ``((lo, hi), ...)`` (array order, ``hi`` exclusive) that holds every voxel whose centre
    lies inside the ROI (an axis-aligned box in physical space; oblique in the array when the image's
    direction is rotated: `roi_mask` gives the voxels inside it).

    Raises
    ------
    AutoSegError
        A malformed ROI, or one that contains no voxel centre of the image (the message gives the image's
        physical extent).
    """
    n = geometry.ndim
    a, b = _corners(roi, n)
    inv = np.linalg.inv(geometry.index_to_physical_matrix())
    corners = np.array([[(a, b)[k][i] for i, k in enumerate(combo)] + [1.0]
                        for combo in itertools.product((0, 1), repeat=n)])
    ijk = (inv @ corners.T).T[:, :n]
    lo_ijk, hi_ijk = ijk.min(0), ijk.max(0)
    size_ijk = list(reversed([int(s) for s in shape[-n:]]))
    box = []
    for axis in range(n):
        lo = max(int(np.ceil(lo_ijk[axis] - 1e-6)), 0)
        hi = min(int(np.floor(hi_ijk[axis] + 1e-6)) + 1, size_ijk[axis])
        box.append((lo, max(hi, lo)))
    box = tuple(reversed(box))  # ijk -> array order
    if any(hi <= lo for lo, hi in box) or not roi_mask((a, b), shape, geometry, box).any():
        ext_lo, ext_hi = physical_extent(shape, geometry)
        fmt = lambda v: "(" + ", ".join(f"{x:.1f}" for x in v) + ")"  # noqa: E731
        raise AutoSegError(f"{source}: the ROI from {fmt(a)} to {fmt(b)} mm (LPS) lies outside the image, whose "
                           f"voxel centres span {fmt(ext_lo)} to {fmt(ext_hi)} mm (LPS; x, y, z). Give the "
                           f"corners in this image's physical coordinates (Slicer's RAS: negate x and y).")
    return box


def patch_extent_mm(model, configurations: Sequence[str], ndim: int) -> np.ndarray:
    """Per array axis, the largest network patch in millimetres over ``configurations`` (0 for the slice
    axis of a 2D configuration)."""
    out = np.zeros(ndim)
    tf = [int(t) for t in model.plans.transpose_forward]
    for name in configurations:
        conf = model.plans.configuration(name)
        offset = ndim - len(conf.patch_size)  # 2D patches cover the last two transposed axes
        for i, (p, s) in enumerate(zip(conf.patch_size, conf.spacing)):
            axis = tf[offset + i]
            out[axis] = max(out[axis], float(p) * float(s))
    return out


def context_box(box, shape, geometry: Geometry, patch_mm: np.ndarray, progress=None, source: str = "input"):
    """``(box, crop)``: the box enlarged to at least one patch (log event when it is), and the crop to
    predict: the box plus half a patch of context on every side, both clipped to the image."""
    spacing = np.asarray(geometry.spacing, float)
    need = np.ceil(patch_mm / spacing - 1e-6).astype(int)
    grown, crop = [], []
    for axis, ((lo, hi), size) in enumerate(zip(box, shape)):
        want = min(max(hi - lo, int(need[axis])), int(size))
        if want > hi - lo:
            extra = want - (hi - lo)
            lo = max(0, min(lo - extra // 2, int(size) - want))
            hi = lo + want
        grown.append((lo, hi))
        margin = int(np.ceil(patch_mm[axis] / 2 / spacing[axis] - 1e-6))
        crop.append((max(0, lo - margin), min(int(size), hi + margin)))
    if tuple(grown) != tuple(box):
        size_mm = lambda b: "x".join(f"{(h - l) * s:.0f}" for (l, h), s in zip(b[::-1], spacing[::-1]))  # noqa: E731
        emit(progress, "log", level="warning",
             message=f"{source}: the ROI ({size_mm(box)} mm, x*y*z) is smaller than the network's patch "
                     f"({'x'.join(f'{v:.0f}' for v in patch_mm[::-1])} mm): enlarged to {size_mm(grown)} mm for "
                     f"prediction; the label map keeps only the ROI")
    return tuple(grown), tuple(crop)


def crop_geometry(geometry: Geometry, starts: Sequence[int]) -> Geometry:
    """The geometry of a crop starting at array index ``starts`` (array order)."""
    m = geometry.index_to_physical_matrix()
    ijk = list(reversed([float(s) for s in starts])) + [1.0]
    origin = (m @ np.asarray(ijk))[:geometry.ndim]
    return Geometry(geometry.spacing, tuple(origin), geometry.direction)


def whole_image_normalization(model, images: np.ndarray, configurations: Sequence[str]):
    """A copy of ``model`` whose plans normalise with ``none`` the channels whose normalisation depends on
    the image, and ``prenormalize(crop_images, crop_slices)`` that applies to a crop the normalisation the
    whole image would get (statistics over the whole image's non-zero region, as preprocessing computes
    them). Returns ``(model, prenormalize)``; both unchanged when nothing depends on the image."""
    from AutoSegLib.preprocessing.cropping import crop_to_nonzero

    plans = model.plans
    schemes = {}
    from AutoSegLib.inference.estimate import run_configurations
    for name in run_configurations(model, configurations):  # a cascade's previous stages normalise too
        conf = plans.configuration(name)
        for c in range(images.shape[0]):
            if conf.normalization[c] in IMAGE_DEPENDENT:
                key = (conf.normalization[c], bool(conf.use_mask_for_norm[c]))
                if schemes.setdefault(c, key) != key:
                    raise AutoSegError(f"{model.path}: the configurations {list(configurations)} normalise channel "
                                       f"{c} differently; predict them one at a time with --roi.")
    if not schemes:
        return model, None
    _, seg, bbox = crop_to_nonzero(images)
    region = tuple(slice(lo, hi) for lo, hi in bbox)
    inside = seg[0] >= 0
    mask = np.zeros(images.shape[1:], bool)
    mask[region] = inside
    params = {}
    for c, (scheme, use_mask) in schemes.items():
        values = images[c][region][inside] if use_mask else images[c][region]
        values = values.astype(np.float32, copy=False)
        if scheme in ("zscore", "ZScoreNormalization"):
            params[c] = ("affine", float(values.mean(dtype=np.float64)), max(float(values.std(dtype=np.float64)), 1e-8),
                         use_mask)
        else:
            lo = float(values.min()) if values.size else 0.0
            params[c] = ("affine", lo, max(float(values.max()) - lo, 1e-8), False)
    if any(p[3] for p in params.values()) and not inside.any():
        params = {c: ("zero", 0.0, 1.0, False) for c in params}
    confs = {}
    for name, conf in plans.configurations.items():
        norm = tuple("none" if c in schemes else n for c, n in enumerate(conf.normalization))
        confs[name] = dataclasses.replace(conf, normalization=norm)
    new_model = copy.copy(model)  # shares the folds and their cached weights/sessions
    new_model.plans = dataclasses.replace(plans, configurations=confs)

    def prenormalize(crop: np.ndarray, slices) -> np.ndarray:
        out = np.array(crop, dtype=np.float32, copy=True)
        for c, (kind, shift, scale, use_mask) in params.items():
            if kind == "zero":
                out[c] = 0.0
                continue
            out[c] -= np.float32(shift)
            out[c] /= np.float32(scale)
            if use_mask:
                out[c][~mask[slices]] = 0.0
        return out

    return new_model, prenormalize


def predict_in_roi(predict, model, images: np.ndarray, geometry: Geometry, roi, configurations: Sequence[str],
                   return_probabilities: bool, progress=None, source: str = "input", maps: Optional[dict] = None):
    """Predict only inside ``roi`` (see the module docstring).

    Parameters
    ----------
    predict : callable
        ``predict(model, images, geometry) -> (labels, probabilities or None)`` for a whole (cropped) image.
    model, images, geometry
        As ``predict_arrays`` takes them.
    roi : pair of corners (x, y, z) in mm, LPS
    configurations : the configurations that will run (their patches size the context)
    return_probabilities : bool
    maps : dict, optional
        Filled by ``predict`` with per-voxel maps on the cropped grid (the uncertainty): each is replaced by
        the same map on the input grid, zero outside the box.

    Returns
    -------
    labels : ndarray, the input's spatial shape; zero outside the box
    probabilities : ndarray (K, *spatial) or None; background 1 (regions: 0) outside the box
    """
    shape = images.shape[1:]
    box = roi_to_box(roi, shape, geometry, source)
    inside = np.zeros(shape, bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = roi_mask(roi, shape, geometry, box)
    return predict_in_box(predict, model, images, geometry, box, inside, configurations, return_probabilities,
                          progress, source, maps)


def predict_in_box(predict, model, images: np.ndarray, geometry: Geometry, box, inside: Optional[np.ndarray],
                   configurations: Sequence[str], return_probabilities: bool, progress=None, source: str = "input",
                   maps: Optional[dict] = None):
    """`predict_in_roi` for an array ``box`` (``((lo, hi), ...)``, array order) and the voxels ``inside`` it that
    are kept (a boolean map over the whole image; None: the whole box)."""
    shape = images.shape[1:]
    if inside is None:
        inside = np.zeros(shape, bool)
        inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    patch_mm = patch_extent_mm(model, configurations, geometry.ndim)
    box, crop = context_box(box, shape, geometry, patch_mm, progress, source)
    crop_sl = tuple(slice(lo, hi) for lo, hi in crop)
    work_model, prenormalize = whole_image_normalization(model, images, configurations)
    sub = images[(slice(None), *crop_sl)]
    if prenormalize is not None:
        sub = prenormalize(sub, crop_sl)
    emit(progress, "log", level="info",
         message=f"ROI: predicting {'x'.join(str(h - l) for l, h in crop[::-1])} of "
                 f"{'x'.join(str(s) for s in shape[::-1])} voxels (box plus half a patch of context)")
    labels_c, probs_c = predict(work_model, sub, crop_geometry(geometry, [lo for lo, _ in crop]))
    del sub
    inner = tuple(slice(b_lo - c_lo, b_hi - c_lo) for (b_lo, b_hi), (c_lo, _) in zip(box, crop))
    box_sl = tuple(slice(lo, hi) for lo, hi in box)
    labels = np.zeros(shape, dtype=labels_c.dtype)
    labels[box_sl] = labels_c[inner]
    labels[~inside] = 0  # the enlargement to a patch is predicted for context but not kept
    probs = None
    if return_probabilities and probs_c is not None:
        probs = np.zeros((probs_c.shape[0], *shape), dtype=np.float32)
        probs[(slice(None), *box_sl)] = probs_c[(slice(None), *inner)]
        probs[:, ~inside] = 0.0
        if not model.label_layout.has_regions:
            probs[0][~inside] = 1.0
    for key, value in list((maps or {}).items()):
        if isinstance(value, np.ndarray) and value.shape == labels_c.shape:
            full = np.zeros(shape, dtype=value.dtype)
            full[box_sl] = value[inner]
            full[~inside] = 0
            maps[key] = full
    return labels, probs
