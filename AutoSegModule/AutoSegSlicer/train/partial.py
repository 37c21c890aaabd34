"""Partial annotations: adding a case whose unannotated voxels become the dataset's "ignore" label.

Annotating a few slices of a new scan is then enough to train on it: voxels with the ignore value
contribute nothing to the loss (AutoSegLib.training.loss). What counts as annotated:

- ``"outside_segments"``: exactly the voxels inside a drawn segment. Background the user has checked is
  drawn as a segment named "background" (any case; or tagged with label value 0): it is written as 0;
  every voxel outside all segments gets the ignore value.
- ``"unannotated_slices"``: whole slices. A slice holding any segment voxel is annotated (outside the
  segments it is background, 0); slices without any are ignored. The slice axis is the array axis with the
  fewest annotated slices (the one the user painted in), unless given.

The ignore value is the dataset's existing "ignore" label, else one more than the highest label value;
dataset.json gains ``"ignore": value`` (a dataset's earlier, fully annotated cases stay valid).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.jsonfile import read_json
from AutoSegSlicer.common import conversion
from AutoSegSlicer.correct import dataset_case, export

log = logging.getLogger(__name__)

MODES = ("outside_segments", "unannotated_slices")
BACKGROUND_NAMES = ("background",)


def _is_background(name: str, value: Optional[int]) -> bool:
    return name.strip().lower() in BACKGROUND_NAMES or value == 0


def split_assignment(segmentation_node) -> Tuple[export.LabelAssignment, list]:
    """The export assignment of the foreground segments, and the IDs of every segment (background ones
    included), which together mark the annotated voxels."""
    from AutoSegSlicer.common.segmentation import segment_label_value

    seg = segmentation_node.GetSegmentation()
    all_ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    if not all_ids:
        raise AutoSegError(f"Segmentation '{segmentation_node.GetName()}' has no segments: draw at least one "
                           f"segment (or a 'background' segment) before adding it as a partially annotated case.")
    fg = [sid for sid in all_ids if not _is_background(seg.GetSegment(sid).GetName(),
                                                       segment_label_value(seg.GetSegment(sid)))]
    full = export.assign_label_values(segmentation_node)
    keep = [i for i, sid in enumerate(full.segment_ids) if sid in fg]
    assignment = export.LabelAssignment([full.segment_ids[i] for i in keep], [full.names[i] for i in keep],
                                        [full.values[i] for i in keep],
                                        [w for w in full.warnings if any(f"'{full.names[i]}'" in w for i in keep)])
    return assignment, all_ids


def annotated_slices_axis(annotated: np.ndarray) -> int:
    """The array axis along which the fewest slices hold annotated voxels (ties: the first axis)."""
    counts = [int(np.count_nonzero(annotated.any(axis=tuple(a for a in range(annotated.ndim) if a != ax))))
              for ax in range(annotated.ndim)]
    return int(np.argmin(counts))


def partial_label(label: np.ndarray, annotated: np.ndarray, ignore_value: int, mode: str,
                  axis: Optional[int] = None) -> np.ndarray:
    """Put ``ignore_value`` where nothing is annotated.

    Parameters
    ----------
    label : ndarray (z, y, x), integer
        Foreground label values, 0 elsewhere.
    annotated : ndarray (z, y, x), bool
        Voxels inside any segment (background segments included).
    ignore_value : int
    mode : str
        One of `MODES`.
    axis : int, optional
        Slice axis for "unannotated_slices" (array order); default `annotated_slices_axis`.

    Returns
    -------
    ndarray (z, y, x), int16
    """
    if mode not in MODES:
        raise AutoSegError(f"Unannotated-voxel mode {mode!r} is not one of {', '.join(MODES)}.")
    out = label.astype(np.int16, copy=True)
    if mode == "outside_segments":
        out[~annotated] = ignore_value
        return out
    axis = annotated_slices_axis(annotated) if axis is None else int(axis)
    others = tuple(a for a in range(annotated.ndim) if a != axis)
    slice_has = annotated.any(axis=others)
    index = [slice(None)] * annotated.ndim
    index[axis] = ~slice_has
    out[tuple(index)] = ignore_value
    return out


def _existing_dataset(dataset_dir: Path) -> Optional[dict]:
    path = dataset_dir / "dataset.json"
    if not path.is_file():
        return None
    return read_json(path, "a dataset.json", hint="Fix or remove it before adding cases.", expect=dict)


def labels_with_ignore(labels: Dict[str, int], existing: Optional[dict], source: str) -> Dict[str, int]:
    """``labels`` plus ``"ignore"``: the dataset's value, or one above the highest label value.

    Raises
    ------
    AutoSegError
        The dataset's other labels differ from ``labels``.
    """
    labels = {k: int(v) for k, v in labels.items() if k != "ignore"}
    if existing is None:
        return {**labels, "ignore": max(labels.values()) + 1}
    theirs = {str(k): v for k, v in (existing.get("labels") or {}).items()}
    ignore = theirs.pop("ignore", None)
    if theirs != labels:
        raise AutoSegError(f"{source}: the dataset's labels {theirs} differ from this segmentation's {labels}. Rename "
                           f"or remove segments so that names and values match the dataset, or choose another folder.")
    if ignore is None:
        ignore = max(labels.values()) + 1
    return {**labels, "ignore": int(ignore)}


def add_partial_case(segmentation_node, volumes: Sequence, dataset_dir, mode: str = "outside_segments",
                     case_name: Optional[str] = None, channel_names: Optional[Sequence[str]] = None,
                     axis: Optional[int] = None):
    """Add the volume(s) and a partially annotated label map as a new case of a raw-layout dataset.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
        Foreground segments keep their stored label values; "background" segments mark checked background.
    volumes : sequence of vtkMRMLScalarVolumeNode
        The case's channels; the first is the reference grid.
    dataset_dir : path
    mode : str
        "outside_segments" or "unannotated_slices" (module docstring).
    case_name, channel_names : optional
        Default: the next free ``case_NNN``; the volumes' names.
    axis : int, optional
        Slice axis (array order of the reference volume's node) for "unannotated_slices".

    Returns
    -------
    (str, dict, dict)
        Case name, written paths (as `dataset_case.add_case`), labels written to dataset.json (with "ignore").

    Raises
    ------
    AutoSegError
        No segments, nothing annotated, labels or channels differing from the dataset's, a taken case name.
    """
    if segmentation_node is None:
        raise AutoSegError("No segmentation selected to add to the training set.")
    volumes = [v for v in (volumes or []) if v is not None]
    if not volumes:
        raise AutoSegError("No input volume selected: the training case needs its image(s).")
    channel_names = list(channel_names or [v.GetName() for v in volumes])
    if len(channel_names) != len(volumes):
        raise AutoSegError(f"{len(volumes)} volume(s) given for {len(channel_names)} channel(s) {channel_names}.")
    dataset_dir = Path(dataset_dir)
    reference = volumes[0]
    assignment, all_ids = split_assignment(segmentation_node)
    if len(set(assignment.values)) != len(assignment.values):
        raise AutoSegError(f"Segments {assignment.names} have label values {assignment.values}: each label needs its "
                           f"own value for a training set.")
    label, _ = export.labelmap_array(segmentation_node, reference, assignment)
    marks = export.LabelAssignment(list(all_ids), [""] * len(all_ids), [1] * len(all_ids))
    annotated, _ = export.labelmap_array(segmentation_node, reference, marks)
    annotated = annotated > 0
    if not annotated.any():
        raise AutoSegError(f"Segmentation '{segmentation_node.GetName()}' has no painted voxel on volume "
                           f"'{reference.GetName()}': nothing is annotated.")
    existing = _existing_dataset(dataset_dir)
    labels = labels_with_ignore(assignment.labels(), existing, str(dataset_dir / "dataset.json"))
    if existing is not None and len(existing.get("channel_names") or {}) != len(volumes):
        raise AutoSegError(f"{dataset_dir / 'dataset.json'}: the dataset has {len(existing.get('channel_names') or {})} "
                           f"input channel(s), this case has {len(volumes)}. Choose a dataset made with the same inputs.")
    ending = (existing or {}).get("file_ending", ".nii.gz")
    case_name = case_name or dataset_case.next_case_name(dataset_dir, ending=ending)
    if dataset_case._case_files(dataset_dir, case_name, ending):
        raise AutoSegError(f"Case '{case_name}' already exists in {dataset_dir}; existing cases are never "
                           f"overwritten. Choose another case name.")
    partial = partial_label(label, annotated, labels["ignore"], mode, axis)
    partial, geometry = conversion.array_in_file_grid(partial, reference)
    channels = conversion.channels_in_file_grid(volumes, reference)
    if existing is not None and "ignore" not in (existing.get("labels") or {}):
        # The dataset becomes partially annotated: its earlier cases simply hold no ignore voxel.
        write_json(dataset_dir / "dataset.json", {**existing, "labels": {**existing["labels"], "ignore": labels["ignore"]}})
    written = dataset_case.add_case(dataset_dir, case_name, channels, geometry, partial, labels, channel_names,
                                    file_ending=ending)
    n_ignored = int(np.count_nonzero(partial == labels["ignore"]))
    log.info("Added partially annotated case %s: %d of %d voxels not annotated", case_name, n_ignored, partial.size)
    return case_name, written, labels
