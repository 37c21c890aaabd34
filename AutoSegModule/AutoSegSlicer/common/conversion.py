"""Volume nodes <-> arrays with exact geometry.

Slicer keeps a volume as a ``vtkImageData`` (dimensions in (i, j, k) order) plus an IJK-to-RAS matrix;
AutoSegLib keeps an array in (z, y, x) = (k, j, i) order plus a `Geometry` in ITK's LPS convention.
The conversion is exact (no resampling): IJK-to-RAS = diag(-1, -1, 1) x [direction x diag(spacing) |
origin] (slicer-headless trap 2); arrays from ``arrayFromVolume`` are already (k, j, i) (trap 1).

Left-handed files (trap 3): Slicer reverses the k axis on load, so a node's grid is the file's grid with
one axis reversed. `array_in_file_grid` maps an array on the node's grid back onto the file's grid exactly
(a signed axis permutation, no interpolation) so exported labels are voxel-aligned with the original file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry

log = logging.getLogger(__name__)

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_from_geometry(geometry: Geometry) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3D `Geometry` (LPS)."""
    if geometry.ndim != 3:
        raise ValueError(f"expected a 3D geometry, got {geometry.ndim}D")
    m = geometry.index_to_physical_matrix()
    out = np.eye(4)
    out[:3, :3] = _LPS_RAS @ m[:3, :3]
    out[:3, 3] = _LPS_RAS @ m[:3, 3]
    return out


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> Geometry:
    """The LPS `Geometry` (spacing in (z, y, x) order) of a 4x4 IJK-to-RAS matrix."""
    m = np.asarray(ijk_to_ras, dtype=float)
    lin = _LPS_RAS @ m[:3, :3]
    spacing_xyz = np.linalg.norm(lin, axis=0)
    if np.any(spacing_xyz <= 0):
        raise AutoSegError(f"The volume's IJK-to-RAS matrix is degenerate (spacing {spacing_xyz}); "
                           f"fix the volume's spacing in the Volumes module.")
    direction = lin / spacing_xyz
    origin = _LPS_RAS @ m[:3, 3]
    return Geometry(tuple(spacing_xyz[::-1]), tuple(origin), tuple(direction.ravel()))


def node_ijk_to_ras(volume_node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_from_node(volume_node) -> Geometry:
    """The LPS `Geometry` of a volume node's voxel grid (its own coordinates, parent transform ignored)."""
    return geometry_from_ijk_to_ras(node_ijk_to_ras(volume_node))


def check_volume_node(volume_node, allow_single_slice: bool = True) -> Tuple[int, int, int]:
    """Check that a node holds one scalar 3-D volume (without copying voxels); returns its (i, j, k) size.

    Raises
    ------
    AutoSegError
        The node has no image data, several components per voxel (vector/RGB/4-D) or, when
        ``allow_single_slice`` is False, a single slice (a 2-D image given to a 3-D model).
    """
    name = volume_node.GetName()
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise AutoSegError(f"Volume '{name}' has no voxels. Load the image again or choose another volume.")
    if image.GetNumberOfScalarComponents() != 1 or volume_node.IsA("vtkMRMLMultiVolumeNode"):
        raise AutoSegError(f"Volume '{name}' has {image.GetNumberOfScalarComponents()} values per voxel "
                           f"(a vector, RGB or 4-D volume); the model expects one scalar 3-D volume per input "
                           f"channel. Split it into single-channel volumes first.")
    dims = image.GetDimensions()
    if not allow_single_slice and min(dims) == 1:
        raise AutoSegError(f"Volume '{name}' is 2-D (size {dims[0]} x {dims[1]} x {dims[2]}); the model expects "
                           f"3-D volumes. Choose a volume with several slices.")
    return tuple(dims)


def array_from_node(volume_node, allow_single_slice: bool = True) -> Tuple[np.ndarray, Geometry]:
    """Copy of a scalar volume node's voxels, shape (z, y, x), its own dtype, and its `Geometry`.

    Raises AutoSegError as `check_volume_node`.
    """
    import slicer

    check_volume_node(volume_node, allow_single_slice)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return array, geometry_from_node(volume_node)


def add_volume_from_array(scene, array: np.ndarray, geometry: Geometry, name: str = "volume",
                          labelmap: bool = False):
    """Add a scalar (or labelmap) volume node holding ``array`` (z, y, x) on ``geometry``; returns it."""
    import slicer

    array = np.asarray(array)
    if array.dtype == np.int64:  # trap 8: VTK/Slicer reject 'long long' volumes
        array = array.astype(np.int32)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_geometry(geometry)))
    slicer.util.updateVolumeFromArray(node, array)
    node.CreateDefaultDisplayNodes()
    return node


