"""The Segment Editor effect's logic (AutoSegSlicer.effect.logic) on slicer-core: preview through the child
process, then Apply under the Segment Editor's masking settings.

The edits go through Slicer's own vtkSlicerSegmentEditorLogic (the code the effect's
``modifySegmentByLabelmap`` runs from Slicer 5.10), configured here as the Segment Editor configures it; every
expected result is a hand-made array (what the masking setting means, written with numpy).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import region as effect_region, segmentation
from AutoSegSlicer.effect.logic import MODE_SELECTED, EffectLogic, ScriptedEffectEditor
from autoseg_testing import fake_runner_factory, make_model_folder

SHAPE = (6, 12, 14)
LESION_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
               "Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~^^~^^")


class ScriptedEffectOnLogic:
    """The three methods of a qSlicerSegmentEditorScriptedEffect the effect's editor calls, with what the
    effect runs for them from Slicer 5.10 (qSlicerSegmentEditorAbstractEffect -> vtkSlicerSegmentEditorLogic)."""

    def __init__(self, logic):
        self.logic = logic

    def defaultModifierLabelmap(self):
        self.logic.ResetModifierLabelmapToDefault()
        return self.logic.GetModifierLabelmap()

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def modifySegmentByLabelmap(self, segmentation_node, segment_id, labelmap, mode):
        self.logic.ModifySegmentByLabelmap(segmentation_node, segment_id, labelmap, mode, True, False)


def _image():
    img = np.zeros(SHAPE, np.int16)
    img[1:4, 2:8, 3:10] = 100      # organ (1)
    img[2:3, 4:6, 5:7] = 200       # lesion (2) inside it
    img[5, 10:12, 0:3] = 100       # a second organ blob
    return img, (img > 50).astype(np.int16) + (img > 150)


@pytest.fixture
def setup(autoseg_logic, make_volume, slicer_harness):
    """Volume, model, an empty segmentation on the volume, a segment editor node + Slicer's editor logic."""
    import slicer

    img, expected = _image()
    volume = make_volume(img, (1.5, 0.8, 0.9), (5.0, -3.0, 2.0), name="ct")
    model = autoseg_logic.require_model(make_model_folder(autoseg_logic.models_dir / "Organs",
                                                          model_json={"colors": {"lesion": [1, 1, 0]}, "terminology": {"lesion": LESION_TERM}}))
    scene = slicer_harness.scene
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    node.SetAndObserveSegmentationNode(seg)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(slicer_harness.app_logic)
    logic.SetSegmentEditorNode(node)
    logic.SetSourceVolumeNode(volume)
    return dict(volume=volume, img=img, expected=expected, model=model, seg=seg, node=node,
                editor=ScriptedEffectEditor(ScriptedEffectOnLogic(logic), logic.ModificationModeSet), effect=EffectLogic(autoseg_logic), logic=autoseg_logic, scene=scene)


def _preview(s, label=None):
    """A preview built the way finish_preview builds it (the panel's apply_labels), without a child process."""
    preview = s["scene"].AddNewNodeByClass("vtkMRMLSegmentationNode", "preview")
    s["logic"].apply_labels(s["model"], s["volume"], s["expected"] if label is None else label, target=preview)
    return preview


def _add_segment(s, name, mask, visible=True):
    import slicer

    sid = s["seg"].GetSegmentation().AddEmptySegment(name, name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), s["seg"], sid, s["volume"])
    s["seg"].GetDisplayNode().SetSegmentVisibility(sid, visible)
    return sid


def _array(s, name):
    import slicer

    sid = s["seg"].GetSegmentation().GetSegmentIdBySegmentName(name)
    assert sid, f"no segment {name}"
    return slicer.util.arrayFromSegmentBinaryLabelmap(s["seg"], sid, s["volume"]).astype(bool)


def _apply(s, preview, **kw):
    e = s["editor"]
    e.save_state_for_undo()
    return s["effect"].apply_preview(preview, s["seg"], e, e.reference_geometry(), **kw)


