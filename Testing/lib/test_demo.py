"""The end-to-end demo: a tiny run in the default suite (every artefact, numbers checked independently),
the archive of its model predicting the same labels, --dataset with held-out cases, and (slow) the real
default demo reaching a clearly-above-chance Dice."""
import json
import math

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.commands.demo import SYNTH_BUDGET_MINUTES

TINY = ["--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1",
        "--cases", "4", "--test-cases", "1", "--shape", "16", "24", "24", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    events = []
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "-o", str(out), "--progress-json"] + TINY)
    events = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    return out, rc, events


def test_tiny_demo_artefacts(tiny_demo):
    from AutoSegLib.io.images import read_image

    out, rc, events = tiny_demo
    assert rc == 0, [e for e in events if e["event"] == "error"]
    for rel in ("raw/AutoSegDemo/dataset.json", "raw/AutoSegDemo/imagesTs/test_000_0000.nii.gz",
                "work/dataset.json", "work/fingerprint.json", "work/plans.json", "work/splits_final.json",
                "work/trained/3d_budget/fold_0/checkpoint_final.pt",
                "work/trained/3d_budget/fold_0/validation/summary.json",
                "work/inference.json", "work/find_best_report.json", "work/find_best_report.md",
                "predictions/test_000.nii.gz", "evaluation/summary.json", "evaluation/per_case.csv",
                "demo_case.png", "demo_summary.json"):
        assert (out / rel).is_file(), rel
    assert (out / "demo_case.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "demo_summary.json").read_text())
    organ = summary["test_dice"]["organ"]
    assert isinstance(organ, float) and 0.0 <= organ <= 1.0
    # the Dice reported equals one computed here from the files
    pred, pgeo = read_image(out / "predictions/test_000.nii.gz")
    ref, rgeo = read_image(out / "raw/AutoSegDemo/labelsTs/test_000.nii.gz")
    assert pred.shape == ref.shape and pgeo.is_close(rgeo)
    p, r = pred == 1, ref == 1
    assert organ == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    result = [e for e in events if e["event"] == "result" and "test_dice" in e][-1]
    assert result["test_dice"]["organ"] == pytest.approx(organ)
    assert any(e["event"] == "log" and "held-out Dice" in e["message"] for e in events)
    # the demo trains the configuration planned for its time budget on this device
    plans = json.loads((out / "work/plans.json").read_text())
    assert summary["configuration"] == plans["budget"]["configuration"] == "3d_budget"
    default = SYNTH_BUDGET_MINUTES
    slower = [n for n in summary["notes"] if f"instead of {default:g}" in n]  # a busy machine: planned longer, said so
    planned = default if not slower else float(slower[0].split(" minutes instead")[0].split()[-1])
    assert plans["budget"]["minutes"] == pytest.approx(planned)
    stages = {e.get("stage") for e in events if e["event"] == "stage"}
    assert {"verify", "fingerprint", "plan", "preprocess", "train", "find-best", "predict", "evaluate"} <= stages


def test_tiny_demo_archive_predicts_the_same(tiny_demo, tmp_path):
    """export-model of the demo's work folder, then predict from the archive: identical label maps."""
    from AutoSegLib.inference.files import predict_files
    from AutoSegLib.io.images import read_image
    from AutoSegLib.models.folder import load_model

    out, rc, _ = tiny_demo
    assert rc == 0
    archive = tmp_path / "demo_model.zip"
    assert main(["export-model", str(out / "work"), "-o", str(archive)]) == 0
    model = load_model(archive, cache_dir=tmp_path / "extracted")
    assert model.inference["configurations"] == ["3d_budget"]
    predict_files(model, out / "raw/AutoSegDemo/imagesTs", tmp_path / "pred", tta=False)
    a, _ = read_image(tmp_path / "pred/test_000.nii.gz")
    b, _ = read_image(out / "predictions/test_000.nii.gz")
    np.testing.assert_array_equal(a, b)


def test_demo_on_a_dataset_with_held_out_cases(tmp_path, synthetic_dataset):
    raw = synthetic_dataset(n_cases=5, shape=(16, 24, 24), seed=3)  # no imagesTs: cases are held out
    out = tmp_path / "out"
    rc = main(["demo", "-o", str(out), "--dataset", str(raw), "--holdout", "1", "--no-tta"] + TINY[:8] +
              ["--workers", "1", "--time-budget-minutes", "2"])
    assert rc == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    held = summary["test_cases"]
    assert len(held) == 1 and summary["training_cases"] == 4
    splits = json.loads((out / "work/splits_final.json").read_text())
    assert all(held[0] not in s["train"] + s["val"] for s in splits)  # never trained or validated on
    assert (out / "holdout/labels" / f"{held[0]}.nii.gz").is_file()
    assert math.isfinite(summary["test_dice"]["organ"])
    assert main(["demo", "-o", str(tmp_path / "x"), "--dataset", str(raw), "--holdout", "4"] + TINY[:8]) == 2


@pytest.mark.slow
def test_default_demo_learns_organ_and_lesion(tmp_path):
    """The README's first command, as is: Dice on the held-out cases clearly above chance for both labels."""
    rc = main(["demo", "-o", str(tmp_path / "demo")])
    assert rc == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["test_dice"]["organ"] > 0.7, summary
    assert summary["test_dice"]["lesion"] > 0.5, summary
    assert summary["folds"] == ["0"]
