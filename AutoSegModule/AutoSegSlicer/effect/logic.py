"""The Segment Editor effect "AutoSeg" without Qt: what to run, the preview, and how it becomes segment edits.

The effect (SegmentEditorAutoSegLib/SegmentEditorEffect.py) is a thin Qt shell around `EffectLogic`:

- **Preview** (`EffectLogic.start_preview` / `finish_preview`): the model runs in a child process through the
  module panel's own `AutoSegLogic.start_segmentation` with the panel's `PredictOptions` (``fast``, ``roi`` set);
  its label map fills a separate segmentation node (the preview overlay) through `AutoSegLogic.apply_labels`,
  so segment names, colours, terminology and label values follow the panel's rules (segmentation.py). Voxels
  outside the region (`common.region`) are cleared.
- **Apply** (`EffectLogic.apply_preview`): one *set* edit per target segment through an *editor*, the object
  that applies an edit under the Segment Editor's masking settings (editable area, editable intensity range,
  overwrite other segments). The edit is the model's label inside the region and the segment's own voxels
  outside it, so that inside the region and the editable area the segment becomes the model's result and
  elsewhere nothing changes (Slicer's "set" keeps a segment outside the editable area; an erase would not, in
  "inside one segment" mode). In Slicer the editor is the effect itself (`ScriptedEffectEditor`:
  ``scriptedEffect.modifySegmentByLabelmap``, Slicer's own masking code: qSlicerSegmentEditorAbstractEffect in
  5.8, vtkSlicerSegmentEditorLogic from 5.10); the headless tests drive that vtkSlicerSegmentEditorLogic directly.
- Targets: one segment per model label (a segment of the segmentation already tagged with that label value is
  reused; otherwise a new one is added with the preview segment's name, colour, terminology and tags; a label
  with no voxel in the region adds nothing), or the selected segment filled with one chosen label.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import region as effect_region  # its name here: `region` is a parameter below
from AutoSegSlicer.common import segmentation
from AutoSegSlicer.segment.options import PredictOptions

MODE_LABELS = "labels"        # one segment per model label
MODE_SELECTED = "selected"    # the selected segment, filled with one chosen label
MODES = (MODE_LABELS, MODE_SELECTED)

#: Node reference role and owner parameter of a result preview, as Slicer's auto-complete effects store theirs
#: (AbstractScriptedSegmentEditorAutoCompleteEffect), so that other effects see a preview belongs to this one.
PREVIEW_REFERENCE_ROLE = "SegmentationResultPreview"
PREVIEW_OWNER_PARAMETER = "SegmentationResultPreviewOwnerEffect"
PREVIEW_OPACITY = 0.6
#: Attribute of the preview node holding its region (`effect_region.box_to_text`), so that Apply uses it.
REGION_ATTRIBUTE = "AutoSeg.Region"


@dataclass
class PreviewJob:
    """A running preview: the panel logic's job, the region and the segmentation the preview is for."""
    job: object
    segmentation_node: object
    box: Optional[effect_region.OrientedBox]
    preview_node: object = None

    @property
    def running(self) -> bool:
        return self.job.running


class ScriptedEffectEditor:
    """The editor of a Segment Editor effect (``qSlicerSegmentEditorScriptedEffect``): Slicer's own masking code.

    ``set_mode``: ``slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet``. The tests use an editor with
    the same three methods on vtkSlicerSegmentEditorLogic (Slicer 5.10+, slicer-core), the code this effect's
    ``modifySegmentByLabelmap`` runs from 5.10.
    """

    def __init__(self, scriptedEffect, set_mode):
        self.scriptedEffect = scriptedEffect
        self.set_mode = set_mode

    def reference_geometry(self):
        """The modifier labelmap geometry: the segmentation's reference geometry (source volume aligned)."""
        return self.scriptedEffect.defaultModifierLabelmap()

    def save_state_for_undo(self) -> None:
        self.scriptedEffect.saveStateForUndo()

    def modify(self, segmentation_node, segment_id: str, labelmap) -> None:
        self.scriptedEffect.modifySegmentByLabelmap(segmentation_node, segment_id, labelmap, self.set_mode)


