"""The Segment panel's "Only inside ROI" as ``autoseg predict --roi``, and the RAS <-> LPS sign flip.

``--roi`` is a box axis-aligned in the input file's physical LPS coordinates (interfaces.md; helper "infer"'s
AutoSegLib.inference.roi keeps the voxels whose centres lie in it). The conversion is the Segment Editor
effect's (`region`: one definition): the markups ROI's eight corners, its rotation and parent transform
included, are taken into the volume node's own coordinates (the file the child reads) and converted to LPS
as (-R, -A, S); their bounding box is passed. An unrotated ROI is passed as its own two opposite corners; a
rotated one as the smallest LPS-aligned box holding it.
"""
from __future__ import annotations

from typing import Tuple

from AutoSegLib.errors import AutoSegError

Box = Tuple[Tuple[float, float, float], Tuple[float, float, float]]


def roi_box_lps(roi_node, volume_node) -> Box:
    """``((x0, y0, z0), (x1, y1, z1))`` for ``--roi``; AutoSegError for no ROI, an empty one or one that misses
    the volume."""
    from AutoSegSlicer.common import region

    if roi_node is None:
        raise AutoSegError("No ROI selected.")
    return region.roi_lps_corners(region.box_from_roi_node(roi_node), volume_node)


def ras_to_lps(point) -> Tuple[float, float, float]:
    """(R, A, S) -> (-R, -A, S); the same map converts LPS back to RAS."""
    x, y, z = (float(c) for c in point)
    return -x, -y, z
