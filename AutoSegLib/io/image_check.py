"""The one check of an image's values, used by verify (every training image) and by predict (every input):
a truncated or corrupt NIfTI file (ITK zero-fills the missing part and says nothing), NaN/inf voxels (ITK
turns them into 0 in NIfTI; other formats keep them), and float64 values beyond the float32 range (they
become inf, then NaN, when cast for training or prediction).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from AutoSegLib.errors import AutoSegError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def image_array_problem(array: np.ndarray) -> str:
    """What is wrong with an image's values as read, or ''.

    ``array``: one channel, any shape and dtype. NaN/inf voxels, and finite float64 values that float32
    cannot hold (|v| > 3.4e38), are problems; the message gives the count and an offending value.
    """
    if array.dtype.kind not in "fc":
        return ""
    finite = np.isfinite(array)
    if not finite.all():
        n_bad = int(array.size - np.count_nonzero(finite))
        n_nan = int(np.isnan(array).sum())
        return (f"{n_bad} voxel(s) are NaN or infinite ({n_nan} NaN). Expected finite intensities; replace them "
                f"(e.g. with the image minimum).")
    if array.dtype.itemsize > 4 and array.size:
        big = np.abs(array) > FLOAT32_MAX
        if big.any():
            value = float(array[np.unravel_index(int(np.argmax(big)), array.shape)])
            return (f"{int(big.sum())} voxel(s) exceed the float32 range (e.g. {value:.6g}; at most "
                    f"{FLOAT32_MAX:.4g}): they would become infinite in training and prediction. Rescale the image.")
    return ""


def check_image_files(paths: Sequence[Path], arrays: Sequence[np.ndarray]) -> None:
    """Raise AutoSegError naming the first file whose raw bytes (`nifti_raw_problem`) or values
    (`image_array_problem`) are unusable; used by predict on every input before it is segmented."""
    for path, array in zip(paths, arrays):
        problem = image_array_problem(array) or nifti_raw_problem(Path(path))
        if problem:
            raise AutoSegError(f"{path}: {problem}")


def nifti_raw_problem(path: Path) -> str:
    """Check a NIfTI-1 file (.nii / .nii.gz) from its raw bytes; '' when fine or not NIfTI-1.

    Detects a voxel size (pixdim) that is zero, negative or NaN (read as 1 mm otherwise), a data block
    shorter than the header announces (a truncated file or gzip stream) and, for float data, NaN/inf voxels.
    """
    import gzip
    import zlib
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return ""
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as f:
            header = f.read(348)
            if len(header) < 348:
                return "truncated file: shorter than a NIfTI header. Re-export or re-copy it."
            for order in "<>":
                if int(np.frombuffer(header[:4], order + "i4")[0]) == 348:
                    break
            else:
                return ""  # NIfTI-2 or not NIfTI: left to the reader
            dims = np.frombuffer(header[40:56], order + "i2").astype(np.int64)
            bitpix = int(np.frombuffer(header[72:74], order + "i2")[0])
            datatype = int(np.frombuffer(header[70:72], order + "i2")[0])
            offset = int(np.frombuffer(header[108:112], order + "f4")[0])
            if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8:
                return ""
            pixdim = np.frombuffer(header[76:108], order + "f4")[1:min(int(dims[0]), 3) + 1]
            if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
                # ITK reads a zero/negative/NaN voxel size as 1 mm without a word: every mm-based step
                # (resampling, the model's spacing) would silently be wrong
                return (f"voxel size (pixdim) {[float(v) for v in pixdim]} in the header is not positive; the image "
                        f"reader would take it as 1 mm. Fix the header (set the real spacing) and save it again.")
            n = int(np.prod(dims[1:dims[0] + 1]))
            f.read(max(offset - 348, 0))
            want = n * bitpix // 8
            data = f.read(want)
    except (EOFError, zlib.error, OSError) as exc:
        return (f"truncated or corrupt file ({exc}); the image reader would fill the missing part with 0. "
                f"Re-export or re-copy it.")
    if len(data) < want:
        return (f"truncated file: {len(data)} of {want} data bytes present; the image reader would fill the rest "
                f"with 0. Re-export or re-copy it.")
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:
        return ""
    bad = int((~np.isfinite(np.frombuffer(data, order + dtype))).sum())
    if bad:
        return (f"{bad} voxel(s) are NaN or infinite in the file (the image reader silently turns them into 0). "
                f"Expected finite values; replace them (e.g. with the image minimum).")
    return ""