class EffectLogic:
    """What the effect does, given the panel's `AutoSegLogic` (scene, models folder, child-process runner)."""

    def __init__(self, autoseg_logic):
        self.logic = autoseg_logic
        self.scene = autoseg_logic.scene

    # -- preview -----------------------------------------------------------------------------
    def region_box(self, region: str, volume_node, roi_node=None, slice_node=None):
        """The `effect_region.OrientedBox` of a region choice (None for the whole volume)."""
        if region == effect_region.REGION_WHOLE:
            return None
        if region == effect_region.REGION_ROI:
            if roi_node is None:
                raise AutoSegError("Region 'markups ROI' needs an ROI: select one, or place one with the ROI tool.")
            return effect_region.box_from_roi_node(roi_node)
        if region == effect_region.REGION_VIEW:
            if slice_node is None:
                raise AutoSegError("Region 'around the current view' needs a slice view: move the mouse over one.")
            return effect_region.box_from_slice_view(slice_node, volume_node)
        raise AutoSegError(f"Region {region!r} is not one of {', '.join(effect_region.REGIONS)}.")

    def start_preview(self, model, volumes: Sequence, segmentation_node, fast: bool = False, box=None,
                      base_options: PredictOptions = PredictOptions(), on_event=None, polling: bool = False) -> PreviewJob:
        """Check the inputs and start the child process; the scene does not change until `finish_preview`."""
        if segmentation_node is None:
            raise AutoSegError("No segmentation is selected in the Segment Editor.")
        volumes = list(volumes or [])
        roi = effect_region.roi_lps_corners(box, volumes[0]) if (box is not None and volumes and volumes[0]) else None
        options = dataclasses.replace(base_options, fast=bool(fast), roi=roi, show_3d=False)
        job = self.logic.start_segmentation(model, volumes, options, None, on_event, polling)
        return PreviewJob(job, segmentation_node, box)

    def cancel(self, preview_job: PreviewJob, wait: bool = True) -> None:
        self.logic.cancel(preview_job.job, wait=wait)

    def finish_preview(self, preview_job: PreviewJob, result=None):
        """Read the child's label map into a new preview segmentation node; returns it.

        Raises AutoSegError with the child's message when it failed (the scene is then unchanged).
        """
        target = preview_job.segmentation_node
        preview = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                               self.scene.GenerateUniqueName(f"{target.GetName()} AutoSeg preview"))
        try:
            preview.CreateDefaultDisplayNodes()
            preview_job.job.target = preview
            self.logic.finish_segmentation(preview_job.job, result)
            mask = effect_region.region_mask(preview_job.box, preview_job.job.volumes[0])
            if mask is not None:
                _clear_outside(preview, mask)
            display = preview.GetDisplayNode()
            display.SetOpacity(PREVIEW_OPACITY)
            display.SetVisibility2DOutline(False)
            preview.SetAttribute("AutoSeg.PreviewFor", target.GetID())
            preview.SetAttribute(REGION_ATTRIBUTE, effect_region.box_to_text(preview_job.box))
        except Exception:
            self.remove_preview(preview)
            raise
        preview_job.preview_node = preview
        return preview

    def remove_preview(self, preview_node) -> None:
        """Remove a preview node and its display nodes (Cancel, after Apply, on failure)."""
        if preview_node is None or preview_node.GetScene() is None:
            return
        displays = [preview_node.GetNthDisplayNode(i) for i in range(preview_node.GetNumberOfDisplayNodes())]
        self.scene.RemoveNode(preview_node)
        for display in displays:
            if display is not None and display.GetScene() is not None:
                self.scene.RemoveNode(display)

    @staticmethod
    def preview_labels(preview_node) -> List[Tuple[str, int]]:
        """``[(segment name, label value), ...]`` of a preview, in segment order."""
        seg = preview_node.GetSegmentation()
        out = []
        for i in range(seg.GetNumberOfSegments()):
            s = seg.GetNthSegment(i)
            out.append((s.GetName(), segmentation.segment_label_value(s)))
        return out

    @staticmethod
    def show_only_label(preview_node, label_value: Optional[int]) -> None:
        """Preview display: only the segment of ``label_value`` visible (None: all)."""
        seg, display = preview_node.GetSegmentation(), preview_node.GetDisplayNode()
        for i in range(seg.GetNumberOfSegments()):
            s = seg.GetNthSegment(i)
            visible = label_value is None or segmentation.segment_label_value(s) == int(label_value)
            display.SetSegmentVisibility(seg.GetNthSegmentID(i), visible)

    # -- apply -------------------------------------------------------------------------------
    def apply_preview(self, preview_node, segmentation_node, editor, reference, region="preview", mode: str = MODE_LABELS,
                      selected_segment_id: Optional[str] = None, label_value: Optional[int] = None) -> List[str]:
        """Write a preview into ``segmentation_node`` through ``editor`` (masking settings apply); returns the
        IDs of the segments edited. The caller saves the undo state first (`editor.save_state_for_undo`).

        Parameters
        ----------
        editor : object with ``modify(segmentation_node, segment_id, vtkOrientedImageData)`` (a masked "set")
        reference : vtkOrientedImageData
            The editor's modifier geometry (the segmentation's reference geometry); edits are resampled onto it.
        region : "preview", or a (z, y, x) bool array on the preview's grid, or None for everywhere
            Where the model's result replaces the segment; by default the region the preview was made for.
        mode : MODE_LABELS or MODE_SELECTED (then ``selected_segment_id`` and ``label_value`` are required)
        """
        layer, image = _preview_layer(preview_node)
        if isinstance(region, str) and region == "preview":
            region = _preview_region(preview_node, image)
        inside = np.ones(layer.shape, bool) if region is None else np.asarray(region, bool)
        if inside.shape != layer.shape:
            raise AutoSegError(f"The region ({inside.shape}) is not on the preview's grid ({layer.shape}).")
        to_reference = _preview_to_segmentation(preview_node, segmentation_node)
        targets = self._targets(preview_node, segmentation_node, layer, inside, mode, selected_segment_id, label_value)
        inside_ref = _on_reference(inside, image, to_reference, reference)
        edited = []
        for segment_id, value in targets:
            label = _on_reference((layer == value) & inside, image, to_reference, reference)
            keep = _segment_on_reference(segmentation_node, segment_id, reference) & ~inside_ref
            editor.modify(segmentation_node, segment_id, _image_like(label | keep, reference))
            edited.append(segment_id)
        return edited

    def _targets(self, preview_node, segmentation_node, layer, inside, mode, selected_segment_id, label_value):
        values = [v for _, v in self.preview_labels(preview_node)]
        seg = segmentation_node.GetSegmentation()
        if mode == MODE_SELECTED:
            if not selected_segment_id or seg.GetSegment(selected_segment_id) is None:
                raise AutoSegError("Select the segment to fill in the Segment Editor's segment list.")
            if label_value is None or int(label_value) not in values:
                raise AutoSegError(f"Choose the model label to fill the selected segment with; the preview has "
                                   f"{', '.join(str(v) for v in values) or 'no labels'}.")
            return [(selected_segment_id, int(label_value))]
        if mode != MODE_LABELS:
            raise AutoSegError(f"Apply mode {mode!r} is not one of {', '.join(MODES)}.")
        existing = {}
        for i in range(seg.GetNumberOfSegments()):
            existing.setdefault(segmentation.segment_label_value(seg.GetNthSegment(i)), seg.GetNthSegmentID(i))
        targets = []
        preview_seg = preview_node.GetSegmentation()
        for i, value in enumerate(values):
            if value in existing:
                targets.append((existing[value], value))
            elif np.any((layer == value) & inside):
                targets.append((_add_segment_like(seg, preview_seg.GetNthSegment(i)), value))
        return targets


