"""Reading and writing images with their geometry, through SimpleITK (every format it reads:
.nii.gz, .nii, .nrrd, .mha, ...).

Arrays come back in array order ((z, y, x) or (y, x)); multi-channel cases are stacked channel-first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import IncompleteWrite, atomic_path
from AutoSegLib.io.geometry import Geometry

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".bmp")


def file_ending(path: "str | os.PathLike") -> str:
    """The file ending including a double one like '.nii.gz'."""
    name = Path(path).name.lower()
    for e in SUPPORTED_ENDINGS:
        if name.endswith(e):
            return Path(path).name[-len(e):]
    return Path(path).suffix


def read_sitk(path: "str | os.PathLike"):
    """Read ``path`` with SimpleITK; a missing, unreadable or truncated file raises AutoSegError."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise AutoSegError(f"{path}: file not found.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise AutoSegError(f"{path}: cannot be read as an image (unreadable, truncated or unsupported format). "
                           f"SimpleITK said: {first}") from None


def read_image(path: "str | os.PathLike", allow_2d: bool = True) -> Tuple[np.ndarray, Geometry]:
    """Read one single-channel image.

    Returns
    -------
    array : ndarray, shape (z, y, x) or (y, x), the file's own dtype
    geometry : Geometry

    Raises
    ------
    AutoSegError
        When the file is missing or unreadable, has several components per voxel, or is not 2D/3D.
    """
    import SimpleITK as sitk

    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise AutoSegError(f"{path}: expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()} "
                           f"(a vector/RGB image). Store each channel as its own file <case>_XXXX.")
    dim = image.GetDimension()
    if dim not in (2, 3) or (dim == 2 and not allow_2d):
        raise AutoSegError(f"{path}: expected a {'2D or ' if allow_2d else ''}3D image, found a {dim}D image of size "
                           f"{image.GetSize()}. Split 4-D series into one file per channel/time point.")
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def read_case(channel_paths: Sequence["str | os.PathLike"], check: bool = False) -> Tuple[np.ndarray, Geometry]:
    """Read the channel files of one case and stack them channel-first as float32.

    With ``check`` each file also passes `io.image_check` (truncated NIfTI data, NaN/inf voxels, float64
    values beyond float32), the check verify makes on training images; predict asks for it.

    Raises AutoSegError when the channels differ in size or geometry, or (``check``) a file is unusable,
    naming the files.
    """
    from AutoSegLib.io.image_check import check_image_files

    arrays, geometry = [], None
    for p in channel_paths:
        arr, geo = read_image(p)
        if check:  # before the cast to float32, which would turn a float64 beyond its range into inf
            check_image_files([p], [arr])
        if geometry is None:
            geometry, first = geo, p
        else:
            if arr.shape != arrays[0].shape:
                raise AutoSegError(f"{p}: size {arr.shape[::-1]} differs from {first}'s {arrays[0].shape[::-1]} "
                                   f"(x, y, z). All channels of a case must share one grid.")
            diff = geometry.describe_difference(geo)
            if diff:
                raise AutoSegError(f"{p}: {diff} (compared with {first}). All channels of a case must share one grid.")
        arrays.append(arr.astype(np.float32, copy=False))
    if not arrays:
        raise AutoSegError("no channel files given for the case.")
    return np.stack(arrays), geometry


def write_image(array: np.ndarray, geometry: Geometry, path: "str | os.PathLike", compress: bool = True) -> Path:
    """Write a single-channel array with its geometry, atomically. Format from the file ending.

    ``array`` has shape (z, y, x) or (y, x) matching ``geometry.ndim``; int64 is stored as int32
    (uint8 when the values fit) because not every format/reader takes 64-bit labels. The file is read
    back and compared before it replaces ``path``.

    Raises
    ------
    errors.WriteError
        The file could not be written completely (disk full, read-only folder, ...); ``path`` is unchanged.
    """
    import SimpleITK as sitk

    array = np.asarray(array)
    if array.ndim != geometry.ndim:
        raise ValueError(f"array has {array.ndim} dimensions, geometry {geometry.ndim}")
    if array.dtype == np.int64 or array.dtype == np.bool_:
        if array.size and array.min() >= 0 and array.max() <= 255:
            array = array.astype(np.uint8)
        else:
            array = array.astype(np.int32)
    image = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(image)
    path = Path(path)
    with atomic_path(path, verify=lambda tmp: _check_written(tmp, array)) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def _check_written(tmp: Path, array: np.ndarray) -> None:
    """Read ``tmp`` back and compare it with ``array``: SimpleITK's NIfTI writer returns normally after a
    short write (full disk) and reads the truncated file back as a plausible image, so only a comparison of
    the values tells. Raises `io.atomic.IncompleteWrite` on any difference."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(tmp))
    except RuntimeError as exc:
        raise IncompleteWrite(f"it cannot be read back: {str(exc).strip().splitlines()[-1][:120]}") from None
    back = sitk.GetArrayViewFromImage(image)  # a view: ``image`` must outlive it
    if back.shape != array.shape:
        raise IncompleteWrite(f"read back with size {back.shape[::-1]} instead of {array.shape[::-1]}")
    same = np.array_equal(back, array, equal_nan=array.dtype.kind in "fc")
    if not same and array.dtype.kind in "fc":
        # ITK's NIfTI reader returns NaN/inf voxels as other values: compare the finite ones
        finite = np.isfinite(array)
        same = bool(np.array_equal(back[finite], array[finite]))
    if not same:
        raise IncompleteWrite("read back with other values than were written")
