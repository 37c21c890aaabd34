"""Coarse to fine for compute: a budget pair where one budget plan must coarsen.

When the time budget is too small for the data's own resolution (the budget rule chose a spacing factor
above 1), but the structure fills only part of the image, the budget can instead buy two networks:

- the **coarse** stage (``3d_budget``): the budget rule's plan for ``COARSE_SHARE`` of the minutes. It only
  has to find the structure;
- the **fine** stage (``3d_budget_fine``): the data's own spacing, a patch sized to the region of interest
  (the median foreground bounding box plus ``ROI_MARGIN_VOXELS`` coarse voxels on each side, cut like any
  budget patch), trained on patches centred anywhere in each case's foreground box grown by that margin
  (the region it will be asked about), for the rest of the minutes. At prediction it sees only the box
  around what the coarse stage found (plus that margin), never the whole image.

The pair is planned when the fine stage buys 1000 iterations (``budget.TARGET_ITERATIONS_SHORT``, or the
target the user asks for) in its share: the bar the pair was measured with below (a larger target trades
resolution for iterations in the single plan; the fine stage keeps the data's resolution whatever the budget).
Otherwise the single plan stays. On LA2018 (an image already cropped around the atrium: its box is 39 % of the
image, 60 % with a 5 mm margin, median over 80 cases) the fine step costs 0.55x the whole image's (1.54 vs
2.79 s predicted at 1.25 mm, 16 features), so the fine stage never buys 1000 iterations in two thirds of 15 or
30 minutes and the single plan stays; the pair is for images where the structure is small. There
(bench/coarse_to_fine.py: synthetic 80x160x160 images at 1.5x1x1 mm, an organ box of ~1 % of the image, 15
minutes, float32) the pair reached held-out Dice 0.986 / 0.968 (organ / lesion; HD95 1.80 / 1.00 mm) against
0.846 / 0.824 (2.15 / 1.65) for the single 4 mm plan. With patches centred on foreground voxels only it had
reached 0.967 / 0.978 with false positives near the box's edges in two of ten organs (HD95 3.57 mm); the fine
stage centres its patches anywhere in the foreground box grown by the margin, the region it is asked about.
The share and the margin below are first choices, not yet varied.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.planning import budget as B
from AutoSegLib.planning.plans import BudgetPlan

FINE_CONFIGURATION = "3d_budget_fine"
#: Share of the minutes for the coarse stage (it locates the structure; the fine stage delineates it).
COARSE_SHARE = 1.0 / 3.0
#: Margin around the foreground box, in voxels of the coarse stage (its boundary is uncertain by about one).
ROI_MARGIN_VOXELS = 2


def roi_shape(extents_mm: np.ndarray, margin_mm: Sequence[float], spacing: Sequence[float],
              median_shape: Sequence[float]) -> np.ndarray:
    """Median region of interest in voxels at ``spacing`` (transposed order): the median foreground extent
    plus ``margin_mm`` on each side, at most the median image."""
    ext = np.median(np.asarray(extents_mm, np.float64), axis=0) + 2.0 * np.asarray(margin_mm, np.float64)
    return np.minimum(ext / np.asarray(spacing, np.float64), np.asarray(median_shape, np.float64))


def plan_coarse_to_fine(minutes: float, calibration, target_spacing: Sequence[float],
                        median_shape: Sequence[float], extents_mm: np.ndarray, n_channels: int, n_outputs: int,
                        n_cases: int, base_plan, single: BudgetPlan, target_iterations: Optional[int] = None
                        ) -> Optional[Tuple[object, BudgetPlan, object, BudgetPlan]]:
    """The coarse and fine stages for ``minutes``, or None where the pair does not pay.

    Parameters
    ----------
    minutes, calibration, target_spacing, median_shape, n_channels, n_outputs, n_cases, base_plan
        As for `budget.plan_budget` (spacing and shapes in transposed order).
    extents_mm : ndarray (cases, ndim)
        Foreground bounding boxes in millimetres, transposed order (`Fingerprint.foreground_extents_mm`).
    single : BudgetPlan
        The single plan for the whole budget (the pair is only considered when it had to coarsen).
    target_iterations : int, optional
        The iteration target of both stages. By default the coarse stage gets the budget rule's for its
        minutes (`budget.target_iterations_for`) and the fine stage must buy ``budget.TARGET_ITERATIONS_SHORT``.

    Returns
    -------
    (coarse ConfigurationPlan, coarse BudgetPlan, fine ConfigurationPlan, fine BudgetPlan) or None
    """
    if single.spacing_factor <= 1.0 or len(target_spacing) != 3 or len(extents_mm) == 0:
        return None
    fine_minutes = minutes * (1.0 - COARSE_SHARE)
    try:
        coarse_plan, coarse = B.plan_budget(minutes * COARSE_SHARE, calibration, target_spacing, median_shape,
                                            n_channels, n_outputs, n_cases, base_plan,
                                            target_iterations=target_iterations)
    except B.BudgetTooSmall:
        return None
    target_iterations = B.TARGET_ITERATIONS_SHORT if target_iterations is None else int(target_iterations)
    spacing = tuple(float(s) for s in target_spacing)
    margin_mm = [ROI_MARGIN_VOXELS * s for s in coarse_plan.spacing]
    roi = roi_shape(extents_mm, margin_mm, spacing, median_shape)
    if float(np.prod(roi)) >= float(np.prod(np.asarray(median_shape, np.float64))):
        return None  # the region is the whole image: nothing to save
    pool = B.budget_patch(spacing, tuple(roi))
    n_val = max(1, math.ceil(n_cases / 5))
    windows = n_val * B.sliding_windows(roi, pool.patch_size)
    for base in B.BASE_FEATURES:
        iterations, step, reserve, topo = B.score_candidate(fine_minutes, calibration, pool, base, roi, n_channels,
                                                            n_outputs, n_val, windows=windows)
        if iterations >= target_iterations:
            break
    else:
        return None
    patch = tuple(int(p) for p in pool.patch_size)
    per_epoch, epochs, iterations = B.schedule_rule(iterations)
    fine_plan = replace(base_plan, name=FINE_CONFIGURATION, spacing=spacing, patch_size=patch,
                        batch_size=B.BATCH_SIZE, median_image_size=tuple(float(v) for v in roi), network=topo,
                        previous_stage=None, next_stages=(), data_identifier="")
    fine = BudgetPlan(configuration=FINE_CONFIGURATION, minutes=float(fine_minutes), device=calibration.device,
                      precision=calibration.precision, machine=calibration.key,
                      gflops=round(float(calibration.gflops(patch, base)), 2), step_seconds=round(step, 4),
                      iterations=int(iterations), iterations_per_epoch=int(per_epoch), epochs=int(epochs),
                      val_iterations=B.VAL_ITERATIONS, reserve_seconds=round(reserve, 1), spacing_factor=1.0,
                      base_features=int(base), candidates=((1.0, int(base), patch, int(iterations)),),
                      target_iterations=target_iterations, located_by=coarse.configuration,
                      roi_margin_mm=tuple(round(float(m), 4) for m in margin_mm))
    return coarse_plan, coarse, fine_plan, fine