def _add_segment_like(segmentation_, source_segment) -> str:
    """Add an empty segment with ``source_segment``'s name, colour, terminology and tags; returns its ID."""
    import slicer

    segment = slicer.vtkSegment()
    segment.DeepCopyMetadata(source_segment)
    segment_id = segmentation_.GenerateUniqueSegmentID(segmentation._id_base(source_segment.GetName()))  # panel's IDs
    segmentation_.AddSegment(segment, segment_id)
    return segment_id


def _preview_layer(preview_node):
    """The preview's label map (one shared layer, values = label values) as a (z, y, x) array, and its image."""
    seg = preview_node.GetSegmentation()
    if seg.GetNumberOfSegments() == 0:
        raise AutoSegError("The preview is empty: run Preview first.")
    if seg.GetNumberOfLayers() != 1:
        raise AutoSegError(f"The preview segmentation has {seg.GetNumberOfLayers()} labelmap layers, expected one.")
    image = seg.GetLayerDataObject(0)
    return _array_of(image), image


def _preview_region(preview_node, image) -> Optional[np.ndarray]:
    """The region stored on a preview (`REGION_ATTRIBUTE`) as a mask over its label map; None: everywhere."""
    import vtk

    box = effect_region.box_from_text(preview_node.GetAttribute(REGION_ATTRIBUTE))
    if box is None:
        return None
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    ijk_to_world = effect_region.node_to_world(preview_node) @ effect_region.array_from_matrix(m)
    return effect_region.grid_mask(box, image.GetDimensions(), ijk_to_world)


