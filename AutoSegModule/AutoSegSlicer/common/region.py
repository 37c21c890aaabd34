"""The region the Segment Editor effect predicts in: a box in world (RAS) coordinates, oriented or not.

Three sources, one representation (`OrientedBox`: centre, three unit axes, half sizes in mm):

- a markups ROI (`box_from_roi_node`): its own orientation and parent transform taken into account;
- "around the current view" (`box_from_slice_view`): the slice view's visible rectangle (its viewport in
  pixels through ``XYToRAS``) extruded along the slice normal through the whole volume;
- the whole volume: no box.

What the child process gets (`roi_lps_corners`) is what ``autoseg predict --roi`` takes (interfaces.md): two
opposite corners of a box axis-aligned in the image file's physical LPS coordinates, i.e. the volume node's
own RAS coordinates with x and y negated. An oriented box (an oblique ROI, an oblique slice view, a volume
under a rotating transform) becomes its axis-aligned bounding box there; `region_mask` then gives the
voxels whose centres lie inside the box itself, and the effect keeps only those (zero elsewhere).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError

REGION_WHOLE = "whole"
REGION_ROI = "roi"
REGION_VIEW = "view"
REGIONS = (REGION_WHOLE, REGION_ROI, REGION_VIEW)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class OrientedBox:
    """A box in world RAS: ``center`` (3,), ``axes`` (3, 3) with unit axis vectors as columns, ``half`` (3,) mm."""
    center: Tuple[float, float, float]
    axes: Tuple[Tuple[float, float, float], ...]
    half: Tuple[float, float, float]

    def corners(self) -> np.ndarray:
        """(8, 3) RAS corners."""
        axes, half = np.asarray(self.axes, float), np.asarray(self.half, float)
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
        return np.asarray(self.center, float)[None] + (signs * half[None]) @ axes.T

    def contains(self, points_ras: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
        """Boolean per row of ``points_ras`` (n, 3): inside the box (faces included)."""
        local = (np.asarray(points_ras, float) - np.asarray(self.center, float)[None]) @ np.asarray(self.axes, float)
        return np.all(np.abs(local) <= np.asarray(self.half, float)[None] + tolerance, axis=1)


def array_from_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_to_world(node) -> np.ndarray:
    """4x4 matrix from a transformable node's own coordinates to world; AutoSegError for a non-linear transform."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise AutoSegError(f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}': harden the "
                           f"transform (Data module) before using it as a region or an input.")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return array_from_matrix(m)


def box_from_roi_node(roi_node) -> OrientedBox:
    """The box of a markups ROI node in world RAS (its orientation and parent transform included)."""
    radius = [0.0, 0.0, 0.0]
    roi_node.GetRadiusXYZ(radius)
    if min(radius) <= 0:
        raise AutoSegError(f"ROI '{roi_node.GetName()}' is empty (size {[2 * r for r in radius]} mm): place it "
                           f"around the structure first.")
    # box axes and centre in the node's coordinates (the centre is the matrix's translation)
    obj_to_world = node_to_world(roi_node) @ array_from_matrix(roi_node.GetObjectToNodeMatrix())
    linear = obj_to_world[:3, :3]
    lengths = np.linalg.norm(linear, axis=0)   # a scaling parent transform stretches the box
    axes = linear / lengths[None]
    return OrientedBox(tuple(obj_to_world[:3, 3]), tuple(map(tuple, axes)), tuple(np.asarray(radius) * lengths))


def volume_corners_ras(volume_node) -> np.ndarray:
    """(8, 3) world RAS corners of the volume's voxel-corner extent (half a voxel beyond the centres)."""
    import vtk

    dims = volume_node.GetImageData().GetDimensions()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_world = node_to_world(volume_node) @ array_from_matrix(m)
    ijk = np.array([[(-0.5, d - 0.5)[s] for s, d in zip(combo, dims)] + [1.0]
                    for combo in itertools.product((0, 1), repeat=3)])
    return (ijk_to_world @ ijk.T).T[:, :3]


def box_from_slice_view(slice_node, volume_node) -> OrientedBox:
    """The slice view's visible rectangle extruded along its normal through the whole volume (world RAS).

    The rectangle is the viewport (``GetDimensions`` pixels) mapped through ``GetXYToRAS``; the depth spans the
    volume's extent along the slice normal.
    """
    import vtk

    width, height = slice_node.GetDimensions()[:2]
    if width <= 0 or height <= 0:
        raise AutoSegError(f"Slice view '{slice_node.GetName()}' is not shown (size {width}x{height} pixels): show it "
                           f"in the layout or choose another region.")
    xy_to_ras = array_from_matrix(slice_node.GetXYToRAS())
    origin = (xy_to_ras @ [0.0, 0.0, 0.0, 1.0])[:3]
    x_edge = (xy_to_ras @ [float(width), 0.0, 0.0, 1.0])[:3] - origin
    y_edge = (xy_to_ras @ [0.0, float(height), 0.0, 1.0])[:3] - origin
    slice_to_ras = vtk.vtkMatrix4x4()
    slice_to_ras.DeepCopy(slice_node.GetSliceToRAS())
    normal = array_from_matrix(slice_to_ras)[:3, 2]
    normal = normal / np.linalg.norm(normal)
    depths = volume_corners_ras(volume_node) @ normal
    center = origin + (x_edge + y_edge) / 2
    center = center + normal * ((depths.min() + depths.max()) / 2 - center @ normal)
    axes = np.stack([x_edge / np.linalg.norm(x_edge), y_edge / np.linalg.norm(y_edge), normal], axis=1)
    half = (np.linalg.norm(x_edge) / 2, np.linalg.norm(y_edge) / 2, (depths.max() - depths.min()) / 2)
    return OrientedBox(tuple(center), tuple(map(tuple, axes)), tuple(float(h) for h in half))


