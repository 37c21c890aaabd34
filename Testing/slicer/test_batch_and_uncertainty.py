"""Issue #14 in the module panel: batch segmentation in one child process (the command line, the results table
from three tiny cases with one broken case, loading a row, cancel), DICOM series as cases, and the uncertainty
guidance (overlay, the list of uncertain slices and the jump to them)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import fake_predict_child
from autoseg_testing import fake_runner_factory, make_model_folder
from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.segment import batch, batch_table, uncertainty
from AutoSegSlicer.segment.options import PredictOptions

SPACING = (2.0, 1.0, 1.5)     # (z, y, x) mm: a voxel is 3 mm^3


def _image(seed):
    """A small image: a block of 100 (label 1 for the stand-in child) with a core of 200 (label 2)."""
    img = np.zeros((6, 10, 12), np.int16)
    img[1:5, 2:2 + seed + 4, 3:9] = 100
    img[2:4, 3:5, 4:4 + seed] = 200
    return img


def _ml(img):
    voxel_ml = float(np.prod(SPACING)) / 1000
    return {"organ": float(((img > 50) & (img <= 150)).sum()) * voxel_ml, "lesion": float((img > 150).sum()) * voxel_ml}


@pytest.fixture
def model(autoseg_logic, tmp_path):
    make_model_folder(tmp_path / "models" / "Organs", model_json={"name": "Organs", "version": "1.0"})
    return autoseg_logic.models()[0][0]


@pytest.fixture
def three_volumes(make_volume):
    names = ("liver-a", "broken scan", "liver c")
    return [make_volume(_image(i + 1), spacing=SPACING, origin=(5.0 * i, -3.0, 12.0), name=n)
            for i, n in enumerate(names)]


def test_the_batch_command_line(autoseg_logic, model, tmp_path):
    argv = batch.BatchLogic(autoseg_logic).command(model, tmp_path / "in", tmp_path / "out",
                                                   PredictOptions(tta=False, fast=True, save_uncertainty=True))
    assert argv == [sys.executable, "-m", "AutoSegLib", "predict", "-m", str(model.path), "-i", str(tmp_path / "in"),
                    "-o", str(tmp_path / "out"), "--continue-on-error", "--device", "auto", "--runtime", "auto",
                    "--step-size", "0.5", "--no-tta", "--fast", "--save-uncertainty", "--progress-json"]


def test_case_names_are_unique_and_never_look_like_channels():
    assert batch.unique_names(["a", "a", "b", "a", "a_2"]) == ["a", "a_2", "b", "a_3", "a_2_2"]
    assert batch.case_name("CT chest (1).nii") == "CT_chest_1_.nii" and batch.case_name("scan_0000") == "scan"


def test_three_cases_one_broken_make_a_table_whose_rows_say_what_happened(autoseg_logic, model, three_volumes,
                                                                         tmp_path, slicer_harness):
    factory = fake_predict_child.runner_factory(tmp_path / "bin")
    autoseg_logic.runner_factory = factory
    logic = batch.BatchLogic(autoseg_logic)
    cases = batch.cases_from_volumes(three_volumes, model)
    assert [c.name for c in cases] == ["liver-a", "broken_scan", "liver_c"]
    events = []
    job = logic.start(model, cases, tmp_path / "out", PredictOptions(tta=False, save_uncertainty=True),
                      on_event=events.append)
    result = job.wait(60)
    assert result is not None and result.returncode == 2 and "1 of 3 cases failed" in result.error
    assert len(factory.started) == 1                                      # one child for all cases
    assert job.progress() == 1.0 and [r["status"] for r in job.rows] == ["failed", "ok", "ok"]   # the child's order
    table = logic.finish(job, result)
    assert not job.folder.exists()                                        # staged inputs removed
    t = table.GetTable()
    columns = [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
    assert columns == ["Case", "Status", "Time (s)", "organ (ml)", "lesion (ml)", "Mean uncertainty", "Warnings",
                       "Error", "Source"]
    assert table.GetNumberOfRows() == 3
    cell = lambda r, name: table.GetCellText(r, columns.index(name))      # noqa: E731
    assert [cell(r, "Case") for r in range(3)] == ["broken_scan", "liver-a", "liver_c"]
    assert [cell(r, "Status") for r in range(3)] == ["failed", "ok", "ok"]
    assert "truncated image data" in cell(0, "Error") and cell(1, "Error") == ""
    assert [cell(r, "Source") for r in range(3)] == ["broken scan", "liver-a", "liver c"]
    for r, i in ((1, 0), (2, 2)):                                         # volumes against an independent count
        expected = _ml(_image(i + 1))
        assert float(cell(r, "organ (ml)")) == pytest.approx(expected["organ"])
        assert float(cell(r, "lesion (ml)")) == pytest.approx(expected["lesion"])
        assert 0 < float(cell(r, "Mean uncertainty")) < 1
    assert math.isnan(t.GetValueByName(0, "organ (ml)").ToDouble())
    assert table.GetColumnUnitLabel("organ (ml)") == "ml"


def test_a_summary_row_with_warnings_and_no_uncertainty(slicer_harness, model, tmp_path):
    rows = [{"case": "a", "status": "ok", "error": None, "seconds": 1.25, "output": "a.nii.gz", "uncertainty": None,
             "volumes_ml": {"organ": 1.5, "lesion": 0.0, "vessel": 2.0}, "mean_uncertainty": None,
             "uncertain_slices": [], "warnings": ["spacing far outside", "intensity far outside"], "inputs": ["/x/a.nii"]},
            {"case": "b", "status": "skipped", "error": None, "seconds": 0.0, "output": None, "uncertainty": None,
             "volumes_ml": {}, "mean_uncertainty": None, "uncertain_slices": [], "warnings": [], "inputs": []}]
    table = batch_table.results_table(slicer_harness.scene, model, rows, tmp_path)
    t = table.GetTable()
    assert [t.GetColumnName(i) for i in range(2, 6)] == ["Time (s)", "organ (ml)", "lesion (ml)", "vessel (ml)"]
    # the table view's headers are the column titles (the name-as-header switch is deprecated)
    assert table.GetUseColumnTitleAsColumnHeader()
    assert [table.GetColumnTitle(t.GetColumnName(i)) for i in range(t.GetNumberOfColumns())] == \
        [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
    assert table.GetCellText(0, 6 + 1) == "spacing far outside; intensity far outside"
    assert table.GetCellText(0, 9) == "a.nii" and table.GetCellText(1, 1) == "skipped"
    assert math.isnan(t.GetValueByName(0, "Mean uncertainty").ToDouble())
    with pytest.raises(AutoSegError, match="Case 'b' skipped"):
        batch_table.load_case(slicer_harness.scene, table, "b")


def test_selecting_a_row_loads_the_case_with_its_segmentation(autoseg_logic, model, three_volumes, tmp_path,
                                                              slicer_harness):
    autoseg_logic.runner_factory = fake_predict_child.runner_factory(tmp_path / "bin")
    logic = batch.BatchLogic(autoseg_logic)
    job = logic.start(model, batch.cases_from_volumes(three_volumes, model), tmp_path / "out",
                      PredictOptions(save_uncertainty=True))
    table = logic.finish(job, job.wait(60))
    import slicer

    scene = slicer_harness.scene
    loaded = batch_table.load_case(scene, table, "liver_c")
    assert loaded.volume is three_volumes[2]                             # the scene's own volume
    segments = loaded.segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["organ", "lesion"]
    from AutoSegSlicer.correct import export
    label, _ = export.labelmap_array(loaded.segmentation, loaded.volume)
    img = _image(3)
    assert np.array_equal(label, (img > 50).astype(np.int16) + (img > 150))   # the stand-in's threshold
    assert loaded.uncertainty.volume is not None and loaded.uncertainty.slices
    assert [c.name for c in batch.cases_from_volumes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"), model)] \
        == ["liver-a", "broken_scan", "liver_c"]                       # the uncertainty volume is no case
    again = batch_table.load_case(scene, table, "liver_c")
    assert again.segmentation is loaded.segmentation and again.uncertainty.volume is loaded.uncertainty.volume
    with pytest.raises(AutoSegError, match="broken_scan' failed: .*truncated image data"):
        batch_table.load_case(scene, table, "broken_scan")


def test_a_folder_of_images_runs_as_it_is_and_its_rows_load_from_the_files(autoseg_logic, model, tmp_path,
                                                                           slicer_harness):
    from AutoSegLib.io.geometry import Geometry
    from AutoSegLib.io.images import write_image

    folder = tmp_path / "scans"
    folder.mkdir()
    for i, name in enumerate(("p1", "p2_broken", "p3")):
        write_image(_image(i + 1), Geometry(SPACING, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())),
                    folder / f"{name}_0000.nii.gz")
    autoseg_logic.runner_factory = fake_predict_child.runner_factory(tmp_path / "bin")
    logic = batch.BatchLogic(autoseg_logic)
    cases = batch.cases_from_folder(folder, model)
    assert [c.name for c in cases] == ["p1", "p2_broken", "p3"]
    with pytest.raises(AutoSegError, match="is the input folder"):
        logic.start(model, cases, folder, input_folder=folder)
    job = logic.start(model, cases, tmp_path / "out", input_folder=folder)
    table = logic.finish(job, job.wait(60))
    assert [table.GetCellText(r, 1) for r in range(3)] == ["ok", "failed", "ok"]
    loaded = batch_table.load_case(slicer_harness.scene, table, "p3", loader=slicer_harness.load_volume)
    assert loaded.volume.GetAttribute(batch_table.INPUT_ATTRIBUTE) == str(folder / "p3_0000.nii.gz")
    assert loaded.segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert loaded.uncertainty.volume is None                              # not asked for
    assert batch_table.load_case(slicer_harness.scene, table, "p3", loader=lambda p: 1 / 0).volume is loaded.volume


def test_cancel_stops_the_one_child_and_removes_the_staged_inputs(autoseg_logic, model, three_volumes, tmp_path):
    autoseg_logic.runner_factory = fake_runner_factory("sleep")
    logic = batch.BatchLogic(autoseg_logic)
    job = logic.start(model, batch.cases_from_volumes(three_volumes, model), tmp_path / "out")
    assert job.running and len(list(job.input_dir.iterdir())) == 3
    logic.cancel(job)
    assert not job.running and job.runner.result.cancelled and not job.folder.exists()
    with pytest.raises(AutoSegError, match="cancelled"):
        logic.finish(job)


def test_an_earlier_runs_summary_in_the_output_folder_is_not_taken_for_this_run(autoseg_logic, model, three_volumes,
                                                                                 tmp_path, monkeypatch):
    autoseg_logic.runner_factory = fake_predict_child.runner_factory(tmp_path / "bin")
    logic = batch.BatchLogic(autoseg_logic)
    cases = batch.cases_from_volumes(three_volumes, model)
    job = logic.start(model, cases, tmp_path / "out")
    assert logic.finish(job, job.wait(60)).GetNumberOfRows() == 3
    monkeypatch.setenv("AUTOSEG_FAKE_NO_FIT", "1")              # the next run stops before any case
    job = logic.start(model, cases, tmp_path / "out")
    from AutoSegSlicer.segment.options import MemoryWillNotFit
    with pytest.raises(MemoryWillNotFit):
        logic.finish(job, job.wait(60))


def test_bad_batch_sources_say_what_is_wrong(autoseg_logic, tmp_path, make_volume):
    two = make_model_folder(tmp_path / "models" / "Two", channel_names=("T1", "T2"))
    from AutoSegSlicer.common import models

    model = models.read_model_info(two)
    with pytest.raises(AutoSegError, match="needs a one-input model"):
        batch.cases_from_volumes([make_volume(np.zeros((3, 4, 5)), name="v")], model)
    one = models.read_model_info(make_model_folder(tmp_path / "models" / "One"))
    with pytest.raises(AutoSegError, match="No volume is loaded"):
        batch.cases_from_volumes([], one)
    with pytest.raises(AutoSegError, match="not found"):
        batch.cases_from_folder(tmp_path / "nowhere", one)
    with pytest.raises(AutoSegError, match="Nothing to segment"):
        batch.BatchLogic(autoseg_logic).start(one, [], tmp_path / "out")


# -- DICOM -----------------------------------------------------------------------------------------------------------
def _write_dicom_series(folder, array, spacing_xyz, origin, direction):
    """One file per slice with position/orientation tags (SimpleITK's DICOM writer), in shuffled names."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    d = np.asarray(direction, float).reshape(3, 3)
    files = []
    for k in range(array.shape[0]):
        s = sitk.GetImageFromArray(array[k:k + 1])
        position = np.asarray(origin) + d[:, 2] * spacing_xyz[2] * k
        s.SetSpacing(spacing_xyz)
        s.SetOrigin(tuple(position))
        s.SetDirection(tuple(d.ravel()))
        for tag, value in (("0008|0060", "MR"), ("0020|000e", "1.2.3.4"), ("0020|0013", str(k)),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in position)),
                           ("0020|0037", "\\".join(f"{v:.6f}" for v in np.r_[d[:, 0], d[:, 1]]))):
            s.SetMetaData(tag, value)
        path = folder / f"slice_{(k * 7) % array.shape[0]:03d}.dcm"   # names not in slice order
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(s)
        files.append(str(path))
    return files[::-1]


