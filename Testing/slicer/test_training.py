"""Training and fine-tuning from the module, against slicer-core: progress into table/plot nodes, the run's
steps, cancel and resume, installation of the model, and bad input.

The child here is training_fake_autoseglib.py (real `autoseg verify`; scripted plan/preprocess/train/
find-best writing the real files with known numbers), so these run in seconds; test_training_real.py
runs the real pipeline.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegSlicer.common import models
from AutoSegSlicer.common.runner import ProcessRunner
from AutoSegSlicer.train.logic import TrainingLogic
from AutoSegSlicer.train.options import TooFewCasesError, TrainingOptions
from AutoSegSlicer.train.pipeline import STATE_FILE, TrainingState, train_budget_s
from AutoSegSlicer.train.progress import TrainingCurves, TrainingStatus
from autoseg_harness import REPO
from autoseg_testing import make_model_folder
from AutoSegLib.io.atomic import pid_alive

FAKE = Path(__file__).resolve().parent / "training_fake_autoseglib.py"


def fake_factory():
    class FakeRunner(ProcessRunner):
        def start(self, argv):
            assert argv[1:3] == ["-m", "AutoSegLib"], argv
            super().start([argv[0], str(FAKE), *argv[3:]])

    def factory(**kw):
        kw.setdefault("pythonpath", str(REPO))
        return FakeRunner(**kw)

    return factory


@pytest.fixture
def logic(slicer_harness, tmp_path):
    return TrainingLogic(slicer_harness.scene, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                         pythonpath=str(REPO), runner_factory=fake_factory())


@pytest.fixture
def dataset(synthetic_dataset):
    def make(n=5, name="Synth", **kw):
        return synthetic_dataset(name=name, n_cases=n, shape=(6, 10, 10), spacing=(2.0, 1.0, 1.0), **kw)
    return make


def calls(work):
    return [json.loads(line) for line in (Path(work) / "fake_calls.jsonl").read_text().splitlines()]


def expected_row(epoch, epochs, n_labels=2):
    dice = [(epoch + 1) / (epochs + k + 1) for k in range(n_labels)]
    return {"epoch": epoch, "train_loss": 1 / (epoch + 1), "val_loss": 1 / (epoch + 1) + 0.1,
            "ema_pseudo_dice": sum(dice) / n_labels, "dice organ": dice[0], "dice lesion": dice[1]}


def check_rows(rows, epochs):
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    for r in rows:
        for k, v in expected_row(int(r["epoch"]), epochs).items():
            assert r[k] == pytest.approx(v), (k, r)


# -- progress nodes -------------------------------------------------------------------------------------
def test_epoch_events_fill_the_table_and_the_chart_shows_its_series(slicer_harness):
    import slicer

    curves = TrainingCurves(slicer_harness.scene, "Liver", ["organ", "lesion"])
    for e in range(3):
        curves.add_epoch({"configuration": "3d_fullres", "fold": "0", "epoch": e, "epochs": 3,
                          "train_loss": 1 / (e + 1), "val_loss": 1 / (e + 1) + 0.1,
                          "pseudo_dice": [(e + 1) / 4, (e + 1) / 5], "ema_pseudo_dice": ((e + 1) / 4 + (e + 1) / 5) / 2,
                          "lr": 0.01, "epoch_time_s": 1.0, "eta_s": 2.0 - e})
    check_rows(curves.rows("3d_fullres", "0"), 3)
    table = curves.tables[("3d_fullres", "0")]
    assert isinstance(table, slicer.vtkMRMLTableNode) and table.GetNumberOfRows() == 3
    assert table.GetScene() is slicer_harness.scene
    chart = curves.chart
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    ys = sorted(chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(3))
    assert ys == ["ema_pseudo_dice", "train_loss", "val_loss"]
    assert all(chart.GetNthPlotSeriesNode(i).GetTableNode() is table for i in range(3))
    # a repeated epoch (after a resume) replaces the rows from it on
    curves.add_epoch({"configuration": "3d_fullres", "fold": "0", "epoch": 1, "epochs": 3, "train_loss": 9.0,
                      "pseudo_dice": [0.1, None]})
    rows = curves.rows("3d_fullres", "0")
    assert [int(r["epoch"]) for r in rows] == [0, 1] and rows[1]["train_loss"] == 9.0
    assert np.isnan(rows[1]["dice lesion"]) and np.isnan(rows[1]["val_loss"])
    # the next fold gets its own table; the chart follows it
    curves.add_epoch({"configuration": "3d_fullres", "fold": "1", "epoch": 0, "epochs": 3, "train_loss": 0.5})
    assert chart.GetNthPlotSeriesNode(0).GetTableNode() is curves.tables[("3d_fullres", "1")]
    assert len(curves.rows("3d_fullres", "0")) == 2
    # the user closes the scene during training: the next epoch recreates the nodes in it
    slicer_harness.scene.Clear(0)
    curves.add_epoch({"configuration": "3d_fullres", "fold": "1", "epoch": 1, "epochs": 3, "train_loss": 0.4})
    assert curves.chart.GetScene() is slicer_harness.scene
    assert curves.tables[("3d_fullres", "1")].GetScene() is slicer_harness.scene
    assert [r["train_loss"] for r in curves.rows("3d_fullres", "1")] == [0.4]
    assert curves.chart.GetNthPlotSeriesNode(0).GetTableNode() is curves.tables[("3d_fullres", "1")]


def test_status_line_follows_events():
    s = TrainingStatus()
    s.start_step("train 3d_fullres fold 0", 4, 5)
    s.update({"event": "epoch", "configuration": "3d_fullres", "fold": "0", "epoch": 9, "epochs": 50,
              "ema_pseudo_dice": 0.8123, "eta_s": 3725})
    assert s.text() == "Step 4/5: train 3d_fullres fold 0 - 3d_fullres fold 0, epoch 10/50 - pseudo-Dice 0.812 - ETA 1:02:05"
    # 3 trainings left in the run (this one included): + 2 x 50 epochs x 60 s, capped by a 30 min budget each
    s = TrainingStatus(budget_s=1800)
    s.remaining_trainings = 3
    s.start_step("train 3d_fullres fold 0", 4, 7)
    s.update({"event": "epoch", "configuration": "3d_fullres", "fold": "0", "epoch": 9, "epochs": 50,
              "epoch_time_s": 60.0, "eta_s": 2400.0})
    assert s.run_eta_s == 2400 + 2 * 1800 and s.text().endswith("ETA 40:00 (whole run 1:40:00)")
    # the later trainings' own budgets where the steps give them (a coarse-to-fine pair: 10 then 20 minutes)
    s = TrainingStatus(budget_s=900)
    s.remaining_trainings, s.later_budgets_s = 2, [1200.0]
    s.start_step("train 3d_budget fold 0", 4, 6)
    s.update({"event": "epoch", "configuration": "3d_budget", "fold": "0", "epoch": 9, "epochs": 50,
              "epoch_time_s": 12.0, "eta_s": 480.0})
    assert s.run_eta_s == 480 + 1200
    s.start_step("preprocess", 2, 5)
    s.update({"event": "progress", "stage": "preprocess", "current": 3, "total": 5, "eta_s": 61, "message": "case_002"})
    assert s.text() == "Step 2/5: preprocess - 3/5 case_002 - ETA 01:01"


# -- a whole run --------------------------------------------------------------------------------------
def test_quick_training_of_a_coarse_to_fine_plan_trains_both_stages_in_order(logic, dataset, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=2")
    monkeypatch.setenv("AUTOSEG_FAKE_COARSE_TO_FINE", "1")
    events = []
    job = logic.start_training(dataset(5), TrainingOptions("Pair quick", device="cpu"), on_event=events.append)
    assert job.wait(120), job.status.text()
    assert job.error is None and job.finished, job.error
    cmds = calls(logic.work_dir(job.state.options))
    assert [c[0] for c in cmds] == ["fingerprint", "plan", "preprocess", "train", "train"]
    assert cmds[2][2:] == ["--configurations", "3d_budget", "3d_budget_fine"]
    # the coarse stage first, each with the minutes it was planned for (10 and 20 of the 30)
    assert [c[2] for c in cmds[3:]] == ["3d_budget", "3d_budget_fine"]
    assert [float(c[c.index("--time-budget-minutes") + 1]) for c in cmds[3:]] == [10.0, 20.0]
    assert [train_budget_s(s) for s in job.state.train_steps()] == [600.0, 1200.0]
    said = [e["message"] for e in events if e["event"] == "log" and "expected to finish at" in e.get("message", "")]
    assert len(said) == 1 and "3d_budget: 2 x 2 x 2 mm" in said[0] and "then 3d_budget_fine: 1 x 1 x 1 mm" in said[0]
    assert "inside the box the first finds" in said[0] and "(30 min)" in said[0]


def test_quick_training_runs_every_step_installs_the_model_and_shows_curves(logic, dataset, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=3")
    ds = dataset(5)
    summary = logic.summarize(ds)
    assert summary.ok and summary.num_cases == 5 and summary.channel_names == ["MRI"]
    assert summary.labels == [("background", 0), ("organ", 1), ("lesion", 2)] and summary.ignore_label is None
    events = []
    job = logic.start_training(ds, TrainingOptions("Liver quick", device="cpu"), on_event=events.append)
    assert job.wait(120), job.status.text()
    assert job.error is None and job.finished, job.error
    work = logic.work_dir(job.state.options)
    cmds = calls(work)
    assert [c[0] for c in cmds] == ["fingerprint", "plan", "preprocess", "train"]
    assert "--no-verify" in cmds[0]                              # verify ran as its own step already
    # quick mode plans a configuration for its 30-minute budget on its device, and trains that one only
    assert cmds[1][cmds[1].index("--time-budget-minutes") + 1] == "30" and cmds[1][cmds[1].index("--device") + 1] == "cpu"
    assert cmds[2][1:] == [str(work), "--configurations", "3d_budget"]
    train = cmds[3]
    assert train[1:4] == [str(work), "3d_budget", "0"]           # quick: the budget plan, fold 0 (5 cases)
    # before training starts, the panel is told what the plan will do and when it should finish
    said = [e["message"] for e in events if e["event"] == "log" and "expected to finish at" in e.get("message", "")]
    assert len(said) == 1 and "2 x 2 x 2 mm voxels (2x the data's)" in said[0] and "1200 iterations" in said[0]
    assert train[train.index("--time-budget-minutes") + 1] == "30" and train[train.index("--device") + 1] == "cpu"
    assert "--no-mirroring" in train and "--epochs" not in train and "--resume" not in train
    check_rows(job.curves.rows("3d_budget", "0"), 3)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1, 2]
    # installed: listed, version 1, weights and validation copied, no preprocessed data
    found, problems = models.list_models(logic.models_dir)
    assert problems == [] and [(m.name, m.version, m.configurations, m.folds) for m in found] == \
        [("Liver quick", "1", ("3d_budget",), ("0",))]
    assert found[0].path == job.model_path and job.model_path.name == "Liver_quick"
    assert found[0].labels == (("background", 0), ("organ", 1), ("lesion", 2))
    assert (job.model_path / "trained/3d_budget/fold_0/checkpoint_final.pt").read_text() == "final 3"
    assert not (job.model_path / "preprocessed").exists() and not list(job.model_path.rglob("checkpoint_latest.pt"))
    # cross-validation report table: Dice per label from the fold's summary (fake: 0.5 + value / 10)
    t = job.report_table
    assert t is not None and t.GetNumberOfRows() == 2
    assert [t.GetCellText(0, c) for c in range(2)] == ["3d_budget", "0"]
    assert [float(t.GetCellText(0, c)) for c in (2, 3, 4)] == pytest.approx([0.6, 0.7, 0.65])
    assert [t.GetCellText(1, c) for c in range(2)] == ["chosen: (no model selection: single fold)",
                                                       "post-processing: none"]
    assert "single fold" in t.GetAttribute("AutoSeg.Chosen")
    state = TrainingState.load(work)
    assert state.finished and state.model_path == job.model_path
    assert logic.resumable() == []
    log_text = (work / "autoseg_training.log").read_text()
    assert "epoch 3/3" in log_text and "=== finished" in log_text


def test_full_mode_trains_every_configuration_on_five_folds_then_find_best(logic, dataset, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=2")
    job = logic.start_training(dataset(5), TrainingOptions("Full", mode="full", time_budget_minutes=100))
    assert job.wait(300) and job.error is None, job.error
    cmds = calls(logic.work_dir(job.state.options))
    trains = [tuple(c[2:4]) for c in cmds if c[0] == "train"]
    assert trains == [(c, str(f)) for c in ("2d", "3d_fullres") for f in range(5)]   # cascade excluded
    assert all(c[c.index("--time-budget-minutes") + 1] == "10" for c in cmds if c[0] == "train")  # 100 min / 10
    assert all("--no-mirroring" not in c for c in cmds)
    assert [c for c in cmds if c[0] == "preprocess"][0][2:] == ["--configurations", "2d", "3d_fullres"]
    assert cmds[-1][0] == "find-best"
    info = models.read_model_info(job.model_path)
    assert info.configurations == ("2d", "3d_fullres") and info.folds == tuple("01234")
    t = job.report_table   # 10 folds, a mean row per configuration, the choice (fake find-best: 3d_fullres)
    assert t.GetNumberOfRows() == 13 and t.GetAttribute("AutoSeg.Chosen") == "3d_fullres"
    assert [t.GetCellText(r, 1) for r in (10, 11)] == ["mean", "mean"]
    assert float(t.GetCellText(11, 2)) == pytest.approx(0.6)
    assert t.GetCellText(12, 0) == "chosen: 3d_fullres"
    assert len(job.curves.tables) == 10


# -- cancel and resume -----------------------------------------------------------------------------------

def test_cancel_kills_the_child_and_resume_continues_from_the_last_checkpoint(logic, dataset, monkeypatch,
                                                                               slicer_harness):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=6,sleep=0.25")
    job = logic.start_training(dataset(5), TrainingOptions("Resumable", epochs=6))
    work = job.state.work
    import time
    deadline = time.monotonic() + 60
    while job.poll() and len(job.curves.rows("3d_fullres", "0")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = job.runner.pid
    job.cancel()
    assert job.cancelled and not job.running and not pid_alive(pid)
    done = len(job.curves.rows("3d_fullres", "0"))
    assert 2 <= done < 6
    assert not (work / "trained/3d_fullres/fold_0/checkpoint_final.pt").exists()
    assert (work / "trained/3d_fullres/fold_0/checkpoint_latest.pt").is_file()
    # Slicer closed and opened again: a new logic finds the unfinished run
    again = TrainingLogic(slicer_harness.scene, logic.models_dir, sys.executable, work_root=logic.work_root,
                          pythonpath=str(REPO), runner_factory=fake_factory())
    pending = again.resumable()
    assert [s.work for s in pending] == [work]
    assert [s.status for s in pending[0].steps][:3] == ["done", "done", "done"]
    with pytest.raises(AutoSegError, match="unfinished training named 'Resumable'"):
        again.start_training(dataset(5, name="Other"), TrainingOptions("Resumable"))
    job2 = again.resume(work)
    assert job2.wait(120) and job2.error is None, job2.error
    trains = [c for c in calls(work) if c[0] == "train"]
    assert len(trains) == 2 and "--resume" not in trains[0] and "--resume" in trains[1]
    rows = job2.curves.rows("3d_fullres", "0")      # curves rebuilt from training_log.jsonl, then continued
    check_rows(rows, 6)
    log_lines = (work / "trained/3d_fullres/fold_0/training_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log_lines] == list(range(6))
    assert models.read_model_info(job2.model_path).name == "Resumable"
    assert again.resumable() == []


def test_resume_is_refused_while_an_orphaned_child_still_trains(logic, dataset, monkeypatch, slicer_harness):
    """Slicer crashed (no cancel): its child keeps training; a new session must not start a second one."""
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=50,sleep=0.2")
    job = logic.start_training(dataset(5), TrainingOptions("Orphan", epochs=50))
    import time
    deadline = time.monotonic() + 60
    while job.poll() and job.status.epoch is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        state = TrainingState.load(job.state.work)
        running = [s for s in state.steps if s.status == "running"]
        assert len(running) == 1 and running[0].pid == job.runner.pid
        again = TrainingLogic(slicer_harness.scene, logic.models_dir, sys.executable, work_root=logic.work_root,
                              pythonpath=str(REPO), runner_factory=fake_factory())
        with pytest.raises(AutoSegError, match=f"still running \\(process {job.runner.pid}"):
            again.resume(job.state.work)
    finally:
        job.cancel()
    assert TrainingState.load(job.state.work).train_steps()[0].pid is None


def test_disk_full_stops_with_a_clear_message_and_keeps_the_last_checkpoint(logic, dataset, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=4,diskfull=2")
    job = logic.start_training(dataset(5), TrainingOptions("Full disk"))
    assert job.wait(120)
    work = job.state.work
    ckpt = work / "trained/3d_budget/fold_0/checkpoint_latest.pt"
    assert job.error is not None and not job.finished
    assert f"The disk holding the work folder {work} is full" in job.error and "No space left on device" in job.error
    assert f"The last good checkpoint (after epoch 2) is kept: {ckpt}" in job.error and "Resume" in job.error
    assert ckpt.read_text() == "epoch 1"
    assert models.list_models(logic.models_dir) == ([], [])
    assert [s.work for s in logic.resumable()] == [work]
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=4")       # space freed
    job2 = logic.resume(work)
    assert job2.wait(120) and job2.error is None, job2.error
    check_rows(job2.curves.rows("3d_budget", "0"), 4)


# -- bad input ---------------------------------------------------------------------------------------------
def test_a_dataset_with_broken_structure_does_not_start(logic, dataset):
    ds = dataset(5)
    (ds / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        logic.start_training(ds, TrainingOptions("Broken"))
    assert "training was not started" in str(info.value) and "case_002" in str(info.value)
    assert not logic.work_root.exists()
    assert not logic.summarize(ds).ok


def test_a_dataset_failing_verification_stops_before_planning_with_the_messages(logic, dataset):
    import SimpleITK as sitk

    ds = dataset(5)
    path = ds / "labelsTr" / "case_001.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 7                                    # a label value the dataset does not declare
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    assert logic.summarize(ds).ok                       # structure fine: only the content check finds it
    job = logic.start_training(ds, TrainingOptions("Bad labels"))
    assert job.wait(120)
    assert job.error is not None and "failed verification; training did not start" in job.error
    assert "case_001" in job.error and "7" in job.error
    assert ("error", job.error) in job.messages
    work = job.state.work
    assert not (work / "fake_calls.jsonl").exists() and not (work / "plans.json").exists()
    ok, errors, _ = logic.verify(ds, timeout=60)
    assert not ok and any("case_001" in e for e in errors)
    # fixed: the same name starts again (a run stopped before any training blocks nothing)
    arr[0, 0, 0] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    assert logic.verify(ds, timeout=60)[0]
    job = logic.start_training(ds, TrainingOptions("Bad labels", epochs=1))
    assert job.wait(120) and job.error is None, job.error


def test_too_few_cases_for_five_folds_is_explained_and_a_single_fold_offered(logic, dataset, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=2")
    ds = dataset(3)
    with pytest.raises(TooFewCasesError) as info:
        logic.start_training(ds, TrainingOptions("Few", mode="full"))
    msg = str(info.value)
    assert "3 case(s)" in msg and "at least 5" in msg and "fold 'all'" in msg
    assert info.value.suggestion.folds == ("all",) and not logic.work_root.exists()
    job = logic.start_training(ds, info.value.suggestion)
    assert job.wait(120) and job.error is None, job.error
    cmds = calls(job.state.work)
    assert [c[0] for c in cmds] == ["fingerprint", "plan", "preprocess", "train"] and cmds[3][3] == "all"
    assert models.read_model_info(job.model_path).folds == ("all",)
    # quick mode below 5 cases picks fold 'all' by itself
    assert logic.plan_training(ds, TrainingOptions("Few2")).folds == ["all"]


def test_disk_full_while_installing_stops_cleanly_and_resume_installs(logic, dataset, monkeypatch):
    import shutil as shutil_module

    from AutoSegSlicer.selftest import make_model_folder

    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=1")
    previous = make_model_folder(logic.models_dir / "Previous")
    before = {p: p.read_bytes() for p in previous.rglob("*") if p.is_file()}
    real_copy = shutil_module.copyfile

    def full_disk(src, dst, *a, **k):   # what AutoSegLib's install (models.install.install_from_work) copies with
        if str(src).endswith("checkpoint_final.pt"):
            raise OSError(28, "No space left on device", str(dst))
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(shutil_module, "copyfile", full_disk)
    job = logic.start_training(dataset(5), TrainingOptions("Install full", epochs=1))
    assert job.wait(120) and not job.running
    # the library's WriteError: the file that could not be written, the cause; the module's disk-full advice
    assert "checkpoint_final.pt: could not be written: the disk is full" in job.error, job.error
    assert f"The disk holding the models folder {logic.models_dir} is full" in job.error, job.error
    assert "Resume" in job.error and "work folder" not in job.error
    assert [m.path.name for m in models.list_models(logic.models_dir)[0]] == ["Previous"]  # nothing half-installed
    assert [p.name for p in logic.models_dir.iterdir()] == ["Previous"]  # the staging folder was removed
    assert {p: p.read_bytes() for p in previous.rglob("*") if p.is_file()} == before   # the previous model stays
    monkeypatch.setattr(shutil_module, "copyfile", real_copy)
    job2 = logic.resume(job.state.work)
    assert job2.wait(120) and job2.error is None, job2.error
    assert [c[0] for c in calls(job.state.work)] == ["fingerprint", "plan", "preprocess", "train"]  # install re-ran
    assert models.read_model_info(job2.model_path).name == "Install full"


def test_a_missing_python_stops_the_run_with_a_message(logic, dataset):
    logic.python_executable = "/nonexistent/PythonSlicer"
    job = logic.start_training(dataset(5), TrainingOptions("NoPython"))
    assert not job.running and "could not start /nonexistent/PythonSlicer" in job.error


def test_damaged_state_files_are_reported_not_resumed(logic, tmp_path):
    work = logic.work_root / "Damaged"
    work.mkdir(parents=True)
    for text, match in [("{", "not valid JSON"), ('{"format": 99}', "unknown format"),
                        ('{"format": 1, "kind": "train"}', "incomplete")]:
        (work / STATE_FILE).write_text(text)
        with pytest.raises(AutoSegError, match=match):
            logic.resume(work)
        assert logic.resumable() == []
    with pytest.raises(AutoSegError, match="not a training work folder"):
        logic.discard(tmp_path)
    logic.discard(work)
    assert not work.exists()


def test_summary_of_a_region_dataset_names_the_region_outputs(dataset):
    ds = dataset(2)
    data = json.loads((ds / "dataset.json").read_text())
    data["labels"] = {"background": 0, "whole": [1, 2], "lesion": 2, "ignore": 3}
    data["regions_class_order"] = [1, 2]
    (ds / "dataset.json").write_text(json.dumps(data))
    summary = TrainingLogic.summarize(ds)
    assert summary.ok and summary.output_names == ["whole", "lesion"] and summary.ignore_label == 3
    assert "Partially annotated: label value 3" in summary.text()


def test_bad_options_are_refused():
    for kw, text in [({"model_name": ""}, "model name"), ({"model_name": "a/b"}, "model name"),
                     ({"model_name": "x", "mode": "fast"}, "mode"), ({"model_name": "x", "epochs": 0}, "epochs"),
                     ({"model_name": "x", "folds": ("5",)}, "fold"), ({"model_name": "x", "device": "tpu"}, "device"),
                     ({"model_name": "x", "time_budget_minutes": -1}, "time budget")]:
        with pytest.raises(AutoSegError, match=text):
            TrainingOptions(**kw)


# -- fine-tuning ---------------------------------------------------------------------------------------------
@pytest.fixture
def base_model(logic):
    return make_model_folder(logic.models_dir / "Organs", channel_names=("MRI",),
                             model_json={"name": "Organs", "version": "1", "colors": {"lesion": [1, 1, 0]}})


def test_finetune_produces_a_new_version_and_keeps_the_old(logic, dataset, base_model, monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=2")
    steps = [{"step": "largest_component", "labels": "foreground"}]
    (base_model / "inference.json").write_text(json.dumps({
        "schema_version": 1, "configurations": ["3d_fullres"], "folds": {"3d_fullres": list("01234")},
        "postprocessing": steps}))
    before = {p: p.read_bytes() for p in base_model.rglob("*") if p.is_file()}
    ds = dataset(3, name="Corrected")
    job = logic.start_finetune(base_model, ds, TrainingOptions("Organs", epochs=2))
    assert job.wait(120) and job.error is None, job.error
    work = job.state.work
    cmds = calls(work)
    assert [c[0] for c in cmds] == ["preprocess", "train"]
    assert cmds[0][2:] == ["--configurations", "3d_fullres"]
    train = cmds[1]
    assert train[2:4] == ["3d_fullres", "all"] and train[train.index("--init-from") + 1] == str(base_model)
    assert json.loads((work / "plans.json").read_text()) == json.loads((base_model / "plans.json").read_text())
    assert json.loads((work / "dataset.json").read_text())["dataset_path"] == str(ds.resolve())
    found, _ = models.list_models(logic.models_dir)
    assert [(m.name, m.version, m.path.name) for m in found] == [("Organs", "1", "Organs"), ("Organs", "2", "Organs_v2")]
    meta = json.loads((job.model_path / "model.json").read_text())
    assert meta["parent"] == {"path": str(base_model), "name": "Organs", "version": "1"}
    assert meta["colors"] == {"lesion": [1, 1, 0]}
    inference = json.loads((job.model_path / "inference.json").read_text())   # choice kept, on the folds trained
    assert inference["folds"] == {"3d_fullres": ["all"]} and inference["postprocessing"] == steps
    assert inference["configurations"] == ["3d_fullres"]
    assert {p: p.read_bytes() for p in base_model.rglob("*") if p.is_file()} == before   # old model untouched


def test_finetune_on_partially_annotated_corrections_keeps_outputs_and_declares_ignore(logic, dataset, base_model,
                                                                                      monkeypatch):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=1")
    plans = json.loads((base_model / "plans.json").read_text())
    plans["labels"] = {"background": 0, "organ": 1, "lesion": 2}
    (base_model / "plans.json").write_text(json.dumps(plans))
    ds = dataset(3, name="PartialCorrections")
    data = json.loads((ds / "dataset.json").read_text())
    data["labels"]["ignore"] = 3
    (ds / "dataset.json").write_text(json.dumps(data))
    job = logic.start_finetune(base_model, ds, TrainingOptions("Organs"))
    assert job.wait(120) and job.error is None, job.error
    work_plans = json.loads((job.state.work / "plans.json").read_text())
    assert work_plans["labels"] == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    assert {k: v for k, v in work_plans.items() if k != "labels"} == {k: v for k, v in plans.items() if k != "labels"}
    assert models.read_model_info(job.model_path).labels == (("background", 0), ("organ", 1), ("lesion", 2))


def test_finetune_refuses_other_labels_or_channel_count(logic, dataset, base_model, synthetic_dataset):
    ds = dataset(3)
    data = json.loads((ds / "dataset.json").read_text())
    data["labels"] = {"background": 0, "liver": 1, "lesion": 2}
    (ds / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(AutoSegError, match=r"only in the model: \[\('organ', 1\)\].*only in the dataset: \[\('liver', 1\)\]"):
        logic.start_finetune(base_model, ds, TrainingOptions("Organs"))
    two = synthetic_dataset(name="TwoChannels", n_cases=3, shape=(6, 10, 10), n_channels=2)
    with pytest.raises(AutoSegError, match=r"takes 1 input channel\(s\) \(MRI\).*has 2"):
        logic.start_finetune(base_model, two, TrainingOptions("Organs"))
    assert not logic.work_root.exists()


def test_resume_passes_resume_when_only_the_best_checkpoint_exists(tmp_path):
    """A stop during the first checkpoint write leaves checkpoint_best.pt alone: Slicer's Resume must
    still pass --resume (the trainer falls back to it) instead of starting over and being refused."""
    from AutoSegLib.io.work_folder import fold_dir
    from AutoSegSlicer.train.pipeline import Step, resume_args

    step = Step("train", ["WORK", "3d_fullres", "0"], configuration="3d_fullres", fold="0")
    folder = fold_dir(tmp_path, "3d_fullres", "0")
    folder.mkdir(parents=True)
    assert "--resume" not in resume_args(step, tmp_path)
    (folder / "checkpoint_best.pt").write_bytes(b"x")
    assert resume_args(step, tmp_path)[-1] == "--resume"
