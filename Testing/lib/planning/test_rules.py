"""Each planning rule against hand-computed expectations."""
import numpy as np

from AutoSegLib.fingerprint.record import CaseFingerprint, Fingerprint
from AutoSegLib.network.memory import feature_map_size
from AutoSegLib.planning import plan_configuration, plan_experiment
from AutoSegLib.planning.rules import (fullres_target_spacing, normalization_plan, normalization_scheme,
                                       resampled_shape, transpose_axes)
from AutoSegLib.planning.topology import features_per_stage, pad_to_multiple, pooling_plan


def make_fp(shapes, spacings, channels=None, rel=1.0, labels=None):
    cases = tuple(CaseFingerprint(f"c{i:03d}", tuple(map(float, sp)), tuple(sh), tuple(sh),
                                  tuple((0, s) for s in sh), rel, 1)
                  for i, (sh, sp) in enumerate(zip(shapes, spacings)))
    channels = channels or {"0": "MRI"}
    return Fingerprint("X", "", channels, labels or {"background": 0, "a": 1}, None, ".nii.gz", len(shapes[0]),
                       cases, {c: {} for c in channels}, rel, 0)


# ---- target spacing --------------------------------------------------------------------------------
def test_target_spacing_is_the_median_when_isotropic():
    sp = np.array([[1.0, 0.8, 0.8], [1.2, 0.7, 0.7], [2.0, 0.9, 0.9]])
    sh = np.array([[100, 200, 200]] * 3)
    np.testing.assert_allclose(fullres_target_spacing(sp, sh), [1.2, 0.8, 0.8])


def test_anisotropy_rule_uses_the_10th_percentile():
    # z spacings 3, 4, 4, 5, 5: median 4 > 3 x 0.8, and 20 slices x 3 < 200 voxels in-plane
    z = [3.0, 4.0, 4.0, 5.0, 5.0]
    sp = np.array([[v, 0.8, 0.8] for v in z])
    sh = np.array([[20, 200, 200]] * 5)
    # 10th percentile of (3, 4, 4, 5, 5): 3 + 0.4 * (4 - 3) = 3.4
    np.testing.assert_allclose(fullres_target_spacing(sp, sh), [3.4, 0.8, 0.8])


def test_anisotropy_rule_needs_few_voxels_too():
    sp = np.array([[v, 0.8, 0.8] for v in (3.0, 4.0, 4.0, 5.0, 5.0)])
    sh = np.array([[80, 200, 200]] * 5)  # 80 x 3 >= 200: not anisotropic in voxels -> median kept
    np.testing.assert_allclose(fullres_target_spacing(sp, sh), [4.0, 0.8, 0.8])


def test_anisotropy_rule_never_goes_finer_than_the_other_axes():
    sp = np.array([[v, 1.2, 1.2] for v in (0.9, 0.9, 5.0, 5.0, 5.0, 5.0, 6.0, 5.0, 5.0, 5.0)])
    sh = np.array([[20, 256, 256]] * 10)
    # 10th percentile = 0.9 < 1.2 -> 1.2 + 1e-5
    np.testing.assert_allclose(fullres_target_spacing(sp, sh), [1.2 + 1e-5, 1.2, 1.2], rtol=0, atol=1e-12)


def test_anisotropy_rule_on_the_last_array_axis_and_transposition():
    sp = np.array([[0.7, 0.7, v] for v in (4.0, 5.0, 5.0, 6.0)])
    sh = np.array([[300, 300, 30]] * 4)
    target = fullres_target_spacing(sp, sh)
    np.testing.assert_allclose(target, [0.7, 0.7, 4.3])  # 4 + 0.3 * (5 - 4)
    fwd, bwd = transpose_axes(target)
    assert fwd == (2, 0, 1) and bwd == (1, 2, 0)
    assert tuple(np.array(fwd)[list(bwd)]) == (0, 1, 2)
    assert transpose_axes([1.0, 3.0, 1.0]) == ((1, 0, 2), (1, 0, 2))
    assert transpose_axes([1.0, 1.0, 1.0]) == ((0, 1, 2), (0, 1, 2))  # ties: the first axis


def test_resampled_shape_rounds_per_axis():
    assert resampled_shape((20, 100, 101), (4.0, 0.8, 0.8), (3.4, 1.0, 1.0)) == (24, 80, 81)  # 23.53, 80, 80.8


# ---- normalisation ---------------------------------------------------------------------------------
def test_normalization_scheme_by_channel_name():
    assert [normalization_scheme(n) for n in ("CT", "ct", "MRI", "T2", "noNorm", "rescale_to_0_1", "RGB_to_0_1")] == \
        ["ct", "ct", "zscore", "zscore", "none", "rescale_0_1", "rgb_to_0_1"]


