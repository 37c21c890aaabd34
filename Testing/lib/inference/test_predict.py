"""predict_arrays / predict_files on tiny random-weight models: geometry round trips, fold and
configuration averaging, cascade inputs, probabilities, refusals, atomic outputs, the CLI."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.io.geometry import Geometry

torch.set_num_threads(1)


def oblique_left_handed():
    """A rotation about an oblique axis, then one axis flipped: det = -1."""
    a, b = 0.3, 0.5
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx @ np.diag([1, -1, 1])
    assert np.linalg.det(m) < 0
    return tuple(m.ravel())


def write_case(path: Path, array: np.ndarray, spacing_zyx, origin, direction):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(spacing_zyx)))
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def image(shape=(10, 20, 18), seed=0, channels=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 20, (channels, *shape))).astype(np.float32)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
def test_predict_files_output_has_the_input_geometry(tiny_model, tmp_path, ending):
    model = tiny_model()
    inp = tmp_path / "in"
    inp.mkdir()
    spacing = (3.1, 0.9, 0.8)  # anisotropic; model spacing (2, 1, 1) forces resampling both ways
    origin, direction = (-12.5, 40.25, 7.0), oblique_left_handed()
    write_case(inp / f"caseA_0000{ending}", image()[0], spacing, origin, direction)
    write_case(inp / f"caseB_0000{ending}", image((7, 15, 22), 1)[0], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
               (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = tmp_path / "out"
    written = model_predict_files(model, inp, out, save_probabilities=True)
    assert sorted(p.name for p in written) == [f"caseA{ending}", f"caseB{ending}"]
    for name in ("caseA", "caseB"):
        src = sitk.ReadImage(str(inp / f"{name}_0000{ending}"))
        seg = sitk.ReadImage(str(out / f"{name}{ending}"))
        assert seg.GetSize() == src.GetSize()
        if ending == ".nrrd":  # stores doubles: exact
            assert (seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()) == \
                (src.GetSpacing(), src.GetOrigin(), src.GetDirection())
        else:  # NIfTI keeps float32 quaternions: re-encoding the same direction moves it by ~1e-9
            np.testing.assert_allclose(seg.GetSpacing(), src.GetSpacing(), rtol=1e-7)
            np.testing.assert_allclose(seg.GetOrigin(), src.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(seg.GetDirection(), src.GetDirection(), atol=1e-7)
            assert np.linalg.det(np.reshape(seg.GetDirection(), (3, 3))) < 0 or name == "caseB"
        labels = sitk.GetArrayFromImage(seg)
        assert set(np.unique(labels)) <= {0, 1, 2}
        probs = np.load(out / f"{name}.npz")["probabilities"]
        assert probs.dtype == np.float32 and probs.shape == (3, *labels.shape)
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
        assert (probs.argmax(0) == labels).mean() > 0.999  # float16 ties aside
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def model_predict_files(model, inp, out, **kw):
    from AutoSegLib.inference.files import predict_files
    return predict_files(model, inp, out, device="cpu", **kw)


def test_fold_average_is_the_mean_of_the_folds(tiny_model):
    from AutoSegLib.inference.runner import predict_logits
    model = tiny_model(folds=("0", "1"))
    data = torch.from_numpy(image((8, 20, 17), 3))
    l0 = predict_logits(model, "3d_fullres", data, folds=["0"], device="cpu")
    l1 = predict_logits(model, "3d_fullres", data, folds=["1"], device="cpu")
    both = predict_logits(model, "3d_fullres", data, device="cpu")
    assert not torch.equal(l0, l1)
    expected = (l0.float() + l1.float()) / 2
    torch.testing.assert_close(both.float(), expected, rtol=2e-3, atol=2e-3)  # float16 accumulator
    assert (both.float() - expected).abs().max() <= expected.abs().max() * 2 ** -10  # within one fp16 ulp


def test_configuration_ensemble_averages_probabilities_exactly(tiny_model):
    model = tiny_model(configurations=("3d_fullres", "2d"))
    img = image((6, 20, 18), 4)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    _, p3 = predict_arrays(model, img, geo, "3d_fullres", return_probabilities=True, device="cpu", tta=False)
    _, p2 = predict_arrays(model, img, geo, "2d", return_probabilities=True, device="cpu", tta=False)
    labels, pe = predict_arrays(model, img, geo, ["3d_fullres", "2d"], return_probabilities=True, device="cpu",
                                tta=False)
    np.testing.assert_array_equal(pe, (p3 + p2) / 2)
    np.testing.assert_array_equal(labels, pe.argmax(0))
    assert not np.array_equal(p3, p2)


def test_cascade_feeds_the_lowres_labels_as_one_hot_channels(tiny_model, monkeypatch):
    import AutoSegLib.inference.predict as predict_mod
    model = tiny_model(configurations=("3d_lowres", "3d_cascade_fullres"), spacing=(2.0, 1.0, 1.0))
    assert model.configurations["3d_cascade_fullres"].num_input_channels == 3
    seen = {}
    real = predict_mod.predict_logits

    def spy(model_, configuration, data, **kw):
        seen[configuration] = data.clone()
        return real(model_, configuration, data, **kw)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    img = image((6, 20, 18), 5)  # no zeros: the crop is the whole image; spacing equals the plans': no resampling
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    lowres_labels, _ = predict_arrays(model, img, geo, "3d_lowres", device="cpu", tta=False)
    labels, _ = predict_arrays(model, img, geo, "3d_cascade_fullres", device="cpu", tta=False)
    extra = seen["3d_cascade_fullres"][1:].numpy()
    assert extra.shape == (2, *img.shape[1:])
    np.testing.assert_array_equal(extra[0], lowres_labels == 1)
    np.testing.assert_array_equal(extra[1], lowres_labels == 2)
    assert labels.shape == img.shape[1:]


def test_regions_use_sigmoid_and_class_order(tiny_model):
    model = tiny_model(labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=(1, 2))
    img = image((6, 16, 16), 6)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels, probs = predict_arrays(model, img, geo, return_probabilities=True, device="cpu", tta=False)
    assert probs.shape == (2, *img.shape[1:]) and probs.min() >= 0 and probs.max() <= 1
    expected = np.zeros(img.shape[1:], np.uint8)
    expected[probs[0] > 0.5] = 1
    expected[probs[1] > 0.5] = 2
    np.testing.assert_array_equal(labels, expected)


def test_refusals_name_the_problem(tiny_model, tmp_path):
    model = tiny_model(num_channels=2)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(AutoSegError, match=r"expects 2 channel\(s\) \['MR0', 'MR1'\]"):
        predict_arrays(model, image(), geo, device="cpu")
    with pytest.raises(AutoSegError, match="trained on 3D images"):
        predict_arrays(model, image((20, 18), channels=2), Geometry((1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1)))
    with pytest.raises(AutoSegError, match="no trained weights for configuration '2d'"):
        predict_arrays(model, image(channels=2), geo, "2d")
    with pytest.raises(AutoSegError, match=r"no weights for fold\(s\) \['3'\]"):
        predict_arrays(model, image(channels=2), geo, folds=[3], device="cpu")
    inp = tmp_path / "in"
    inp.mkdir()
    write_case(inp / "c_0000.nii.gz", image()[0], (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(AutoSegError, match=r"case 'c': channels \[0\] found, expected \[0, 1\]"):
        model_predict_files(model, inp, tmp_path / "out")


def test_interrupted_run_leaves_only_complete_files(tiny_model, tmp_path):
    model = tiny_model()
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        write_case(inp / f"c{i}_0000.nii.gz", image((6, 16, 16), i)[0], (2, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    cases_started = []

    def progress(event):
        if event.get("event") == "stage" and str(event.get("message", "")).startswith("case "):
            cases_started.append(event["message"])
            if len(cases_started) == 2:
                raise KeyboardInterrupt
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        model_predict_files(model, inp, out, progress=progress)
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz"]
    sitk.ReadImage(str(out / "c0.nii.gz"))  # complete and readable


def test_cli_predict_single_case_to_a_file_and_bad_channels(tiny_model, tmp_path, capsys):
    from AutoSegLib.cli import main
    model = tiny_model()
    f = tmp_path / "one_0000.nrrd"
    write_case(f, image((6, 16, 16))[0], (2, 1, 1), (1, 2, 3), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    dest = tmp_path / "seg.nrrd"
    assert main(["predict", "-m", str(model.path), "-i", str(f), "-o", str(dest), "--no-tta", "--device", "cpu"]) == 0
    assert sitk.ReadImage(str(dest)).GetSize() == (16, 16, 6)
    code = main(["predict", "-m", str(model.path), "-i", str(f), str(f), "-o", str(tmp_path / "o")])
    assert code == 2
    assert "expects 1 channel file(s)" in capsys.readouterr().err


def test_inference_instructions_drive_configuration_folds_and_postprocessing(tiny_model):
    import json
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.postprocessing import apply_postprocessing
    model = tiny_model(configurations=("3d_fullres", "2d"), folds=("0", "1"))
    steps = [{"step": "largest_component", "labels": "foreground"}]
    (model.path / "inference.json").write_text(json.dumps(
        {"schema_version": 1, "configurations": ["2d"], "folds": {"2d": ["1"]}, "postprocessing": steps}))
    model = load_model(model.path)
    img = image((6, 20, 18), 7)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    raw, _ = predict_arrays(model, img, geo, "2d", folds=["1"], postprocess=False, device="cpu", tta=False)
    chosen, _ = predict_arrays(model, img, geo, device="cpu", tta=False)  # 2d, fold 1, post-processed
    np.testing.assert_array_equal(chosen, apply_postprocessing(raw, steps, model.label_layout))
    other_fold, _ = predict_arrays(model, img, geo, "2d", folds=["0"], postprocess=False, device="cpu", tta=False)
    assert not np.array_equal(raw, other_fold)
    # an explicit other choice does not get the post-processing chosen for 2d
    plain3d, _ = predict_arrays(model, img, geo, "3d_fullres", device="cpu", tta=False)
    nopp3d, _ = predict_arrays(model, img, geo, "3d_fullres", postprocess=False, device="cpu", tta=False)
    np.testing.assert_array_equal(plain3d, nopp3d)


def test_cli_progress_json_events(tiny_model, tmp_path, capsys):
    import json
    from AutoSegLib.cli import main
    model = tiny_model()
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        write_case(inp / f"c{i}_0000.nii.gz", image((6, 16, 40), i)[0], (2, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert main(["predict", "-m", str(model.path), "-i", str(inp), "-o", str(tmp_path / "o"), "--device", "cpu",
                 "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    windows = [e for e in events if e["event"] == "progress" and e["stage"].startswith("predict 3d_fullres")]
    # x: 40 wide, patch 16, step 8 -> starts 0, 8, 16, 24; y fits one patch; z (6) is padded to 8: 4 windows
    assert windows and windows[-1]["current"] == windows[-1]["total"] == 4
    assert all("eta_s" in e for e in windows)
    cases = [e for e in events if e["event"] == "progress" and e["stage"] == "predict cases"]
    assert [e["current"] for e in cases] == [1, 2]
    result = [e for e in events if e["event"] == "result"][-1]
    assert sorted(Path(p).name for p in result["outputs"]) == ["c0.nii.gz", "c1.nii.gz"]


def test_device_and_precision_choices():
    from AutoSegLib.inference.runner import resolve_device, resolve_precision
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(AutoSegError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(AutoSegError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda")) is torch.float16
    assert resolve_precision("bfloat16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(AutoSegError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_training_precision_on_cpu(monkeypatch, native):
    from AutoSegLib.inference.runner import resolve_precision
    from AutoSegLib import device as device_mod
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "bfloat16") is (torch.bfloat16 if native else None)
    for trained in (None, "float32", "float16"):  # nnU-Net models, float32 or GPU trainings
        assert resolve_precision("auto", cpu, trained) is None
    assert resolve_precision("float32", cpu, "bfloat16") is None  # an explicit choice wins
    assert resolve_precision("auto", torch.device("cuda"), "bfloat16") is torch.float16


def test_a_2d_dataset_model_predicts_2d_images(tmp_path):
    import dataclasses
    from AutoSegLib.inference.files import predict_files
    from AutoSegLib.models.folder import load_model
    from .conftest import make_plans, write_model
    p3 = make_plans(configurations=("2d",))
    plans = dataclasses.replace(p3, transpose_forward=(0, 1), transpose_backward=(0, 1),
                                original_median_spacing=(1.0, 1.0), original_median_shape=(20.0, 20.0))
    model = load_model(write_model(tmp_path / "m2d", plans))
    inp = tmp_path / "in"
    inp.mkdir()
    img = sitk.GetImageFromArray(image((30, 21))[0])
    img.SetSpacing((0.5, 0.7))
    img.SetOrigin((3.0, -4.0))
    sitk.WriteImage(img, str(inp / "slice_0000.nrrd"))
    out = predict_files(model, inp, tmp_path / "out", device="cpu")
    seg = sitk.ReadImage(str(out[0]))
    assert seg.GetDimension() == 2 and seg.GetSize() == (21, 30)
    assert (seg.GetSpacing(), seg.GetOrigin()) == ((0.5, 0.7), (3.0, -4.0))
    with pytest.raises(AutoSegError, match="trained on 2D images"):
        predict_arrays(model, image((4, 30, 21)), Geometry((1.0, 1.0, 1.0), (0.0,) * 3, tuple(np.eye(3).ravel())))