def test_preview_runs_the_model_with_fast_and_roi_and_keeps_only_the_region(setup):
    s = setup
    s["logic"].runner_factory = fake_runner_factory("ok")
    roi = s["scene"].AddNewNodeByClass("vtkMRMLMarkupsROINode")
    # LPS box x in [9, 16], y in [-6, 1], z in [-15, 25] (volume centres: x 5..16.7, y -3..5.8, z 2..9.5)
    roi.SetCenter(-12.5, 2.5, 5.0)
    roi.SetRadiusXYZ(3.5, 3.5, 20.0)
    box = s["effect"].region_box(effect_region.REGION_ROI, s["volume"], roi_node=roi)
    events = []
    nodes_before = s["scene"].GetNumberOfNodes()
    job = s["effect"].start_preview(s["model"], [s["volume"]], s["seg"], fast=True, box=box, on_event=events.append)
    assert s["scene"].GetNumberOfNodes() == nodes_before            # nothing in the scene while it runs
    result = job.job.wait(60)
    assert result is not None and result.ok, result and result.failure_message()
    preview = s["effect"].finish_preview(job, result)
    argv = json.loads(next(e["message"][5:] for e in events if e.get("message", "").startswith("argv ")))
    assert "--fast" in argv
    lo_hi = [float(x) for x in argv[argv.index("--roi") + 1:argv.index("--roi") + 7]]
    assert np.allclose(lo_hi, [9.0, -6.0, -15.0, 16.0, 1.0, 25.0])
    # segments as the panel makes them; the region by hand: LPS x = 5 + 0.9 i in [9, 16], y = -3 + 0.8 j in [-6, 1]
    assert s["effect"].preview_labels(preview) == [("organ", 1), ("lesion", 2)]
    i, j = np.arange(SHAPE[2]), np.arange(SHAPE[1])
    inside = ((5 + 0.9 * i >= 9 - 1e-6) & (5 + 0.9 * i <= 16 + 1e-6))[None, None, :] & \
             ((-3 + 0.8 * j <= 1 + 1e-6))[None, :, None] & np.ones(SHAPE, bool)
    import slicer
    layer = slicer.util.arrayFromSegmentBinaryLabelmap(preview, preview.GetSegmentation().GetNthSegmentID(0), s["volume"])
    assert np.array_equal(layer.astype(bool), (s["expected"] == 1) & inside)
    assert preview.GetDisplayNode().GetOpacity() == pytest.approx(0.6)
    # Apply uses the region the preview was made for: the selected segment changes inside it only
    mine = np.zeros(SHAPE, bool)
    mine[:, 0:2, :] = True                                         # rows j 0..1: x inside and outside the ROI
    sid = _add_segment(s, "mine", mine)
    _apply(s, preview, mode=MODE_SELECTED, selected_segment_id=sid, label_value=1)
    assert np.array_equal(_array(s, "mine"), (mine & ~inside) | ((s["expected"] == 1) & inside))


def test_apply_creates_a_segment_per_label_and_overwrites_all_other_segments(setup):
    import slicer

    s = setup
    other = np.zeros(SHAPE, bool)
    other[1:4, 0:4, 0:5] = True                                   # overlaps organ at y 2..3, x 3..4
    _add_segment(s, "other", other)
    s["node"].SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    edited = _apply(s, _preview(s))
    assert len(edited) == 2
    assert np.array_equal(_array(s, "organ"), s["expected"] == 1)
    assert np.array_equal(_array(s, "lesion"), s["expected"] == 2)
    assert np.array_equal(_array(s, "other"), other & (s["expected"] == 0))
    lesion = s["seg"].GetSegmentation().GetSegment(s["seg"].GetSegmentation().GetSegmentIdBySegmentName("lesion"))
    assert segmentation.segment_label_value(lesion) == 2 and lesion.GetColor() == (1.0, 1.0, 0.0)
    assert segmentation._get_tag(lesion, lesion.GetTerminologyEntryTagName()) == LESION_TERM   # the panel's rules


@pytest.mark.parametrize("mode, keeps", [("OverwriteAllSegments", (False, False)),
                                         ("OverwriteVisibleSegments", (False, True)),
                                         ("OverwriteNone", (True, True))])
def test_overwrite_modes(setup, mode, keeps):
    import slicer

    s = setup
    a = np.zeros(SHAPE, bool)
    a[1:3, 2:4, 3:6] = True
    b = np.zeros(SHAPE, bool)
    b[3, 6:8, 7:10] = True
    _add_segment(s, "visible", a)
    _add_segment(s, "hidden", b, visible=False)
    s["node"].SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, mode))
    _apply(s, _preview(s))
    organ = s["expected"] == 1
    assert np.array_equal(_array(s, "organ"), organ)
    assert np.array_equal(_array(s, "visible"), a if keeps[0] else a & ~organ)
    assert np.array_equal(_array(s, "hidden"), b if keeps[1] else b & ~organ)


def test_editable_area_inside_a_mask_segment(setup):
    import slicer

    s = setup
    mask = np.zeros(SHAPE, bool)
    mask[0:3, :, 0:6] = True
    mask_id = _add_segment(s, "mask", mask)
    s["node"].SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    s["node"].SetMaskSegmentID(mask_id)
    s["node"].SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    _apply(s, _preview(s))
    assert np.array_equal(_array(s, "organ"), (s["expected"] == 1) & mask)
    assert np.array_equal(_array(s, "lesion"), (s["expected"] == 2) & mask)
    assert np.array_equal(_array(s, "mask"), mask)


def test_editable_area_outside_all_segments_and_editable_intensity_range(setup):
    import slicer

    s = setup
    taken = np.zeros(SHAPE, bool)
    taken[2, :, :] = True
    _add_segment(s, "taken", taken)
    s["node"].SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    s["node"].SetSourceVolumeIntensityMask(True)
    s["node"].SetSourceVolumeIntensityMaskRange(50.0, 150.0)      # organ voxels (100) editable, lesion (200) not
    _apply(s, _preview(s))
    in_range = (s["img"] >= 50) & (s["img"] <= 150)
    assert np.array_equal(_array(s, "organ"), (s["expected"] == 1) & ~taken & in_range)
    assert s["seg"].GetSegmentation().GetSegmentIdBySegmentName("lesion") == "" or not _array(s, "lesion").any()
    assert np.array_equal(_array(s, "taken"), taken)