class FakeDicomDatabase:
    """ctkDICOMDatabase's query methods over a dict (slicer-core has no ctkDICOMDatabase)."""

    def __init__(self, series):
        self.series = series

    def patients(self):
        return ["P1"]

    def studiesForPatient(self, patient):
        return ["S1"]

    def seriesForStudy(self, study):
        return list(self.series)

    def descriptionForSeries(self, uid):
        return self.series[uid][0]

    def filesForSeries(self, uid, hits=-1):
        return self.series[uid][1]


def test_a_dicom_series_becomes_a_case_with_its_geometry(model, tmp_path, autoseg_logic):
    import locale

    from AutoSegLib.io.images import read_image
    from AutoSegSlicer.segment import dicom_batch

    before = locale.setlocale(locale.LC_ALL)
    array = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 251).astype(np.int16)
    c, s = math.cos(0.3), math.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    with dicom_batch.kept_locale():   # SimpleITK's DICOM writer sets the process locale to "C" too
        files = _write_dicom_series(tmp_path / "dicom", array, (0.8, 0.9, 2.5), (10.0, -4.0, 30.0), direction)
    assert locale.setlocale(locale.LC_ALL) == before
    db = FakeDicomDatabase({"1.2.3.4": ("T1 axial", files), "9.9": ("T1 axial", files[:1])})
    assert dicom_batch.list_series(db) == [("1.2.3.4", "P1 / T1 axial"), ("9.9", "P1 / T1 axial")]
    cases = dicom_batch.cases_from_dicom(db, ["1.2.3.4"], model)
    assert cases[0].name == "T1_axial" and cases[0].dicom == [files]
    batch.BatchLogic(autoseg_logic).stage(model, cases, tmp_path / "in")
    assert locale.setlocale(locale.LC_ALL) == before                      # reading DICOM left the locale alone
    image, geometry = read_image(tmp_path / "in" / "T1_axial_0000.nii.gz")
    assert np.array_equal(image, array)                                    # slices in position order
    assert np.allclose(geometry.spacing, (2.5, 0.9, 0.8), atol=1e-4) and np.allclose(geometry.origin, (10, -4, 30))
    assert np.allclose(geometry.direction, direction, atol=1e-5)
    with pytest.raises(AutoSegError, match="several slices at one position"):
        dicom_batch.sorted_series(files + files[:1])
    with pytest.raises(AutoSegError, match="No DICOM series selected"):
        dicom_batch.cases_from_dicom(db, [], model)


