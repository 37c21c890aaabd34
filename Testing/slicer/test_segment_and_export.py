"""Prediction through the child-process runner into a segmentation node; corrections; export; dataset.

The child here is fake_predict.py (a threshold "model" writing through AutoSegLib's image IO), so these
tests need no trained model; test_real_model.py runs the real `autoseg predict`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegSlicer.correct import export
from AutoSegSlicer.common import segmentation
from AutoSegSlicer.segment.options import PredictOptions
from autoseg_testing import fake_runner_factory, make_model_folder

GEO = Geometry((2.5, 0.8, 0.9), (10.0, -5.0, 3.0),
               tuple(np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1.0]]).ravel()))


def _image():
    """(z, y, x) image whose threshold model output is known: 1 where > 50, 2 where > 150."""
    img = np.zeros((6, 12, 14), np.int16)
    img[1:4, 2:8, 3:10] = 100      # organ
    img[2:3, 4:6, 5:7] = 200       # lesion inside it
    img[5, 10:12, 0:3] = 100       # a second organ blob
    expected = (img > 50).astype(np.int16) + (img > 150)
    return img, expected


@pytest.fixture
def model(autoseg_logic):
    path = make_model_folder(autoseg_logic.models_dir / "Organs", model_json={
        "name": "Organs", "version": "1.0",
        "terminology": {"organ": "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"},
        "colors": {"lesion": [1.0, 1.0, 0.0]}})
    return autoseg_logic.require_model(path)


@pytest.fixture
def segmented(autoseg_logic, make_volume, model, slicer_harness):
    img, expected = _image()
    volume = make_volume(img, GEO.spacing, GEO.origin, GEO.direction, name="patient ct")
    autoseg_logic.runner_factory = fake_runner_factory("ok")
    events = []
    seg = autoseg_logic.segment(model, [volume], PredictOptions(tta=False, folds=("0",), step_size=0.7),
                                on_event=events.append, timeout=60)
    return volume, seg, expected, events


def _segments(seg):
    s = seg.GetSegmentation()
    return [s.GetSegment(s.GetNthSegmentID(i)) for i in range(s.GetNumberOfSegments())]


def test_prediction_becomes_a_segmentation_with_names_colours_tags_and_terminology(segmented, model, slicer_harness):
    import slicer

    volume, seg, expected, events = segmented
    segs = _segments(seg)
    assert [s.GetName() for s in segs] == ["organ", "lesion"]
    assert [segmentation.segment_label_value(s) for s in segs] == [1, 2]
    assert segs[1].GetColor() == (1.0, 1.0, 0.0)                     # the model's colour
    assert segs[0].GetColor() == segmentation.PALETTE[0]             # palette otherwise, distinct
    assert segs[0].GetColor() != segs[1].GetColor()
    assert "Liver" in segs[0].GetTerminology() and "Liver" not in segs[1].GetTerminology()  # default: Tissue
    # references the input volume, shown in slice views, beside the input in subject hierarchy
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert seg.GetNodeReference(role) is volume
    assert seg.GetDisplayNode().GetVisibility2D()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_harness.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    assert seg.GetName() == "patient ct Organs"
    # the content, voxel for voxel, in the volume's grid
    array, _ = export.labelmap_array(seg, volume)
    assert np.array_equal(array, expected)
    # the options reached the child, and its progress events reached us
    argv = json.loads(next(e["message"][5:] for e in events if e.get("message", "").startswith("argv ")))
    assert argv[argv.index("--folds") + 1] == "0" and "--no-tta" in argv
    assert argv[argv.index("--step-size") + 1] == "0.7" and argv[argv.index("--device") + 1] == "auto"
    assert [e["current"] for e in events if e["event"] == "progress"] == [1, 2, 3]


def test_replacing_an_existing_segmentation_keeps_the_node(autoseg_logic, segmented, model):
    volume, seg, expected, _ = segmented
    seg.GetSegmentation().AddEmptySegment("", "stale")
    again = autoseg_logic.segment(model, [volume], PredictOptions(tta=False), target_segmentation=seg, timeout=60)
    assert again is seg
    assert [s.GetName() for s in _segments(seg)] == ["organ", "lesion"]


def _paint(seg, volume, segment_id, mask, mode="add"):
    """Paint/erase like the Segment Editor: a modifier labelmap through the C++ segment editor logic."""
    import slicer

    from AutoSegSlicer.common.segmentation import _oriented_image
    from AutoSegSlicer.common.conversion import geometry_from_node

    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(slicer.mrmlScene)
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    logic.SetSegmentEditorNode(editor)
    logic.SetSegmentationNode(seg)
    logic.SetSourceVolumeNode(volume)
    modifier = _oriented_image(mask.astype(np.uint8), geometry_from_node(volume))
    m = {"add": logic.ModificationModeAdd, "remove": logic.ModificationModeRemove}[mode]
    logic.ModifySegmentByLabelmap(seg, segment_id, modifier, m, False, False)  # with masking: overwrite others
    slicer.mrmlScene.RemoveNode(editor)


def test_corrections_then_export_equal_the_expected_label_map(segmented, autoseg_logic, tmp_path, slicer_harness):
    volume, seg, expected, _ = segmented
    s = seg.GetSegmentation()
    organ_id, lesion_id = s.GetNthSegmentID(0), s.GetNthSegmentID(1)
    exp = expected.copy()
    # paint: extend the lesion (overwrites organ voxels there)
    paint = np.zeros(exp.shape, bool)
    paint[2, 4:7, 5:8] = True
    _paint(seg, volume, lesion_id, paint)
    exp[paint] = 2
    # erase: remove the second organ blob
    erase = np.zeros(exp.shape, bool)
    erase[5, 10:12, 0:3] = True
    _paint(seg, volume, organ_id, erase, "remove")
    exp[erase & (exp == 1)] = 0
    # rename and reorder: values follow the segments, not names or order
    s.GetSegment(organ_id).SetName("Liver (corrected)")
    s.SetSegmentIndex(lesion_id, 0)
    # a new segment added by the user gets a free value (3) with a warning
    new_id = s.AddEmptySegment("", "vessel")
    vessel = np.zeros(exp.shape, bool)
    vessel[0, 0:2, 0:3] = True
    _paint(seg, volume, new_id, vessel)
    exp[vessel] = 3
    # an emptied segment still exports (nothing) and keeps its value reserved
    out = tmp_path / "labels.nii.gz"
    assignment = autoseg_logic.export_labels(seg, out)
    assert dict(zip(assignment.names, assignment.values)) == {"lesion": 2, "Liver (corrected)": 1, "vessel": 3}
    assert len(assignment.warnings) == 1 and "vessel" in assignment.warnings[0]
    written = sitk.ReadImage(str(out))
    got = sitk.GetArrayFromImage(written)
    assert np.array_equal(got, exp), (np.argwhere(got != exp)[:10], got[got != exp][:10], exp[got != exp][:10])
    assert Geometry.from_sitk(written).is_close(GEO)
    # NRRD as well; no overwrite without the flag
    assignment_nrrd = autoseg_logic.export_labels(seg, tmp_path / "labels.nrrd")
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nrrd"))), exp)
    before = out.read_bytes()
    with pytest.raises(AutoSegError, match="already exists"):
        autoseg_logic.export_labels(seg, out)
    assert out.read_bytes() == before
    autoseg_logic.export_labels(seg, out, overwrite=True)
    with pytest.raises(AutoSegError, match="unsupported file type"):
        autoseg_logic.export_labels(seg, tmp_path / "labels.png")
    assert assignment_nrrd.values == assignment.values
    # emptying a segment entirely: exported as absent, others unchanged
    _paint(seg, volume, lesion_id, np.ones(exp.shape, bool), "remove")
    arr, _ = export.labelmap_array(seg, volume)
    assert np.array_equal(arr, np.where(exp == 2, 0, exp))


def test_export_of_a_left_handed_file_is_voxel_aligned_with_that_file(autoseg_logic, slicer_harness, model, tmp_path):
    img, expected = _image()
    image = sitk.GetImageFromArray(img)
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetDirection(tuple(np.diag([1.0, 1.0, -1.0]).ravel()))
    path = tmp_path / "fsl_style.nii.gz"
    sitk.WriteImage(image, str(path))
    volume = slicer_harness.load_volume(path)
    autoseg_logic.runner_factory = fake_runner_factory("ok")
    seg = autoseg_logic.segment(model, [volume], PredictOptions(tta=False), timeout=60)
    out = tmp_path / "fsl_style_labels.nii.gz"
    autoseg_logic.export_labels(seg, out)
    written = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), expected)   # same voxel order as the input file
    assert Geometry.from_sitk(written).is_close(Geometry.from_sitk(sitk.ReadImage(str(path))))


def test_add_to_training_set_creates_then_extends_a_dataset(segmented, autoseg_logic, tmp_path):
    volume, seg, expected, _ = segmented
    ds = tmp_path / "Dataset_new"
    case, written, _ = autoseg_logic.add_to_training_set(seg, [volume], ds)
    assert case == "case_000"
    data = json.loads((ds / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert data["channel_names"] == {"0": "MRI"} and data["numTraining"] == 1 and data["file_ending"] == ".nii.gz"
    img = sitk.ReadImage(str(ds / "imagesTr" / "case_000_0000.nii.gz"))
    lab = sitk.ReadImage(str(ds / "labelsTr" / "case_000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(lab), expected)
    assert np.array_equal(sitk.GetArrayFromImage(img), _image()[0])
    assert Geometry.from_sitk(img).is_close(Geometry.from_sitk(lab))
    first_bytes = (ds / "labelsTr" / "case_000.nii.gz").read_bytes()
    case2, _, _ = autoseg_logic.add_to_training_set(seg, [volume], ds)
    assert case2 == "case_001" and json.loads((ds / "dataset.json").read_text())["numTraining"] == 2
    assert (ds / "labelsTr" / "case_000.nii.gz").read_bytes() == first_bytes   # never touched
    with pytest.raises(AutoSegError, match="already exists"):
        autoseg_logic.add_to_training_set(seg, [volume], ds, case_name="case_000")
    # a renamed segment is a different label set: refused, nothing written
    s = seg.GetSegmentation()
    s.GetSegment(s.GetNthSegmentID(0)).SetName("liver")
    with pytest.raises(AutoSegError, match="labels .* differ"):
        autoseg_logic.add_to_training_set(seg, [volume], ds, case_name="case_009")
    assert not list(ds.rglob("case_009*"))
    s.GetSegment(s.GetNthSegmentID(0)).SetName("organ")
    with pytest.raises(AutoSegError, match="channel"):
        autoseg_logic.add_to_training_set(seg, [volume, volume], ds, channel_names=["a", "b"])
    _verify_dataset(ds)


def _verify_dataset(ds):
    """The library's own dataset check when it exists (h1's verify), else an independent minimal one."""
    try:
        from AutoSegLib.io.verify import verify_dataset

        verify_dataset(ds)  # raises DatasetError listing every problem
        return
    except ModuleNotFoundError:  # the library's verify is not there yet: an independent minimal check
        pass
    data = json.loads((ds / "dataset.json").read_text())
    labels = sorted((ds / "labelsTr").glob("*" + data["file_ending"]))
    assert len(labels) == data["numTraining"]
    for lab in labels:
        case = lab.name[: -len(data["file_ending"])]
        for c in range(len(data["channel_names"])):
            assert (ds / "imagesTr" / f"{case}_{c:04d}{data['file_ending']}").is_file()


def test_correct_in_segment_editor_points_the_editor_at_segmentation_and_source(segmented, autoseg_logic,
                                                                                 slicer_harness):
    volume, seg, _, _ = segmented
    assert autoseg_logic.source_volume(seg) is volume
    editor = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    autoseg_logic.setup_segment_editor(editor, seg, volume)
    assert editor.GetSegmentationNode() is seg and editor.GetSourceVolumeNode() is volume
