"""A work folder is new, empty, or a work folder of the same dataset: plan/fingerprint/plan-and-preprocess
never write into a raw dataset, another dataset's work folder or a folder of other files."""
import json

import pytest

from AutoSegLib.cli import main


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def two_datasets(synthetic_dataset):
    kw = dict(n_cases=2, shape=(8, 12, 12))
    return synthetic_dataset("A", **kw), synthetic_dataset("B", **kw)


@pytest.mark.parametrize("command", ["plan-and-preprocess", "plan", "fingerprint"])
def test_output_pointing_at_another_raw_dataset_is_refused(two_datasets, command, capsys):
    a, b = two_datasets
    before = _snapshot(b)
    assert main([command, str(a), "-o", str(b)]) == 2
    assert f"{b}: is a raw dataset folder" in capsys.readouterr().err
    assert _snapshot(b) == before


def test_work_folder_of_another_dataset_and_foreign_folder_are_refused(two_datasets, tmp_path, capsys):
    a, b = two_datasets
    work_b = tmp_path / "work_b"
    (work_b).mkdir()
    (work_b / "dataset.json").write_text(json.dumps({"dataset_path": str(b), "labels": {}}))
    before = _snapshot(work_b)
    assert main(["plan", str(a), "-o", str(work_b)]) == 2
    assert f"{work_b}: is the work folder of another dataset ({b})" in capsys.readouterr().err
    assert _snapshot(work_b) == before

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("keep me")
    assert main(["plan", str(a), "-o", str(docs)]) == 2
    assert f"{docs}: is neither empty nor an AutoSeg work folder" in capsys.readouterr().err
    assert _snapshot(docs) == {docs.joinpath("thesis.txt").relative_to(docs): b"keep me"}


def test_new_empty_and_own_work_folder_are_accepted(two_datasets, tmp_path):
    a, _ = two_datasets
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fingerprint", str(a), "-o", str(empty)]) == 0
    assert json.loads((empty / "dataset.json").read_text())["dataset_path"] == str(a.resolve())
    assert main(["fingerprint", str(a), "-o", str(empty)]) == 0          # again: its own work folder
    assert main(["fingerprint", str(a), "-o", str(tmp_path / "new" / "work")]) == 0


def test_unwritable_work_folder_is_found_before_work_starts(two_datasets, tmp_path, capsys):
    a, _ = two_datasets
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["plan", str(a), "-o", str(blocker / "work")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'work'}: cannot write there" in err and "a file stands where a folder is expected" in err


def test_raw_label_of_follows_the_recorded_dataset(two_datasets, tmp_path):
    """The reference label a work folder's dataset.json leads to: the raw case's file under labelsTr with the
    recorded ending; None when the record names no folder, another ending, or a case the dataset lacks."""
    from AutoSegLib.io.work_folder import raw_label_of, recorded_file_ending

    a, _ = two_datasets
    work = tmp_path / "work"
    assert main(["fingerprint", str(a), "-o", str(work)]) == 0
    record = json.loads((work / "dataset.json").read_text())
    case = sorted(p.name for p in (a / "labelsTr").iterdir())[0].removesuffix(".nii.gz")
    assert raw_label_of(record, case) == a.resolve() / "labelsTr" / f"{case}.nii.gz"
    assert raw_label_of(record, "no_such_case") is None
    assert raw_label_of({**record, "file_ending": ".mha"}, case) is None
    assert raw_label_of({**record, "dataset_path": ""}, case) is None
    assert raw_label_of(None, case) is None
    assert recorded_file_ending({}, ".nrrd") == ".nrrd" and recorded_file_ending(record) == ".nii.gz"
