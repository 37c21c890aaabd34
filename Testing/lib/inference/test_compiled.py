"""Compiled CPU runtimes (inference.compiled): export, checks, refusals, and equivalence with torch.

Criteria (issue 12): against torch float32 on the same model and input, Dice >= 0.999 per class between the
label maps, TTA on and off; probabilities within 1e-4 when both stitch in float32 (the runtime's own
difference), within the float16 accumulator's resolution through the whole predict path; the numpy stitcher equals the
torch one bit for bit for the same window logits; prediction with a compiled runtime never imports torch.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference import compiled, runtimes
from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.io.geometry import Geometry

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "Testing" / "lib" / "models" / "data" / "nnunet_tiny"
# The whole predict path stitches logits in a float16 accumulator, as the reference does. Near the decision
# boundary of this 3-class fixture each class's logit is still ~8-16, where a float16 step is 2**-7; a
# 1e-5 difference in a window's logits (all the runtimes differ by, see the test below) can round the
# stitched sum one step the other way, and with the softmax's largest slope of 1/4 one step on two classes
# moves a probability by 2 * 2**-7 / 4 = 3.9e-3 (OpenVINO on the oblique test_001: 2.5e-3, labels identical).
PROB_TOL_FLOAT16_STITCHING = 2 * 2.0 ** -7 / 4
# The runtime itself, stitched without rounding (float32 accumulator on both sides).
PROB_TOL_FLOAT32_STITCHING = 1e-4
DICE_MIN = 0.999
RUNTIMES = [pytest.param(r, marks=pytest.mark.skipif(not compiled.installed(r), reason=f"{r} not installed"))
            for r in compiled.COMPILED]
EYE = tuple(np.eye(3).ravel())


def image(shape=(10, 20, 18), seed=0, channels=1):
    rng = np.random.default_rng(seed)
    return rng.normal(100, 20, (channels, *shape)).astype(np.float32)


def dice(a, b, value) -> float:
    ma, mb = np.isin(a, value), np.isin(b, value)
    denom = ma.sum() + mb.sum()
    return 1.0 if denom == 0 else 2.0 * (ma & mb).sum() / denom


def assert_equivalent(ref, got, classes, what):
    (rl, rp), (gl, gp) = ref, got
    assert rl.shape == gl.shape and rl.dtype == gl.dtype and rp.shape == gp.shape, what
    err = float(np.abs(rp.astype(np.float64) - gp).max())
    assert err <= PROB_TOL_FLOAT16_STITCHING, f"{what}: probabilities differ by up to {err:.2e}"
    for c in classes:
        d = dice(rl, gl, c)
        assert d >= DICE_MIN, f"{what}: Dice {d:.5f} for class {c}"


# ------------------------------------------------------------------------------------------- stitching

@pytest.mark.parametrize("patch, shape, mirror, batch", [
    ((8, 16, 16), (2, 21, 37, 33), (), 1), ((8, 16, 16), (2, 21, 37, 33), (0, 1, 2), 3),
    ((8, 16, 16), (2, 5, 12, 40), (1, 2), 2),          # padded to the patch on two axes
    ((16, 16), (2, 3, 20, 30), (0, 1), 2)])            # 2D patch over 3D data
def test_numpy_stitching_equals_torch_bit_for_bit(patch, shape, mirror, batch):
    from AutoSegLib.inference.sliding_window import predict_sliding_window, predict_sliding_window_numpy
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((3, shape[0])).astype(np.float32)

    def pn(b):  # depends on position (cumsum) so that a wrong flip or offset shows
        return np.einsum("kc,bc...->bk...", w, b) * 3 + np.cumsum(b, axis=2)[:, :1].repeat(3, 1)

    a = predict_sliding_window(torch.from_numpy(x), lambda b: torch.from_numpy(pn(b.numpy())), patch, 3, 0.5,
                               mirror_axes=mirror, batch_size=batch).numpy()
    b = predict_sliding_window_numpy(x, pn, patch, 3, 0.5, mirror_axes=mirror, batch_size=batch)
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape == (3, *shape[1:])
    np.testing.assert_array_equal(a, b)


def test_gaussian_maps_agree():
    from AutoSegLib.inference.sliding_window import gaussian_importance_map, gaussian_importance_map_numpy
    for patch in ((48, 80, 96), (8, 16, 16), (128, 128)):
        np.testing.assert_array_equal(gaussian_importance_map(patch).numpy(), gaussian_importance_map_numpy(patch))


# ------------------------------------------------------------------------------------------- runtime choice

def test_resolve_runtime_rules(monkeypatch, caplog):
    have = {"openvino": True, "onnxruntime": True, "torch": True}
    monkeypatch.setattr(runtimes, "installed", lambda p: have[p])
    assert runtimes.resolve_runtime("auto", "cpu") == "openvino"
    assert runtimes.resolve_runtime("auto", "cuda") == "torch"
    assert runtimes.resolve_runtime("onnxruntime", "cpu") == "onnxruntime"
    have["openvino"] = False
    assert runtimes.resolve_runtime("auto", "cpu") == "onnxruntime"
    with caplog.at_level("WARNING"):
        assert runtimes.resolve_runtime("openvino", "cpu") == "torch"  # missing: falls back to torch
    assert "pip install openvino" in caplog.text
    have.update(onnxruntime=False, torch=False)
    with pytest.raises(AutoSegError, match="pip install openvino"):
        runtimes.resolve_runtime("openvino", "cpu")
    with pytest.raises(AutoSegError, match="no inference runtime is installed"):
        runtimes.resolve_runtime("auto", "cpu")
    with pytest.raises(AutoSegError, match="unknown runtime"):
        runtimes.resolve_runtime("tensorrt", "cpu")
    with pytest.raises(AutoSegError, match="CPU only"):
        runtimes.resolve_runtime("onnxruntime", "cuda")


# ------------------------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("tta", [False, True])
def test_runtime_matches_torch_on_tiny_models(tiny_model, runtime, tta):
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE)
    cases = [
        (dict(name="m3d", folds=("0", "1")), image((10, 21, 18), 1), None, (1, 2)),   # fold ensemble
        (dict(name="reg", labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=(1, 2)),
         image((6, 16, 16), 2), None, ([1, 2], [2])),
        (dict(name="ens", configurations=("3d_fullres", "2d")), image((6, 20, 18), 3),
         ["3d_fullres", "2d"], (1, 2)),                                                # configuration ensemble
        (dict(name="casc", configurations=("3d_lowres", "3d_cascade_fullres")), image((6, 20, 18), 4),
         "3d_cascade_fullres", (1, 2)),
    ]
    for kwargs, img, conf, classes in cases:
        model = tiny_model(**kwargs)
        ref = predict_arrays(model, img, geo, conf, tta=tta, device="cpu", return_probabilities=True)
        got = predict_arrays(model, img, geo, conf, tta=tta, device="cpu", return_probabilities=True, runtime=runtime)
        assert_equivalent(ref, got, classes, f"{kwargs['name']} {runtime} tta={tta}")
        assert not np.array_equal(ref[1], np.zeros_like(ref[1]))
        for fw in model.configurations[next(iter(model.configurations))].folds.values():
            assert compiled.export_status(fw) == "ok"  # exported on first use, beside the checkpoint


@pytest.fixture
def tiny_nnunet(tmp_path):
    """A writable copy of the reference's tiny fixture models (exports land beside the checkpoints)."""
    dest = tmp_path / "nnunet_tiny"
    shutil.copytree(TINY, dest)
    return dest


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("tta", [False, True])
def test_runtime_matches_torch_on_the_nnunet_fixture_models(tiny_nnunet, runtime, tta):
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.folder import load_model
    model = load_model(tiny_nnunet / "Dataset901_ResEncRegions")
    images, geometry = read_case([tiny_nnunet / "inputs" / f"resenc_000_{c:04d}.nii.gz" for c in (0, 1)])
    ref = predict_arrays(model, images, geometry, tta=tta, device="cpu", precision="float32",
                         return_probabilities=True)
    got = predict_arrays(model, images, geometry, tta=tta, device="cpu", return_probabilities=True, runtime=runtime)
    assert_equivalent(ref, got, ([1, 2], [2]), f"resenc regions {runtime} tta={tta}")
    model = load_model(tiny_nnunet / "Dataset902_Cascade")  # cascade, restricted mirroring, post-processing
    images, geometry = read_case([tiny_nnunet / "inputs" / "cascade_000_0000.nii.gz"])
    ref = predict_arrays(model, images, geometry, tta=tta, device="cpu", precision="float32",
                         return_probabilities=True)
    got = predict_arrays(model, images, geometry, tta=tta, device="cpu", return_probabilities=True, runtime=runtime)
    assert_equivalent(ref, got, (1, 2), f"cascade {runtime} tta={tta}")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("configuration, mode", [("3d_fullres", "notta"), ("2d", "tta")])
