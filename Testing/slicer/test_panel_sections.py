"""The panel's new parts driven headless (fake_panel.py for Qt; the scene, the logic and the child processes real):
the ROI and options on Apply, the estimate and 'run anyway?', the Batch section (run, cancel, a selected row
loads its case) and the 'Where to correct' list moving the slice views."""
from __future__ import annotations

import time

import numpy as np
import pytest

import fake_panel
import fake_predict_child
from autoseg_testing import fake_runner_factory, make_model_folder


@pytest.fixture
def panel(slicer_harness, tmp_path, monkeypatch):
    make_model_folder(tmp_path / "models" / "Organs", model_json={"name": "Organs", "version": "1.0"})
    p, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path)
    p.shown = shown
    p.batch = next(s for s in p.sections if type(s).__name__ == "BatchSection")
    p.guidance = next(s for s in p.sections if type(s).__name__ == "UncertaintySection")
    from AutoSegSlicer.common import dependencies
    monkeypatch.setattr(dependencies, "ensure_dependencies", lambda **kw: True)
    p.factory = fake_predict_child.runner_factory(tmp_path / "bin")
    p.logic.runner_factory = p.factory
    yield p
    for job, cancel in ((p.job, p.logic.cancel), (p.batch.job, p.batch.logic.cancel)):
        if job is not None and job.running:
            cancel(job)
    p.cleanup()


def _image(n):
    img = np.zeros((6, 10, 12), np.int16)
    img[1:5, 2:2 + n + 4, 3:9] = 100
    img[2:4, 3:5, 4:4 + n] = 200
    return img


def _choose(panel, volume):
    panel.refreshModels()
    panel.input_selectors[0][1].setCurrentNode(volume)
    panel.onInputChanged()


def _run_to_end(poll, job_of, timeout=60):
    deadline = time.monotonic() + timeout
    while job_of() is not None:
        assert time.monotonic() < deadline, "the child did not finish"
        time.sleep(0.05)
        poll()


def test_apply_passes_fast_roi_and_uncertainty_and_shows_the_result(panel, make_volume, slicer_harness):
    from AutoSegSlicer.common.roi import roi_box_lps

    volume = make_volume(_image(2), spacing=(2.0, 1.0, 1.5), name="ct")
    _choose(panel, volume)
    roi = slicer_harness.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(-6.0, -5.0, 4.0)
    roi.SetSize(6.0, 4.0, 5.0)
    panel._parameterNode.roi = roi
    panel._parameterNode.fast = True
    panel._parameterNode.saveUncertainty = True
    panel.onApply()
    argv = panel.factory.started[0]
    assert "--fast" in argv and "--save-uncertainty" in argv
    box = roi_box_lps(roi, volume)
    i = argv.index("--roi")
    assert [float(v) for v in argv[i + 1:i + 7]] == pytest.approx([*box[0], *box[1]], abs=1e-5)
    _run_to_end(panel._poll, lambda: panel.job)
    assert panel.shown["errors"] == [] and panel.ui.statusLabel.text.startswith("Done")
    assert panel.lastUncertainty.volume is not None
    assert panel.guidance.ui.uncertainSlicesListWidget.items[0][0].startswith("axial ")
    assert "Expected: about 0:12 min" in "\n".join(panel.ui.logTextEdit.lines)


def test_memory_that_will_not_fit_is_asked_in_the_panel_then_forced(panel, make_volume, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_NO_FIT", "1")
    _choose(panel, make_volume(_image(1), name="ct"))
    asked = []
    panel.prompt = lambda text: asked.append(text) or True
    panel.onApply()
    _run_to_end(panel._poll, lambda: panel.job)
    assert len(asked) == 1 and "Run anyway?" in asked[0]
    assert [("--force" in a) for a in panel.factory.started] == [False, True]
    assert panel.shown["errors"] == [] and panel.ui.statusLabel.text.startswith("Done")
    assert any("will NOT fit" in line for line in panel.ui.logTextEdit.lines)
    panel.prompt = lambda text: False                            # declined: nothing runs, nothing changes
    panel.onApply()
    _run_to_end(panel._poll, lambda: panel.job)
    assert len(panel.factory.started) == 3 and panel.ui.statusLabel.text.startswith("Not started")
    assert panel.ui.applyButton.text == "Apply"


def test_batch_over_loaded_volumes_then_a_row_loads_its_case(panel, make_volume, slicer_harness, tmp_path):
    import slicer

    volumes = [make_volume(_image(n + 1), name=name) for n, name in enumerate(("a", "b broken", "c"))]
    panel.refreshModels()
    panel._parameterNode.saveUncertainty = True
    panel.ui.batchOutputPathLineEdit.currentPath = str(tmp_path / "results")
    panel.batch.onRun()
    assert panel.ui.batchRunButton.text == "Cancel" and len(panel.factory.started) == 1
    _run_to_end(panel.batch._poll, lambda: panel.batch.job)
    assert panel.shown["errors"] == [] and panel.ui.batchRunButton.text == "Segment all"
    assert panel.ui.batchStatusLabel.text.startswith("Done: 2 segmented, 1 failed")
    table = panel.ui.batchTableView.tableNode
    assert table is panel.batch.table and table.GetNumberOfRows() == 3
    assert panel.shown["settings"]["AutoSeg/BatchOutputFolder"] == str(tmp_path / "results")
    row = [table.GetCellText(r, 0) for r in range(3)].index("c")
    panel.ui.batchTableView.selected_rows = [row]
    panel.batch.onRowSelected()
    assert panel.shown["errors"] == []
    seg = panel.ui.outputSegmentationSelector.currentNode()
    assert seg is not None and seg.GetAttribute("AutoSeg.SourceVolume") == volumes[2].GetID()
    entries = panel.guidance.entries
    assert entries and panel.ui.uncertainSlicesListWidget.items[0][0] == entries[0][0]
    red = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    panel.guidance.onSliceChosen(0)
    assert slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[2, 3] == pytest.approx(entries[0][1][2])
    broken = [table.GetCellText(r, 0) for r in range(3)].index("b_broken")
    panel.ui.batchTableView.selected_rows = [broken]
    panel.batch.onRowSelected()
    assert "failed" in panel.shown["errors"][-1] and "truncated image data" in panel.shown["errors"][-1]


def test_batch_cancel_stops_the_child_and_restores_the_section(panel, make_volume, tmp_path):
    make_volume(_image(1), name="a")
    panel.refreshModels()
    panel.logic.runner_factory = fake_runner_factory("sleep")
    panel.ui.batchOutputPathLineEdit.currentPath = str(tmp_path / "results")
    panel.batch.onRun()
    job = panel.batch.job
    assert job.running
    panel.batch.onRun()                                          # the button is Cancel now
    assert panel.batch.job is None and panel.ui.batchRunButton.text == "Segment all"
    assert panel.ui.batchStatusLabel.text.startswith("Cancelled")
    deadline = time.monotonic() + 20
    while job.running or job.folder.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    panel.ui.batchOutputPathLineEdit.currentPath = ""
    panel.batch.onRun()
    assert "Choose an output folder" in panel.shown["errors"][-1]
