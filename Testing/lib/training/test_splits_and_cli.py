"""Cross-validation splits and the `autoseg train` command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.training.splits import fold_cases, load_or_create_splits, make_splits, parse_fold

REPO = Path(__file__).resolve().parents[3]


def test_make_splits_is_a_deterministic_partition():
    cases = [f"c{i:02d}" for i in range(23)]
    a = make_splits(cases[::-1])
    assert a == make_splits(cases)          # input order does not matter
    assert len(a) == 5
    vals = [c for s in a for c in s["val"]]
    assert sorted(vals) == cases            # every case validated exactly once
    assert {len(s["val"]) for s in a} == {4, 5}
    for s in a:
        assert sorted(s["train"] + s["val"]) == cases


def test_existing_split_is_respected_and_checked(tmp_path):
    cases = ["a", "b", "c", "d"]
    custom = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["c", "d"], "val": ["a", "b"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, cases) == custom
    assert fold_cases(tmp_path, cases, 1) == (["c", "d"], ["a", "b"])
    assert fold_cases(tmp_path, cases, "all") == (cases, [])
    with pytest.raises(AutoSegError, match="unknown fold 2: expected 0..1"):
        fold_cases(tmp_path, cases, 2)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["a", "zz"], "val": ["a"]}]))
    with pytest.raises(AutoSegError, match=r"(?s)not in the preprocessed data: \['zz'\].*both in train and val"):
        load_or_create_splits(tmp_path, cases)
    with pytest.raises(AutoSegError, match="unknown fold 'x'"):
        parse_fold("x")


def test_cli_train_progress_json_and_errors(tmp_path, make_work):
    work = make_work(tmp_path, n_cases=4)
    cmd = [sys.executable, "-m", "AutoSegLib", "train", str(work), "3d_fullres", "1", "--epochs", "1",
           "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
           "--no-mirroring", "--progress-json"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert "epoch" in kinds and kinds[-1] == "result"
    summary = json.loads((work / "trained" / "3d_fullres" / "fold_1" / "validation" / "summary.json").read_text())
    assert events[-1]["mean_foreground_dice"] == summary["mean_foreground_dice"]
    assert 0.0 <= events[-1]["mean_foreground_dice"] <= 1.0
    # the same command again: refused, nothing overwritten, exit status 2 without a traceback
    before = (work / "trained" / "3d_fullres" / "fold_1" / "checkpoint_final.pt").read_bytes()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--resume" in res.stderr
    assert (work / "trained" / "3d_fullres" / "fold_1" / "checkpoint_final.pt").read_bytes() == before
    res = subprocess.run(cmd[:7] + ["--epochs", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "epochs must be >= 1" in res.stderr
