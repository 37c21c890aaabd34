"""Training on iterations and time: the per-iteration learning rate, mid-epoch checkpoints and resume, the
validation reserve of a time budget, and a budget configuration through train auto / predict / find-best /
fine-tuning."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegLib.planning import budget as B
from AutoSegLib.training import epochs as epochs_mod
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold

FAST = TrainingConfig(epochs=2, iterations_per_epoch=10, val_iterations=2, num_workers=0, torch_threads=1,
                      mirror_at_validation=False, seed=1)


@pytest.fixture(scope="module")
def base_work(tmp_path_factory, make_work):
    return make_work(tmp_path_factory.mktemp("budget3d"), n_cases=5)


@pytest.fixture
def work(base_work, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(base_work, dst)
    return dst


def read_log(fold_dir):
    return [json.loads(line) for line in (fold_dir / "training_log.jsonl").read_text().splitlines()]


def test_the_learning_rate_anneals_within_an_epoch(work):
    out = train_fold(work, "3d_fullres", 0, FAST.replace(epochs=1, validate_at_end=False))
    # one epoch of 10 iterations: the last iteration ran at lr(9/10), not at the epoch's starting rate
    assert read_log(out)[0]["lr"] == pytest.approx(0.01 * (1 - 9 / 10) ** 0.9)


def test_a_kill_inside_a_long_epoch_resumes_at_its_iteration(work, monkeypatch):
    monkeypatch.setattr(epochs_mod, "CHECKPOINT_EVERY_S", 0.0)  # every iteration counts as a long time
    real_step = epochs_mod.train_step
    calls = []

    def killed_at_7(*a, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt  # stands for kill -9: nothing after this runs
        return real_step(*a, **kw)

    monkeypatch.setattr(epochs_mod, "train_step", killed_at_7)
    cfg = FAST.replace(epochs=1, validate_at_end=False)
    with pytest.raises(KeyboardInterrupt):
        train_fold(work, "3d_fullres", 0, cfg)
    fold = work / "trained" / "3d_fullres" / "fold_0"
    latest = torch.load(fold / "checkpoint_latest.pt", weights_only=True)
    assert latest["loop_state"]["epoch"] == 0 and latest["loop_state"]["iteration"] == 6
    assert len(latest["loop_state"]["partial_losses"]) == 6
    monkeypatch.setattr(epochs_mod, "train_step", real_step)
    calls.clear()
    counted = []
    monkeypatch.setattr(epochs_mod, "train_step", lambda *a, **kw: counted.append(1) or real_step(*a, **kw))
    train_fold(work, "3d_fullres", 0, cfg, resume=True)
    log = read_log(fold)
    assert len(counted) == 4                                   # iterations 7..10 only
    assert len(log) == 1 and log[0]["iterations"] == 10       # the epoch is complete, its losses kept


class StepClock:
    """Stands for `time` in the epoch loop: the clock moves only by ``step_s`` per training step, so the
    number of steps a budget buys is known in advance whatever the machine's load."""

    def __init__(self, step_s):
        self.t, self.step_s = 0.0, step_s

    def monotonic(self):
        return self.t

    @staticmethod
    def time():
        import time
        return time.time()


@pytest.mark.parametrize("fill", [False, True])
def test_a_run_ahead_of_its_plan_fills_its_budget(work, monkeypatch, fill):
    clock = StepClock(step_s=10.0)
    monkeypatch.setattr(epochs_mod, "time", clock)
    real_step = epochs_mod.train_step

    def timed_step(*a, **kw):
        clock.t += clock.step_s
        return real_step(*a, **kw)

    monkeypatch.setattr(epochs_mod, "train_step", timed_step)
    events = []
    # planned: 1 epoch of 3 steps (30 s) in a 2-minute budget, with nothing to validate at the end
    cfg = FAST.replace(epochs=1, iterations_per_epoch=3, time_budget_minutes=2.0, validate_at_end=False,
                       fill_budget=fill)
    out = train_fold(work, "3d_fullres", 0, cfg, progress=events.append)
    log = read_log(out)
    steps = sum(e["iterations"] for e in log)
    if not fill:
        assert steps == 3 and len(log) == 1  # done after the planned epoch, 90 s of the budget unused
        return
    # the setup's real seconds count too, so at most 12 and at least 10 steps of 10 s fit in 120 s
    assert 10 <= steps <= 12 and len(log) >= 4
    assert log[-1]["lr"] < 0.01 * (1 - 90 / 120) ** 0.9  # annealed by the minutes, not by the 1 epoch planned
    epochs = [e for e in events if e.get("event") == "epoch"]
    assert epochs[-1]["epochs"] == len(log) and epochs[-1]["eta_s"] == 0.0


