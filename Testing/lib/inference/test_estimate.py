"""The pre-flight estimate (`inference.estimate`, `inference.calibrate`): its pieces against hand-computed
numbers, the cached measurement, and the refusal path through the CLI."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib.inference import calibrate, estimate

CAL = {"patch_seconds": 0.01, "stitch_seconds": 0.002, "import_seconds": {"torch": 0.3, "a_module_never_imported": 0.25}, "session_seconds": 0.5, "session_mib": 40.0, "base_mib": 150.0, "activation_mib": 7.0,
       "voxel_seconds": 1e-7, "class_voxel_seconds": 2e-8, "resample_seconds_per_voxel": {"1": 3e-8, "3": 9e-8}}
MIB = 2.0 ** 20


def test_case_cost_without_resampling_by_hand(tiny_model):
    model = tiny_model(spacing=(2.0, 1.0, 1.0))  # patch (8, 16, 16), 1 channel in, 3 outputs, mirror axes 0 1 2
    cm = model.configurations["3d_fullres"]
    assert tuple(cm.mirror_axes) == (0, 1, 2) and cm.num_outputs == 3
    cost = estimate.case_cost(CAL, model, "3d_fullres", (20, 40, 40), (2.0, 1.0, 1.0), folds=2, tta=True,
                              step_size=0.5, save_probabilities=False)
    # windows per axis: ceil((20-8)/4)+1 = 4, ceil((40-16)/8)+1 = 4, 4 -> 64; 8 mirror passes; 2 folds
    assert cost["windows"] == 64
    assert cost["network_s"] == pytest.approx(64 * 2 * (8 * 0.01 + 0.002))
    n = 20 * 40 * 40
    assert cost["resample_s"] == 0.0
    assert cost["other_s"] == pytest.approx(n * 1e-7 + 3 * n * 2e-8)
    # memory (no resampling, M = N): preprocessing 4N + 4N + 4N; network 4N + 4N + 2*3N + 2N + 7 MiB;
    # export 4N + 2*3N + 2*3N + N + slab 3*4*3N
    pre, net = 12 * n, 4 * n + 4 * n + 6 * n + 2 * n + 7 * MIB
    export = 4 * n + 6 * n + 6 * n + n + 36 * n
    assert cost["pipeline_mib"] == pytest.approx(max(pre, net, export) / MIB)
    no_tta = estimate.case_cost(CAL, model, "3d_fullres", (20, 40, 40), (2.0, 1.0, 1.0), folds=1, tta=False,
                                step_size=1.0, save_probabilities=True)
    assert no_tta["windows"] == 3 * 3 * 3 and no_tta["network_s"] == pytest.approx(27 * (0.01 + 0.002))
    assert no_tta["pipeline_mib"] == pytest.approx(max(pre, net, export + 3 * n * 4) / MIB)


def test_case_cost_with_resampling_by_hand(tiny_model):
    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    # 1 mm slices resampled to the model's 2 mm: (20, 40, 40) -> (10, 40, 40)
    cost = estimate.case_cost(CAL, model, "3d_fullres", (20, 40, 40), (1.0, 1.0, 1.0), folds=1, tta=False,
                              step_size=0.5, save_probabilities=False)
    n, m = 20 * 40 * 40, 10 * 40 * 40
    assert cost["windows"] == (int(np.ceil(2 / 4)) + 1) * 4 * 4
    # data: order 3, 1 channel at M voxels; logits back: order 1, 3 channels at N voxels
    assert cost["resample_s"] == pytest.approx(m * 9e-8 + 3 * n * 3e-8)
    pre = 4 * n + 4 * n + (8 * n + 8 * m) + 4 * m
    net = 4 * n + 4 * m + 6 * m + 2 * m + 7 * MIB
    export = 4 * n + 6 * m + 6 * n + (8 * m + 12 * n) + n + 36 * n
    assert cost["pipeline_mib"] == pytest.approx(max(pre, net, export) / MIB)


def _seed_cache(model, runtime="torch"):
    key_net = calibrate.network_key(model, "3d_fullres", runtime, None)
    entries = {key_net: {k: CAL[k] for k in calibrate.NETWORK_KEYS},
               f"{calibrate.machine_key()} | pipeline": {k: CAL[k] for k in ("voxel_seconds", "class_voxel_seconds",
                                                                              "resample_seconds_per_voxel")}}
    path = calibrate.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": calibrate.CACHE_VERSION, "entries": entries}))


def _write_case(folder, shape=(20, 40, 40), spacing_xyz=(1.0, 1.0, 2.0)):
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, shape).astype(np.float32))
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, str(folder / "c_0000.nii.gz"))
    return folder


def test_estimate_run_sums_cases_and_loaded_networks(tiny_model, tmp_path, monkeypatch):
    model = tiny_model(spacing=(2.0, 1.0, 1.0), folds=("0", "1"))
    _seed_cache(model)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the cached calibration was measured again"))
    monkeypatch.setattr(estimate, "available_mib", lambda: 10_000.0)
    a = _write_case(tmp_path / "a")
    cases = {"a": [a / "c_0000.nii.gz"], "b": [a / "c_0000.nii.gz"]}
    events = []
    ev = estimate.estimate_run(model, cases, ["3d_fullres"], {"3d_fullres": ["0", "1"]}, True, 0.5, "torch",
                               progress=events.append)
    one = estimate.case_cost(CAL, model, "3d_fullres", (20, 40, 40), (2.0, 1.0, 1.0), 2, True, 0.5, False)
    per_case = one["network_s"] + one["resample_s"] + one["other_s"]
    assert "torch" in __import__("sys").modules  # so only the other module's import time is added
    assert ev["seconds"] == pytest.approx(2 * per_case + 2 * 0.5 + 0.25)  # two cases, two folds loaded once
    assert ev["peak_memory_mib"] == pytest.approx(150.0 + 2 * 40.0 + one["pipeline_mib"])
    assert ev["fits"] and ev["available_memory_mib"] == 10_000.0
    assert events[-1]["event"] == "estimate" and "2 cases" in events[-1]["message"]
    monkeypatch.setattr(estimate, "available_mib", lambda: 100.0)
    ev = estimate.estimate_run(model, cases, ["3d_fullres"], {"3d_fullres": ["0", "1"]}, True, 0.5, "torch")
    assert not ev["fits"] and "--force" in ev["message"]


def test_calibration_is_measured_in_a_child_and_cached(tiny_model, monkeypatch):
    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    cal = calibrate.measure(model, "3d_fullres", "torch")
    assert cal["patch_seconds"] > 0 and cal["base_mib"] > 50 and cal["voxel_seconds"] > 0
    assert set(calibrate.NETWORK_KEYS) <= set(cal)
    assert set(cal["resample_seconds_per_voxel"]) == {"1", "3"}
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("measured again"))
    assert calibrate.measure(model, "3d_fullres", "torch")["patch_seconds"] == cal["patch_seconds"]


def test_cli_refuses_when_memory_will_not_fit_and_writes_nothing(tiny_model, tmp_path, monkeypatch, capsys):
    from AutoSegLib.cli import main

    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    _seed_cache(model)
    a = _write_case(tmp_path / "in")
    monkeypatch.setattr(estimate, "available_mib", lambda: 50.0)  # less than the process base alone
    out = tmp_path / "out"
    args = ["predict", "-m", str(model.path), "-i", str(a), "-o", str(out), "--runtime", "torch", "--no-tta"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "may not fit in memory" in err and "--force" in err and "Nothing was predicted" in err
    assert not out.exists()
    assert main(args + ["--estimate-only"]) == 0 and not out.exists()
    assert "estimate: about" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0 and (out / "c.nii.gz").is_file()


def test_a_failed_measurement_does_not_stop_prediction(tiny_model, tmp_path, monkeypatch):
    from AutoSegLib.inference.files import predict_files

    model = tiny_model(spacing=(2.0, 1.0, 1.0))

    def broken(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "Segmentation fault")
    monkeypatch.setattr(subprocess, "run", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_cache"))  # nothing cached: it must measure
    a = _write_case(tmp_path / "in")
    events = []
    (out,) = predict_files(model, a, tmp_path / "out", tta=False, runtime="torch", progress=events.append)
    assert out.is_file()
    assert any("no pre-flight estimate" in str(e.get("message")) and "Segmentation fault" in str(e.get("message"))
               for e in events)


def test_estimate_counts_the_export_on_first_use(tiny_model, tmp_path, monkeypatch):
    from AutoSegLib.inference import compiled
    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    runtime = "openvino"
    key = calibrate.network_key(model, "3d_fullres", runtime, None)
    entries = {key: {**{k: CAL[k] for k in calibrate.NETWORK_KEYS}, "export_seconds": 2.0, "export_mib": 300.0},
               f"{calibrate.machine_key()} | pipeline": {k: CAL[k] for k in ("voxel_seconds", "class_voxel_seconds",
                                                                              "resample_seconds_per_voxel")}}
    calibrate.cache_path().parent.mkdir(parents=True, exist_ok=True)
    calibrate.cache_path().write_text(json.dumps({"version": calibrate.CACHE_VERSION, "entries": entries}))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("measured again"))
    monkeypatch.setattr(estimate, "available_mib", lambda: 10_000.0)
    a = _write_case(tmp_path / "a")
    cases = {"a": [a / "c_0000.nii.gz"]}
    args = (model, cases, ["3d_fullres"], {"3d_fullres": ["0"]}, False, 0.5, runtime)
    monkeypatch.setattr(compiled, "export_status", lambda fw: "missing")
    missing = estimate.estimate_run(*args)
    monkeypatch.setattr(compiled, "export_status", lambda fw: "ok")
    ok = estimate.estimate_run(*args)
    assert missing["seconds"] - ok["seconds"] == pytest.approx(2.0)  # the export (and its check)
    assert missing["peak_memory_mib"] - ok["peak_memory_mib"] == pytest.approx(300.0)
    assert "exporting the networks" in missing["message"] and "exporting" not in ok["message"]