def test_mask_rule_25_percent():
    ch = {"0": "CT", "1": "FLAIR", "2": "noNorm"}
    assert normalization_plan(ch, 0.74) == (("ct", "zscore", "none"), (False, True, False))
    assert normalization_plan(ch, 0.75) == (("ct", "zscore", "none"), (False, False, False))


# ---- topology ------------------------------------------------------------------------------------
def test_pooling_isotropic():
    p = pooling_plan((1.0, 1.0, 1.0), (128, 128, 128))
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five pools per axis, then 4 < 2 x 4 stops
    assert p.pools_per_axis == (5, 5, 5) and p.n_stages == 6
    assert p.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert p.kernel_sizes == ((3, 3, 3),) * 6 and p.patch_size == (128, 128, 128) and p.divisible_by == (32,) * 3


def test_pooling_anisotropic_kernels_and_strides():
    # 3.6 mm slices, 0.8 mm in-plane, patch 28 x 96 x 96 (the Synth_aniso plan), traced by hand:
    # step 1: 3.6/0.8 >= 2 -> pool y, x only, z kernel 1; in-plane spacing 1.6
    # step 2: 3.6/1.6 >= 2 -> again y, x only; in-plane 3.2
    # step 3: 3.6/3.2 < 2 -> all axes, z kernel becomes 3; sizes 14, 12, 12
    # step 4: all >= 8 -> all; sizes 7, 6, 6; step 5: nothing >= 8 -> stop
    p = pooling_plan((3.6, 0.8, 0.8), (28, 96, 96))
    assert p.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert p.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert p.pools_per_axis == (2, 4, 4) and p.divisible_by == (4, 16, 16) and p.patch_size == (28, 96, 96)


def test_pooling_single_axis_needs_three_times_the_edge_and_padding():
    # (100, 12): both pool once -> (50, 6); then only axis 0, allowed while >= 12: 50 -> 25 -> 13 -> 7
    p = pooling_plan((1.0, 1.0), (100, 12))
    assert p.pools_per_axis == (4, 1)
    assert p.patch_size == (112, 12)  # 100 padded up to a multiple of 16


def test_pad_and_features():
    assert pad_to_multiple((84.5, 96, 97), (4, 16, 16)) == (88, 96, 112)
    assert features_per_stage(7, 3) == (32, 64, 128, 256, 320, 320, 320)
    assert features_per_stage(8, 2) == (32, 64, 128, 256, 512, 512, 512, 512)


# ---- patch and batch from the memory budget ---------------------------------------------------------
def _cfg(spacing, median, voxels, gpu=8.0, n_out=2):
    return plan_configuration("x", spacing, median, 1, n_out, voxels, ("zscore",), (False,), gpu)


def test_batch_from_memory_and_the_5_percent_cap():
    # LA 2d: median 71 x 96, the dataset 44 x 71 x 96 x 80 voxels; 5% of it / (80 x 96) = 156.2 -> 156
    c = _cfg((1.25, 1.25), (71, 96), 44 * 71 * 96 * 80)
    assert c.patch_size == (80, 96) and c.batch_size == 156
    # without the cap the batch comes from the budget: round(85e6 / estimate x 12)
    free = _cfg((1.25, 1.25), (71, 96), 1e12)
    est = feature_map_size(free.network, free.patch_size, 1, 2)
    assert free.batch_size == round(85e6 / est * 12) > 156
    # a cap below 2 is raised to the minimum batch of 2
    assert _cfg((1.25, 1.25), (71, 96), 1000).batch_size == 2


def test_patch_shrinks_until_a_batch_of_two_fits_the_budget():
    for gpu in (2.0, 8.0, 24.0):
        c = _cfg((1.0, 1.0, 1.0), (300, 300, 300), 1e12, gpu=gpu)
        est = feature_map_size(c.network, c.patch_size, 1, 2)
        assert est <= 560e6 * gpu / 8  # batch 2 of this patch fits
        assert all(p % (2 ** n) == 0 for p, n in zip(c.patch_size, c.network.pools_per_axis()))
        # one divisibility step larger on the largest axis would not fit any more (the loop stopped early
        # enough), unless the patch was never reduced (it equals the clipped initial patch)
    small, big = _cfg((1.0, 1.0, 1.0), (300,) * 3, 1e12, 2.0), _cfg((1.0, 1.0, 1.0), (300,) * 3, 1e12, 24.0)
    assert np.prod(small.patch_size) < np.prod(big.patch_size)


