"""Where a fine stage predicts (`planning.coarse_to_fine`): the box around its coarse stage's foreground.

The coarse stage's label map gives the bounding box of every foreground voxel; the box grows by the plan's
``roi_margin_mm`` on each side (clipped to the image). At prediction the fine stage runs only inside it
(`inference.roi.predict_in_box`: half a patch of context around it, nothing kept outside). In a fold's final
validation the same box, taken from the coarse stage's validation prediction of that fold, is mapped onto
the preprocessed grid (`box_on_preprocessed_grid`) and the fine network's windows cover only it
(`logits_in_box`). An empty coarse prediction leaves nothing to refine: the fine stage predicts background.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

Box = Tuple[Tuple[int, int], ...]


def located_stage(plans, configuration: str) -> Optional[Tuple[str, Tuple[float, ...]]]:
    """``(coarse configuration, margin in mm per transposed axis)`` when ``configuration`` is a fine stage."""
    record = plans.budget_for(configuration)
    if record is None or not record.located_by:
        return None
    return record.located_by, tuple(float(m) for m in record.roi_margin_mm)


def foreground_box(labels: np.ndarray) -> Optional[Box]:
    """Half-open bounding box of the non-zero voxels of ``labels`` (None when there are none)."""
    from AutoSegLib.fingerprint.extract import nonzero_bbox
    return nonzero_bbox(labels[None]) if np.any(labels) else None


def grow_box(box: Box, margin_voxels: Sequence[float], shape: Sequence[int]) -> Box:
    """``box`` grown by ``ceil(margin)`` voxels on each side, clipped to ``shape``."""
    out = []
    for (lo, hi), m, n in zip(box, margin_voxels, shape):
        m = int(math.ceil(float(m) - 1e-9))
        out.append((max(0, lo - m), min(int(n), hi + m)))
    return tuple(out)


def margin_in_array_order(margin_mm_transposed: Sequence[float], transpose_forward: Sequence[int]) -> np.ndarray:
    """Transposed axis ``i`` is array axis ``transpose_forward[i]``."""
    out = np.zeros(len(margin_mm_transposed))
    for i, axis in enumerate(transpose_forward):
        out[int(axis)] = float(margin_mm_transposed[i])
    return out


def region_of_interest(coarse_labels: np.ndarray, spacing: Sequence[float], margin_mm: Sequence[float]
                       ) -> Optional[Box]:
    """The box a fine stage predicts in: the foreground box of ``coarse_labels`` grown by ``margin_mm`` (both
    in the same axis order as ``spacing``); None when the coarse stage found nothing."""
    box = foreground_box(coarse_labels)
    if box is None:
        return None
    margin = np.asarray(margin_mm, float) / np.asarray(spacing, float)
    return grow_box(box, margin, coarse_labels.shape)


def box_on_preprocessed_grid(box: Box, properties: dict) -> Optional[Box]:
    """A box of the raw array (array order, as the label maps of a fold's validation) on the preprocessed
    grid of ``properties`` (``preprocess_case``'s: transposed, cropped to the non-zero region, resampled);
    None when it lies outside the non-zero region. Rounded outwards."""
    tf = [int(a) for a in properties["transpose_forward"]]
    crop = properties["bbox_used_for_cropping"]
    before = properties["shape_after_cropping_and_before_resampling"]
    after = properties["shape_after_resampling"]
    out = []
    for i, axis in enumerate(tf):
        lo, hi = box[axis]
        lo, hi = max(lo - crop[i][0], 0), min(hi - crop[i][0], before[i])
        if hi <= lo:
            return None
        scale = after[i] / before[i]
        out.append((max(0, int(math.floor(lo * scale))), min(int(after[i]), int(math.ceil(hi * scale)))))
    return tuple(out)


def background_logits(shape: Sequence[int], num_outputs: int, regions: bool):
    """Logits (K, *shape) float32 torch tensor that say background with certainty (every region absent)."""
    import torch

    logits = torch.full((num_outputs, *shape), -30.0, dtype=torch.float32)
    if not regions:
        logits[0] = 30.0
    return logits


def logits_in_box(data: np.ndarray, box: Box, patch_size: Sequence[int], predict_crop: Callable,
                  num_outputs: int, regions: bool):
    """Logits (K, *spatial) of a preprocessed case where only ``box`` is predicted: ``predict_crop(crop)`` runs
    the sliding window over the box plus half a patch of context (at least one patch where the image has
    it); outside the box the logits say background with certainty."""
    import torch

    shape = data.shape[1:]
    crop = []
    for (lo, hi), p, n in zip(box, patch_size, shape):
        half = int(p) // 2
        c_lo, c_hi = max(0, lo - half), min(int(n), hi + half)
        short = int(p) - (c_hi - c_lo)
        if short > 0:  # at least one patch where the image is that large
            c_lo = max(0, c_lo - short // 2 - short % 2)
            c_hi = min(int(n), c_lo + max(int(p), c_hi - c_lo))
        crop.append((c_lo, c_hi))
    crop_sl = tuple(slice(lo, hi) for lo, hi in crop)
    part = predict_crop(np.ascontiguousarray(data[(slice(None), *crop_sl)]))
    part = part.float().cpu() if isinstance(part, torch.Tensor) else torch.from_numpy(np.asarray(part, np.float32))
    logits = background_logits(shape, num_outputs, regions)
    inner = tuple(slice(b_lo - c_lo, b_hi - c_lo) for (b_lo, b_hi), (c_lo, _) in zip(box, crop))
    logits[(slice(None), *(slice(lo, hi) for lo, hi in box))] = part[(slice(None), *inner)]
    return logits


def coarse_validation_maps(work_dir, coarse: str, fold, cases: Sequence[str], file_ending: str):
    """The coarse stage's validation label maps of ``fold`` for ``cases`` (``{case: path}``): a fine stage's
    final validation predicts inside their boxes.

    Raises
    ------
    AutoSegError
        Some are missing (the coarse stage's fold was not trained, or not validated): the message says
        which and how to train it first.
    """
    from pathlib import Path

    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.work_folder import fold_dir

    folder = fold_dir(Path(work_dir), coarse, fold) / "validation"
    paths = {c: folder / f"{c}{file_ending}" for c in cases}
    missing = [c for c, p in paths.items() if not p.is_file()]
    if missing:
        raise AutoSegError(f"{folder}: the fine stage's validation predicts where {coarse!r} found the structure, "
                           f"but {coarse!r} fold {fold} has no validation prediction for {len(missing)} case(s) "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}). Train it first: "
                           f"`autoseg train WORK auto {fold}` trains both stages in order.")
    return paths
