"""The preprocess and plan-and-preprocess commands, end to end on a tiny synthetic dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest

from AutoSegLib.cli import main


@pytest.fixture
def tiny_dataset(synthetic_dataset):
    return synthetic_dataset(n_cases=3, shape=(8, 20, 20), spacing=(3.5, 1.0, 1.0), seed=3)


def test_plan_and_preprocess_then_preprocess_skips(tiny_dataset, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["plan-and-preprocess", str(tiny_dataset), "--output", str(work), "--workers", "1",
                 "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"fingerprint", "plan", "preprocess"} <= {e.get("stage") for e in events if e["event"] == "stage"}
    for name in ("dataset.json", "fingerprint.json", "plans.json"):
        assert (work / name).is_file()
    assert json.loads((work / "dataset.json").read_text())["dataset_path"] == str(tiny_dataset.resolve())
    plans = json.loads((work / "plans.json").read_text())
    for name, conf in plans["configurations"].items():
        folder = work / "preprocessed" / conf["data_identifier"]
        assert sorted(p.name for p in folder.glob("*.json")) == ["case_000.json", "case_001.json", "case_002.json"]
        data = np.load(folder / "case_001.npy", mmap_mode="r")
        props = json.loads((folder / "case_001.json").read_text())
        assert list(data.shape[1:]) == props["shape_after_resampling"]
        assert props["configuration"] == name
    assert main(["preprocess", str(work), "--workers", "1", "--progress-json"]) == 0
    result = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"result"' in x][-1]
    assert (result["processed"], result["skipped"]) == (0, 3)
    assert main(["preprocess", str(work), "-c", "3d_fullres", "--force", "--workers", "1", "--progress-json"]) == 0
    result = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"result"' in x][-1]
    assert result["processed"] == 3 and list(result["folders"]) == ["3d_fullres"]


def test_bad_input_writes_nothing(tiny_dataset, tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "missing")]) == 2
    assert "work folder not found" in capsys.readouterr().err
    assert main(["plan-and-preprocess", str(tmp_path / "nope"), "--output", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()
    inside = tiny_dataset / "work"
    assert main(["plan-and-preprocess", str(tiny_dataset), "--output", str(inside)]) == 2
    assert not inside.exists()
    assert "never writes there" in capsys.readouterr().err
    assert main(["plan-and-preprocess", str(tiny_dataset), "--output", str(tmp_path / "w2"), "-c", "3d_fulres",
                 "--workers", "1"]) == 2
    assert not (tmp_path / "w2").exists()
    assert "Did you mean '3d_fullres'" in capsys.readouterr().err