def test_the_reserve_counts_the_final_validation_windows():
    runner = object.__new__(epochs_mod.EpochRunner)
    runner.config = TrainingConfig(val_iterations=3, mirror_at_validation=True)
    runner.batch_size, runner.final_windows, runner.final_cases = 2, 10, 4
    runner.mean_step_s, runner.forward_s_per_patch = 0.9, None

    class P:
        patch_size = (8, 8, 8)
    runner.plan = P()
    # before any validation: a forward pass is a third of a step, per patch (0.9 / 3 / 2 = 0.15 s)
    epoch_val = 3 * 2 * 0.15
    final = 10 * 8 * 0.15 + B.FINAL_VALIDATION_PER_CASE_S * 4   # 8 mirrorings in 3D
    want = B.RESERVE_MARGIN * (epoch_val + final) + B.CHECKPOINT_S
    assert runner.reserve_seconds() == pytest.approx(want)
    runner.forward_s_per_patch = 0.05                            # measured: replaces the estimate
    runner.config = TrainingConfig(val_iterations=3, mirror_at_validation=False, time_budget_minutes=1)
    want = B.RESERVE_MARGIN * (3 * 2 * 0.05 + 10 * 0.05 + B.FINAL_VALIDATION_PER_CASE_S * 4) \
        + B.CHECKPOINT_S
    assert runner.reserve_seconds() == pytest.approx(want)
    assert not runner._over_budget(60 - want - 0.01) and runner._over_budget(60 - want + 0.01)


# ---- a budget configuration end to end -------------------------------------------------------------------
def budget_work(root: Path):
    """Synthetic dataset planned with a 5-minute budget on a stand-in device, budget data preprocessed."""
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import write_work_dataset_json
    from AutoSegLib.io.synthetic import make_synthetic_dataset
    from AutoSegLib.training.calibration import Calibration
    from AutoSegLib.planning.planner import plan_experiment
    from AutoSegLib.planning.workdir import fingerprint_for
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    raw = make_synthetic_dataset(root / "raw", n_cases=6, shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0), seed=3)
    ds = load_dataset(raw)
    work = root / "work"
    work.mkdir()
    fp = fingerprint_for(ds, work, num_workers=1)
    cal = Calibration(key="stand-in", device="cpu", precision="float32", threads=1, probe_macs=(1e8, 2e8, 1e10, 2e10),
                      probe_seconds=(6e8 / 50e9, 1.2e9 / 50e9, 6e10 / 50e9, 1.2e11 / 50e9),
                      probe_voxels=(32 ** 3, 32 ** 3, 64 ** 3, 64 ** 3), probe_features=(16, 32, 16, 32),
                      augment_seconds_per_voxel=1e-8, workers=1, measured_at="test")
    plans = plan_experiment(fp, ds, budget_minutes=5, calibration=cal)
    plans.to_json(work / "plans.json")
    write_work_dataset_json(ds, work)
    preprocess_dataset(raw, plans, ["3d_budget"], work, num_workers=1)
    return raw, work, plans


