"""Bounds on a model's plans that a real model never exceeds, checked whenever a model is loaded (predict,
import-model, the Slicer module): a plans.json with patch size "abc" or 100000^3, or spacing 0, negative or
not a number would otherwise be accepted and fail at predict, or try to allocate hundreds of GiB.

The planner's own outputs are far inside these bounds (largest 3D patches ~ 2.5e6 voxels, 2D ~ 2048^2;
spacings from ~0.01 mm in microscopy to tens of mm); the bounds only catch damaged or hostile files.
"""
from __future__ import annotations

import math

from AutoSegLib.errors import AutoSegError

MAX_PATCH_AXIS = 4096
MAX_PATCH_VOXELS = 2 ** 27          # 134 M: 512^3 or 11585^2, beyond any network's memory
MIN_SPACING, MAX_SPACING = 1e-4, 1e4  # mm
MAX_BATCH = 4096


def check_model_plans(plans, source) -> None:
    """Raise AutoSegError naming ``source`` (the model's plans.json) and the configuration when a value is
    malformed or out of bounds: patch size (positive integers, at most 4096 per axis and 2^27 voxels),
    spacing (finite, 1e-4 to 1e4 mm, as many axes as the patch), batch size (1 to 4096)."""
    for name, conf in plans.configurations.items():
        where = f"{source}: configuration {name!r}"
        patch = conf.patch_size
        if (not isinstance(patch, (tuple, list)) or len(patch) not in (2, 3)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in patch)):
            raise AutoSegError(f"{where}: patch_size must be 2 or 3 integers, found {patch!r}. The plans file is "
                               f"damaged; re-export or re-import the model.")
        if not all(1 <= v <= MAX_PATCH_AXIS for v in patch) or math.prod(patch) > MAX_PATCH_VOXELS:
            raise AutoSegError(f"{where}: patch_size {list(patch)} is out of bounds (1..{MAX_PATCH_AXIS} per axis, at "
                               f"most {MAX_PATCH_VOXELS} voxels); no real model has it. The plans file is damaged.")
        spacing = conf.spacing
        if (not isinstance(spacing, (tuple, list)) or len(spacing) != len(patch)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spacing)):
            raise AutoSegError(f"{where}: spacing must be {len(patch)} numbers (mm), found {spacing!r}. The plans "
                               f"file is damaged.")
        if not all(math.isfinite(v) and MIN_SPACING <= v <= MAX_SPACING for v in spacing):
            raise AutoSegError(f"{where}: spacing {list(spacing)} mm is out of bounds ({MIN_SPACING:g} to "
                               f"{MAX_SPACING:g} mm, finite); no real model has it. The plans file is damaged.")
        batch = conf.batch_size
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
            raise AutoSegError(f"{where}: batch_size must be an integer from 1 to {MAX_BATCH}, found {batch!r}.")