# -- uncertainty -----------------------------------------------------------------------------------------------------
def _slice_nodes(scene):
    """Red (axial), Yellow (sagittal), Green (coronal) slice nodes with their composite nodes, as the app has."""
    nodes = {}
    for name, orient in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName(name)
        getattr(node, f"SetOrientationTo{orient}")()
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        nodes[name] = node
    return nodes


def test_the_uncertain_slice_list_jumps_the_views_to_the_slice_in_ras(slicer_harness):
    row = {"uncertain_slices": [
        {"axis": "axial", "index": 7, "position_lps": [12.5, -30.0, 44.0], "uncertain_volume_ml": 3.104,
         "labels": ["liver", "tumour"]},
        {"axis": "coronal", "index": 2, "position_lps": [-1.0, 2.0, -3.0], "uncertain_volume_ml": 0.5, "labels": []},
        {"axis": "axial", "position_lps": "bad"}]}
    entries = uncertainty.slice_entries(row)
    assert entries == [("axial 7: 3.10 ml (liver, tumour)", (-12.5, 30.0, 44.0)), ("coronal 2: 0.50 ml", (1.0, -2.0, -3.0))]
    nodes = _slice_nodes(slicer_harness.scene)
    uncertainty.jump_to(slicer_harness.scene, entries[0][1])
    import slicer
    to_ras = {n: slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS()) for n, node in nodes.items()}
    assert to_ras["Red"][2, 3] == pytest.approx(44.0)          # axial plane through S = 44
    assert to_ras["Yellow"][0, 3] == pytest.approx(-12.5)      # sagittal through R = -12.5 (L 12.5)
    assert to_ras["Green"][1, 3] == pytest.approx(30.0)        # coronal through A = 30 (P -30)


