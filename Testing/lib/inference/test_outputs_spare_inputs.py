"""predict never overwrites its inputs, and never takes an earlier prediction for a scan."""
import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image


def _scans(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        write_image(rng.random((10, 20, 20)).astype(np.float32), Geometry.identity((2.0, 1.0, 1.0)), folder / n)
    return {n: (folder / n).read_bytes() for n in names}


@pytest.fixture
def model_dir(tiny_model):
    return tiny_model().path


def _unchanged(folder, before):
    return {n: (folder / n).read_bytes() for n in before} == before


@pytest.mark.parametrize("names", [["a_0000.nii.gz"], ["scan.nii.gz"]])
def test_output_folder_equal_to_input_folder_is_refused(tmp_path, model_dir, names, capsys):
    before = _scans(tmp_path / "in", names)
    rc = main(["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--no-tta"])
    assert rc == 2
    assert f"{tmp_path / 'in'}: the output folder is the input folder" in capsys.readouterr().err
    assert _unchanged(tmp_path / "in", before) and sorted(p.name for p in (tmp_path / "in").iterdir()) == names


def test_output_file_equal_to_input_file_is_refused(tmp_path, model_dir, capsys):
    before = _scans(tmp_path / "in", ["scan.nii.gz"])
    scan = tmp_path / "in" / "scan.nii.gz"
    rc = main(["predict", "-m", str(model_dir), "-i", str(scan), "-o", str(scan), "--no-tta"])
    assert rc == 2
    assert f"{scan}: this output would overwrite the input {scan}" in capsys.readouterr().err
    assert _unchanged(tmp_path / "in", before)
    # the same file through a symbolic link to its folder
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert main(["predict", "-m", str(model_dir), "-i", str(scan), "-o", str(tmp_path / "link" / "scan.nii.gz"),
                 "--no-tta"]) == 2
    assert _unchanged(tmp_path / "in", before)


def test_earlier_prediction_beside_its_scan_is_not_taken_as_a_case(tmp_path, model_dir, capsys):
    from AutoSegLib.inference.files import find_cases

    _scans(tmp_path / "in", ["a_0000.nii.gz", "a.nii.gz", "b.nii.gz"])
    events = []
    cases = find_cases(tmp_path / "in", 1, events.append)
    assert {k: [p.name for p in v] for k, v in cases.items()} == {"a": ["a_0000.nii.gz"], "b": ["b.nii.gz"]}
    assert any(e.get("level") == "warning" and "a.nii.gz" in e["message"] for e in events)


def test_prediction_into_another_folder_still_works(tmp_path, model_dir):
    before = _scans(tmp_path / "in", ["a_0000.nii.gz"])
    assert main(["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--no-tta"]) == 0
    assert (tmp_path / "out" / "a.nii.gz").is_file() and _unchanged(tmp_path / "in", before)


def test_temporaries_of_a_killed_run_are_removed(tmp_path, model_dir):
    """kill -9 during a write leaves `.<case>.tmp-XXXXXXXX.nii.gz`; the next run into that folder removes
    the stale ones (untouched for minutes) and leaves a fresh one (a writer still at work) alone."""
    import os
    _scans(tmp_path / "in", ["a_0000.nii.gz"])
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh, other = out / ".a.tmp-0123abcd.nii.gz", out / ".a.tmp-89abcdef.nii.gz", out / ".b.tmp-0123abcd.nii.gz"
    for p in (stale, fresh, other):
        p.write_bytes(b"half")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    assert main(["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(out), "--no-tta"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([fresh.name, other.name, "a.nii.gz",
                                                            "predict_summary.json"])
