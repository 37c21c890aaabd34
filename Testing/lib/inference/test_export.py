"""export_logits on hand-made cases: bbox paste, transposition back, background outside the crop,
softmax vs regions, and resampling of logits before the non-linearity."""
import numpy as np
import torch

from AutoSegLib.inference.export import export_logits, logits_to_probabilities

from .conftest import make_plans  # noqa: E402  (tests folder conftest, imported as a module)


def props(shape_before, bbox, spacing):
    crop = [hi - lo for lo, hi in bbox]
    return {"shape_before_cropping": list(shape_before), "bbox_used_for_cropping": bbox,
            "shape_after_cropping_and_before_resampling": crop, "spacing_transposed": list(spacing)}


def test_paste_into_bbox_and_transpose_back():
    plans = make_plans(spacing=(1.0, 1.0, 1.0), transpose=(2, 0, 1))
    assert plans.transpose_backward == (1, 2, 0)
    bbox = [[1, 3], [0, 5], [2, 6]]
    logits = torch.zeros(3, 2, 5, 4)
    logits[2] = 5.0
    logits[1, 0, 0, 0] = 9.0
    labels, probs = export_logits(logits.half(), props((4, 5, 6), bbox, (1.0, 1.0, 1.0)), plans, "3d_fullres")
    expected_t = np.zeros((4, 5, 6), np.uint8)
    expected_t[1:3, 0:5, 2:6] = 2
    expected_t[1, 0, 2] = 1
    expected = expected_t.transpose(1, 2, 0)
    assert labels.dtype == np.uint8 and labels.shape == (5, 6, 4)
    np.testing.assert_array_equal(labels, expected)
    assert probs.shape == (3, 5, 6, 4) and probs.dtype == np.float32
    outside = expected == 0
    np.testing.assert_array_equal(probs[0][outside], 1.0)
    np.testing.assert_array_equal(probs[1:, outside], 0.0)
    e = np.exp(np.array([0.0, 0.0, 5.0]))
    np.testing.assert_allclose(probs[:, expected == 2][:, 0], e / e.sum(), rtol=1e-6)


def test_logits_are_resampled_before_softmax():
    """Linear resampling of logits then softmax differs from resampling probabilities; check the former:
    two voxels with logits (0, 4) and (4, 0) upsampled 2x along one axis by linear interpolation."""
    plans = make_plans(spacing=(2.0, 1.0, 1.0))  # plans spacing: axis 0 coarse by 2
    logits = torch.zeros(3, 2, 1, 1)
    logits[0] = -30.0
    logits[1, 0], logits[2, 0] = 0.0, 4.0
    logits[1, 1], logits[2, 1] = 4.0, 0.0
    p = props((4, 1, 1), [[0, 4], [0, 1], [0, 1]], (1.0, 1.0, 1.0))
    labels, probs = export_logits(logits.half(), p, plans, "3d_fullres")
    # order-1 resampling 2 -> 4 samples at 0.25 steps: source coordinates -0.25, 0.25, 0.75, 1.25 (edge-clamped)
    w = np.clip(np.array([-0.25, 0.25, 0.75, 1.25]), 0, 1)
    l1, l2 = 4 * w, 4 * (1 - w)
    e1, e2 = np.exp(l1), np.exp(l2)
    np.testing.assert_allclose(probs[1, :, 0, 0], e1 / (e1 + e2), atol=1e-3)
    np.testing.assert_array_equal(labels[:, 0, 0], [2, 2, 1, 1])


def test_slabs_give_the_same_result(monkeypatch):
    import AutoSegLib.inference.export as export
    layout = make_plans().label_layout()
    logits = torch.randn(3, 9, 7, 5, generator=torch.Generator().manual_seed(0)).half()
    full = logits_to_probabilities(logits, layout, True)
    monkeypatch.setattr(export, "SLAB_VOXELS", 40)  # one slice at a time
    sliced = logits_to_probabilities(logits, layout, True)
    np.testing.assert_array_equal(full[0], sliced[0])
    np.testing.assert_allclose(full[1], sliced[1], rtol=1e-6, atol=1e-7)  # SIMD tails: 1 ulp


def test_softmax_channels_follow_sorted_label_values():
    """dataset.json may list labels in any order; channel i is the i-th smallest value (training's encoding)."""
    from AutoSegLib.inference.export import probabilities_to_labels
    layout = make_plans(labels={"background": 0, "tumour": 2, "organ": 1}).label_layout()
    probs = torch.zeros(3, 1, 1, 3)
    probs[0, 0, 0, 0] = probs[1, 0, 0, 1] = probs[2, 0, 0, 2] = 1
    np.testing.assert_array_equal(probabilities_to_labels(probs, layout).numpy()[0, 0], [0, 1, 2])
