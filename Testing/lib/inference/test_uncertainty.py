"""The ensemble's uncertainty (inference.uncertainty): moments gathered in the stitchers against a hand-computed
ensemble, the measures, the single-member entropy, and the map written by `autoseg predict --save-uncertainty`."""
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AutoSegLib.inference.sliding_window import predict_sliding_window, predict_sliding_window_numpy
from AutoSegLib.inference.uncertainty import (EnsembleStatistics, measure_from_moments, normalised_entropy,
                                              read_measure)

torch.set_num_threads(1)

PATCH = (4, 6, 5)


def binary_entropy(p):
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2)


def ramp_predictor(scale, ramp):
    """Logits [0, scale * x + ramp] per voxel: the window's own coordinates enter through ``ramp`` (patch shape),
    so a mirrored window gives different logits (x + flip(ramp) after flipping back)."""
    def predict(batch):
        x = np.asarray(batch, dtype=np.float32)[:, 0]
        return np.stack([np.zeros_like(x), scale * x + ramp], axis=1).astype(np.float32)
    return predict


def members_by_hand(x, scale, ramp, mirror):
    """Class-1 probabilities of each member for a single window covering the whole image."""
    out = [1 / (1 + np.exp(-(scale * x + ramp)))]
    if mirror:
        out.append(1 / (1 + np.exp(-(scale * x + ramp[::-1]))))  # flipped along axis 0 and back
    return out


@pytest.mark.parametrize("stitcher", ["numpy", "torch"])
def test_two_folds_with_mirroring_match_the_hand_computed_ensemble(stitcher):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.5, PATCH).astype(np.float32)   # one window: the Gaussian weight cancels
    ramp = np.linspace(-2, 2, PATCH[0], dtype=np.float32)[:, None, None] * np.ones(PATCH, np.float32)
    stats = EnsembleStatistics()
    for scale in (1.0, -0.5):  # two "folds"
        predictor = ramp_predictor(scale, ramp)
        if stitcher == "numpy":
            predict_sliding_window_numpy(x[None], predictor, PATCH, 2, mirror_axes=(0,), statistics=stats)
        else:
            predict_sliding_window(torch.from_numpy(x[None]), lambda b: torch.from_numpy(predictor(b.numpy())),
                                   PATCH, 2, mirror_axes=(0,), statistics=stats)
    p1 = members_by_hand(x, 1.0, ramp, True) + members_by_hand(x, -0.5, ramp, True)   # 4 members
    mean1 = np.mean(p1, axis=0)
    h_mean = binary_entropy(mean1)
    mean_h = np.mean([binary_entropy(p) for p in p1], axis=0)
    spread = np.mean([2 * (p - mean1) ** 2 for p in p1], axis=0)  # sum over both classes of (p_k - P_k)^2
    assert stats.members == 4
    mean_p, mean_e, mean_q = stats.result()
    np.testing.assert_allclose(mean_p[1], mean1, atol=1e-5)
    np.testing.assert_allclose(mean_p.sum(0), 1, atol=1e-5)
    np.testing.assert_allclose(mean_e, mean_h, atol=1e-5)
    np.testing.assert_allclose(stats.uncertainty("entropy"), h_mean, atol=1e-5)
    np.testing.assert_allclose(stats.uncertainty("mutual_information"), h_mean - mean_h, atol=1e-5)
    np.testing.assert_allclose(stats.uncertainty("variance"), spread / 0.5, atol=1e-5)  # max 1 - 1/K = 0.5
    assert (stats.uncertainty("mutual_information") >= 0).all()


