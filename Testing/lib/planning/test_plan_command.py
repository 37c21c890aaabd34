"""`autoseg fingerprint` / `autoseg plan`: the work folder they leave, fingerprint reuse, options."""
import json

import pytest

from AutoSegLib import cli
from AutoSegLib.fingerprint import Fingerprint
from AutoSegLib.planning import Plans


@pytest.fixture
def small_dataset(synthetic_dataset):
    return synthetic_dataset(name="SmallSet", n_cases=3, shape=(10, 16, 16), spacing=(2.0, 1.0, 1.0), seed=2)


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_plan_writes_the_work_folder(small_dataset, tmp_path, capsys):
    work = tmp_path / "work"
    rc, text = _run(capsys, "plan", str(small_dataset), "--output", str(work), "--workers", "1")
    assert rc == 0, text
    assert sorted(p.name for p in work.iterdir()) == ["dataset.json", "fingerprint.json", "plans.json"]
    copy = json.loads((work / "dataset.json").read_text())
    raw = json.loads((small_dataset / "dataset.json").read_text())
    assert copy.pop("dataset_path") == str(small_dataset.resolve()) and copy == raw
    plans = Plans.from_json(work / "plans.json")
    fp = Fingerprint.from_json(work / "fingerprint.json")
    assert fp.case_ids == ("case_000", "case_001", "case_002")
    assert plans.dataset_name == "SmallSet" and "3d_fullres" in plans.configurations
    # the second run reuses the fingerprint; another budget changes the batch, not the fingerprint
    before = (work / "fingerprint.json").stat().st_mtime_ns
    rc, text = _run(capsys, "plan", str(small_dataset), "--output", str(work), "--gpu-memory-gb", "80",
                    "--workers", "1")
    assert rc == 0 and "using the existing fingerprint" in text
    assert (work / "fingerprint.json").stat().st_mtime_ns == before
    assert Plans.from_json(work / "plans.json").planner_memory_gb == 80.0


def test_stale_fingerprint_is_extracted_again(small_dataset, tmp_path, capsys):
    work = tmp_path / "w"
    assert _run(capsys, "fingerprint", str(small_dataset), "-o", str(work), "--workers", "1")[0] == 0
    for p in list((small_dataset / "imagesTr").glob("case_002_*")) + [small_dataset / "labelsTr" / "case_002.nii.gz"]:
        p.unlink()
    d = json.loads((small_dataset / "dataset.json").read_text())
    d["numTraining"] = 2
    (small_dataset / "dataset.json").write_text(json.dumps(d))
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(work), "--workers", "1")
    assert rc == 0 and "cases changed" in text
    assert Fingerprint.from_json(work / "fingerprint.json").case_ids == ("case_000", "case_001")


def test_default_output_folder_and_never_inside_the_dataset(small_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, text = _run(capsys, "fingerprint", str(small_dataset), "--workers", "1")
    assert rc == 0, text
    assert (tmp_path / "autoseg_work" / "SmallSet" / "fingerprint.json").is_file()
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(small_dataset / "work"))
    assert rc == 2 and "inside the dataset folder" in text and not (small_dataset / "work").exists()


def test_progress_json_lines(small_dataset, tmp_path, capsys):
    rc = cli.main(["plan", str(small_dataset), "-o", str(tmp_path / "o"), "--progress-json", "--workers", "1"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    kinds = [e["event"] for e in events]
    assert kinds.count("progress") == 3 and kinds[-1] == "result"
    assert events[-1]["plans"] == str(tmp_path / "o" / "plans.json")


def test_bad_budget_is_a_user_error(small_dataset, tmp_path, capsys):
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(tmp_path / "o"), "--gpu-memory-gb", "0",
                    "--workers", "1")
    assert rc == 2 and "--gpu-memory-gb must be a positive" in text
    assert not (tmp_path / "o").exists()


def test_edited_label_makes_the_fingerprint_stale(small_dataset, tmp_path, capsys):
    import os
    work = tmp_path / "w"
    assert _run(capsys, "plan", str(small_dataset), "-o", str(work), "--workers", "1")[0] == 0
    label = small_dataset / "labelsTr" / "case_001.nii.gz"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "edited in Slicer"
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(work), "--workers", "1")
    assert rc == 0 and "files of the dataset changed" in text
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(work), "--workers", "1")
    assert rc == 0 and "using the existing fingerprint" in text
    # a fingerprint written before the foreground boxes were recorded is made again, once
    d = json.loads((work / "fingerprint.json").read_text())
    for case in d["cases"]:
        del case["foreground_bbox"]
    (work / "fingerprint.json").write_text(json.dumps(d))
    rc, text = _run(capsys, "plan", str(small_dataset), "-o", str(work), "--workers", "1")
    assert rc == 0 and "without the foreground boxes" in text
    assert Fingerprint.from_json(work / "fingerprint.json").has_foreground_boxes