def test_train_auto_predict_find_best_and_fine_tune_a_budget_configuration(tmp_path):
    from AutoSegLib.cli import main
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.planning.plans import Plans

    raw, work, plans = budget_work(tmp_path)
    assert plans.recommended_configuration == "3d_budget" and plans.budget.minutes == 5
    plans_before = (work / "plans.json").read_bytes()
    common = ["--epochs", "2", "--iterations-per-epoch", "3", "--workers", "0", "--threads", "1"]
    assert main(["train", str(work), "auto", "0", *common]) == 0
    fold = work / "trained" / "3d_budget" / "fold_0"
    config = json.loads((fold / "training_config.json").read_text())
    # the budget's settings where the user set nothing: its time, its precision, no mirroring
    assert config["time_budget_minutes"] == 5 and config["precision"] == "float32"
    assert config["mirror_at_validation"] is False and config["epochs"] == 2
    assert (fold / "validation" / "summary.json").is_file()
    # before find-best, predict uses the configuration that was trained (the recommended one)
    model = load_model(work)
    assert model.default_configurations() == ("3d_budget",)
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(work), "-i", str(raw / "imagesTr"), "-o", str(out), "--no-tta",
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 6
    # find-best treats it like any configuration
    assert main(["find-best", str(work), "--configurations", "3d_budget", "--folds", "0"]) == 0
    assert json.loads((work / "inference.json").read_text())["configurations"] == ["3d_budget"]
    # fine-tuning with the same plans: nothing re-planned, weights start from the fold
    assert main(["train", str(work), "auto", "1", "--init-from", str(work), *common, "--output",
                 str(tmp_path / "ft")]) == 0
    ft = json.loads((tmp_path / "ft" / "trained" / "3d_budget" / "fold_1" / "training_config.json").read_text())
    assert ft["init_from"] == str(work) and ft["initial_lr"] == pytest.approx(0.01)
    assert (work / "plans.json").read_bytes() == plans_before
    assert Plans.from_json(work / "plans.json").budget == plans.budget


def test_a_budget_run_without_a_schedule_takes_the_planned_one(tmp_path):
    from AutoSegLib.training.config import budget_defaults

    _, _, plans = budget_work(tmp_path)
    b = plans.budget
    cfg = budget_defaults(TrainingConfig(), b, set())
    assert (cfg.epochs, cfg.iterations_per_epoch, cfg.val_iterations) == (b.epochs, b.iterations_per_epoch,
                                                                           b.val_iterations)
    assert cfg.time_budget_minutes == b.minutes and not cfg.mirror_at_validation
    assert cfg.fills_budget  # the planned iterations are a prediction: the run uses the time it was given
    # a schedule the user set is a schedule: it ends where the user said
    assert not budget_defaults(TrainingConfig(epochs=3), b, {"epochs"}).fill_budget
    assert not budget_defaults(TrainingConfig(iterations_per_epoch=7), b, {"iterations_per_epoch"}).fill_budget
    # another time: the schedule is rescaled to what that time buys
    cfg = budget_defaults(TrainingConfig(time_budget_minutes=2 * b.minutes), b, {"time_budget_minutes"})
    ratio = cfg.epochs * cfg.iterations_per_epoch / b.iterations
    assert 1.8 < ratio < 2.6


def test_training_says_when_the_device_ran_off_its_plan(tmp_path):
    from dataclasses import replace
    from AutoSegLib.io.cache import read_entries, write_entries
    from AutoSegLib.training.calibration import CACHE_VERSION, default_cache_path
    from AutoSegLib.training.trainer import OFF_PLAN, off_plan

    _, work, plans = budget_work(tmp_path)
    record = replace(plans.budget, step_seconds=0.5, iterations=1000)
    assert OFF_PLAN == 1.4
    assert off_plan(record, 0.69, 700) is None  # 1.38x: within the calibration's error
    assert off_plan(record, 0.36, 1380) is None  # 0.72x
    level, note = off_plan(record, 0.75, 640)  # 1.5x
    assert level == "warning" and "0.75 s, 1.50x the 0.50 s" in note and "slower" in note
    assert "640 iterations instead of about 1000" in note
    level, note = off_plan(record, 0.33, 1500)  # 0.66x (a cache measured while the machine was busy)
    assert level == "info" and "0.33 s, 0.66x the 0.50 s" in note and "faster" in note
    # training a budget configuration measures its steps and says so at the end; then the device's cached
    # calibration (the plan's `machine` entry; other entries stay) is dropped, so the next plan measures it again
    short = FAST.replace(epochs=1, iterations_per_epoch=3, validate_at_end=False, time_budget_minutes=5)
    cache = default_cache_path()  # under the test session's XDG_CACHE_HOME (conftest)
    kept = read_entries(cache, CACHE_VERSION)
    for planned_s, level in ((1e-6, "warning"), (1e3, "info")):
        write_entries(cache, CACHE_VERSION, {**kept, plans.budget.machine: {"stand-in": 1}, "other": {"x": 2}})
        replace(plans, budget=replace(plans.budget, step_seconds=planned_s)).to_json(work / "plans.json")
        events = []
        train_fold(work, "3d_budget", 0, short, progress=events.append, output_dir=tmp_path / f"out{planned_s:g}")
        notes = [e for e in events if e["event"] == "log" and "was planned for" in e["message"]]
        assert [e["level"] for e in notes] == [level]
        assert "the next plan (Slicer's quick mode included) measures the device again" in notes[0]["message"]
        entries = read_entries(cache, CACHE_VERSION)
        assert plans.budget.machine not in entries and entries["other"] == {"x": 2}
    write_entries(cache, CACHE_VERSION, kept)


