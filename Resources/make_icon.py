"""Draws the 128x128 extension/module icon (Resources/AutoSeg.png, AutoSegModule/Resources/Icons/AutoSeg.png).

Run from the repository root: ``python Resources/make_icon.py``. A stylised axial slice (grey body, darker
organ) with two segment overlays (red organ outline, yellow lesion) and a small network glyph.
"""
from pathlib import Path

import numpy as np


def icon_rgba(size: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.zeros((size, size, 4))
    body = ((x - 0.5) / 0.44) ** 2 + ((y - 0.52) / 0.38) ** 2 < 1
    organ = ((x - 0.42) / 0.2) ** 2 + ((y - 0.5) / 0.16) ** 2 < 1
    lesion = ((x - 0.47) / 0.07) ** 2 + ((y - 0.47) / 0.06) ** 2 < 1
    rng = np.random.default_rng(0)
    grey = 0.55 + 0.05 * rng.standard_normal((size, size))
    img[body, :3] = grey[body, None]
    img[body, 3] = 1.0
    img[organ, :3] = 0.35
    # organ overlay: translucent red fill with an opaque border
    inner = ((x - 0.42) / 0.18) ** 2 + ((y - 0.5) / 0.14) ** 2 < 1
    border = organ & ~inner
    img[inner, :3] = 0.5 * img[inner, :3] + 0.5 * np.array([0.9, 0.15, 0.15])
    img[border, :3] = [0.95, 0.1, 0.1]
    img[lesion, :3] = [1.0, 0.85, 0.1]
    # three network nodes on the right, connected
    for cx, cy in ((0.78, 0.3), (0.86, 0.5), (0.78, 0.7)):
        node = (x - cx) ** 2 + (y - cy) ** 2 < 0.045 ** 2
        img[node, :3] = [0.15, 0.45, 0.95]
        img[node, 3] = 1.0
    for (x0, y0), (x1, y1) in (((0.78, 0.3), (0.86, 0.5)), ((0.86, 0.5), (0.78, 0.7)), ((0.62, 0.5), (0.86, 0.5))):
        t = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        d = np.hypot(x - (x0 + t * (x1 - x0)), y - (y0 + t * (y1 - y0)))
        line = d < 0.012
        img[line, :3] = [0.15, 0.45, 0.95]
        img[line, 3] = 1.0
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


if __name__ == "__main__":
    import matplotlib.image

    root = Path(__file__).resolve().parents[1]
    rgba = icon_rgba()
    for out in (root / "Resources" / "AutoSeg.png", root / "AutoSegModule" / "Resources" / "Icons" / "AutoSeg.png"):
        out.parent.mkdir(parents=True, exist_ok=True)
        matplotlib.image.imsave(out, rgba)
        print(out)
