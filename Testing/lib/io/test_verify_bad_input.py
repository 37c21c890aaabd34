"""The bad-input catalogue: each broken dataset gets a message naming the file, exit status 2, no
traceback, and nothing written (neither in the dataset nor in an output folder)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib import cli
from AutoSegLib.io.datasets import load_dataset
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import read_image, write_image
from AutoSegLib.io.verify import verify_dataset


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return rc, text


def _edit_json(ds, fn):
    p = ds / "dataset.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _rewrite(path, fn):
    """Replace the image at ``path`` by fn(array, geometry) -> (array, geometry)."""
    arr, geo = read_image(path)
    arr, geo = fn(arr, geo)
    path.unlink()
    write_image(arr, geo, path)


# each entry: how to break the dataset -> text that must appear in the message (file names etc.)
def break_missing_json(ds):
    (ds / "dataset.json").unlink()
    return ["dataset.json", "missing"]


def break_missing_keys(ds):
    _edit_json(ds, lambda d: (d.pop("labels"), d.pop("file_ending")))
    return ["dataset.json", "missing key", "labels", "file_ending"]


def break_missing_channel(ds):
    (ds / "imagesTr" / "case_001_0001.nii.gz").unlink()
    return ["case_001", "missing channel 1", "case_001_0001.nii.gz"]


def break_label_spacing(ds):
    _rewrite(ds / "labelsTr" / "case_002.nii.gz",
             lambda a, g: (a, Geometry((3.0,) + g.spacing[1:], g.origin, g.direction)))
    return ["case_002", "case_002.nii.gz", "spacing"]


def break_labels_without_background(ds):
    _edit_json(ds, lambda d: d.update(labels={"organ": 1, "lesion": 2}))
    return ["dataset.json", "background with value 0"]


def break_channel_names(ds):
    _edit_json(ds, lambda d: d.update(channel_names={"1": "T1", "2": "T2"}))
    return ["dataset.json", "'channel_names' must map"]


def break_channel_origin(ds):
    _rewrite(ds / "imagesTr" / "case_000_0001.nii.gz",
             lambda a, g: (a, Geometry(g.spacing, tuple(np.add(g.origin, (5.0, 0, 0))), g.direction)))
    return ["case_000", "case_000_0001.nii.gz", "origin"]


def break_label_size(ds):
    _rewrite(ds / "labelsTr" / "case_001.nii.gz", lambda a, g: (a[:-1], g))
    return ["case_001", "case_001.nii.gz", "size"]


def break_label_values(ds):
    _rewrite(ds / "labelsTr" / "case_000.nii.gz", lambda a, g: (np.where(a == 2, 7, a).astype(np.uint8), g))
    return ["case_000.nii.gz", "[7]", "not declared"]


def break_nan(ds):
    ending = json.loads((ds / "dataset.json").read_text())["file_ending"]

    def f(a, g):
        a = a.astype(np.float32)
        a[1, 2, 3] = np.nan
        a[2, 2, 3] = np.inf
        return a, g
    _rewrite(ds / "imagesTr" / f"case_002_0000{ending}", f)
    return [f"case_002_0000{ending}", "2 voxel(s) are NaN or infinite"]


def break_nan_nrrd(ds):
    """NRRD keeps NaN through SimpleITK (NIfTI does not: see verify.nifti_nonfinite_count)."""
    return break_nan(ds)


def break_truncated(ds):
    p = ds / "imagesTr" / "case_001_0000.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    # SimpleITK zero-fills a truncated NIfTI without complaint; only the raw check sees it
    return ["case_001_0000.nii.gz", "truncated"]


def break_truncated_label(ds):
    p = ds / "labelsTr" / "case_002.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 20])
    return ["case_002.nii.gz", "truncated"]


def break_garbage_file(ds):
    (ds / "imagesTr" / "case_000_0001.nii.gz").write_bytes(b"this is not an image")
    return ["case_000_0001.nii.gz", "cannot be read"]


def break_4d(ds):
    p = ds / "imagesTr" / "case_000_0000.nii.gz"
    p.unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 10, 12), np.float32), isVector=False), str(p))
    return ["case_000_0000.nii.gz", "4D"]


def break_empty_labels(ds):
    for p in (ds / "labelsTr").iterdir():
        p.unlink()
    return ["labelsTr", "empty"]


def break_empty_images(ds):
    for p in (ds / "imagesTr").iterdir():
        p.unlink()
    return ["imagesTr", "no training images"]


def break_num_training(ds):
    _edit_json(ds, lambda d: d.update(numTraining=5))
    return ["numTraining is 5", "3 training case(s)"]


def break_not_a_dataset(ds):
    import shutil
    shutil.rmtree(ds / "imagesTr")
    shutil.rmtree(ds / "labelsTr")
    (ds / "dataset.json").unlink()
    (ds / "notes.txt").write_text("hello")
    return ["not a dataset folder", "notes.txt"]


def break_label_missing(ds):
    (ds / "labelsTr" / "case_002.nii.gz").unlink()
    return ["case_002", "label file missing", "case_002.nii.gz"]


BREAKERS = [break_missing_json, break_missing_keys, break_labels_without_background, break_channel_names, break_missing_channel, break_label_spacing,
            break_channel_origin, break_label_size, break_label_values, break_nan, break_nan_nrrd, break_truncated, break_truncated_label, break_garbage_file, break_4d,
            break_empty_labels, break_empty_images, break_num_training, break_not_a_dataset, break_label_missing]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[6:])
def test_bad_input_is_reported_with_the_file_and_exit_2(breaker, tiny_dataset, capsys, tmp_path,
                                                        folder_snapshot):
    ds = tiny_dataset(n_channels=2, file_ending=".nrrd" if breaker is break_nan_nrrd else ".nii.gz")
    expected = breaker(ds)
    before = folder_snapshot(ds)
    rc, text = run_cli(capsys, "verify", str(ds), "--workers", "1")
    assert rc == 2, text
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"
    # plan (fingerprint + plan) refuses as well and writes nothing anywhere
    out = tmp_path / "work"
    rc, text = run_cli(capsys, "plan", str(ds), "--output", str(out), "--workers", "1")
    assert rc == 2, text
    assert not out.exists()
    assert folder_snapshot(ds) == before


def test_path_that_does_not_exist(capsys, tmp_path):
    rc, text = run_cli(capsys, "verify", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in text and str(tmp_path / "nope") in text


def test_debug_shows_the_traceback(tmp_path):
    from AutoSegLib.errors import DatasetError
    with pytest.raises(DatasetError):
        cli.main(["verify", str(tmp_path / "nope"), "--debug"])


def test_every_problem_is_reported_not_only_the_first(tiny_dataset):
    ds = tiny_dataset(n_channels=2)
    expected = break_missing_channel(ds) + break_label_values(ds) + break_nan(ds) + break_num_training(ds)
    report = verify_dataset(ds, num_workers=2)  # also exercises the worker pool
    text = "\n".join(report.errors)
    assert not report.ok and len(report.errors) == 4, report.errors
    for part in expected:
        assert part in text
    from AutoSegLib.errors import DatasetError
    with pytest.raises(DatasetError) as info:
        report.raise_if_failed()
    assert len(info.value.problems) == 4


def test_stray_files_are_warnings_and_a_valid_dataset_passes(tiny_dataset, capsys, folder_snapshot):
    ds = tiny_dataset()
    (ds / "imagesTr" / "README.txt").write_text("x")
    (ds / "labelsTr" / "orphan.nii.gz").write_bytes((ds / "labelsTr" / "case_000.nii.gz").read_bytes())
    (ds / "imagesTr" / ".DS_Store").write_text("x")
    before = folder_snapshot(ds)
    rc, text = run_cli(capsys, "verify", str(ds), "--workers", "1")
    assert rc == 0, text
    assert "README.txt" in text and "orphan.nii.gz" in text and ".DS_Store" not in text
    assert "3 case(s) checked" in text
    assert folder_snapshot(ds) == before


def test_shared_datasets_verify_cleanly(shared_dir, capsys):
    for rel in ("data/LA2018_1p25mm", "data/BraTS2015_4cases", "reference/Synth_aniso/raw"):
        rc, text = run_cli(capsys, "verify", str(shared_dir / rel), "--workers", "2")
        assert rc == 0, text
        assert "0 warning(s)" in text


def test_load_dataset_reads_the_layout(tiny_dataset):
    ds = tiny_dataset(n_channels=2)
    d = load_dataset(ds)
    assert d.root == ds.resolve() and d.name == ds.name and d.file_ending == ".nii.gz"
    assert d.case_ids == ("case_000", "case_001", "case_002")
    assert d.channel_names == {"0": "MRI", "1": "MRI1"}
    c = d.cases["case_001"]
    assert [p.name for p in c.images] == ["case_001_0000.nii.gz", "case_001_0001.nii.gz"]
    assert c.label.name == "case_001.nii.gz"
    assert d.labels.all_label_values == (0, 1, 2)


def test_legacy_modality_key_and_explicit_file_listing(tiny_dataset):
    ds = tiny_dataset()

    def legacy(d):
        d["modality"] = d.pop("channel_names")
        d["dataset"] = {f"c{i}": {"images": [f"imagesTr/case_00{i}_0000.nii.gz"], "label": f"labelsTr/case_00{i}.nii.gz"}
                        for i in range(3)}
    _edit_json(ds, legacy)
    report = verify_dataset(ds, num_workers=1)
    assert report.ok, report.errors
    assert any("modality" in w for w in report.warnings)
    assert report.dataset.case_ids == ("c0", "c1", "c2")


def test_float_label_files_with_integral_values_pass_and_fractions_fail(tiny_dataset):
    ds = tiny_dataset()
    _rewrite(ds / "labelsTr" / "case_000.nii.gz", lambda a, g: (a.astype(np.float32), g))
    assert verify_dataset(ds, num_workers=1).ok
    _rewrite(ds / "labelsTr" / "case_001.nii.gz", lambda a, g: (a.astype(np.float32) * 0.5, g))
    report = verify_dataset(ds, num_workers=1)
    assert not report.ok and "case_001.nii.gz" in report.errors[0] and "non-integer" in report.errors[0]


def test_default_workers(tiny_dataset, monkeypatch):
    import AutoSegLib.io.verify as v
    d = load_dataset(tiny_dataset())
    cases = list(d.cases.values())
    assert v.default_workers(cases) == 1  # a few kB: not worth starting processes
    monkeypatch.setattr(v, "SMALL_DATASET_BYTES", 0)
    monkeypatch.setattr(v.os, "cpu_count", lambda: 16)
    assert v.default_workers(cases) == 3  # at most one per case
