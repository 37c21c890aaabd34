"""Metrics against hand-computed values and a brute-force surface-distance implementation."""
import math

import numpy as np
import pytest

from AutoSegLib.evaluation.metrics import case_metrics, dice_per_label, hd95_assd, surface_distances


def test_dice_iou_hand_computed():
    ref = np.zeros((4, 5), np.uint8)
    pred = np.zeros((4, 5), np.uint8)
    ref[0:2, 0:3] = 1     # 6 voxels
    pred[0:2, 1:4] = 1    # 6 voxels, 4 shared -> TP 4, FP 2, FN 2
    ref[3, 0] = 2         # label 2: reference only -> Dice 0
    m = case_metrics(pred, ref, (2.0, 0.5), [1, 2, 3], surface=False)
    assert (m[1]["TP"], m[1]["FP"], m[1]["FN"]) == (4, 2, 2)
    assert m[1]["Dice"] == pytest.approx(8 / 12) and m[1]["IoU"] == pytest.approx(4 / 8)
    assert m[2]["Dice"] == 0.0 and m[2]["IoU"] == 0.0
    assert math.isnan(m[3]["Dice"]) and math.isnan(m[3]["IoU"])  # both empty -> NaN
    assert m[1]["volume_ref_mm3"] == pytest.approx(6.0) and m[1]["volume_difference_mm3"] == 0.0
    assert m[2]["volume_pred_mm3"] == 0.0 and m[2]["relative_volume_difference"] == pytest.approx(-1.0)
    assert math.isnan(m[3]["relative_volume_difference"])
    assert dice_per_label(pred, ref, [1])[1] == pytest.approx(8 / 12)


def test_regions_and_ignore_label():
    ref = np.array([[0, 1, 2, 2, 9, 9]])
    pred = np.array([[1, 1, 2, 0, 2, 1]])
    m = case_metrics(pred, ref, (1.0, 1.0), [1, (1, 2)], ignore_label=9, surface=False)
    # label 1: ref {1}, pred {0,1} (positions 4,5 ignored) -> TP 1, FP 1, FN 0
    assert (m[1]["TP"], m[1]["FP"], m[1]["FN"]) == (1, 1, 0)
    # region (1,2): ref {1,2,3}, pred {0,1,2} -> TP 2, FP 1, FN 1
    assert (m[(1, 2)]["TP"], m[(1, 2)]["FP"], m[(1, 2)]["FN"]) == (2, 1, 1)
    assert m[(1, 2)]["Dice"] == pytest.approx(4 / 6)


def _brute_surface(mask):
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return np.argwhere(mask & ~inner)


def _brute_distances(a, b, spacing):
    pa = _brute_surface(a) * np.asarray(spacing)
    pb = _brute_surface(b) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 1.2)])
def test_surface_distances_match_brute_force(spacing):
    rng = np.random.default_rng(3)
    for _ in range(3):
        a = np.zeros((12, 13, 11), bool)
        b = np.zeros_like(a)
        lo = rng.integers(0, 4, 3)
        a[lo[0]:lo[0] + 6, lo[1]:lo[1] + 7, lo[2]:lo[2] + 5] = True
        lo = rng.integers(2, 6, 3)
        b[lo[0]:lo[0] + 5, lo[1]:lo[1] + 4, lo[2]:lo[2] + 6] = True
        b[0, 0, 0] = True  # a far-away voxel on the image border
        d_ab, d_ba = surface_distances(a, b, spacing)
        e_ab, e_ba = _brute_distances(a, b, spacing)
        np.testing.assert_allclose(np.sort(d_ab), np.sort(e_ab), rtol=1e-6)
        np.testing.assert_allclose(np.sort(d_ba), np.sort(e_ba), rtol=1e-6)
        hd95, assd = hd95_assd(a, b, spacing)
        assert hd95 == pytest.approx(max(np.percentile(e_ab, 95), np.percentile(e_ba, 95)))
        assert assd == pytest.approx(0.5 * (e_ab.mean() + e_ba.mean()))


def test_concentric_cubes_analytic():
    """Cube side 10 around cube side 6 (same centre), spacing 1: every inner surface voxel is 2 mm from
    the outer surface; outer face centres are 2 mm, outer corners sqrt(3*2^2) from the inner surface."""
    outer = np.zeros((20, 20, 20), bool)
    inner = np.zeros_like(outer)
    outer[5:15, 5:15, 5:15] = True
    inner[7:13, 7:13, 7:13] = True
    d_io, d_oi = surface_distances(inner, outer, (1, 1, 1))
    np.testing.assert_allclose(d_io, 2.0)
    assert d_oi.min() == pytest.approx(2.0) and d_oi.max() == pytest.approx(math.sqrt(12))
    # anisotropic: spacing 3 along z -> inner face voxels at z=7 are 6 mm from z=5, but their nearest
    # outer surface voxel may be sideways; the inner z-face centre (z=7, y=x=9..10) is 6 mm from the
    # outer z-face and 4+ voxels (>= 4 mm) sideways: min(6, 4) = 4 mm
    d_io, _ = surface_distances(inner, outer, (3, 1, 1))
    assert d_io.max() == pytest.approx(4.0)


def test_spheres_radius_difference_with_anisotropic_spacing():
    spacing = (2.0, 0.8, 0.8)
    shape = (40, 100, 100)
    grid = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grid))
    big, small = r <= 30.0, r <= 20.0
    hd95, assd = hd95_assd(big, small, spacing)
    assert abs(assd - 10.0) < 1.2 and abs(hd95 - 10.0) < 2.0


def test_empty_conventions():
    a = np.zeros((5, 5, 5), bool)
    b = a.copy()
    b[2, 2, 2] = True
    assert all(math.isnan(v) for v in hd95_assd(a, b, (1, 1, 1)))
    assert all(math.isnan(v) for v in hd95_assd(a, a, (1, 1, 1)))
    assert hd95_assd(b, b, (1, 1, 1)) == (0.0, 0.0)
    m = case_metrics(np.zeros((5, 5, 5), int), b.astype(int), (1, 1, 1), [1])
    assert m[1]["Dice"] == 0.0 and math.isnan(m[1]["HD95_mm"])