def _clear_outside(preview_node, mask: np.ndarray) -> None:
    layer, image = _preview_layer(preview_node)
    if layer.shape != mask.shape:
        raise AutoSegError(f"The region mask {mask.shape} is not on the preview's grid {layer.shape}.")
    layer[~mask] = 0
    image.Modified()
    preview_node.GetSegmentation().Modified()


def _preview_to_segmentation(preview_node, segmentation_node) -> np.ndarray:
    """4x4 from the preview node's coordinates to the segmentation node's (they may sit under different
    transforms: the preview under the source volume's)."""
    return np.linalg.inv(effect_region.node_to_world(segmentation_node)) @ effect_region.node_to_world(preview_node)


def _array_of(image) -> np.ndarray:
    """A (z, y, x) view of a one-component image over its extent."""
    from vtk.util import numpy_support

    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _image_like(mask: np.ndarray, reference):
    """A uint8 vtkOrientedImageData holding ``mask`` on ``reference``'s extent and geometry."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    out = slicer.vtkOrientedImageData()
    out.SetExtent(reference.GetExtent())
    m = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(m)
    out.SetImageToWorldMatrix(m)
    out.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, np.uint8).ravel(), deep=True,
                                                             array_type=vtk.VTK_UNSIGNED_CHAR))
    return out


def _resampled(image, reference) -> np.ndarray:
    """``image`` (any geometry, same coordinate system) nearest-resampled onto ``reference``: bool (z, y, x)."""
    import slicer

    if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(image, reference):
        return _array_of(image) > 0
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, out, False, False)
    return _array_of(out) > 0


def _on_reference(mask: np.ndarray, image, to_segmentation: np.ndarray, reference) -> np.ndarray:
    """``mask`` (on ``image``'s grid, in preview coordinates) on ``reference``'s grid (segmentation coordinates)."""
    import slicer
    import vtk

    out = _image_like(mask, image)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    out.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(to_segmentation @ effect_region.array_from_matrix(m)))
    return _resampled(out, reference)


def _segment_on_reference(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """The segment's voxels on ``reference``'s grid (bool; all False for an empty segment)."""
    import slicer

    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    e = image.GetExtent()
    if e[0] > e[1] or e[2] > e[3] or e[4] > e[5]:
        e = reference.GetExtent()
        return np.zeros((e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1), bool)
    return _resampled(image, reference)