def test_plan_recalibrate_measures_the_device_again(tmp_path, monkeypatch):
    from AutoSegLib.cli import main
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.synthetic import make_synthetic_dataset
    from AutoSegLib.training import calibration as calibration_mod

    raw = make_synthetic_dataset(tmp_path / "raw", n_cases=4, shape=(16, 32, 32), seed=3)
    forced = []

    def calibrate(*args, force=False, **kwargs):
        forced.append(force)
        raise AutoSegError("stand-in: no measurement")

    monkeypatch.setattr(calibration_mod, "calibrate", calibrate)
    for extra in ([], ["--recalibrate"]):
        assert main(["plan", str(raw), "-o", str(tmp_path / "w"), "--time-budget-minutes", "5", *extra]) == 2
    assert forced == [False, True]


def test_init_from_a_model_planned_at_another_resolution_names_the_difference(tmp_path):
    from AutoSegLib.cli import main

    _, work, _ = budget_work(tmp_path)
    common = ["--epochs", "1", "--iterations-per-epoch", "2", "--workers", "0", "--threads", "1", "--no-validation"]
    assert main(["train", str(work), "auto", "0", *common]) == 0
    source = tmp_path / "source"
    shutil.copytree(work / "trained", source / "trained")
    plans = json.loads((work / "plans.json").read_text())
    theirs = [round(2 * s, 6) for s in plans["configurations"]["3d_budget"]["spacing"]]
    plans["configurations"]["3d_budget"]["spacing"] = theirs   # same network, planned at twice the spacing
    (source / "plans.json").write_text(json.dumps(plans))
    fold1 = work / "trained" / "3d_budget" / "fold_1"
    from AutoSegLib.errors import AutoSegError
    with pytest.raises(AutoSegError) as err:
        train_fold(work, "auto", 1, FAST.replace(epochs=1, init_from=str(source)))
    message = str(err.value)
    assert "voxel spacing" in message and str(tuple(theirs)) in message and "plans.json" in message
    assert not (fold1 / "checkpoint_latest.pt").exists()


# ---- a coarse-to-fine pair end to end (its planning rules: planning/test_budget.py) --------------------------
def pair_work(root: Path):
    """budget_work's plans made coarse to fine by hand: 3d_budget finds the structure, 3d_budget_fine (the
    data's spacing, a smaller patch) refines it inside the box it found, grown by 2 mm."""
    from dataclasses import replace

    from AutoSegLib.planning.planner import _data_identifier
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    raw, work, plans = budget_work(root)
    full = plans.configurations["3d_fullres"]
    pool = B.budget_patch(full.spacing, (12.0, 16.0, 16.0))
    fine_plan = replace(full, name="3d_budget_fine", patch_size=tuple(pool.patch_size), batch_size=2,
                        network=B.candidate_topology(pool, 16), data_identifier="")
    fine_plan = replace(fine_plan, data_identifier=_data_identifier("3d_budget_fine", fine_plan,
                                                                    plans.transpose_forward,
                                                                    plans.intensity_properties))
    fine = replace(plans.budget, configuration="3d_budget_fine", spacing_factor=1.0, located_by="3d_budget",
                   roi_margin_mm=(2.0, 2.0, 2.0))
    plans = replace(plans, configurations={**plans.configurations, "3d_budget_fine": fine_plan},
                    budget=replace(plans.budget, fine=fine))
    plans.to_json(work / "plans.json")
    preprocess_dataset(raw, plans, ["3d_budget_fine"], work, num_workers=1)
    return raw, work, plans


