"""Regenerate data/reference_components.npz with the reference implementation's component filter.

Run with the benchmark environment (it has nnunetv2 / acvl_utils):
    .bench-venv/bin/python Testing/lib/postprocessing/make_reference_components.py
"""
from pathlib import Path

import numpy as np
from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

rng = np.random.default_rng(7)
arrays = {}
for i in range(24):
    shape = tuple(int(s) for s in (rng.integers(4, 12, 3) if i % 2 else rng.integers(4, 16, 2)))
    mask = rng.random(shape) < rng.uniform(0.05, 0.4)
    arrays[f"mask_{i}"] = mask
    arrays[f"kept_{i}"] = remove_all_but_largest_component(mask)
np.savez_compressed(Path(__file__).parent / "data" / "reference_components.npz", **arrays)
