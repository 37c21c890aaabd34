"""Adding a partially annotated case: voxels outside the drawn segments (or outside the painted slices)
become the dataset's "ignore" label, on the volume file's exact grid; dataset.json gains "ignore"."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.verify import verify_dataset
from AutoSegSlicer.common import segmentation
from AutoSegSlicer.train.partial import add_partial_case, annotated_slices_axis, partial_label

GEO = Geometry((2.0, 0.9, 0.8), (5.0, -3.0, 1.0), tuple(np.eye(3).ravel()))
SHAPE = (6, 9, 11)


@pytest.fixture
def drawn(slicer_harness, make_volume):
    """A volume and a segmentation with organ (1), lesion (2) and a checked 'background' segment, painted on
    slices 1 and 4 only. Returns (volume, segmentation, drawn map: 1/2 organ/lesion, 3 background, 0 nothing)."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    volume = make_volume(image, GEO.spacing, GEO.origin, GEO.direction, name="scan")
    drawn = np.zeros(SHAPE, np.int16)
    for k in (1, 4):
        drawn[k, 1:7, 1:9] = 3           # checked background around
        drawn[k, 2:6, 2:7] = 1           # organ
        drawn[k, 3:4, 3:5] = 2           # lesion
    seg = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "partial")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    specs = segmentation.segment_specs([("organ", 1), ("lesion", 2), ("Background", 3)])
    segmentation.fill_segmentation(seg, drawn, GEO, specs)
    return volume, seg, drawn, image


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_outside_segments_become_ignore_exactly(drawn, tmp_path):
    volume, seg, drawn_map, image = drawn
    ds = tmp_path / "Partial"
    case, written, labels = add_partial_case(seg, [volume], ds, mode="outside_segments", channel_names=["MRI"])
    assert case == "case_000" and labels == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    label = _read(written["label"])
    expected = np.where(drawn_map == 0, 3, np.where(drawn_map == 3, 0, drawn_map))
    assert label.dtype == np.uint8 and np.array_equal(label, expected)
    assert np.allclose(_read(written["images"][0]), image)
    data = json.loads((ds / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    assert data["numTraining"] == 1 and data["channel_names"] == {"0": "MRI"}
    report = verify_dataset(ds, num_workers=1)
    assert report.ok, report.errors
    assert report.dataset.labels.ignore_label == 3


def test_unannotated_slices_mode_ignores_whole_slices(drawn, tmp_path):
    volume, seg, drawn_map, _ = drawn
    annotated = drawn_map > 0
    assert annotated_slices_axis(annotated) == 0      # painted on 2 of 6 axial slices
    ds = tmp_path / "Slices"
    _, written, labels = add_partial_case(seg, [volume], ds, mode="unannotated_slices", channel_names=["MRI"])
    label = _read(written["label"])
    expected = np.full(SHAPE, 3, np.int16)
    for k in (1, 4):
        expected[k] = np.where(drawn_map[k] == 3, 0, drawn_map[k])   # whole slice annotated: 0 outside
    assert np.array_equal(label, expected)


def test_a_second_case_reuses_the_ignore_value_and_an_existing_dataset_gains_it(drawn, tmp_path, synthetic_dataset):
    volume, seg, _, _ = drawn
    ds = synthetic_dataset(name="Existing", n_cases=2, shape=(6, 9, 11))   # fully annotated, no ignore
    before = json.loads((ds / "dataset.json").read_text())
    assert "ignore" not in before["labels"]
    case, written, labels = add_partial_case(seg, [volume], ds, channel_names=["MRI"])
    assert case == "case_002" and labels["ignore"] == 3
    data = json.loads((ds / "dataset.json").read_text())
    assert data["labels"] == {**before["labels"], "ignore": 3} and data["numTraining"] == 3
    case2, _, labels2 = add_partial_case(seg, [volume], ds, channel_names=["MRI"])
    assert case2 == "case_003" and labels2 == labels
    assert verify_dataset(ds, num_workers=1).ok


def test_bad_partial_cases_are_refused_and_nothing_written(drawn, tmp_path, slicer_harness):
    volume, seg, _, _ = drawn
    ds = tmp_path / "Other"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"name": "Other", "channel_names": {"0": "CT"}, "numTraining": 0,
                                                 "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}))
    with pytest.raises(AutoSegError, match="differ from this segmentation"):
        add_partial_case(seg, [volume], ds)
    assert sorted(p.name for p in ds.iterdir()) == ["dataset.json"]
    empty = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(AutoSegError, match="no segments"):
        add_partial_case(empty, [volume], tmp_path / "New")
    with pytest.raises(AutoSegError, match="not one of"):
        partial_label(np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool), 3, "everything")
    with pytest.raises(AutoSegError, match="already exists"):
        add_partial_case(seg, [volume], tmp_path / "Dup", case_name="a")
        add_partial_case(seg, [volume], tmp_path / "Dup", case_name="a")


def test_a_fully_annotated_case_can_join_a_partially_annotated_dataset(drawn, tmp_path, slicer_harness):
    """The module's ordinary 'Add to training set' path accepts a dataset that has an ignore label."""
    from AutoSegSlicer.correct import dataset_case

    volume, seg, _, image = drawn
    ds = tmp_path / "Mixed"
    add_partial_case(seg, [volume], ds, channel_names=["MRI"])
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 2:5, 2:6] = 1
    written = dataset_case.add_case(ds, "full_001", [image], GEO, label, {"background": 0, "organ": 1, "lesion": 2},
                                    ["MRI"])
    assert np.array_equal(_read(written["label"]), label)
    data = json.loads((ds / "dataset.json").read_text())
    assert data["labels"]["ignore"] == 3 and data["numTraining"] == 2
    assert verify_dataset(ds, num_workers=1).ok
    with pytest.raises(AutoSegError, match="differ"):
        dataset_case.add_case(ds, "x", [image], GEO, label, {"background": 0, "liver": 1}, ["MRI"])
