"""Segmentation metrics of one case: overlap (Dice, IoU), surface distances in mm, volumes.

Conventions (stated once, used everywhere):

- Masks: a plain label's mask is ``label_map == value``; a region's mask (a tuple of values) is the union
  of its values. Voxels where the *reference* holds the ignore label are left out of every metric (the
  prediction's mask is cleared there).
- Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN). Both empty (TP + FP + FN = 0): **NaN**
  (as the reference implementation), so such cases do not count in means (NaN-aware means). One empty and
  the other not: 0.
- Surface voxels: voxels of the mask with at least one face neighbour (6-neighbourhood in 3D, 4 in 2D)
  outside the mask; voxels on the image border count as surface.
- Surface distances: for each surface voxel of one mask, the Euclidean distance in mm (physical spacing,
  anisotropy respected) to the nearest surface voxel of the other mask.
  HD95 = max(95th percentile of distances prediction->reference, 95th percentile reference->prediction)
  (the symmetric "max of directed percentiles" definition); ASSD = mean of the two directed mean distances.
  Either mask empty: both **NaN** (undefined; an empty prediction is already penalised by Dice = 0).
  Percentiles use numpy's default linear interpolation.
- Volumes in mm^3 (voxel count x voxel volume); ``volume_difference_mm3`` = prediction - reference;
  ``relative_volume_difference`` = (prediction - reference) / reference, NaN when the reference is empty.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

LabelOrRegion = Union[int, Tuple[int, ...]]

METRIC_NAMES = ("Dice", "IoU", "HD95_mm", "ASSD_mm", "TP", "FP", "FN", "n_ref", "n_pred",
                "volume_ref_mm3", "volume_pred_mm3", "volume_difference_mm3", "relative_volume_difference")


def region_mask(label_map: np.ndarray, value: LabelOrRegion) -> np.ndarray:
    """Boolean mask of a label value or a region (tuple/list of values)."""
    if isinstance(value, (tuple, list)):
        return np.isin(label_map, list(value))
    return np.asarray(label_map) == value


def overlap_counts(ref: np.ndarray, pred: np.ndarray, ignore: Optional[np.ndarray] = None) -> Tuple[int, int, int]:
    """(TP, FP, FN) of two boolean masks, voxels in ``ignore`` excluded."""
    if ignore is not None:
        pred = pred & ~ignore
        ref = ref & ~ignore
    tp = int(np.count_nonzero(ref & pred))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def dice_iou(tp: int, fp: int, fn: int) -> Tuple[float, float]:
    """Dice and IoU from counts; NaN when TP + FP + FN = 0 (both masks empty)."""
    denom = tp + fp + fn
    if denom == 0:
        return float("nan"), float("nan")
    return 2.0 * tp / (2 * tp + fp + fn), tp / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty boolean masks.

    Parameters
    ----------
    a, b : ndarray of bool, same shape (z, y, x) or (y, x)
    spacing : sequence of float
        Voxel spacing in mm, in array order.

    Returns
    -------
    d_ab : ndarray of float64, (number of surface voxels of a,)
        Distance from each surface voxel of ``a`` to the nearest surface voxel of ``b``.
    d_ba : ndarray of float64, (number of surface voxels of b,)
    """
    from scipy import ndimage

    either = a | b
    # Work in the bounding box of both masks: every surface voxel lies inside it, so the nearest-surface
    # distances are unchanged, and the distance transforms cost the box, not the volume. Outside the box
    # is background, so eroding the box with border_value=0 finds the same surface as the whole image.
    box = []
    for axis in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != axis)
        hit = np.flatnonzero(either.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    a_sub, b_sub = a[tuple(box)], b[tuple(box)]
    sa, sb = _surface(a_sub), _surface(b_sub)
    spacing = tuple(float(s) for s in spacing)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa].astype(np.float64), dist_to_a[sb].astype(np.float64)


def hd95_assd(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> Tuple[float, float]:
    """(HD95, ASSD) in mm; (NaN, NaN) when either mask is empty."""
    if not ref.any() or not pred.any():
        return float("nan"), float("nan")
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    assd = 0.5 * (float(d_pr.mean()) + float(d_rp.mean()))
    return hd95, assd


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 labels_or_regions: Sequence[LabelOrRegion], ignore_label: Optional[int] = None,
                 surface: bool = True) -> Dict[LabelOrRegion, Dict[str, float]]:
    """Every metric for every label/region of one case.

    Parameters
    ----------
    pred, ref : ndarray of int, same shape (z, y, x) or (y, x)
        Predicted and reference label maps (label values).
    spacing : sequence of float
        mm per voxel in array order.
    labels_or_regions : sequence of int or tuple of int
        What to score (usually the foreground labels, or the foreground regions).
    ignore_label : int, optional
        Reference voxels with this value are excluded.
    surface : bool
        Compute HD95/ASSD (the slow part); when False they are NaN.

    Returns
    -------
    dict label_or_region -> dict metric name -> float (see ``METRIC_NAMES`` and the module conventions)
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    ignore = (ref == ignore_label) if ignore_label is not None else None
    if ignore is not None and not ignore.any():
        ignore = None
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    out: Dict[LabelOrRegion, Dict[str, float]] = {}
    for value in labels_or_regions:
        r = region_mask(ref, value)
        p = region_mask(pred, value)
        if ignore is not None:
            p &= ~ignore
            r &= ~ignore
        tp, fp, fn = overlap_counts(r, p)
        dice, iou = dice_iou(tp, fp, fn)
        hd95, assd = hd95_assd(r, p, spacing) if surface else (float("nan"), float("nan"))
        n_ref, n_pred = tp + fn, tp + fp
        v_ref, v_pred = n_ref * voxel_mm3, n_pred * voxel_mm3
        out[value] = {
            "Dice": dice, "IoU": iou, "HD95_mm": hd95, "ASSD_mm": assd,
            "TP": tp, "FP": fp, "FN": fn, "n_ref": n_ref, "n_pred": n_pred,
            "volume_ref_mm3": v_ref, "volume_pred_mm3": v_pred,
            "volume_difference_mm3": v_pred - v_ref,
            "relative_volume_difference": (v_pred - v_ref) / v_ref if n_ref else float("nan"),
        }
    return out


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels_or_regions: Sequence[LabelOrRegion],
                   ignore_label: Optional[int] = None) -> Dict[LabelOrRegion, float]:
    """Dice only (fast path for model selection); NaN when both masks are empty."""
    ignore = (ref == ignore_label) if ignore_label is not None else None
    out = {}
    for value in labels_or_regions:
        tp, fp, fn = overlap_counts(region_mask(ref, value), region_mask(pred, value), ignore)
        out[value] = dice_iou(tp, fp, fn)[0]
    return out
