"""A PNG of one case: image slice, reference and prediction side by side (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from AutoSegLib.io.atomic import atomic_path


def pick_slice(reference: np.ndarray, prediction: Optional[np.ndarray] = None) -> int:
    """Index along axis 0 with the most reference foreground (else prediction foreground, else the middle)."""
    for lab in (reference, prediction):
        if lab is not None and np.any(lab):
            return int(np.argmax((lab != 0).reshape(lab.shape[0], -1).sum(1)))
    return reference.shape[0] // 2


def save_case_figure(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, path: "str | os.PathLike",
                     spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "",
                     slice_index: Optional[int] = None) -> Path:
    """Write a PNG with three panels of one axial slice: image, image + reference, image + prediction.

    Parameters
    ----------
    image : ndarray (z, y, x) or (C, z, y, x) float (the first channel is shown)
    reference, prediction : ndarray (z, y, x) int label maps
    path : where the PNG goes (written atomically)
    spacing : mm per voxel in array order (sets the aspect ratio of the panels)
    title : figure title
    slice_index : slice along axis 0 (default: the one with the most reference foreground)

    Returns
    -------
    Path of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim == reference.ndim + 1:
        image = image[0]
    if image.ndim == 2:  # a 2D case: one slice
        image, reference, prediction = image[None], reference[None], prediction[None]
        spacing = (1.0, *spacing)
    k = pick_slice(reference, prediction) if slice_index is None else int(slice_index)
    img = image[k].astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    aspect = float(spacing[-2]) / float(spacing[-1])
    colours = ListedColormap([(0, 0, 0, 0), (1.0, 0.2, 0.2, 0.5), (0.2, 0.6, 1.0, 0.55), (1.0, 0.85, 0.1, 0.55),
                              (0.3, 1.0, 0.3, 0.55), (0.9, 0.3, 1.0, 0.55)])
    n = colours.N - 1

    def overlay(lab):
        lab = np.asarray(lab[k]).astype(np.int64)
        return np.ma.masked_equal(np.where(lab > 0, (lab - 1) % n + 1, 0), 0)

    fig = Figure(figsize=(10.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, lab) in enumerate((("image", None), ("reference", reference), ("prediction", prediction))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if lab is not None:
            ax.imshow(overlay(lab), cmap=colours, vmin=0, vmax=n, aspect=aspect, interpolation="nearest")
        ax.set_title(f"{name} (slice {k})", fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
