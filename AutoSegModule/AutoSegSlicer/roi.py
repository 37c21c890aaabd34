"""A markups ROI as ``autoseg predict --roi``'s box: two opposite corners in the input file's LPS millimetres.

The child reads the volume as the module wrote it: the node's own voxel grid, its parent transform ignored
(`conversion.geometry_from_node`). So the ROI's eight corners are taken from world RAS into the volume's own
RAS (through the inverse of a linear parent transform), then into the volume's voxel indices; the box
spanned there (the smallest box along the volume's axes holding the whole ROI, clipped to the volume) is
given back as its two opposite corners converted RAS -> LPS as (-R, -A, S). An ROI whose axes are the
volume's axes (Slicer's "fit to volume", or any ROI on an axis-aligned volume left unrotated) is passed
exactly: the two points are two of its own opposite corners.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.conversion import node_ijk_to_ras

Box = Tuple[Tuple[float, float, float], Tuple[float, float, float]]


def roi_corners_world(roi_node) -> np.ndarray:
    """The eight corners (8, 3) of a vtkMRMLMarkupsROINode in world RAS (its rotation and parent transforms
    included: ``GetObjectToWorldMatrix``)."""
    import slicer

    half = np.asarray(roi_node.GetSize(), float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    local = np.c_[signs * half, np.ones(8)]
    to_world = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix())
    return (local @ to_world.T)[:, :3]


def world_to_volume_ras(volume_node) -> np.ndarray:
    """4x4 matrix from world RAS to the volume's own RAS (identity without a parent transform)."""
    import slicer
    import vtk

    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise AutoSegError(f"Volume '{volume_node.GetName()}' is under a non-linear transform; harden the "
                           f"transform (Transforms module) before using an ROI.")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformFromWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def roi_box_lps(roi_node, volume_node) -> Box:
    """``((x0, y0, z0), (x1, y1, z1))`` for ``--roi``: see the module docstring.

    Raises
    ------
    AutoSegError
        No ROI size, or the ROI does not overlap the volume (named).
    """
    if roi_node is None:
        raise AutoSegError("No ROI selected.")
    if min(roi_node.GetSize()) <= 0:
        raise AutoSegError(f"ROI '{roi_node.GetName()}' has no size; place it around the structure first.")
    corners = np.c_[roi_corners_world(roi_node), np.ones(8)] @ world_to_volume_ras(volume_node).T
    ijk_to_ras = node_ijk_to_ras(volume_node)
    ijk = (corners @ np.linalg.inv(ijk_to_ras).T)[:, :3]
    dims = np.asarray(volume_node.GetImageData().GetDimensions(), float)
    lo = np.maximum(ijk.min(axis=0), -0.5)
    hi = np.minimum(ijk.max(axis=0), dims - 0.5)
    if np.any(lo >= hi):
        raise AutoSegError(f"ROI '{roi_node.GetName()}' does not overlap volume '{volume_node.GetName()}'; move "
                           f"it onto the volume or choose no ROI.")
    points = []
    for corner in (lo, hi):
        r, a, s = (ijk_to_ras @ np.r_[corner, 1.0])[:3]
        points.append((float(-r), float(-a), float(s)))
    return points[0], points[1]


def ras_to_lps(point) -> Tuple[float, float, float]:
    """(R, A, S) -> (-R, -A, S); the same map converts LPS back to RAS."""
    x, y, z = (float(c) for c in point)
    return -x, -y, z
