"""Cropping to the non-zero region and the normalisation schemes, against hand-computed numbers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from AutoSegLib.errors import AutoSegError
from AutoSegLib.preprocessing.cropping import bbox_of_mask, crop_to_nonzero, fill_holes
from AutoSegLib.preprocessing.normalization import get_normalizer, normalize_image


def test_crop_bbox_and_outside_label():
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[0, 1:4, 2:5, 3:7] = 1.0          # channel 0 block
    data[1, 2, 6, 3] = 5.0                 # channel 1 extends y to index 6
    data[0, 2, 3, 4] = 0.0                 # an enclosed hole: stays inside the region
    seg = np.zeros((1, 6, 7, 8), np.int16)
    seg[0, 2, 3, 5] = 2
    out, seg_c, bbox = crop_to_nonzero(data, seg)
    assert bbox == [[1, 4], [2, 7], [3, 7]]
    assert out.shape == (2, 3, 5, 4) and seg_c.shape == (1, 3, 5, 4)
    assert seg_c[0, 1, 1, 2] == 2                     # the label survives
    assert seg_c[0, 1, 1, 1] == 0                     # the hole is inside the region
    assert seg_c[0, 0, 4, 0] == -1                    # zero background outside the region
    assert seg[0, 0, 0, 0] == 0                       # the input label is not modified
    _, mask_only, _ = crop_to_nonzero(data)
    assert mask_only.dtype == np.int8 and set(np.unique(mask_only)) == {-1, 0}
    assert np.array_equal(mask_only == -1, seg_c == -1)


def test_bbox_of_empty_mask_is_full_extent():
    assert bbox_of_mask(np.zeros((3, 4), bool)) == [[0, 3], [0, 4]]


def test_fill_holes_equals_scipy(rng):
    for p in (0.4, 0.6):
        mask = ndimage.binary_opening(rng.random((20, 24, 22)) > p)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_zscore_by_hand():
    img = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)   # mean 3, std sqrt(3.5)
    out = normalize_image(img.copy(), "zscore")
    assert np.allclose(out, (img - 3.0) / np.sqrt(3.5), atol=1e-6)


def test_zscore_with_mask_zeroes_outside():
    img = np.array([[0.0, 2.0], [4.0, 0.0]], np.float32)
    mask = np.array([[False, True], [True, False]])
    out = normalize_image(img.copy(), "zscore", use_mask=True, mask=mask)   # inside: mean 3, std 1
    assert np.allclose(out, [[0.0, -1.0], [1.0, 0.0]], atol=1e-6)


def test_ct_clip_then_dataset_statistics():
    img = np.array([-2000.0, 0.0, 50.0, 3000.0], np.float32)
    props = {"mean": 100.0, "std": 50.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}
    out = normalize_image(img.copy(), "ct", intensity_properties=props)
    assert np.allclose(out, [(-1000 - 100) / 50, -2.0, -1.0, 18.0])


def test_other_schemes_and_aliases():
    img = np.array([2.0, 4.0, 6.0], np.float32)
    assert np.allclose(normalize_image(img.copy(), "rescale_0_1"), [0, 0.5, 1])
    assert np.allclose(normalize_image(img.copy(), "none"), img)
    assert np.allclose(normalize_image(np.array([0, 255], np.uint8), "rgb_to_0_1"), [0, 1])
    assert get_normalizer("ZScoreNormalization") is get_normalizer("zscore")


def test_bad_scheme_names_and_values():
    with pytest.raises(AutoSegError, match="Did you mean 'zscore'"):
        get_normalizer("zscor")
    with pytest.raises(AutoSegError, match=r"\[0, 255\]"):
        normalize_image(np.array([-1.0, 300.0], np.float32), "rgb_to_0_1")
    with pytest.raises(AutoSegError, match="intensity properties"):
        normalize_image(np.ones(3, np.float32), "ct")


def test_all_zero_image_stays_finite():
    img = np.zeros((3, 4), np.float32)
    for use_mask in (True, False):
        out = normalize_image(img.copy(), "zscore", use_mask=use_mask, mask=np.zeros((3, 4), bool))
        assert np.all(out == 0)
    data, seg, bbox = crop_to_nonzero(np.zeros((1, 3, 4, 5), np.float32))
    assert bbox == [[0, 3], [0, 4], [0, 5]] and np.all(seg == -1)