def roi_lps_corners(box: OrientedBox, volume_node) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``--roi`` for the volume's image file: the box's axis-aligned bounding box in the volume node's own
    coordinates (its parent transform undone), RAS converted to LPS as (-R, -A, S), as (lowest, highest) corners.

    Raises AutoSegError when the box misses the volume (the message gives both extents).
    """
    world_to_node = np.linalg.inv(node_to_world(volume_node))
    pts = (world_to_node @ np.c_[box.corners(), np.ones(8)].T).T[:, :3] @ _RAS_TO_LPS
    lo, hi = pts.min(0), pts.max(0)
    vol = (world_to_node @ np.c_[volume_corners_ras(volume_node), np.ones(8)].T).T[:, :3] @ _RAS_TO_LPS
    vlo, vhi = vol.min(0), vol.max(0)
    if np.any(hi < vlo) or np.any(lo > vhi):
        fmt = lambda v: "(" + ", ".join(f"{x:.1f}" for x in v) + ")"  # noqa: E731
        raise AutoSegError(f"The region from {fmt(lo)} to {fmt(hi)} mm (LPS) does not overlap volume "
                           f"'{volume_node.GetName()}' ({fmt(vlo)} to {fmt(vhi)} mm): move the ROI or the view.")
    return tuple(float(x) for x in lo), tuple(float(x) for x in hi)


def region_mask(box: Optional[OrientedBox], volume_node) -> Optional[np.ndarray]:
    """(z, y, x) boolean: the voxels of ``volume_node`` whose centres lie in ``box`` (None: no box, all voxels)."""
    import vtk

    if box is None:
        return None
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return grid_mask(box, volume_node.GetImageData().GetDimensions(), node_to_world(volume_node) @ array_from_matrix(m))


def grid_mask(box: OrientedBox, dims, ijk_to_world: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """(z, y, x) boolean over a grid of ``dims`` (i, j, k) voxels: centres inside ``box``.

    Only the index range holding the box's corners is evaluated, one slice at a time, with the box coordinates
    as affine functions of the indices (a whole 512^2 x 300 grid of float coordinates would need gigabytes).
    """
    i, j, k = (int(d) for d in dims)
    m = np.asarray(ijk_to_world, float)
    grid_corners = np.array([[c * (n - 1) for c, n in zip(combo, (i, j, k))] + [1.0]
                             for combo in itertools.product((0, 1), repeat=3)])
    if box.contains((m @ grid_corners.T)[:3].T, tolerance).all():   # a box is convex: all centres inside
        return np.ones((k, j, i), bool)
    out = np.zeros((k, j, i), bool)
    corners = np.linalg.solve(m, np.c_[box.corners(), np.ones(8)].T)[:3]          # box corners in (i, j, k)
    lo = np.maximum(np.floor(corners.min(1) - 1e-6).astype(int), 0)
    hi = np.minimum(np.ceil(corners.max(1) + 1e-6).astype(int) + 1, (i, j, k))
    if np.any(hi <= lo):
        return out
    axes, half = np.asarray(box.axes, float), np.asarray(box.half, float) + tolerance
    a = axes.T @ m[:3, :3]                                      # box coordinate = a @ (i, j, k) + b
    b = axes.T @ (m[:3, 3] - np.asarray(box.center, float))
    jj, ii = np.meshgrid(np.arange(lo[1], hi[1], dtype=float), np.arange(lo[0], hi[0], dtype=float), indexing="ij")
    in_plane = [a[n, 0] * ii + a[n, 1] * jj + b[n] for n in range(3)]
    for z in range(lo[2], hi[2]):
        inside = np.ones(ii.shape, bool)
        for n in range(3):
            inside &= np.abs(in_plane[n] + a[n, 2] * z) <= half[n]
        out[z, lo[1]:hi[1], lo[0]:hi[0]] = inside
    return out


def box_to_text(box: Optional[OrientedBox]) -> str:
    """A JSON text of ``box`` ('' for none), kept on the preview node as an attribute."""
    if box is None:
        return ""
    return json.dumps({"center": list(box.center), "axes": [list(a) for a in box.axes], "half": list(box.half)})


def box_from_text(text: Optional[str]) -> Optional[OrientedBox]:
    if not text:
        return None
    d = json.loads(text)
    return OrientedBox(tuple(d["center"]), tuple(tuple(a) for a in d["axes"]), tuple(d["half"]))