def test_runtime_matches_torch_on_the_trained_reference_models(nnunet_reference, tmp_path, runtime, configuration,
                                                               mode):
    _runtime_matches_torch(nnunet_reference.root, nnunet_reference.model(configuration), tmp_path, runtime,
                           configuration, mode)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("configuration, mode", [("3d_fullres", "notta"), ("3d_fullres", "tta"), ("2d", "tta")])
def test_runtime_matches_torch_on_the_shared_reference_models(shared_dir, tmp_path, runtime, configuration, mode):
    root = shared_dir / "reference" / "nnunet_models"
    if not root.is_dir():
        pytest.skip("shared reference models not found")
    _runtime_matches_torch(root, root / "Dataset900_Synth" / f"nnUNetTrainerCPUBench__nnUNetPlans__{configuration}",
                           tmp_path, runtime, configuration, mode)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_windows_stitched_in_float32_match_torch_within_1e4(nnunet_reference, tmp_path, runtime):
    """The runtime's own difference from torch, without the float16 accumulator's rounding: each fixture case
    preprocessed as predict does, stitched from the runtime's windows and from torch's with a float32
    accumulator, TTA on; probabilities within 1e-4 (measured: 7e-6)."""
    from AutoSegLib.inference.sliding_window import predict_sliding_window, predict_sliding_window_numpy
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.models.install import import_models
    from AutoSegLib.network.unet import build_network
    from AutoSegLib.preprocessing.case import preprocess_case
    configuration = "3d_fullres"
    model = load_model(import_models([nnunet_reference.model(configuration)], tmp_path / "models"))
    cm, plan = model.configurations[configuration], model.plans.configuration(configuration)
    (fold, fw), = cm.folds.items()
    net = build_network(plan.network, cm.num_input_channels, cm.num_outputs, deep_supervision=False, initialize=False)
    net.load_state_dict(fw.state_dict(), strict=True)
    net.eval()
    session = compiled.load_session(compiled.ensure_exported(model, configuration, [fold])[fold], runtime, threads=1)
    root = nnunet_reference.root
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case in sorted(p.name[:-len("_0000.nii.gz")] for p in (root / "inputs").glob("*_0000.nii.gz")):
            images, geometry = read_case([root / "inputs" / f"{case}_0000.nii.gz"])
            data = preprocess_case(images, geometry, model.plans, configuration)[0].astype(np.float32)
            kw = dict(mirror_axes=tuple(cm.mirror_axes))
            with torch.inference_mode():
                ref = predict_sliding_window(torch.from_numpy(data), net, plan.patch_size, cm.num_outputs, 0.5,
                                             accumulate_dtype=torch.float32, **kw).numpy()
            got = predict_sliding_window_numpy(data, session, plan.patch_size, cm.num_outputs, 0.5,
                                               accumulate_dtype=np.float32, **kw)
            assert got.dtype == np.float32 and got.shape == ref.shape
            err = float(np.abs(torch.softmax(torch.from_numpy(ref), 0).numpy() - torch.softmax(torch.from_numpy(got), 0).numpy()).max())
            assert err <= PROB_TOL_FLOAT32_STITCHING, f"{case} {runtime}: probabilities differ by {err:.2e}"
    finally:
        torch.set_num_threads(before)


