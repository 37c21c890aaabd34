"""Sliding window: analytic predictors (identity, x + 1, a known non-equivariant one under mirroring),
step/pad/Gaussian edge cases, and agreement with the reference implementation's stitched logits
(fixture from make_reference_fixture.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegLib.inference.sliding_window import (compute_steps, count_windows, gaussian_importance_map,
                                                 mirror_combinations, pad_to_patch, predict_sliding_window)

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data" / "reference_sliding_window.pt"


@pytest.mark.parametrize("shape,patch", [((20, 33, 17), (8, 16, 16)), ((5, 7, 40), (8, 16, 16)),
                                          ((3, 21, 30), (16, 16)), ((8, 16, 16), (8, 16, 16))])
@pytest.mark.parametrize("gaussian", [True, False])
def test_identity_and_plus_one_stitch_to_the_whole_image(shape, patch, gaussian):
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    ident = predict_sliding_window(x, lambda b: b.clone(), patch, gaussian=gaussian,
                                   accumulate_dtype=torch.float32)
    torch.testing.assert_close(ident, x, rtol=1e-6, atol=1e-6)
    plus = predict_sliding_window(x, lambda b: b + 1, patch, gaussian=gaussian, accumulate_dtype=torch.float32,
                                  mirror_axes=tuple(range(len(patch))), batch_size=3)
    torch.testing.assert_close(plus, x + 1, rtol=1e-6, atol=1e-6)
    # float16 accumulation (the reference's) is the same up to float16 rounding, except where only the
    # far tails of window Gaussians reach (image corners: weights in the float16 subnormal range), which
    # the reference shares; so compare away from the image border
    half = predict_sliding_window(x, lambda b: b + 1, patch, gaussian=gaussian)
    assert half.dtype == torch.float16
    inner = (slice(None),) * (1 + len(shape) - len(patch)) + tuple(slice(p // 4, s - p // 4) for s, p in zip(shape[-len(patch):], patch))
    if gaussian:
        torch.testing.assert_close(half.float()[inner], (x + 1)[inner], rtol=2e-3, atol=2e-3)
    else:
        torch.testing.assert_close(half.float(), x + 1, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("mirror_axes", [(0,), (0, 1, 2), (1, 2)])
def test_mirroring_averages_exactly(mirror_axes):
    """predictor(b) = b + (index along axis 0 of the window). Mirroring axis 0 maps the ramp r to
    p - 1 - r; half of the 2^k combinations include axis 0, so the average adds (p0 - 1) / 2 everywhere.
    Without axis 0 among the mirror axes the ramp survives unchanged."""
    patch = (6, 8, 8)
    ramp = torch.arange(patch[0], dtype=torch.float32).view(1, 1, -1, 1, 1)
    x = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(1))  # one window: no stitching
    out = predict_sliding_window(x, lambda b: b + ramp, patch, mirror_axes=mirror_axes,
                                 accumulate_dtype=torch.float32, gaussian=False)
    expected = x + (patch[0] - 1) / 2 if 0 in mirror_axes else x + ramp[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert len(mirror_combinations(mirror_axes)) == 2 ** len(mirror_axes) - 1


def test_steps_hand_computed():
    assert compute_steps((110,), (64,), 0.5) == [[0, 23, 46]]
    assert compute_steps((64, 65), (64, 64), 0.5) == [[0], [0, 1]]
    assert compute_steps((100,), (10,), 1.0) == [[0, 10, 20, 30, 40, 50, 60, 70, 80, 90]]
    assert compute_steps((20,), (8,), 0.5) == [[0, 4, 8, 12]]
    with pytest.raises(ValueError):
        compute_steps((5,), (8,), 0.5)
    with pytest.raises(ValueError):
        compute_steps((20,), (8,), 0.0)
    assert count_windows((20, 33, 17), (8, 16, 16)) == 4 * 4 * 2
    assert count_windows((3, 20, 37), (16, 16)) == 3 * 2 * 4


def test_padding_is_centred_with_the_odd_voxel_after():
    x = torch.ones(1, 5, 20)
    padded, region = pad_to_patch(x, (8, 16))
    assert padded.shape == (1, 8, 20)
    assert region == (slice(None), slice(1, 6), slice(0, 20))
    assert padded[0, 0].sum() == 0 and padded[0, 6:].sum() == 0 and padded[0, 1:6].sum() == 100


def test_gaussian_peak_symmetry_width_and_no_zeros():
    g = gaussian_importance_map((16, 32, 24), dtype=torch.float32).double()
    assert g.shape == (16, 32, 24)
    assert g[8, 16, 12] == pytest.approx(10.0) and g.max() == g[8, 16, 12]
    # sigma = patch / 8: one sigma from the centre the weight is ~exp(-1/2) of the peak
    assert g[8, 16 + 4, 12] / g[8, 16, 12] == pytest.approx(np.exp(-0.5), rel=0.02)
    assert g[8 + 2, 16, 12] / g[8, 16, 12] == pytest.approx(np.exp(-0.5), rel=0.03)
    torch.testing.assert_close(g[8, 1:, 12], g[8, 1:, 12].flip(0))  # symmetric about the centre voxel
    g16 = gaussian_importance_map((64, 64, 64))  # float16 underflows at the corners: zeros replaced
    assert g16.dtype == torch.float16 and (g16 > 0).all()


def test_refuses_mismatched_dimensions():
    with pytest.raises(ValueError, match="spatial axes"):
        predict_sliding_window(torch.zeros(1, 4, 4), lambda b: b, (2, 2, 2))
    with pytest.raises(ValueError, match="mirror axes"):
        predict_sliding_window(torch.zeros(1, 4, 4), lambda b: b, (2, 2), mirror_axes=(2,))


@pytest.mark.parametrize("name", ["3d_tta", "3d_pad_notta", "3d_step07_nogauss", "2d_on_3d_tta", "2d_on_3d_pad"])
def test_matches_reference_stitching(name):
    from AutoSegLib.network.unet import build_network
    from AutoSegLib.planning.plans import NetworkTopology
    c = torch.load(DATA, weights_only=True)[name]
    t = c["topology"]
    topo = NetworkTopology(t["architecture"], t["n_stages"], tuple(t["features_per_stage"]),
                           tuple(map(tuple, t["kernel_sizes"])), tuple(map(tuple, t["strides"])),
                           tuple(t["n_conv_per_stage"]), tuple(t["n_conv_per_stage_decoder"]), True)
    net = build_network(topo, 2, 3, deep_supervision=False).eval()
    net.load_state_dict(c["state_dict"])
    with torch.inference_mode():
        out = predict_sliding_window(c["input"], net, c["patch_size"], step_size=c["step_size"],
                                     gaussian=c["gaussian"], mirror_axes=c["mirror_axes"])
        batched = predict_sliding_window(c["input"], net, c["patch_size"], step_size=c["step_size"],
                                         gaussian=c["gaussian"], mirror_axes=c["mirror_axes"], batch_size=4)
    assert out.dtype == torch.float16 and out.shape == c["logits"].shape
    # Same operations in the same order as the reference's stitching; bit-exact only on a CPU whose oneDNN
    # picks the convolution kernels of the machine that made the fixture (Zen). On AVX-512/AMX CPUs other
    # kernels move float32 logits by ~1e-6, which flips float16 roundings of the stitched sum (measured on a
    # Sapphire Rapids Xeon: 26 of 24,570 values, at most 1.8e-3). A stitching error (weights, offsets,
    # flips) moves values by far more than that.
    torch.testing.assert_close(out.float(), c["logits"].float(), rtol=2e-3, atol=2e-3)
    # batching changes the predictor's float rounding only: within a float16 ulp or two
    torch.testing.assert_close(batched.float(), c["logits"].float(), rtol=2e-3, atol=2e-3)
