"""What predict reports per case (inference.summary): slice ranking, volumes, fingerprint warnings, and
predict_summary.json from a batch with a broken case (`--continue-on-error`)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AutoSegLib.inference.summary import (analysis_region, fingerprint_warnings, load_training_fingerprint,
                                          mean_uncertainty, rank_slices, volumes_ml)
from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.inference.uncertainty import read_measure
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.labels import LabelLayout

torch.set_num_threads(1)

LAYOUT = LabelLayout.from_dataset_labels({"background": 0, "organ": 1, "lesion": 2})


def test_slice_ranking_on_a_hand_made_volume():
    # array (z, y, x) with spacing (2, 1, 0.5) mm; identity direction: axis 0 runs along S -> axial slices
    geo = Geometry((2.0, 1.0, 0.5), (10.0, 20.0, 30.0), tuple(np.eye(3).ravel()))
    u = np.zeros((12, 20, 24), np.float32)
    labels = np.zeros(u.shape, np.uint8)
    u[5, 4:8, 10:14] = 1.0          # 16 voxels fully uncertain in axial slice 5
    labels[5, 4:8, 14:16] = 2       # a lesion next to them
    u[9, 15, 2] = 0.5               # a faint spot elsewhere
    voxel_ml = 2.0 * 1.0 * 0.5 / 1000
    slices = rank_slices(u, labels, geo, LAYOUT, count=3, min_distance_mm=3.0)
    first = slices[0]
    assert first["axis"] == "axial" and first["index"] == 5
    assert first["uncertain_volume_ml"] == pytest.approx(16 * voxel_ml)
    assert first["labels"] == ["lesion"]
    # centre of the block: index (z, y, x) = (5, 5.5, 11.5) -> LPS origin (x, y, z) + spacing * index (x, y, z)
    assert first["position_lps"] == pytest.approx([10.0 + 11.5 * 0.5, 20.0 + 5.5, 30.0 + 5 * 2.0])
    # the block's 16 ml-voxels also lead the coronal (4 rows of 4) and sagittal (4 columns of 4) rankings;
    # ties: axial first (the order of the candidates), and the faint spot (0.5 voxel) comes last
    assert [s["axis"] for s in slices] == ["axial", "coronal", "coronal"]
    assert slices[1]["uncertain_volume_ml"] == pytest.approx(4 * voxel_ml)
    # a 2D image or an all-zero map has no slices to show
    assert rank_slices(np.zeros_like(u), labels, geo, LAYOUT) == []
    # an axis running along L names sagittal slices: permute the direction so that array axis 0 is along x
    rotated = Geometry((2.0, 1.0, 0.5), (0, 0, 0), (0, 0, 1, 0, 1, 0, 1, 0, 0))
    assert rank_slices(u, labels, rotated, LAYOUT, count=1)[0]["axis"] == "sagittal"


def test_volumes_region_and_mean():
    geo = Geometry((2.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).ravel()))
    labels = np.zeros((30, 40, 40), np.uint8)
    labels[10:12, 10:20, 10:15] = 1   # 100 voxels of 2 mm^3
    labels[20, 5, 5] = 2
    assert volumes_ml(labels, geo, LAYOUT) == {"organ": 0.2, "lesion": 0.002}
    region = analysis_region(labels, geo, margin_mm=4.0)  # within 4 mm: 2 voxels along z, 4 along y and x
    assert region[10, 10, 10] and region[8, 10, 10] and not region[7, 10, 10]
    assert region[11, 19, 18] and not region[11, 19, 19] and region[10, 6, 10] and not region[10, 5, 10]
    assert region[20, 5, 5] and region[20, 1, 5] and not region[20, 0, 5] and not region[17, 1, 1]
    u = np.zeros(labels.shape, np.float32)
    u[analysis_region(labels, geo)] = 0.25  # the default margin, 10 mm
    u[~analysis_region(labels, geo)] = 1.0  # outside R: not counted
    assert mean_uncertainty(u, labels, geo) == pytest.approx(0.25)
    assert analysis_region(np.zeros_like(labels), geo).all()
    regions = LabelLayout.from_dataset_labels({"background": 0, "whole": [1, 2], "core": 2}, [1, 2])
    assert volumes_ml(labels, geo, regions) == {"whole": 0.202, "core": 0.002}


def test_fingerprint_warnings(tmp_path):
    fp = {"cases": [{"spacing": [1.0, 0.8, 0.8]}, {"spacing": [1.5, 0.9, 0.9]}],
          "intensity_properties": {"0": {"percentile_00_5": 0.0, "percentile_99_5": 100.0}}}
    (tmp_path / "fingerprint.json").write_text(json.dumps(fp))
    model = type("M", (), {"path": tmp_path})()
    loaded = load_training_fingerprint(model)
    images = np.full((1, 4, 5, 6), 50.0, np.float32)
    near = Geometry((2.9, 0.5, 0.45), (0, 0, 0), tuple(np.eye(3).ravel()))  # within [min / 2, max * 2]
    assert fingerprint_warnings(loaded, images, near) == []
    far = Geometry((3.1, 0.8, 0.8), (0, 0, 0), tuple(np.eye(3).ravel()))    # z: 3.1 > 2 x 1.5
    (w,) = fingerprint_warnings(loaded, images, far)
    assert "spacing" in w and "0.8x0.8x3.1" in w
    # intensities: allowed [0 - 50, 100 + 50]; the median over the predicted foreground decides
    labels = np.zeros(images.shape[1:], np.uint8)
    labels[:2] = 1
    bright = images.copy()
    bright[0, :2] = 1000.0
    (w,) = fingerprint_warnings(loaded, bright, near, labels, ["CT"])
    assert w.startswith("CT: intensity median 1000") and "predicted foreground" in w
    assert fingerprint_warnings(loaded, bright * 0 + 149.0, near) == []
    assert fingerprint_warnings(None, bright, far) == []
    assert load_training_fingerprint(type("M", (), {"path": tmp_path / "none"})()) is None


def _write(path, array, spacing=(2.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(img, str(path))


def test_batch_with_a_broken_case(tiny_model, tmp_path, capsys):
    """Three cases, one with NaN voxels: with --continue-on-error the other two complete, the summary says
    what went wrong, the exit status is 2."""
    from AutoSegLib.cli import main

    model = tiny_model(folds=("0", "1"))
    rng = np.random.default_rng(1)
    inp = tmp_path / "in"
    inp.mkdir()
    _write(inp / "a_0000.nii.gz", rng.normal(0, 1, (10, 20, 18)).astype(np.float32))
    broken = rng.normal(0, 1, (10, 20, 18)).astype(np.float32)
    broken[3, 4, 5] = np.nan
    _write(inp / "b_0000.nrrd", broken)  # NRRD keeps NaN (NIfTI would turn it into 0)
    _write(inp / "c_0000.nii.gz", rng.normal(0, 1, (9, 16, 17)).astype(np.float32), spacing=(9.0, 1.0, 1.0))
    fingerprint = {"cases": [{"spacing": [2.0, 1.0, 1.0]}], "intensity_properties": {}}
    (model.path / "fingerprint.json").write_text(json.dumps(fingerprint))
    out = tmp_path / "out"
    argv = ["predict", "-m", str(model.path), "-i", str(inp), "-o", str(out), "--save-uncertainty",
            "--device", "cpu", "--runtime", "torch"]
    rc = main(argv + ["--continue-on-error"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "1 of 3 cases failed (see predict_summary.json)" in err
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["version"] == 1 and summary["model"] == str(model.path)
    assert summary["settings"]["save_uncertainty"] is True
    rows = {r["case"]: r for r in summary["cases"]}
    assert [r["case"] for r in summary["cases"]] == ["a", "b", "c"]
    assert rows["b"]["status"] == "failed" and "NaN" in rows["b"]["error"] and "b_0000.nrrd" in rows["b"]["error"]
    assert rows["b"]["output"] is None and rows["b"]["uncertainty"] is None
    for case in ("a", "c"):
        row = rows[case]
        assert row["status"] == "ok" and row["error"] is None and row["seconds"] > 0
        labels = sitk.GetArrayFromImage(sitk.ReadImage(row["output"]))
        u_img = sitk.ReadImage(row["uncertainty"])
        u = sitk.GetArrayFromImage(u_img)
        assert u.dtype == np.float32 and u.shape == labels.shape and 0 <= u.min() and u.max() <= 1
        assert read_measure(row["uncertainty"]) == "entropy"
        geo = Geometry.from_sitk(u_img)
        assert row["volumes_ml"] == volumes_ml(labels, geo, model.label_layout)
        # the case's mean is the members' disagreement over R (not written as a file): the library's own
        out = {}
        images = sitk.GetArrayFromImage(sitk.ReadImage(row["inputs"][0]))[None].astype(np.float32)
        api_labels, _ = predict_arrays(model, images, geo, device="cpu", runtime="torch", uncertainty_out=out)
        np.testing.assert_array_equal(api_labels, labels)
        np.testing.assert_allclose(out["uncertainty"], u, atol=1e-6)
        assert out["measure"] == "entropy" and out["members"] == 16
        assert row["mean_uncertainty"] == pytest.approx(mean_uncertainty(out["disagreement"], labels, geo), abs=1e-6)
        assert 0 < row["mean_uncertainty"] < mean_uncertainty(u, labels, geo)
        assert 1 <= len(row["uncertain_slices"]) <= 5
        assert set(row["uncertain_slices"][0]) == {"axis", "index", "position_lps", "uncertain_volume_ml", "labels"}
    assert rows["a"]["warnings"] == []
    assert len(rows["c"]["warnings"]) == 1 and "spacing" in rows["c"]["warnings"][0]  # 9 mm > 2 x 2 mm
    assert "16 member(s)" in sitk.ReadImage(rows["a"]["uncertainty"]).GetMetaData("ITK_FileNotes")  # 2 folds x 8

    # without the option the broken case stops the run (exit 2), and the summary says where
    rc = main(argv + ["-o", str(tmp_path / "out2")])
    assert rc == 2
    rows2 = json.loads((tmp_path / "out2" / "predict_summary.json").read_text())["cases"]
    assert [(r["case"], r["status"]) for r in rows2] == [("a", "ok"), ("b", "failed")]


def test_continue_on_error_reports_unreadable_files_and_missing_channels(tiny_model, tmp_path):
    from AutoSegLib.inference.files import predict_files

    model = tiny_model()
    inp = tmp_path / "in"
    inp.mkdir()
    _write(inp / "a_0000.nii.gz", np.random.default_rng(2).normal(0, 1, (10, 20, 18)).astype(np.float32))
    (inp / "b_0000.nii.gz").write_bytes(b"not an image")
    _write(inp / "c_0001.nii.gz", np.zeros((4, 4, 4), np.float32))  # channel 0 missing
    events = []
    written = predict_files(model, inp, tmp_path / "out", tta=False, continue_on_error=True, device="cpu",
                            progress=events.append)
    assert [p.name for p in written] == ["a.nii.gz"]
    rows = {e["case"]: e for e in events if e["event"] == "case"}
    assert rows["a"]["status"] == "ok" and rows["a"]["mean_uncertainty"] is None
    assert rows["b"]["status"] == "failed" and "b_0000.nii.gz" in rows["b"]["error"]
    assert rows["c"]["status"] == "failed" and "found channels [1]" in rows["c"]["error"]
    saved = json.loads((tmp_path / "out" / "predict_summary.json").read_text())["cases"]
    assert {r["case"]: r["status"] for r in saved} == {"a": "ok", "b": "failed", "c": "failed"}
