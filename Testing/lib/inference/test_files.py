"""find_cases: how input files are grouped into cases, and the refusals."""
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.files import find_cases


def touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")
    return folder


def test_folder_of_multichannel_cases(tmp_path):
    f = touch(tmp_path / "in", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "notes.txt",
              ".hidden_0000.nii.gz")
    cases = find_cases(f, 2)
    assert list(cases) == ["a", "b"]
    assert [p.name for p in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]


def test_single_channel_model_accepts_plain_names(tmp_path):
    f = touch(tmp_path / "in", "scan.nrrd", "other_0000.mha")
    assert {k: [p.name for p in v] for k, v in find_cases(f, 1).items()} == {
        "other": ["other_0000.mha"], "scan": ["scan.nrrd"]}


def test_channel_files_of_one_case_in_any_order(tmp_path):
    f = touch(tmp_path / "in", "p_0001.nii.gz", "p_0000.nii.gz")
    cases = find_cases([f / "p_0001.nii.gz", f / "p_0000.nii.gz"], 2)
    assert list(cases) == ["p"] and [p.name for p in cases["p"]] == ["p_0000.nii.gz", "p_0001.nii.gz"]
    single = find_cases(f / "p_0000.nii.gz", 1)
    assert list(single) == ["p"]


def test_refusals(tmp_path):
    f = touch(tmp_path / "in", "a_0000.nii.gz", "a_0002.nii.gz")
    with pytest.raises(AutoSegError, match=r"case 'a': channels \[0, 2\] found, expected \[0, 1\]"):
        find_cases(f, 2)
    with pytest.raises(AutoSegError, match="input not found"):
        find_cases(tmp_path / "missing", 1)
    empty = touch(tmp_path / "empty")
    with pytest.raises(AutoSegError, match="no image files"):
        find_cases(empty, 1)
    with pytest.raises(AutoSegError, match="expects 2 channel file"):
        find_cases(f / "a_0000.nii.gz", 2)