def test_overlapping_windows_give_the_per_voxel_values():
    """Many Gaussian-weighted windows of a position-independent predictor: every weight cancels."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2, (9, 13, 11)).astype(np.float32)
    flat = np.zeros(PATCH, np.float32)
    stats = EnsembleStatistics()
    for scale in (1.0, 3.0):
        predict_sliding_window_numpy(x[None], ramp_predictor(scale, flat), PATCH, 2, step_size=0.5,
                                     statistics=stats)
    x = x.astype(np.float64)
    p = [1 / (1 + np.exp(-x)), 1 / (1 + np.exp(-3 * x))]
    expected = binary_entropy(np.mean(p, 0)) - np.mean([binary_entropy(q) for q in p], 0)
    np.testing.assert_allclose(stats.uncertainty("mutual_information"), expected, atol=2e-5)


def test_one_member_gives_the_normalised_entropy():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (3, *PATCH)).astype(np.float32)
    stats = EnsembleStatistics()
    predict_sliding_window_numpy(np.zeros((1, *PATCH), np.float32), lambda b: logits[None].copy(), PATCH, 3,
                                 statistics=stats)
    assert stats.members == 1 and stats.measure_name("mutual_information") == "entropy"
    e = np.exp(logits - logits.max(0))
    p = e / e.sum(0)
    np.testing.assert_allclose(stats.uncertainty("mutual_information"), -(p * np.log(p)).sum(0) / math.log(3),
                               atol=1e-5)
    # the normalisation's end points: uniform -> 1, one-hot -> 0
    assert normalised_entropy(np.full((4, 2), 0.25))[0] == pytest.approx(1.0)
    assert normalised_entropy(np.array([[1.0], [0.0], [0.0]]))[0] == 0.0


def test_region_measures_and_bounds():
    p = np.array([[0.5, 0.9], [0.1, 1.0]])  # two regions (channels), two voxels
    e = normalised_entropy(p, regions=True)
    np.testing.assert_allclose(e, [(1 + binary_entropy(0.1)) / 2, binary_entropy(0.9) / 2], atol=1e-6)
    # two members agreeing on nothing: p = 0 and p = 1 for both regions -> variance 1 (its maximum), MI 1
    members = [np.zeros((2, 1)), np.ones((2, 1))]
    mean_p = np.mean(members, 0)
    mean_e = np.zeros(1)
    mean_q = np.mean([(m ** 2).mean(0) for m in members], 0)
    assert measure_from_moments(mean_p, mean_e, mean_q, "variance", regions=True)[0] == pytest.approx(1.0)
    assert measure_from_moments(mean_p, mean_e, mean_q, "mutual_information", regions=True)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        measure_from_moments(mean_p, mean_e, mean_q, "bogus")


def _write(path, array, spacing=(2.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(img, str(path))


def test_cli_uncertainty_equals_the_entropy_of_the_saved_probabilities(tiny_model, tmp_path):
    """One fold, no mirroring, the model's own spacing (no resampling): the map is H(probabilities) / log K."""
    from AutoSegLib.cli import main

    model = tiny_model(folds=("0",))
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a_0000.nii.gz", np.random.default_rng(0).normal(0, 1, (10, 20, 18)).astype(np.float32))
    out = tmp_path / "out"
    rc = main(["predict", "-m", str(model.path), "-i", str(tmp_path / "in"), "-o", str(out), "--no-tta",
               "--save-uncertainty", "--save-probabilities", "--device", "cpu", "--runtime", "torch"])
    assert rc == 0
    u = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "a_uncertainty.nii.gz")))
    probs = np.load(out / "a.npz")["probabilities"]
    assert u.dtype == np.float32 and u.shape == probs.shape[1:]
    np.testing.assert_allclose(u, normalised_entropy(probs), atol=5e-3)  # logits stitched in float16
    assert read_measure(out / "a_uncertainty.nii.gz") == "entropy"


def test_ensemble_of_configurations_averages_the_maps_and_counts_members():
    from AutoSegLib.inference.uncertainty import combine_configurations
    a = {"uncertainty": np.array([0.2, 0.4], np.float32), "disagreement": np.array([0.0, 0.2], np.float32),
         "measure": "entropy", "members": 8}
    b = {"uncertainty": np.array([0.6, 0.0], np.float32), "disagreement": np.array([0.1, 0.1], np.float32),
         "measure": "entropy", "members": 16}
    out = combine_configurations({"2d": a, "3d_fullres": b})
    np.testing.assert_allclose(out["uncertainty"], [0.4, 0.2])
    np.testing.assert_allclose(out["disagreement"], [0.05, 0.15])
    assert out["members"] == 24 and out["measure"] == "entropy, mean over configurations 2d, 3d_fullres"
    assert combine_configurations({"2d": a}) == a


def test_a_pass_abandoned_on_the_gpu_is_undone():
    """runner falls back to the CPU when the GPU runs out of memory mid-pass: the statistics go back to their
    state before the pass, so the redone pass is not counted twice."""
    x = np.random.default_rng(6).normal(0, 1, PATCH).astype(np.float32)
    flat = np.zeros(PATCH, np.float32)
    once, twice = EnsembleStatistics(), EnsembleStatistics()
    predict_sliding_window_numpy(x[None], ramp_predictor(1.0, flat), PATCH, 2, statistics=once)
    predict_sliding_window_numpy(x[None], ramp_predictor(1.0, flat), PATCH, 2, statistics=twice)
    twice.checkpoint()
    twice.prepare(PATCH, (slice(None),) * 4, np.ones(PATCH))
    twice.add_member(np.stack([flat, flat + 5])[None])
    twice.add_windows([tuple(slice(0, p) for p in PATCH)])  # half a pass, then abandoned
    twice.restore()
    for a, b in zip(once.result(), twice.result()):
        np.testing.assert_array_equal(a, b)
    assert twice.members == once.members == 1