def test_a_chosen_label_fills_the_selected_segment_inside_the_region_only(setup):
    s = setup
    mine = np.zeros(SHAPE, bool)
    mine[0, 0:3, 0:3] = True                                       # outside the region: kept
    mine[4, 5:9, 5:9] = True                                       # inside the region, not lesion: removed
    sid = _add_segment(s, "mine", mine)
    s["node"].SetSelectedSegmentID(sid)
    region = np.zeros(SHAPE, bool)
    region[1:, 3:, 4:] = True
    segments_before = s["seg"].GetSegmentation().GetNumberOfSegments()
    _apply(s, _preview(s), region=region, mode=MODE_SELECTED, selected_segment_id=sid, label_value=2)
    assert s["seg"].GetSegmentation().GetNumberOfSegments() == segments_before
    assert np.array_equal(_array(s, "mine"), (mine & ~region) | ((s["expected"] == 2) & region))
    with pytest.raises(AutoSegError, match="Choose the model label"):
        _apply(s, _preview(s), mode=MODE_SELECTED, selected_segment_id=sid, label_value=7)


def test_apply_reuses_the_segment_tagged_with_the_label_value_and_undo_restores(setup):
    s = setup
    old = np.zeros(SHAPE, bool)
    old[0, :, :] = True
    sid = _add_segment(s, "my liver", old)
    s["seg"].GetSegmentation().GetSegment(sid).SetTag(segmentation.LABEL_VALUE_TAG, "1")
    _apply(s, _preview(s))
    names = [s["seg"].GetSegmentation().GetNthSegment(i).GetName()
             for i in range(s["seg"].GetSegmentation().GetNumberOfSegments())]
    assert names == ["my liver", "lesion"]
    assert np.array_equal(_array(s, "my liver"), s["expected"] == 1)
    s["editor"].scriptedEffect.logic.Undo()
    assert [s["seg"].GetSegmentation().GetNthSegment(i).GetName()
            for i in range(s["seg"].GetSegmentation().GetNumberOfSegments())] == ["my liver"]
    assert np.array_equal(_array(s, "my liver"), old)


def test_a_failed_run_leaves_no_preview(setup):
    s = setup
    s["logic"].runner_factory = fake_runner_factory("fail")
    job = s["effect"].start_preview(s["model"], [s["volume"]], s["seg"])
    result = job.job.wait(60)
    nodes = s["scene"].GetNumberOfNodes()
    with pytest.raises(AutoSegError, match="checkpoint_final.pt is damaged"):
        s["effect"].finish_preview(job, result)
    assert s["scene"].GetNumberOfNodes() == nodes


def test_the_selected_segment_keeps_its_voxels_outside_the_editable_area(setup):
    """Editable area "inside one segment": the selected segment changes only there, even where the model says
    'not this label' (Slicer's erase would also clear the selected segment outside the mask: not wanted here)."""
    import slicer

    s = setup
    mask = np.zeros(SHAPE, bool)
    mask[:, :, 0:7] = True
    mask_id = _add_segment(s, "mask", mask)
    mine = np.zeros(SHAPE, bool)
    mine[0:2, 0:12, 0:14] = True                                   # inside and outside the mask, mostly not organ
    sid = _add_segment(s, "mine", mine)
    s["node"].SetSelectedSegmentID(sid)
    s["node"].SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    s["node"].SetMaskSegmentID(mask_id)
    s["node"].SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    _apply(s, _preview(s), mode=MODE_SELECTED, selected_segment_id=sid, label_value=1)
    organ = s["expected"] == 1
    assert np.array_equal(_array(s, "mine"), (mine & ~mask) | (organ & mask))


def test_a_segmentation_on_a_finer_grid_gets_the_result_resampled_nearest(setup, make_volume):
    """The segmentation's geometry (the editor's modifier grid) is twice as fine in x as the model's input."""
    s = setup
    fine = make_volume(np.zeros((6, 12, 28), np.int16), (1.5, 0.8, 0.45), (5.0 - 0.225, -3.0, 2.0), name="fine")
    s["seg"].SetReferenceImageGeometryParameterFromVolumeNode(fine)
    s["editor"].scriptedEffect.logic.SetSourceVolumeNode(fine)
    _apply(s, _preview(s))
    import slicer

    sid = s["seg"].GetSegmentation().GetSegmentIdBySegmentName("organ")
    organ = slicer.util.arrayFromSegmentBinaryLabelmap(s["seg"], sid, fine).astype(bool)
    # fine x centres 4.775, 5.225, 5.675, ... : pairs around each coarse centre 5, 5.9, ...
    assert np.array_equal(organ, np.repeat(s["expected"] == 1, 2, axis=2))