def test_a_coarse_to_fine_pair_trains_both_stages_and_predicts_inside_the_coarse_box(tmp_path):
    from AutoSegLib.cli import main
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.inference.located import region_of_interest
    from AutoSegLib.inference.predict import predict_arrays
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.folder import load_model

    raw, work, plans = pair_work(tmp_path)
    assert plans.recommended_configuration == "3d_budget_fine"
    common = ["--epochs", "2", "--iterations-per-epoch", "3", "--workers", "0", "--threads", "1"]
    # the fine stage alone, before its coarse stage: refused before any training, saying what to do
    with pytest.raises(AutoSegError, match=r"train WORK auto 0"):
        train_fold(work, "3d_budget_fine", 0, FAST)
    assert main(["train", str(work), "auto", "0", *common]) == 0
    coarse, fine = (work / "trained" / c / "fold_0" for c in ("3d_budget", "3d_budget_fine"))
    assert (coarse / "checkpoint_final.pt").stat().st_mtime < (fine / "checkpoint_final.pt").stat().st_mtime
    config = json.loads((fine / "training_config.json").read_text())
    assert config["box_margin_mm"] == [2.0, 2.0, 2.0] and config["time_budget_minutes"] == plans.budget.fine.minutes
    assert json.loads((coarse / "training_config.json").read_text())["box_margin_mm"] == []
    assert json.loads((fine / "validation" / "summary.json").read_text())["mean_foreground_dice"] is not None
    # predict: the coarse stage first, then the fine one only in the box around its foreground. Six
    # iterations find nothing reliably, so the coarse stage's answer is a blob put where we choose.
    from AutoSegLib.inference import predict as predict_mod
    model = load_model(work)
    assert model.default_configurations() == ("3d_budget_fine",)
    image, geometry = read_case(sorted((raw / "imagesTr").glob("case_000_*")))
    blob = np.zeros(image.shape[1:], np.uint8)
    blob[4:7, 10:14, 12:15] = 1
    real = predict_mod.predict_configuration

    def coarse_finds_the_blob(model, images, geometry, configuration, *args, **kwargs):
        if configuration == "3d_budget":
            return blob.copy(), None
        return real(model, images, geometry, configuration, *args, **kwargs)

    events = []
    mp = pytest.MonkeyPatch()
    mp.setattr(predict_mod, "predict_configuration", coarse_finds_the_blob)
    try:
        labels, probs = predict_arrays(model, image, geometry, tta=False, device="cpu", return_probabilities=True,
                                       progress=events.append)
        box = region_of_interest(blob, geometry.spacing, (2.0, 2.0, 2.0))
        blob[:] = 0   # the coarse stage finds nothing: nothing to refine, background everywhere
        nothing, nothing_probs = predict_arrays(model, image, geometry, tta=False, device="cpu",
                                                return_probabilities=True)
    finally:
        mp.undo()
    assert not nothing.any() and np.all(nothing_probs[0] == 1.0)
    # 2 mm: one voxel on axis 0 (2 mm spacing), two on the others (1 mm)
    assert box == ((3, 8), (8, 16), (10, 17))
    outside = np.ones(labels.shape, bool)
    outside[tuple(slice(lo, hi) for lo, hi in box)] = False
    assert not labels[outside].any() and np.all(probs[0][outside] == 1.0) and not np.all(probs[0][~outside] == 1.0)
    said = [e.get("message", "") for e in events if e.get("event") == "log"]
    assert any("3d_budget_fine inside 7x8x5 of" in m for m in said)   # x*y*z of the box
    # find-best treats it like any configuration; the model needs both stages
    assert main(["find-best", str(work), "--configurations", "3d_budget_fine", "--folds", "0"]) == 0
    assert json.loads((work / "inference.json").read_text())["configurations"] == ["3d_budget_fine"]
    from AutoSegLib.inference.estimate import run_configurations
    assert run_configurations(model, ["3d_budget_fine"]) == ["3d_budget", "3d_budget_fine"]
    # an archive of the fine stage alone could not predict: refused, naming both
    archive = tmp_path / "pair.zip"
    with pytest.raises(AutoSegError, match=r"--configurations 3d_budget 3d_budget_fine"):
        from AutoSegLib.models.archive import export_model_archive
        export_model_archive(work, archive, configurations=["3d_budget_fine"])
    assert not archive.exists()
