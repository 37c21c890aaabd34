"""A tiny real training started from the module (real `autoseg verify / fingerprint / plan / preprocess / train` in child
processes): its curves match the trainer's own log, the model is installed, listed, and segments a volume
through the module's prediction path (real `autoseg predict`)."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from AutoSegLib.io.images import read_image
from AutoSegSlicer.common.runner import ProcessRunner
from AutoSegSlicer.train.logic import TrainingLogic
from AutoSegSlicer.train.options import TrainingOptions
from autoseg_harness import REPO

MISSING = [c for c in ("plan_and_preprocess", "train", "predict")
           if importlib.util.find_spec(f"AutoSegLib.commands.{c}") is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"library commands not available yet: {MISSING}")


def small_runner_factory():
    """The real runner; train gets 0 augmentation workers and 1 thread (2 shared CPU cores in CI)."""
    class Runner(ProcessRunner):
        def start(self, argv):
            argv = list(argv)
            if argv[3] == "train":
                argv[-1:-1] = ["--workers", "0", "--threads", "1"]
            elif argv[3] in ("fingerprint", "plan", "preprocess"):
                argv[-1:-1] = ["--workers", "1"]
            super().start(argv)

    def factory(**kw):
        kw.setdefault("pythonpath", str(REPO))
        return Runner(**kw)

    return factory


def test_a_real_tiny_training_installs_a_model_that_segments(slicer_harness, synthetic_dataset, tmp_path, make_volume):
    from AutoSegSlicer.segment.logic import AutoSegLogic
    from AutoSegSlicer.segment.options import PredictOptions

    ds = synthetic_dataset(name="Tiny", n_cases=3, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=1)
    logic = TrainingLogic(slicer_harness.scene, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                          pythonpath=str(REPO), runner_factory=small_runner_factory())
    options = TrainingOptions("Tiny organs", epochs=2, iterations_per_epoch=2, val_iterations=1, device="cpu")
    job = logic.start_training(ds, options)
    assert job.wait(500), job.status.text()
    assert job.error is None and job.finished, job.error
    assert [s.label for s in job.state.steps] == ["verify", "fingerprint", "plan", "expand", "preprocess",
                                                  "train 3d_fullres fold all", "install"]
    assert sorted(p.name for p in (job.state.work / "preprocessed").iterdir()) == \
        [json.loads((job.state.work / "plans.json").read_text())["configurations"]["3d_fullres"]["data_identifier"]]
    # the curves hold exactly what the trainer logged
    logged = [json.loads(x) for x in (job.state.work / "trained/3d_fullres/fold_all/training_log.jsonl")
              .read_text().splitlines()]
    rows = job.curves.rows("3d_fullres", "all")
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in logged] == [0, 1]
    for r, e in zip(rows, logged):
        assert r["train_loss"] == pytest.approx(e["train_loss"]) and r["val_loss"] == pytest.approx(e["val_loss"])
        assert [r["dice organ"], r["dice lesion"]] == pytest.approx(e["pseudo_dice"])
    # installed and listed by the module's model picker; segments a loaded volume
    seg_logic = AutoSegLogic(scene=slicer_harness.scene, models_dir=logic.models_dir, python_executable=sys.executable,
                             pythonpath=str(REPO), work_root=tmp_path / "predict")
    found, problems = seg_logic.models()
    assert problems == [] and [(m.name, m.version, m.folds) for m in found] == [("Tiny organs", "1", ("all",))]
    image, geo = read_image(ds / "imagesTr" / "case_000_0000.nii.gz")
    volume = make_volume(image[0] if image.ndim == 4 else image, geo.spacing, geo.origin, geo.direction, name="scan")
    seg = seg_logic.segment(found[0], [volume], PredictOptions(tta=False, device="cpu"), timeout=300)
    s = seg.GetSegmentation()
    assert [s.GetSegment(s.GetNthSegmentID(i)).GetName() for i in range(s.GetNumberOfSegments())] == ["organ", "lesion"]
    from AutoSegSlicer.correct import export
    label, _ = export.labelmap_array(seg, volume)
    assert label.shape == volume.GetImageData().GetDimensions()[::-1]
    assert set(np.unique(label).tolist()) <= {0, 1, 2}



@pytest.mark.slow
def test_a_real_finetune_starts_from_the_model_and_installs_a_new_version(synthetic_dataset, tmp_path):
    ds = synthetic_dataset(name="Tiny", n_cases=3, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=1)
    logic = TrainingLogic(None, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                          pythonpath=str(REPO), runner_factory=small_runner_factory())
    options = TrainingOptions("Tiny organs", epochs=1, iterations_per_epoch=2, val_iterations=1, device="cpu")
    job = logic.start_training(ds, options)
    assert job.wait(500) and job.error is None, job.error
    first = job.model_path
    before = (first / "trained/3d_fullres/fold_all/checkpoint_final.pt").read_bytes()
    # fine-tune on two more cases: a new version starting from its weights; the old one kept and unchanged
    more = synthetic_dataset(name="More", n_cases=2, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=4)
    job = logic.start_finetune(first, more, options)
    assert job.wait(500) and job.error is None, job.error
    assert [s.label for s in job.state.steps] == ["verify", "prepare", "preprocess", "train 3d_fullres fold all",
                                                  "install"]
    resolved = json.loads((job.model_path / "trained/3d_fullres/fold_all/training_config.json").read_text())["resolved"]
    assert resolved["init_from"] == str(first / "trained/3d_fullres/fold_all/checkpoint_final.pt")
    assert resolved["train_cases"] == 2
    from AutoSegSlicer.common import models
    found, _ = models.list_models(logic.models_dir)
    assert [(m.name, m.version) for m in found] == [("Tiny organs", "1"), ("Tiny organs", "2")]
    assert (first / "trained/3d_fullres/fold_all/checkpoint_final.pt").read_bytes() == before
    # and on partially annotated corrections (odd slices "ignore"): the same outputs, a third version
    from AutoSegLib.io.images import write_image
    partial = synthetic_dataset(name="Partial", n_cases=2, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=6)
    for path in (partial / "labelsTr").glob("*.nii.gz"):
        label, geo = read_image(path)
        label = label.astype(np.uint8)
        label[1::2] = 3
        write_image(label, geo, path)
    data = json.loads((partial / "dataset.json").read_text())
    data["labels"]["ignore"] = 3
    (partial / "dataset.json").write_text(json.dumps(data))
    job = logic.start_finetune(job.model_path, partial, options)
    assert job.wait(500) and job.error is None, job.error
    found, _ = models.list_models(logic.models_dir)
    assert [m.version for m in found] == ["1", "2", "3"] and found[2].labels == found[0].labels


@pytest.mark.slow
def test_a_real_full_run_cross_validates_selects_and_reports(slicer_harness, synthetic_dataset, tmp_path):
    """Full mode (one configuration forced to keep it short): 5 folds, real find-best, report table from the
    real validation summaries and inference.json."""
    ds = synthetic_dataset(name="Five", n_cases=5, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=2)
    logic = TrainingLogic(slicer_harness.scene, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                          pythonpath=str(REPO), runner_factory=small_runner_factory())
    options = TrainingOptions("Five", mode="full", configuration="3d_fullres", epochs=1, iterations_per_epoch=2,
                              val_iterations=1, device="cpu")
    job = logic.start_training(ds, options)
    assert job.wait(1200) and job.error is None, job.error
    assert [s.label for s in job.state.steps][-2:] == ["find-best", "install"]
    inference = json.loads((job.model_path / "inference.json").read_text())
    assert inference["configurations"] == ["3d_fullres"]
    t = job.report_table
    assert t.GetNumberOfRows() == 7                      # 5 folds, their mean, the choice
    for fold in range(5):
        summary = json.loads((job.model_path / f"trained/3d_fullres/fold_{fold}/validation/summary.json").read_text())
        assert t.GetCellText(fold, 1) == str(fold)
        assert float(t.GetCellText(fold, 2)) == pytest.approx(summary["mean_dice"]["organ"], abs=1e-6)
    assert t.GetCellText(6, 0) == "chosen: 3d_fullres"


@pytest.mark.slow
def test_a_real_training_cancelled_after_an_epoch_resumes_to_the_end(slicer_harness, synthetic_dataset, tmp_path):
    import time

    ds = synthetic_dataset(name="Stop", n_cases=3, shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), seed=3)
    logic = TrainingLogic(slicer_harness.scene, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                          pythonpath=str(REPO), runner_factory=small_runner_factory())
    options = TrainingOptions("Stop", epochs=4, iterations_per_epoch=2, val_iterations=1, device="cpu")
    job = logic.start_training(ds, options)
    deadline = time.monotonic() + 600
    while job.poll() and not job.curves.rows("3d_fullres", "all"):
        assert time.monotonic() < deadline, job.status.text()
        time.sleep(0.05)
    job.cancel()
    fold = job.state.work / "trained/3d_fullres/fold_all"
    done = len((fold / "training_log.jsonl").read_text().splitlines())
    assert 1 <= done < 4 and (fold / "checkpoint_latest.pt").is_file() and not (fold / "checkpoint_final.pt").exists()
    job2 = logic.resume(job.state.work)
    assert job2.wait(600) and job2.error is None, job2.error
    logged = [json.loads(x)["epoch"] for x in (fold / "training_log.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3]
    assert [int(r["epoch"]) for r in job2.curves.rows("3d_fullres", "all")] == [0, 1, 2, 3]
    assert "--resume" in (job.state.work / "autoseg_training.log").read_text()