def test_initial_patch_follows_the_spacing_aspect_ratio_and_is_clipped_to_the_median():
    # tiny images: the patch is the median shape padded to the divisibility
    c = _cfg((1.0, 1.0, 1.0), (40, 44, 48), 1e9)
    assert c.patch_size == (40, 48, 48)  # 44 -> 48 (multiple of 8 after 3 pools)
    # anisotropic spacing, budget not binding (1000 GB): 256^3 voxels with aspect 1/4 : 1 : 1 is
    # 256 * 4^(1/3) = 406.4 -> (101.6, 406.4, 406.4) -> rounded (102, 406, 406), clipped to (102, 400, 400),
    # then padded to the divisibility of its pooling
    a = _cfg((4.0, 1.0, 1.0), (200, 400, 400), 1e12, gpu=1000.0)
    div = [2 ** n for n in a.network.pools_per_axis()]
    assert a.patch_size == pad_to_multiple((102, 400, 400), div)


# ---- configurations ------------------------------------------------------------------------------
def test_lowres_and_cascade_when_the_patch_covers_little(tmp_path):
    fp = make_fp([(260, 512, 512)] * 10, [(1.0, 0.8, 0.8)] * 10, channels={"0": "CT"})
    plans = plan_experiment(fp)
    assert list(plans.configurations) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    full, low, casc = (plans.configurations[k] for k in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert np.prod(full.patch_size) / np.prod(full.median_image_size) < 0.25  # the trigger
    assert np.prod(low.patch_size) / np.prod(low.median_image_size) >= 0.25   # the stop condition
    assert np.prod(full.median_image_size) / np.prod(low.median_image_size) >= 2
    # spacing grown in 3% steps: the ratio to fullres is 1.03^k, on every axis alike here
    k = np.log(np.array(low.spacing) / np.array(full.spacing)) / np.log(1.03)
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert np.round(k)[0] == np.round(k)[1] == np.round(k)[2] > 0
    assert low.next_stages == ("3d_cascade_fullres",) and casc.previous_stage == "3d_lowres"
    assert casc.patch_size == full.patch_size and casc.data_identifier == full.data_identifier
    assert low.data_identifier != full.data_identifier
    assert full.batch_dice and not low.batch_dice and plans.configurations["2d"].batch_dice
    assert full.normalization == ("ct",)
    from AutoSegLib.planning import Plans
    assert Plans.from_json(plans.to_json(tmp_path / "plans.json")) == plans  # cascade links survive JSON


def test_lowres_dropped_when_it_would_barely_differ():
    fp = make_fp([(170, 256, 256)] * 10, [(1.0, 1.0, 1.0)] * 10)
    plans = plan_experiment(fp)
    full = plans.configurations["3d_fullres"]
    assert np.prod(full.patch_size) / np.prod(full.median_image_size) < 0.25  # the search did run
    assert list(plans.configurations) == ["2d", "3d_fullres"] and not full.batch_dice


def test_2d_data_plans_only_2d():
    fp = make_fp([(300, 280)] * 4, [(0.5, 0.5)] * 4)
    plans = plan_experiment(fp)
    assert list(plans.configurations) == ["2d"] and plans.transpose_forward == (0, 1)
    assert plans.configurations["2d"].spacing == (0.5, 0.5)


def test_transposed_plan_is_in_transposed_order():
    fp = make_fp([(300, 300, 30)] * 6, [(0.7, 0.7, 5.0)] * 6, rel=0.5)
    plans = plan_experiment(fp)
    assert plans.transpose_forward == (2, 0, 1)
    full = plans.configurations["3d_fullres"]
    assert full.spacing == (5.0, 0.7, 0.7) and full.median_image_size == (30.0, 300.0, 300.0)
    assert plans.original_median_shape == (30.0, 300.0, 300.0)
    assert plans.configurations["2d"].spacing == (0.7, 0.7)
    assert full.use_mask_for_norm == (True,)  # median relative size 0.5 < 0.75, z-score


def test_data_identifier_changes_with_preprocessing_not_with_memory():
    fp = make_fp([(60, 80, 80)] * 5, [(1.0, 1.0, 1.0)] * 5)
    a, b = plan_experiment(fp), plan_experiment(fp, gpu_memory_gb=4)
    assert a.configurations["3d_fullres"].data_identifier == b.configurations["3d_fullres"].data_identifier
    c = plan_experiment(make_fp([(60, 80, 80)] * 5, [(1.0, 1.0, 1.0)] * 5, rel=0.5))
    assert c.configurations["3d_fullres"].data_identifier != a.configurations["3d_fullres"].data_identifier
    assert a.configurations["2d"].data_identifier != a.configurations["3d_fullres"].data_identifier
