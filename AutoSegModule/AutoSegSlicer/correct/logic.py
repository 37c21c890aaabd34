"""After segmenting: correct in the Segment Editor, export labels, add the case to a training set.

`CorrectionLogic` is a part of `logic.AutoSegLogic` (it uses ``self.scene``); kept apart so each file holds
one concept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import conversion, models
from AutoSegSlicer.correct import export


class CorrectionLogic:
    """Segment Editor set-up, label export and training-set collection for `logic.AutoSegLogic`."""

    def source_volume(self, segmentation_node):
        """The volume a segmentation was made from (or its reference geometry volume)."""
        import slicer

        vid = segmentation_node.GetAttribute("AutoSeg.SourceVolume")
        node = self.scene.GetNodeByID(vid) if vid else None
        if node is None:
            node = segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        return node

    @staticmethod
    def setup_segment_editor(segment_editor_node, segmentation_node, source_volume) -> None:
        """Point a Segment Editor parameter node at the segmentation and its source volume."""
        segment_editor_node.SetAndObserveSegmentationNode(segmentation_node)
        segment_editor_node.SetAndObserveSourceVolumeNode(source_volume)

    def export_labels(self, segmentation_node, path, reference_volume=None, overwrite: bool = False):
        """Write the segmentation as a label map in the source volume's exact geometry (see export.py)."""
        if segmentation_node is None:
            raise AutoSegError("No segmentation selected to export.")
        volume = reference_volume or self.source_volume(segmentation_node)
        if volume is None:
            raise AutoSegError(f"Segmentation '{segmentation_node.GetName()}' has no reference volume; select the "
                               f"volume whose geometry the label map should have.")
        return export.export_labels(segmentation_node, volume, path, overwrite=overwrite)

    def add_to_training_set(self, segmentation_node, volumes: Sequence, dataset_dir, case_name: Optional[str] = None,
                            channel_names: Optional[Sequence[str]] = None):
        """Write the volume(s) and the segmentation's labels as a new case of a raw-layout dataset.

        Label names come from segment names, values from the stored label values; channel names from
        ``channel_names`` or the model the segmentation came from. Returns (case name, written paths,
        `export.LabelAssignment`).
        """
        from AutoSegSlicer.correct import dataset_case

        if segmentation_node is None:
            raise AutoSegError("No segmentation selected to add to the training set.")
        volumes = [v for v in (volumes or []) if v is not None]
        if not volumes:
            raise AutoSegError("No input volume selected: the training case needs its image(s).")
        if channel_names is None:
            model_path = segmentation_node.GetAttribute("AutoSeg.Model")
            if model_path and Path(model_path).is_dir():
                channel_names = models.read_model_info(model_path).channel_names
            else:
                channel_names = [v.GetName() for v in volumes]
        channel_names = list(channel_names)
        if len(channel_names) != len(volumes):
            raise AutoSegError(f"{len(volumes)} volume(s) given for {len(channel_names)} channel(s) {channel_names}.")
        reference = volumes[0]
        label, assignment = export.labelmap_array(segmentation_node, reference)
        labels = assignment.labels()
        if len(labels) != len(assignment.names) + 1:
            raise AutoSegError(f"Segments {assignment.names} have label values {assignment.values}: each label needs "
                               f"its own value and a unique name for a training set.")
        label, geometry = conversion.array_in_file_grid(label, reference)
        channels = conversion.channels_in_file_grid(volumes, reference)
        dataset_dir = Path(dataset_dir)
        case_name = case_name or dataset_case.next_case_name(dataset_dir)
        written = dataset_case.add_case(dataset_dir, case_name, channels, geometry, label, labels, channel_names)
        return case_name, written, assignment