def test_the_uncertainty_of_a_case_becomes_a_colour_overlay(autoseg_logic, model, make_volume, tmp_path, slicer_harness):
    nodes = _slice_nodes(slicer_harness.scene)
    autoseg_logic.runner_factory = fake_predict_child.runner_factory(tmp_path / "bin")
    volume = make_volume(_image(2), spacing=SPACING, name="ct")
    seg = autoseg_logic.segment(model, [volume], PredictOptions(save_uncertainty=True), timeout=60)
    found = autoseg_logic.last_job.uncertainty
    assert found.volume is not None and seg.GetNodeReference("AutoSeg.Uncertainty") is found.volume
    import slicer
    values = slicer.util.arrayFromVolume(found.volume)
    img = _image(2)
    label = (img > 50).astype(np.uint8) + (img > 150)
    expected = ((label == 1) & (np.roll(label, 1, axis=2) != 1)).astype(np.float32)   # the stand-in's measure
    assert np.array_equal(values, expected)
    assert found.slices and found.row["case"] == "case"
    uncertainty.show_overlay(volume, found.volume, opacity=0.4)
    display = found.volume.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"   # headless: no Inferno file
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5) and display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(uncertainty.SHOW_ABOVE)
    for name in nodes:
        composite = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[list(nodes).index(name)]
        assert composite.GetForegroundVolumeID() == found.volume.GetID()
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    uncertainty.hide_overlay()
    assert all(c.GetForegroundVolumeID() is None for c in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"))


def test_a_broken_summary_is_a_clear_error(tmp_path):
    (tmp_path / "predict_summary.json").write_text("{broken")
    with pytest.raises(AutoSegError, match="predict_summary.json: not a readable prediction summary"):
        uncertainty.read_summary(tmp_path)
    (tmp_path / "predict_summary.json").write_text(json.dumps([1, 2]))
    with pytest.raises(AutoSegError, match="without a 'cases' list"):
        uncertainty.read_summary(tmp_path)
    assert uncertainty.read_summary(tmp_path / "none") is None
