"""Patch sampling: measured foreground oversampling, padding, augmentation patch sizes and output shapes."""
import json

import numpy as np
import pytest

from AutoSegLib.training.augmentation import augment_batch, training_transforms
from AutoSegLib.training.data import CaseStore
from AutoSegLib.training.sampling import (PatchSampler, augmentation_patch_size, box_centre, crop_with_padding,
                                          forced_foreground, rotation_settings)


def _write_case(folder, case, shape, blob_at, blob=2):
    """An image of noise and a label with one small cube of class 1 at ``blob_at``."""
    rng = np.random.default_rng(0)
    seg = np.zeros((1, *shape), np.int8)
    sl = tuple(slice(b, b + blob) for b in blob_at)
    seg[(0, *sl)] = 1
    np.save(folder / f"{case}.npy", rng.normal(size=(1, *shape)).astype(np.float32))
    np.save(folder / f"{case}_seg.npy", seg)
    locs = np.argwhere(seg[0] == 1).tolist()
    (folder / f"{case}.json").write_text(json.dumps({"class_locations": {"1": locs}}))


def test_forced_positions():
    assert forced_foreground(2, 0.33) == [False, True]
    assert forced_foreground(3, 0.33) == [False, False, True]
    assert forced_foreground(4, 0.0) == [False] * 4


def test_measured_foreground_fraction(tmp_path):
    # a 2^3 foreground cube in a 40^3 volume: a random 8^3 patch contains it rarely (~2%), a forced one always
    for i in range(3):
        _write_case(tmp_path, f"c{i}", (40, 40, 40), (5 + 10 * i, 20, 30))
    sampler = PatchSampler(CaseStore(tmp_path, ["c0", "c1", "c2"]), (8, 8, 8), (8, 8, 8), oversample=0.33)
    rng = np.random.default_rng(1)
    per_position = np.zeros(3)
    n_batches = 300
    for _ in range(n_batches):
        data, seg, cases = sampler.sample_batch(rng, 3)
        assert data.shape == (3, 1, 8, 8, 8) and seg.shape == (3, 1, 8, 8, 8)
        per_position += [(s == 1).any() for s in seg]
    frac = per_position / n_batches
    assert frac[2] == 1.0                   # forced sample: always foreground
    assert frac[0] < 0.15 and frac[1] < 0.15  # random samples: rarely
    overall = per_position.sum() / (3 * n_batches)
    assert 0.33 <= overall < 0.45           # a third of each batch, plus the few random hits


def test_a_fine_stage_centres_its_patches_anywhere_in_the_grown_foreground_box(tmp_path):
    # a 2^3 cube at (20, 20, 30) grown by 3 voxels: centres in [17, 25) x [17, 25) x [27, 35), every voxel of
    # it drawn, and nothing outside, whatever the forced flags say
    locations = np.argwhere(np.ones((2, 2, 2))) + [20, 20, 30]
    rng = np.random.default_rng(0)
    centres = np.array([box_centre(locations, (3, 3, 3), (40, 40, 40), rng) for _ in range(4000)])
    assert centres.min(0).tolist() == [17, 17, 27] and centres.max(0).tolist() == [24, 24, 34]
    assert len({tuple(c) for c in centres}) == 8 * 8 * 8
    # clipped to the image; a fractional margin rounds up
    near_edge = np.argwhere(np.ones((2, 2, 2))) + [0, 0, 38]
    c = np.array([box_centre(near_edge, (1.5, 1.5, 1.5), (40, 40, 40), rng) for _ in range(2000)])
    assert c.min(0).tolist() == [0, 0, 36] and c.max(0).tolist() == [3, 3, 39]
    # the sampler: an 8^3 patch centred in the box always holds some of the cube (it is within 4 voxels)
    _write_case(tmp_path, "c0", (40, 40, 40), (20, 20, 30))
    sampler = PatchSampler(CaseStore(tmp_path, ["c0"]), (8, 8, 8), (8, 8, 8), box_margin=(2, 2, 2))
    _, seg, _ = sampler.sample_batch(np.random.default_rng(1), 50, forced=[False] * 50)
    assert all((s == 1).any() for s in seg)


def test_crop_with_padding_values_and_bounds():
    img = np.arange(1 * 6 * 6, dtype=np.float32).reshape(1, 6, 6)
    seg = np.ones((1, 6, 6), np.int8)
    rng = np.random.default_rng(0)
    # image smaller than the patch: padded with 0 / -1, content intact
    d, s = crop_with_padding(img, seg, (10, 10), (10, 10), rng)
    assert d.shape == (1, 10, 10) and s.shape == (1, 10, 10)
    assert (s == 1).sum() == 36 and (s == -1).sum() == 64
    assert sorted(d[s == 1].tolist()) == sorted(img.ravel().tolist())
    # centred on a voxel near the corner: the patch keeps at most half the extra context outside
    d, s = crop_with_padding(img, seg, (4, 4), (2, 2), rng, centre=(0, 0))
    assert (s == -1).sum() == 4 + 4 - 1      # one row and one column of padding
    assert d[0, 1, 1] == img[0, 0, 0]


def test_augmentation_patch_sizes():
    angle, dummy, axes = rotation_settings((48, 80, 96))
    assert not dummy and axes == (0, 1, 2) and angle == pytest.approx(np.pi / 6)
    big = augmentation_patch_size((48, 80, 96), angle, dummy)
    assert all(b >= p / 0.85 for b, p in zip(big, (48, 80, 96)))
    angle, dummy, _ = rotation_settings((8, 64, 64))      # anisotropic: 2D-per-slice augmentation
    assert dummy and angle == pytest.approx(np.pi)
    big = augmentation_patch_size((8, 64, 64), angle, dummy)
    assert big[0] == 8 and big[1] >= int(64 * np.sqrt(2) / 0.85)
    angle, dummy, axes = rotation_settings((64, 32))      # elongated 2D: +-15 degrees
    assert axes == (0, 1) and angle == pytest.approx(np.radians(15))


@pytest.mark.parametrize("patch", [(16, 16, 16), (4, 24, 24), (24, 24)], ids=["3d", "anisotropic", "2d"])
def test_augmented_batch_shapes_and_labels(patch):
    angle, dummy, axes = rotation_settings(patch)
    big = augmentation_patch_size(patch, angle, dummy)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 2, *big)).astype(np.float32)
    seg = np.zeros((4, 1, *big), np.int16)
    seg[(slice(None), slice(None), *[slice(b // 4, 3 * b // 4) for b in big])] = 2
    np.random.seed(0)
    t = training_transforms(patch, angle, dummy, axes)
    for _ in range(5):
        d, s = augment_batch(t, data.copy(), seg.copy())
        assert d.shape == (4, 2, *patch) and d.dtype == np.float32
        assert s.shape == (4, 1, *patch) and s.dtype == np.int16
        assert set(np.unique(s)) <= {-1, 0, 2}
        assert (s == 2).any()
