"""AutoSeg runs nnU-Net v2 models like the reference: predictions compared with the reference's own outputs.

- ``data/nnunet_ref`` (made by ``data/make_reference_models.py``): small models trained by the reference
  (3d_fullres and 2d, fold 0, a tiny network), three test images, and what
  ``nnUNetv2_predict_from_modelfolder --save_probabilities [--disable_tta]`` wrote. In the default suite.
- ``../shared/reference/nnunet_models``: the same kind with the reference's full-size network (slow suite).
- ``data/nnunet_tiny`` (made by ``data/make_fixtures.py`` with the reference's own predictor): a
  residual-encoder U-Net with two channels (CT + MRI normalisation) and regions, and a cascade with
  restricted mirroring axes and post-processing.

Criteria (issue 5): Dice >= 0.999 per class between the label maps and probabilities within 1e-3 (max abs),
all but ``PROB_OUTLIERS`` of the values, which must stay within ``PROB_TOL_OUTLIER``. No nnunetv2 needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.io.images import read_case, read_image
from AutoSegLib.models.folder import load_model

TINY = Path(__file__).resolve().parent / "data" / "nnunet_tiny"
PROB_TOL = 1e-3
# The reference's outputs were written on another CPU. On a 2-core AMD EPYC Zen 4 (2026-12-07) the 3d_fullres
# model's test_001 without mirroring differed by 2.5e-3 at 3 of its 89,760 probabilities (one voxel of the last
# slice, its three classes), every other value within 5e-4: the same with torch's oneDNN convolutions and
# without them, and with OpenVINO; 2.4e-4 with ONNX Runtime. On the Sapphire Rapids Xeon all were within 1e-3.
PROB_OUTLIERS = 1e-4  # fraction of the values
PROB_TOL_OUTLIER = 5e-3
DICE_MIN = 0.999


@pytest.fixture(autouse=True)
def _one_thread():
    # these networks are tiny: with two threads on a busy machine the threads wait for each other (measured
    # under load: 230 s instead of 2.4 s for the 2d TTA cases)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dice(a: np.ndarray, b: np.ndarray, value) -> float:
    ma, mb = np.isin(a, value), np.isin(b, value)
    denom = ma.sum() + mb.sum()
    return 1.0 if denom == 0 else 2.0 * (ma & mb).sum() / denom


def _compare(labels, probs, ref_labels, ref_probs, classes, what):
    assert probs.shape == ref_probs.shape, f"{what}: probabilities {probs.shape} vs reference {ref_probs.shape}"
    assert labels.shape == ref_labels.shape
    diff = np.abs(probs.astype(np.float64) - ref_probs)
    err, over = float(diff.max()), int((diff > PROB_TOL).sum())
    assert over <= PROB_OUTLIERS * diff.size and err <= PROB_TOL_OUTLIER, \
        f"{what}: probabilities differ by up to {err:.2e}, {over} of {diff.size} by more than {PROB_TOL:g}"
    for c in classes:
        d = _dice(labels, ref_labels, c)
        assert d >= DICE_MIN, f"{what}: Dice {d:.5f} for class {c}"
    return err


def _reference_root(shared_dir) -> Path:
    root = shared_dir / "reference" / "nnunet_models"
    if not (root / "outputs").is_dir():
        pytest.skip("reference nnU-Net outputs not found")
    return root


MODES = [("3d_fullres", "notta"), ("3d_fullres", "tta"), ("2d", "tta"), ("2d", "notta")]


@pytest.mark.parametrize("configuration, mode", MODES)
def test_trained_reference_models_match_the_reference_outputs(nnunet_reference, configuration, mode):
    """The repository's small trained models: every case, TTA on and off, both configurations."""
    _check_outputs(nnunet_reference.root, nnunet_reference.trainer, configuration, mode, all_cases=True)


# Mirroring multiplies prediction time by 8 (4 in 2D) on the full-size network.
@pytest.mark.slow
@pytest.mark.parametrize("configuration, mode", MODES)
def test_shared_reference_models_match_the_reference_outputs(shared_dir, configuration, mode):
    _check_outputs(_reference_root(shared_dir), "nnUNetTrainerCPUBench", configuration, mode, all_cases=True)