def _runtime_matches_torch(root, src, tmp_path, runtime, configuration, mode):
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.install import import_models
    from AutoSegLib.models.folder import load_model
    import torch
    model = load_model(import_models([src], tmp_path / "models"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on a busy machine: many times slower with threads waiting on each other
    try:
        for case in sorted(p.name[:-len("_0000.nii.gz")] for p in (root / "inputs").glob("*_0000.nii.gz")):
            images, geometry = read_case([root / "inputs" / f"{case}_0000.nii.gz"])
            kw = dict(tta=(mode == "tta"), device="cpu", return_probabilities=True)
            assert_equivalent(predict_arrays(model, images, geometry, **kw),
                              predict_arrays(model, images, geometry, runtime=runtime, **kw), (1, 2),
                              f"{configuration} {mode} {case} {runtime}")
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- export and refusals

def _one_fold(model):
    cm = next(iter(model.configurations.values()))
    return cm, next(iter(cm.folds.values()))


def test_export_records_the_check_against_torch(tiny_model):
    model = tiny_model()
    assert [compiled.export_status(fw) for fw in model.configurations["3d_fullres"].folds.values()] == ["missing"]
    written = compiled.export_model(model)
    assert [p.name for p in written] == ["network.onnx"]
    record = json.loads((written[0].parent / compiled.SIDECAR_NAME).read_text())
    assert record["input_channels"] == 1 and record["outputs"] == 3 and record["patch_size"] == [8, 16, 16]
    for runtime in compiled.COMPILED:
        if compiled.installed(runtime):
            check = record["check"][runtime]
            assert check["max_abs_diff"] <= check["tolerance"] == compiled.EXPORT_TOLERANCE * check["scale"]
    assert compiled.export_model(model) == []  # up to date: nothing exported again


def test_export_refuses_a_network_that_disagrees_with_torch(tiny_model, monkeypatch):
    if not any(compiled.installed(r) for r in compiled.COMPILED):
        pytest.skip("no compiled runtime")
    real = compiled.load_session

    def off_by_a_bit(*a, **kw):  # a runtime whose logits are 1e-2 off: ten times the tolerance at scale 1
        f = real(*a, **kw)
        return lambda x: f(x) + np.float32(10 * compiled.EXPORT_TOLERANCE * max(1.0, float(np.abs(f(x)).max())))

    monkeypatch.setattr(compiled, "load_session", off_by_a_bit)
    model = tiny_model()
    cm, fw = _one_fold(model)
    with pytest.raises(AutoSegError, match="differs from torch"):
        compiled.export_model(model)
    assert not compiled.onnx_path(fw).exists() and compiled.export_status(fw) == "missing"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_damaged_or_unrecorded_exports_are_clear_errors(tiny_model, runtime):
    model = tiny_model()
    compiled.export_model(model)
    cm, fw = _one_fold(model)
    path = compiled.onnx_path(fw)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(AutoSegError, match="damaged"):
        compiled.load_session(path, runtime)
    # the same truncated file with a matching record: the runtime's own parse error, reworded
    side = path.parent / compiled.SIDECAR_NAME
    rec = json.loads(side.read_text())
    rec["sha256"] = compiled.file_sha256(path)
    side.write_text(json.dumps(rec))
    with pytest.raises(AutoSegError, match=f"{runtime} cannot load the exported network"):
        compiled.load_session(path, runtime)
    side.unlink()
    with pytest.raises(AutoSegError, match="missing or unreadable record"):
        compiled.load_session(path, runtime)


def test_stale_export_is_redone_and_read_only_folder_is_a_clear_error(tiny_model, monkeypatch):
    if not any(compiled.installed(r) for r in compiled.COMPILED):
        pytest.skip("no compiled runtime")
    runtime = runtimes.resolve_runtime("auto", "cpu")
    model = tiny_model()
    cm, fw = _one_fold(model)
    compiled.export_model(model)
    before = compiled.onnx_path(fw).read_bytes()
    # a retrained fold: other weights in the checkpoint
    ck = torch.load(fw.path, weights_only=True)
    ck["network_weights"] = {k: v + 0.05 for k, v in ck["network_weights"].items()}
    torch.save(ck, fw.path)
    assert compiled.export_status(fw) == "stale"
    from AutoSegLib.models.folder import load_model
    model = load_model(model.path)
    cm, fw = _one_fold(model)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE)
    messages = []
    predict_arrays(model, image((6, 16, 16)), geo, tta=False, runtime=runtime, progress=messages.append)
    assert any("exporting it now" in str(m.get("message", "")) for m in messages)
    assert compiled.export_status(fw) == "ok" and compiled.onnx_path(fw).read_bytes() != before
    # read-only: no export possible, a message that says what to do
    for f in (compiled.onnx_path(fw), fw.path.parent / compiled.SIDECAR_NAME):
        f.unlink()
    real_access = os.access
    fold_dir = fw.path.parent
    # as if the folder were read-only (chmod does not stop root, who runs some test machines)
    monkeypatch.setattr(compiled.os, "access", lambda p, mode: False if Path(p) == fold_dir else real_access(p, mode))
    with pytest.raises(AutoSegError, match="read-only"):
        predict_arrays(model, image((6, 16, 16)), geo, tta=False, runtime=runtime)


# ------------------------------------------------------------------------------------------- no torch

def _stub_torch(folder: Path) -> Path:
    """A ``torch`` package whose import raises, to put first on PYTHONPATH."""
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return folder


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_predict_cli_without_torch_matches_torch(tiny_model, tmp_path, runtime):
    import SimpleITK as sitk
    from AutoSegLib.inference.files import predict_files
    model = tiny_model(folds=("0", "1"))
    compiled.export_model(model)  # what export-model / import-model do; here with torch, in this process
    inp = tmp_path / "in"
    inp.mkdir()
    img = sitk.GetImageFromArray(image((9, 22, 19), 5)[0])
    img.SetSpacing((0.9, 1.1, 2.5))
    sitk.WriteImage(img, str(inp / "c0_0000.nii.gz"))
    ref_out = tmp_path / "ref"
    predict_files(model, inp, ref_out, save_probabilities=True, device="cpu")
    stub = _stub_torch(tmp_path / "stub")
    env = dict(os.environ, PYTHONPATH=f"{stub}{os.pathsep}{REPO}")
    code = ("import sys; from AutoSegLib.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None, 'torch imported'; sys.exit(rc)")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", code, "predict", "-m", str(model.path), "-i", str(inp), "-o", str(out),
                          "--runtime", runtime, "--save-probabilities"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    got = (sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c0.nii.gz"))), np.load(out / "c0.npz")["probabilities"])
    ref = (sitk.GetArrayFromImage(sitk.ReadImage(str(ref_out / "c0.nii.gz"))), np.load(ref_out / "c0.npz")["probabilities"])
    assert_equivalent(ref, got, (1, 2), f"torch-free {runtime}")
    # an archive too: extracted (no checkpoint is unpickled without torch) and predicted from its ONNX files
    from AutoSegLib.models.archive import export_model_archive
    archive = export_model_archive(model.path, tmp_path / "m.zip")
    res = subprocess.run([sys.executable, "-c", code, "predict", "-m", str(archive), "-i", str(inp), "-o",
                          str(tmp_path / "out_archive"), "--runtime", runtime],
                         env=dict(env, HOME=str(tmp_path / "home")), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_archive" / "c0.nii.gz"))),
                                  got[0])
    # torch-free and no export: a clear message, not a traceback
    for fw in model.configurations["3d_fullres"].folds.values():
        compiled.onnx_path(fw).unlink()
    res = subprocess.run([sys.executable, "-c", code, "predict", "-m", str(model.path), "-i", str(inp), "-o",
                          str(tmp_path / "out2"), "--runtime", runtime], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "needs PyTorch" in res.stderr, res.stderr[-2000:]


# ------------------------------------------------------------------------------------------- export-model, import-model

def test_archive_carries_checked_networks_used_without_re_export(tiny_model, tmp_path):
    import zipfile
    from AutoSegLib.models.archive import MANIFEST, export_model_archive
    from AutoSegLib.models.folder import load_model
    model = tiny_model(folds=("0", "1"))
    archive = export_model_archive(model.path, tmp_path / "m.zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST))["files"]
    for fold in ("0", "1"):
        for f in (compiled.ONNX_NAME, compiled.SIDECAR_NAME):
            assert f"trained/3d_fullres/fold_{fold}/{f}" in names and f"trained/3d_fullres/fold_{fold}/{f}" in manifest
    assert not (model.path / "trained" / "3d_fullres" / "fold_0" / compiled.ONNX_NAME).exists()  # source untouched
    loaded = load_model(archive, cache_dir=tmp_path / "x")
    assert [compiled.export_status(fw) for fw in loaded.configurations["3d_fullres"].folds.values()] == ["ok", "ok"]
    if any(compiled.installed(r) for r in compiled.COMPILED):
        geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE)
        messages = []
        img = image((6, 16, 16))
        got = predict_arrays(loaded, img, geo, tta=False, runtime="auto", progress=messages.append,
                             return_probabilities=True)
        assert not any("exporting" in str(m.get("message", "")) for m in messages)
        ref = predict_arrays(model, img, geo, tta=False, return_probabilities=True)
        assert_equivalent(ref, got, (1, 2), "archive")


def test_import_model_exports_every_fold(tmp_path):
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.models.install import import_models
    installed = load_model(import_models([TINY / "Dataset902_Cascade"], tmp_path / "models"))
    folds = [fw for cm in installed.configurations.values() for fw in cm.folds.values()]
    assert len(folds) == 2 and all(compiled.export_status(fw) == "ok" for fw in folds)
    assert not list(TINY.rglob(compiled.ONNX_NAME))  # nothing written into the source
