"""Exporting a (corrected) segmentation as a label map with the model's label values.

Every segment is written with the value stored in its `LABEL_VALUE_TAG` tag, whatever its name, order
or content; segments without one (added by the user) get the smallest free value, with a warning. The
label map is computed in the reference volume's exact geometry (``GenerateMergedLabelmapInReferenceGeometry``
with explicit values: traps 6 and 7) and written voxel-aligned with the volume's own file when it has
one (trap 3). Where segments overlap, the later segment wins (trap 10).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common.segmentation import LABEL_VALUE_TAG, segment_label_value

log = logging.getLogger(__name__)

EXPORT_ENDINGS = (".nii.gz", ".nii", ".nrrd")


@dataclass
class LabelAssignment:
    """Segment order, IDs, names and the value each is exported with; ``warnings`` for the user."""
    segment_ids: List[str]
    names: List[str]
    values: List[int]
    warnings: List[str] = field(default_factory=list)

    def labels(self) -> Dict[str, int]:
        """``{"background": 0, name: value, ...}`` in ascending value order (dataset.json style)."""
        pairs = sorted(zip(self.values, self.names))
        return {"background": 0, **{n: v for v, n in pairs}}


def assign_label_values(segmentation_node) -> LabelAssignment:
    """The value each segment is exported with (stored tag, or the smallest free value, with a warning)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names, stored = [], []
    for sid in ids:
        seg = segmentation.GetSegment(sid)
        names.append(seg.GetName())
        stored.append(segment_label_value(seg))
    used = {v for v in stored if v is not None}
    values, warnings = [], []
    seen: Dict[int, str] = {}
    for name, value in zip(names, stored):
        if value is None:
            value = 1
            while value in used:
                value += 1
            used.add(value)
            warnings.append(f"Segment '{name}' has no label value (it was not produced by the model); "
                            f"it is exported with the free value {value}.")
        elif value in seen:
            warnings.append(f"Segments '{seen[value]}' and '{name}' share label value {value}; "
                            f"both are exported with it.")
        seen.setdefault(value, name)
        values.append(int(value))
    for w in warnings:
        log.warning(w)
    return LabelAssignment(ids, names, values, warnings)


def set_label_value(segmentation_node, segment_id: str, value: int) -> None:
    """Store ``value`` as the export value of a segment."""
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(LABEL_VALUE_TAG, str(int(value)))


def labelmap_array(segmentation_node, reference_volume, assignment: LabelAssignment = None) -> Tuple[np.ndarray, LabelAssignment]:
    """The merged label map on ``reference_volume``'s grid, shape (z, y, x), int16, and the assignment used."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    assignment = assignment or assign_label_values(segmentation_node)
    ref_image = reference_volume.GetImageData()
    if ref_image is None:
        raise AutoSegError(f"Volume '{reference_volume.GetName()}' has no voxels; cannot export in its geometry.")
    dims = ref_image.GetDimensions()
    if not assignment.segment_ids:
        return np.zeros(dims[::-1], np.int16), assignment
    ids = vtk.vtkStringArray()
    values = vtk.vtkIntArray()
    for sid, v in zip(assignment.segment_ids, assignment.values):
        ids.InsertNextValue(sid)
        values.InsertNextValue(v)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node, reference_volume, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, merged, values)
    extent = merged.GetExtent()
    out_dims = merged.GetDimensions()
    if tuple(out_dims) != tuple(dims) or extent[0] != 0 or extent[2] != 0 or extent[4] != 0:
        raise AutoSegError(f"Export of '{segmentation_node.GetName()}' produced extent {extent}, expected the "
                           f"reference volume's {dims}; report this as a bug.")
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(dims[::-1])
    return np.array(array, dtype=np.int16, copy=True), assignment


def check_export_path(path, overwrite: bool) -> Path:
    path = Path(path)
    if not any(path.name.lower().endswith(e) for e in EXPORT_ENDINGS):
        raise AutoSegError(f"{path}: unsupported file type; expected a name ending in "
                           f"{', '.join(EXPORT_ENDINGS)} (NIfTI or NRRD).")
    if path.exists() and not overwrite:
        raise AutoSegError(f"{path} already exists. Choose another name or confirm overwriting it.")
    if path.is_dir():
        raise AutoSegError(f"{path} is a folder; give a file name ending in .nii.gz or .nrrd.")
    return path


def export_labels(segmentation_node, reference_volume, path, overwrite: bool = False) -> LabelAssignment:
    """Write the segmentation as a label map file in ``reference_volume``'s exact geometry.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
    reference_volume : vtkMRMLScalarVolumeNode
        Its grid (and, when it was loaded from a file, that file's voxel order) is the output grid.
    path : str or Path
        ``.nii.gz``, ``.nii`` or ``.nrrd``.
    overwrite : bool
        An existing file is replaced only when True (the widget asks first).

    Returns
    -------
    LabelAssignment
        The values written and any warnings (segments without a value).

    Raises
    ------
    AutoSegError
        Unsupported ending, existing file without ``overwrite``, reference volume without voxels.
    """
    from AutoSegLib.io.images import write_image
    from AutoSegSlicer.common.conversion import array_in_file_grid

    path = check_export_path(path, overwrite)
    array, assignment = labelmap_array(segmentation_node, reference_volume)
    array, geometry = array_in_file_grid(array, reference_volume)
    if array.size and array.max() < 256:
        array = array.astype(np.uint8)
    write_image(array, geometry, path)
    log.info("Exported %s to %s (values %s)", segmentation_node.GetName(), path,
             dict(zip(assignment.names, assignment.values)))
    return assignment
