"""Synthetic datasets in the nnU-Net raw layout, for the demo and the tests.

Each case is a noisy image of a body-like ellipse containing an "organ" ellipsoid (label 1) with a
"lesion" ellipsoid inside it (label 2), at random positions and sizes; every channel shows the same
structures with its own contrast. Deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image


def make_case(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator,
              n_channels: int = 1, structure_size: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic case. Returns image (C, *shape) float32 and label (*shape) uint8 (0, 1, 2).
    ``structure_size`` scales the organ (radii 18-30 % of the image's extent at 1); a smaller organ is
    placed anywhere in the middle half of the image."""
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, float)
    extent = np.asarray(shape) * spacing
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    offset = rng.normal(0, 0.06 if structure_size >= 1 else 0.12, len(shape))
    if structure_size < 1:
        offset = np.clip(offset, -0.25, 0.25)
    centre = extent / 2 + offset * extent
    radii = extent * rng.uniform(0.18, 0.3, len(shape)) * float(structure_size)
    r_organ = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    lesion_centre = centre + rng.uniform(-0.35, 0.35, len(shape)) * radii
    lesion_radii = radii * rng.uniform(0.3, 0.45, len(shape))
    r_lesion = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, lesion_centre, lesion_radii))
    body = sum(((g - e / 2) / (0.46 * e)) ** 2 for g, e in zip(grids[-2:], extent[-2:])) < 1
    label = np.zeros(shape, np.uint8)
    label[r_organ < 1] = 1
    label[(r_lesion < 1) & (r_organ < 1)] = 2
    channels = []
    for c in range(n_channels):
        contrast = (1.0 + 0.5 * c, 2.0 - 0.7 * c)
        img = 100.0 * body + 60.0 * contrast[0] * (label == 1) + 60.0 * contrast[1] * (label == 2)
        img = img + rng.normal(0, 15.0, shape) * body + rng.normal(0, 2.0, shape)
        channels.append(img.astype(np.float32))
    return np.stack(channels), label


def make_synthetic_dataset(out_dir: "str | Path", n_cases: int = 12, shape: Sequence[int] = (32, 48, 48),
                           spacing: Sequence[float] = (2.0, 1.0, 1.0), n_channels: int = 1,
                           n_test: int = 0, seed: int = 0, file_ending: str = ".nii.gz",
                           shape_jitter: float = 0.15, structure_size: float = 1.0) -> Path:
    """Write a synthetic dataset in the raw layout (imagesTr, labelsTr, dataset.json; imagesTs and
    labelsTs when ``n_test`` > 0). Shapes vary by up to ``shape_jitter`` per axis; ``structure_size`` scales
    the organ (`make_case`). Returns ``out_dir``."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, n, prefix in (("Tr", n_cases, "case"), ("Ts", n_test, "test")):
        for i in range(n):
            case_shape = [max(8, int(round(s * rng.uniform(1 - shape_jitter, 1 + shape_jitter)))) for s in shape]
            image, label = make_case(case_shape, spacing, rng, n_channels, structure_size)
            geometry = Geometry(tuple(spacing), tuple(rng.normal(0, 10, len(shape))), tuple(np.eye(len(shape)).ravel()))
            name = f"{prefix}_{i:03d}"
            for c in range(n_channels):
                write_image(image[c], geometry, out / f"images{split}" / f"{name}_{c:04d}{file_ending}")
            write_image(label, geometry, out / f"labels{split}" / f"{name}{file_ending}")
    write_json(out / "dataset.json", {
        "name": out.name,
        "description": f"synthetic dataset (seed {seed}) made by AutoSegLib.io.synthetic",
        "channel_names": {str(c): ("MRI" if c == 0 else f"MRI{c}") for c in range(n_channels)},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": n_cases,
        "file_ending": file_ending,
    })
    return out