# -- SimpleITK images ------------------------------------------------------------------------------
def sitk_image(array: np.ndarray, geometry: Geometry):
    """A SimpleITK image of ``array`` (z, y, x) with ``geometry``."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to_sitk(image)
    return image


def resample_onto(array: np.ndarray, geometry: Geometry, reference: Geometry, reference_shape,
                  is_label: bool = False) -> np.ndarray:
    """Resample ``array`` (on ``geometry``) onto the ``reference`` grid of ``reference_shape`` (z, y, x).

    Linear interpolation for images, nearest neighbour for labels; outside the source: 0.
    """
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in reversed(reference_shape)], sitk.sitkUInt8)
    reference.apply_to_sitk(ref)
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    src = sitk_image(array if is_label else array.astype(np.float32, copy=False), geometry)
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return sitk.GetArrayFromImage(out)


def file_geometry(path) -> Optional[Tuple[Geometry, Tuple[int, ...]]]:
    """Geometry and shape (z, y, x) of an image file without reading its voxels; None if unreadable."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3:
        return None
    geo = Geometry(tuple(reversed(reader.GetSpacing())), reader.GetOrigin(), reader.GetDirection())
    return geo, tuple(reversed(reader.GetSize()))


def node_source_file(volume_node) -> Optional[Path]:
    """The file a volume node was loaded from, if it still exists."""
    storage = volume_node.GetStorageNode()
    if storage is None or not storage.GetFileName():
        return None
    path = Path(storage.GetFileName())
    return path if path.is_file() else None


def grid_permutation(node_geo: Geometry, node_shape, file_geo: Geometry, file_shape, tol: float = 1e-3):
    """How the file's voxel grid maps onto the node's: None, or (axes, flips) for the node array.

    The file index f and node index n of the same point satisfy n = P f + t with P a signed
    permutation and t integer. Returns ``(axes, flips)`` such that
    ``np.flip(node_array.transpose(axes), flips)`` is the array on the file's grid (both (z, y, x)).
    """
    if tuple(sorted(node_shape)) != tuple(sorted(file_shape)):
        return None
    a = node_geo.index_to_physical_matrix()
    b = file_geo.index_to_physical_matrix()
    m = np.linalg.solve(a, b)  # file ITK index (i, j, k) -> node ITK index
    p = np.round(m[:3, :3])
    if not np.allclose(m[:3, :3], p, atol=tol) or sorted(np.abs(p).sum(axis=0)) != [1, 1, 1] \
            or sorted(np.abs(p).sum(axis=1)) != [1, 1, 1]:
        return None
    t = m[:3, 3]
    if not np.allclose(t, np.round(t), atol=tol * 10):
        return None
    # In (z, y, x) order: array axis a <-> ITK index axis 2 - a.
    axes, flips = [], []
    for fa in range(3):                       # file array axis
        fi = 2 - fa                           # file ITK axis
        ni = int(np.argmax(np.abs(p[:, fi])))  # node ITK axis that moves with it
        axes.append(2 - ni)
        if p[ni, fi] < 0:
            flips.append(fa)
    node_shape = tuple(node_shape)
    if tuple(node_shape[ax] for ax in axes) != tuple(file_shape):
        return None
    # Check the translation puts file index 0 at the right node corner.
    corner = np.round(t).astype(int)
    for fa, ax in enumerate(axes):
        ni = 2 - ax
        expect = node_shape[ax] - 1 if fa in flips else 0
        if corner[ni] != expect:
            return None
    return tuple(axes), tuple(flips)


def array_in_file_grid(array: np.ndarray, volume_node) -> Tuple[np.ndarray, Geometry]:
    """``array`` (on the node's grid) and a geometry to write it with, voxel-aligned with the node's file.

    When the node came from a file whose grid is the node's grid with axes reversed or permuted (a
    left-handed NIfTI, trap 3), the array is reordered exactly and the file's own geometry is returned;
    otherwise the array and the node's geometry are returned unchanged.
    """
    node_geo = geometry_from_node(volume_node)
    path = node_source_file(volume_node)
    if path is None:
        return array, node_geo
    info = file_geometry(path)
    if info is None:
        return array, node_geo
    file_geo, file_shape = info
    perm = grid_permutation(node_geo, array.shape, file_geo, file_shape)
    if perm is None:
        return array, node_geo
    axes, flips = perm
    out = np.transpose(array, axes)
    if flips:
        out = np.flip(out, flips)
    if axes != (0, 1, 2) or flips:
        log.info("Reordered axes %s / flipped %s to match the grid of %s", axes, flips, path.name)
    return np.ascontiguousarray(out), file_geo


def channels_in_file_grid(volumes, reference) -> list:
    """Each volume's voxels on ``reference``'s file grid (volumes on another grid are resampled onto the
    reference's first), one array per volume, in order: the image channels of a training case."""
    ref_geo = geometry_from_node(reference)
    ref_shape = tuple(reference.GetImageData().GetDimensions()[::-1])
    channels = []
    for node in volumes:
        arr, geo = array_from_node(node)
        if arr.shape != ref_shape or not geo.is_close(ref_geo):
            arr = resample_onto(arr, geo, ref_geo, ref_shape)
        arr, _ = array_in_file_grid(arr, reference)
        channels.append(arr)
    return channels