def _check_outputs(root: Path, trainer: str, configuration: str, mode: str, all_cases: bool) -> None:
    out = root / "outputs" / f"{configuration}_{mode}"
    if not out.is_dir():
        pytest.skip(f"the reference has no {out.name} outputs in {root}")
    model = load_model(root / "Dataset900_Synth" / f"{trainer}__nnUNetPlans__{configuration}")
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (root / "inputs").glob("*_0000.nii.gz"))
    assert len(cases) == 3
    for case in (cases if all_cases else ["test_001"]):
        images, geometry = read_case([root / "inputs" / f"{case}_0000.nii.gz"])
        # the default precision: an nnU-Net model predicts in float32 on the CPU, as the reference does
        labels, probs = predict_arrays(model, images, geometry, tta=(mode == "tta"), device="cpu",
                                       return_probabilities=True)
        ref_labels, _ = read_image(out / f"{case}.nii.gz")
        ref_probs = np.load(out / f"{case}.npz")["probabilities"]
        _compare(labels, probs, ref_labels, ref_probs, (1, 2), f"{configuration} {mode} {case}")


@pytest.mark.parametrize("mode", ["tta", "notta"])
def test_residual_encoder_two_channels_regions(mode):
    model = load_model(TINY / "Dataset901_ResEncRegions")
    images, geometry = read_case([TINY / "inputs" / f"resenc_000_{c:04d}.nii.gz" for c in (0, 1)])
    labels, probs = predict_arrays(model, images, geometry, tta=(mode == "tta"), device="cpu",
                                   precision="float32", return_probabilities=True)
    expected = TINY / "expected" / "Dataset901_ResEncRegions" / mode / "resenc_000"
    ref_labels, _ = read_image(expected.with_suffix(".nii.gz"))
    ref_probs = np.load(expected.with_suffix(".npz"))["probabilities"]
    # regions: whole = labels {1, 2}, core = label 2 (the painted values of regions_class_order)
    _compare(labels, probs, ref_labels, ref_probs, ([1, 2], [2]), f"resenc regions {mode}")


def test_cascade_with_postprocessing():
    model = load_model(TINY / "Dataset902_Cascade")
    images, geometry = read_case([TINY / "inputs" / "cascade_000_0000.nii.gz"])
    expected = TINY / "expected" / "Dataset902_Cascade"
    for configuration, ref in (("3d_lowres", expected / "lowres" / "cascade_000"),
                               ("3d_cascade_fullres", expected / "cascade_000")):
        labels, probs = predict_arrays(model, images, geometry, configuration=configuration, tta=True, device="cpu",
                                       precision="float32", return_probabilities=True, postprocess=False)
        ref_labels, _ = read_image(Path(str(ref) + ".nii.gz"))
        _compare(labels, probs, ref_labels, np.load(Path(str(ref) + ".npz"))["probabilities"], (1, 2), configuration)
    # the default: inference_information.json's choice (the cascade) + the reference's post-processing
    labels, _ = predict_arrays(model, images, geometry, tta=True, device="cpu", precision="float32")
    ref_labels, _ = read_image(expected / "cascade_000_postprocessed.nii.gz")
    raw_labels, _ = read_image(expected / "cascade_000.nii.gz")
    assert (ref_labels != raw_labels).sum() > 100  # the post-processing really changes this case
    for c in (1, 2):
        assert _dice(labels, ref_labels, c) >= DICE_MIN


def test_imported_model_predicts_exactly_like_the_results_folder(tmp_path):
    """import-model keeps everything inference needs (weights, plans, mirroring axes, post-processing)."""
    from AutoSegLib.models.install import import_models

    source = TINY / "Dataset902_Cascade"
    installed = import_models([source], tmp_path / "models")
    images, geometry = read_case([TINY / "inputs" / "cascade_000_0000.nii.gz"])
    direct = predict_arrays(load_model(source), images, geometry, tta=True, device="cpu", precision="float32",
                            return_probabilities=True)
    imported_model = load_model(installed)
    assert imported_model.configurations["3d_cascade_fullres"].mirror_axes == (1, 2)
    imported = predict_arrays(imported_model, images, geometry, tta=True, device="cpu", precision="float32",
                              return_probabilities=True)
    assert np.array_equal(direct[0], imported[0])
    assert np.array_equal(direct[1], imported[1])
