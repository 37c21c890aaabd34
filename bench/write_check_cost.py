"""Cost of the complete-write check of label maps (io.images.write_image: fsync + read-back compare)
against a plain SimpleITK write of the same array, side by side in one process (a ratio, so that a busy
machine affects both alike).

    PYTHONPATH=$PWD python bench/write_check_cost.py

A 512x512x200 uint8 label map (.nii.gz) on the development machine (2 shared cores, 2026-12-06):
plain 0.55 s, checked 0.71 s, ratio 1.3 -- about 0.15 s per case, against minutes of prediction.
"""
import tempfile
import time
from pathlib import Path

import numpy as np


def main(repeats: int = 2) -> None:
    import SimpleITK as sitk

    from AutoSegLib.io.geometry import Geometry
    from AutoSegLib.io.images import write_image

    rng = np.random.default_rng(0)
    label = np.zeros((200, 512, 512), np.uint8)
    label[50:150, 100:400, 100:400] = rng.integers(0, 3, (100, 300, 300))
    geometry = Geometry.identity((1.0, 1.0, 1.0))
    folder = Path(tempfile.mkdtemp())
    for _ in range(repeats):
        start = time.perf_counter()
        image = sitk.GetImageFromArray(label)
        geometry.apply_to_sitk(image)
        sitk.WriteImage(image, str(folder / "plain.nii.gz"), True)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        write_image(label, geometry, folder / "checked.nii.gz")
        checked = time.perf_counter() - start
        print(f"plain SimpleITK write {plain:.2f} s, write_image (fsync + read-back) {checked:.2f} s, "
              f"ratio {checked / plain:.2f}")


if __name__ == "__main__":
    main()
