"""The catalogue of issue #15: every class of hostile input run through `cli.main`.

Each entry builds its situation in a fresh folder and says which command to run and which words the
message must hold (the file or path, and the cause). Every entry must exit 2, and leave every file that
existed before byte-identical and no new file behind (output folders included). It lives here for the
`tiny_model` fixture (Testing/lib/inference/conftest.py); the classes span the whole library.
"""
import json
import tarfile
import zipfile

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image
from AutoSegLib.io.synthetic import make_synthetic_dataset

GEO = Geometry.identity((2.0, 1.0, 1.0))


def _scans(folder, names, array=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        write_image(rng.random((10, 20, 20)).astype(np.float32) if array is None else array, GEO, folder / n)
    return folder


def _dataset(root, name="DS", **labels_override):
    ds = make_synthetic_dataset(root / name, n_cases=2, shape=(8, 12, 12))
    if labels_override:
        meta = json.loads((ds / "dataset.json").read_text())
        meta.update(labels_override)
        (ds / "dataset.json").write_text(json.dumps(meta))
    return ds


def _export(model, root, name):
    from AutoSegLib.models.archive import export_model_archive
    return export_model_archive(model, root / name)


# -- the classes: each returns (argv, [words the message must hold]) -------------------------------------
def c02_output_is_input_folder(root, model):
    inp = _scans(root / "in", ["scan.nii.gz"])
    return ["predict", "-m", model, "-i", inp, "-o", inp], [str(inp), "output folder is the input folder"]


def c02_output_is_input_file(root, model):
    scan = _scans(root / "in", ["scan.nii.gz"]) / "scan.nii.gz"
    return ["predict", "-m", model, "-i", scan, "-o", scan], [str(scan), "would overwrite the input"]


def c03_work_folder_is_another_raw_dataset(root, model):
    a, b = _dataset(root, "A"), _dataset(root, "B")
    return ["plan-and-preprocess", a, "-o", b], [str(b), "is a raw dataset folder"]


def c04_predict_truncated_image(root, model):
    inp = _scans(root / "in", ["a_0000.nii.gz"])
    p = inp / "a_0000.nii.gz"
    p.write_bytes(p.read_bytes()[:-300])
    return ["predict", "-m", model, "-i", inp, "-o", root / "out"], [str(p), "truncated"]


def c04_predict_nan_image(root, model):
    arr = np.ones((10, 20, 20), np.float32)
    arr[3, 4, 5] = np.nan
    inp = _scans(root / "in", ["a_0000.nrrd"], arr)
    return ["predict", "-m", model, "-i", inp, "-o", root / "out"], [str(inp / "a_0000.nrrd"), "NaN or infinite"]


def c05_label_value_beyond_int16(root, model):
    ds = _dataset(root, labels={"background": 0, "organ": 1, "huge": 40000})
    return ["verify", ds, "--workers", "1"], [str(ds / "dataset.json"), "'huge' has value 40000"]


def c05_float64_beyond_float32(root, model):
    ds = _dataset(root)
    p = sorted((ds / "imagesTr").iterdir())[0]
    from AutoSegLib.io.images import read_image
    arr, geo = read_image(p)
    arr = arr.astype(np.float64)
    arr[1, 1, 1] = 1e300
    write_image(arr, geo, p)
    return ["verify", ds, "--workers", "1"], [p.name, "exceed the float32 range", "1e+300"]


def c06_background_not_zero(root, model):
    ds = _dataset(root, labels={"background": 1, "organ": 0})
    return ["verify", ds, "--workers", "1"], [str(ds / "dataset.json"), "'background' has value 1"]


def c06_malformed_regions_class_order(root, model):
    ds = _dataset(root, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order="x")
    return ["verify", ds, "--workers", "1"], [str(ds / "dataset.json"), "'regions_class_order' must be a list"]


def c06_zero_voxel_size_nifti(root, model):
    import struct
    inp = _scans(root / "in", ["a_0000.nii"])
    p = inp / "a_0000.nii"
    data = bytearray(p.read_bytes())
    data[80:84] = struct.pack("<f", 0.0)  # pixdim[1]: read as 1 mm by the image reader, without a word
    p.write_bytes(bytes(data))
    return ["predict", "-m", model, "-i", inp, "-o", root / "out"], [str(p), "voxel size (pixdim)"]


def c06_deeply_nested_model_json(root, model):
    (model / "plans.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000)
    inp = _scans(root / "in", ["a_0000.nii.gz"])
    return ["predict", "-m", model, "-i", inp, "-o", root / "out"], [str(model / "plans.json"),
                                                                     "nested more than 64 levels deep"]


def c06_model_json_not_utf8(root, model):
    (model / "dataset.json").write_bytes(b'{"name": "\xe9t\xe9"}')  # Latin-1, not UTF-8
    return ["import-model", model, "--models-dir", root / "models"], [str(model / "dataset.json"), "not UTF-8"]


def c07_decompression_bomb(root, model):
    bomb = root / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plans.json", "{}")
        zf.writestr("dataset.json", "{}")
        zf.writestr("notes.txt", b"0" * (80 * 2 ** 20))
    return ["import-model", bomb, "--models-dir", root / "models"], [str(bomb), "would expand to 80 MiB"]


def c07_entry_not_in_manifest(root, model):
    base = _export(model, root, "ok.zip")
    extra = root / "extra.zip"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(extra, "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        zf.writestr("notes.txt", "smuggled")
    base.unlink()
    return ["import-model", extra, "--models-dir", root / "models"], [str(extra), "not listed in its"]


def c09_plans_patch_size_absurd(root, model):
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [100000, 100000, 100000]
    (model / "plans.json").write_text(json.dumps(plans))
    return ["import-model", model, "--models-dir", root / "models"], [str(model / "plans.json"), "out of bounds"]


def c09_plans_spacing_zero(root, model):
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [0, 1, 1]
    (model / "plans.json").write_text(json.dumps(plans))
    inp = _scans(root / "in", ["a_0000.nii.gz"])
    return ["predict", "-m", model, "-i", inp, "-o", root / "out"], [str(model / "plans.json"), "spacing [0, 1, 1]"]


def c10_truncated_checkpoint_in_archive(root, model):
    base = _export(model, root, "ok.zip")
    bad = root / "bad.zip"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(bad, "w") as zf:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("checkpoint_final.pt"):
                data = data[:100]
            if info.filename != "archive_manifest.json":
                zf.writestr(info, data)
    base.unlink()
    return ["import-model", bad, "--models-dir", root / "models"], [f"{bad}: entry trained/3d_fullres/fold_0"]


def c11_file_where_output_folder_expected(root, model):
    inp = _scans(root / "in", ["a_0000.nii.gz"])
    (root / "blocker").write_text("a file")
    out = root / "blocker" / "out"
    return ["predict", "-m", model, "-i", inp, "-o", out], [str(root / "blocker"), "a file stands where a folder"]


def c11_plan_into_unwritable_place(root, model):
    ds = _dataset(root)
    (root / "blocker").write_text("a file")
    return ["plan", ds, "-o", root / "blocker" / "work"], [str(root / "blocker" / "work"), "cannot write there"]


def c11_export_where_a_file_stands(root, model):
    (root / "blocker").write_text("a file")
    return ["export-model", model, "-o", root / "blocker" / "m.zip"], [str(root / "blocker"),
                                                                       "a file stands where a folder"]


def c11_import_where_a_file_stands(root, model):
    (root / "blocker").write_text("a file")
    return ["import-model", model, "--models-dir", root / "blocker" / "models"], [str(root / "blocker"),
                                                                                  "a file stands where a folder"]


_NO_ROOM = {"AutoSegLib.io.atomic.free_bytes": lambda folder: 0}  # the file system reports no room left


def c11_export_disk_full(root, model):
    return ["export-model", model, "-o", root / "m.zip"], [str(root), "not enough free space for the archive m.zip"], \
        _NO_ROOM


def _planned(root, configuration="3d_fullres"):
    ds = _dataset(root)
    work = root / "work"
    assert main(["plan-and-preprocess", str(ds), "-o", str(work), "-c", configuration, "--workers", "1"]) == 0
    return ds, work


def c11_preprocess_disk_full(root, model):
    ds, work = _planned(root)
    import shutil
    shutil.rmtree(work / "preprocessed")
    return ["preprocess", work, "-c", "3d_fullres", "--workers", "1"], [str(work), "not enough free space for the "
                                                                         "preprocessed data"], _NO_ROOM


def c11_train_disk_full(root, model):
    ds, work = _planned(root)
    return ["train", work, "3d_fullres", "all", "--epochs", "1", "--iterations-per-epoch", "1", "--workers", "0"], \
        [str(work / "trained" / "3d_fullres" / "fold_all"), "not enough free space for this training's checkpoints"], \
        _NO_ROOM


CLASSES = [v for k, v in sorted(globals().items()) if k.startswith("c") and k[1:3].isdigit()]


def _snapshot(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CLASSES, ids=lambda f: f.__name__)
def test_catalogue(case, tiny_model, tmp_path, capsys, monkeypatch):
    model = tiny_model().path
    root = tmp_path / "case"
    root.mkdir()
    argv, words, *patches = case(root, model)
    for target, value in (patches[0] if patches else {}).items():
        monkeypatch.setattr(target, value)
    before = {**_snapshot(root), **_snapshot(model)}
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    after = {**_snapshot(root), **_snapshot(model)}
    assert after == before  # nothing written, nothing changed (no new file or folder either)


_FULL_DISK = """
import sys
import AutoSegLib.io.atomic as atomic
atomic.free_bytes = lambda folder: 0      # the file system reports no room left
from AutoSegLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_catalogue_c01_disk_full_during_predict(tiny_model, tmp_path, file_size_limited):
    """Disk full while predict writes its label map: exit 2 naming the file and "disk is full"; the label
    map of an earlier run stays as it was."""
    model = tiny_model().path
    inp = _scans(tmp_path / "in", ["a_0000.nii.gz"])
    out = tmp_path / "out"
    assert main(["predict", "-m", str(model), "-i", str(inp), "-o", str(out), "--no-tta"]) == 0
    previous = (out / "a.nii.gz").read_bytes()
    summary = (out / "predict_summary.json").read_bytes()
    # a bigger case under the same name: its label map no longer fits under the limit
    big = np.random.default_rng(1).random((40, 64, 64)).astype(np.float32)
    write_image(big, GEO, inp / "a_0000.nii.gz")
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK)
    res = file_size_limited(f"import runpy, sys; sys.argv = ['x'] + {['predict', '-m', str(model), '-i', str(inp), '-o', str(out), '--no-tta']!r}; runpy.run_path({str(script)!r}, run_name='__main__')",
                            len(previous) + 2000, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    text = res.stdout + res.stderr
    assert f"{out / 'a.nii.gz'}: could not be written: the disk is full" in text and "Traceback" not in text
    assert (out / "a.nii.gz").read_bytes() == previous
    assert (out / "predict_summary.json").read_bytes() == summary  # the run stopped at its first case
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "predict_summary.json"]


def test_catalogue_c08_tar_from_export_model_imports(tiny_model, tmp_path):
    """The one class whose fix is a success: a .tar written by export-model is imported."""
    model = tiny_model().path
    archive = tmp_path / "m.tar"
    assert main(["export-model", str(model), "-o", str(archive)]) == 0
    assert tarfile.is_tarfile(archive) and zipfile.is_zipfile(archive)  # the trap of zip detection
    assert main(["import-model", str(archive), "--models-dir", str(tmp_path / "models"), "--name", "m"]) == 0
    assert (tmp_path / "models" / "m" / "plans.json").is_file()
