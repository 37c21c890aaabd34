"""evaluate_folders / `autoseg evaluate` on small label files written to disk."""
import csv
import json
import math

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.errors import AutoSegError
from AutoSegLib.evaluation.folders import evaluate_folders
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image
from AutoSegLib.io.labels import LabelLayout


@pytest.fixture
def folders(tmp_path):
    geo = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()))
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:4, 2:6, 2:6] = 1            # 48 voxels
    pred = ref.copy()
    pred[1, 2:6, 2:6] = 0             # 16 missed -> Dice 64/80
    write_image(ref, geo, ref_dir / "a.nii.gz")
    write_image(pred, geo, pred_dir / "a.nii.gz")
    ref_b = np.zeros((6, 8, 8), np.uint8)
    ref_b[2:4, 2:4, 2:4] = 2          # only label 2 in case b; label 1 empty in both -> NaN
    write_image(ref_b, geo, ref_dir / "b.nrrd")
    write_image(ref_b, geo, pred_dir / "b.nii.gz")
    write_image(ref_b, geo, ref_dir / "c.nii.gz")  # no prediction: reported as missing
    return pred_dir, ref_dir, geo


def test_summary_values_and_files(folders, tmp_path):
    pred_dir, ref_dir, _ = folders
    layout = LabelLayout.from_dataset_labels({"background": 0, "organ": 1, "lesion": 2})
    out = tmp_path / "eval"
    s = evaluate_folders(pred_dir, ref_dir, layout, out)
    cases = {c["case"]: c for c in s["cases"]}
    assert set(cases) == {"a", "b"} and s["missing_predictions"] == ["c"]
    assert cases["a"]["metrics"]["organ"]["Dice"] == pytest.approx(64 / 80)
    assert math.isnan(cases["b"]["metrics"]["organ"]["Dice"])
    assert s["mean"]["organ"]["Dice"] == pytest.approx(64 / 80) and s["n_defined"]["organ"]["Dice"] == 1
    assert math.isnan(cases["a"]["metrics"]["lesion"]["Dice"])
    assert s["mean"]["lesion"]["Dice"] == 1.0
    assert s["foreground_mean"]["Dice"] == pytest.approx((0.8 + 1.0) / 2)
    # HD95 of case a: removed z-slice (spacing 2) -> reference surface voxels at z=1 are 2 mm away
    assert cases["a"]["metrics"]["organ"]["HD95_mm"] == pytest.approx(2.0)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["cases"][1]["metrics"]["organ"]["Dice"] is None  # NaN -> null
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == 4 and float(rows[0]["Dice"]) == pytest.approx(0.8)
    assert (out / "summary.csv").is_file()


def test_default_labels_and_cli(folders, tmp_path, capsys):
    pred_dir, ref_dir, _ = folders
    s = evaluate_folders(pred_dir, ref_dir, None, None, surface=False)
    assert list(s["labels"]) == ["1", "2"]
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2}}))
    rc = main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(tmp_path / "cli"), "--labels", str(ds),
               "--progress-json"])
    assert rc == 0
    events = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    result = [e for e in events if e["event"] == "result"][0]
    assert result["foreground_mean_dice"] == pytest.approx(0.9)


def test_bad_input(folders, tmp_path):
    pred_dir, ref_dir, geo = folders
    write_image(np.zeros((6, 8, 8), np.uint8), Geometry((1.0, 1.0, 1.0), geo.origin, geo.direction),
                pred_dir / "c.nii.gz")
    with pytest.raises(AutoSegError, match="spacing"):
        evaluate_folders(pred_dir, ref_dir)
    write_image(np.zeros((6, 8, 8), np.uint8), geo, pred_dir / "zz.nii.gz")
    with pytest.raises(AutoSegError, match="no reference"):
        evaluate_folders(pred_dir, ref_dir)
    with pytest.raises(AutoSegError, match="not found"):
        evaluate_folders(tmp_path / "nope", ref_dir)
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(tmp_path / "x")]) == 2


def test_parallel_equals_serial(folders):
    pred_dir, ref_dir, _ = folders
    a = evaluate_folders(pred_dir, ref_dir, num_workers=1)
    b = evaluate_folders(pred_dir, ref_dir, num_workers=2)
    assert json.dumps(a, default=str) == json.dumps(b, default=str)
