"""preprocess_case on arrays: shapes, properties, round trip, class locations."""
from __future__ import annotations

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.preprocessing.case import preprocess_case
from AutoSegLib.preprocessing.class_locations import sample_class_locations
from AutoSegLib.preprocessing.resampling import compute_new_shape


def _case(rng, shape=(10, 12, 14)):
    image = np.zeros((1,) + shape, np.float32)
    image[0, 1:9, 2:11, 3:13] = rng.normal(5.0, 2.0, (8, 9, 10))
    label = np.zeros(shape, np.uint8)
    label[3:7, 4:9, 5:10] = 1
    label[4:6, 5:7, 6:8] = 2
    return image, label


def test_round_trip_without_resampling(rng, plans_factory):
    image, label = _case(rng)
    geometry = Geometry((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    # transposed order (2, 0, 1): spacing (3, 1, 2), the plans' spacing equal -> no resampling
    plans = plans_factory(spacing3d=(3.0, 1.0, 2.0), transpose=(2, 0, 1))
    original = image.copy()
    data, seg, props = preprocess_case(image, geometry, plans, "3d_fullres", label)
    assert np.array_equal(image, original)                       # input untouched
    assert props["shape_before_cropping"] == [14, 10, 12]
    assert props["bbox_used_for_cropping"] == [[3, 13], [1, 9], [2, 11]]
    assert props["shape_after_cropping_and_before_resampling"] == [10, 8, 9] == props["shape_after_resampling"]
    assert props["spacing_transposed"] == [3.0, 1.0, 2.0] and props["target_spacing"] == [3.0, 1.0, 2.0]
    assert data.dtype == np.float32 and seg.dtype == np.int8 and data.shape == (1, 10, 8, 9)
    # paste back and transpose back: the z-scored original inside the box
    full = np.zeros((1, 14, 10, 12), np.float32)
    full[(slice(None),) + tuple(slice(a, b) for a, b in props["bbox_used_for_cropping"])] = data
    back = full.transpose(0, *[a + 1 for a in plans.transpose_backward])
    inside = image[0, 1:9, 2:11, 3:13]
    assert np.allclose(back[0, 1:9, 2:11, 3:13], (inside - inside.mean()) / inside.std(), atol=1e-4)
    seg_full = np.zeros((14, 10, 12), np.int8)
    seg_full[tuple(slice(a, b) for a, b in props["bbox_used_for_cropping"])] = seg[0]
    assert np.array_equal(seg_full.transpose(plans.transpose_backward), label.astype(np.int8))


def test_resampled_shapes_and_class_locations(rng, plans_factory):
    image, label = _case(rng)
    geometry = Geometry.identity((2.0, 1.0, 1.0))
    plans = plans_factory(spacing3d=(1.0, 1.5, 1.5))
    data, seg, props = preprocess_case(image, geometry, plans, "3d_fullres", label)
    new_shape = compute_new_shape((8, 9, 10), (2.0, 1.0, 1.0), (1.0, 1.5, 1.5))
    assert data.shape == (1,) + new_shape and seg.shape == (1,) + new_shape
    assert set(np.unique(seg)) <= {-1, 0, 1, 2}
    locs = props["class_locations"]
    assert set(locs) == {"1", "2"}
    for key, coords in locs.items():
        assert coords.shape[1] == 3 and len(coords) == (seg[0] == int(key)).sum()   # all (< 10000)
        assert np.all(seg[0][tuple(coords.T)] == int(key))


def test_2d_configuration_keeps_the_slice_spacing(rng, plans_factory):
    image, label = _case(rng)
    geometry = Geometry.identity((4.0, 1.0, 1.0))
    plans = plans_factory(spacing3d=(2.0, 1.0, 1.0), spacing2d=(0.5, 0.5))
    data, seg, props = preprocess_case(image, geometry, plans, "2d", label)
    assert props["target_spacing"] == [4.0, 0.5, 0.5]
    assert data.shape == (1, 8, 18, 20)


def test_without_label_and_bad_input(rng, plans_factory):
    image, _ = _case(rng)
    plans = plans_factory(spacing3d=(1.0, 1.0, 1.0))
    data, seg, props = preprocess_case(image, Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullres")
    assert seg is None and "class_locations" not in props and data.shape == (1, 8, 9, 10)
    _, seg, props = preprocess_case(image, Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullres",
                                    label=np.ones(image.shape[1:], np.int16), sample_locations=False)
    assert seg.shape == (1, 8, 9, 10) and "class_locations" not in props
    with pytest.raises(AutoSegError, match="channel"):
        preprocess_case(np.concatenate([image, image]), Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullres")
    with pytest.raises(AutoSegError, match="Did you mean '3d_fullres'"):
        preprocess_case(image, Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullre")


def test_masked_zscore_and_ignore_label_locations(rng, plans_factory):
    image, label = _case(rng)
    image[0, 4, 5, 6] = 0.0   # a zero inside the body is not "outside"
    labels = {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    label[1, 2, 3] = 3
    plans = plans_factory(spacing3d=(1.0, 1.0, 1.0), use_mask=(True,), labels=labels)
    data, seg, props = preprocess_case(image, Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullres", label)
    assert set(props["class_locations"]) == {"1", "2", "-1,0,1,2"}
    inside = seg[0] >= 0
    assert abs(data[0][inside].mean()) < 1e-5 and abs(data[0][inside].std() - 1) < 1e-4
    assert np.all(data[0][~inside] == 0)


def test_sampling_rule_by_hand():
    seg = np.zeros((10, 10, 10), np.int8)
    seg.ravel()[:500] = 1
    seg.ravel()[500:530] = 2
    locs = sample_class_locations(seg, [1, 2, (1, 2), 3], max_samples=100, min_fraction=0.5)
    assert len(locs["1"]) == 250          # max(min(100, 500), ceil(0.5 * 500))
    assert len(locs["2"]) == 30           # all of them
    assert len(locs["1,2"]) == 265 and locs["3"].shape == (0, 3)
    assert len(np.unique(np.ravel_multi_index(locs["1"].T, seg.shape))) == 250   # without replacement
    again = sample_class_locations(seg, [1, 2, (1, 2), 3], max_samples=100, min_fraction=0.5)
    assert np.array_equal(again["1"], locs["1"])                                  # seeded


def test_2d_images(rng):
    from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans

    topo = NetworkTopology("plain_unet", 2, (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,))
    cfg = ConfigurationPlan("2d", (0.5, 0.5), (16, 16), 2, (16, 16), ("zscore",), (False,), topo, data_identifier="x")
    plans = Plans("d", {"0": "MRI"}, {"background": 0, "a": 1}, (1, 0), (1, 0), (1.0, 1.0), (20.0, 30.0), {},
                  {"2d": cfg})
    image = rng.normal(size=(1, 20, 30)).astype(np.float32)
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 8:20] = 1
    data, seg, props = preprocess_case(image, Geometry.identity((1.0, 2.0)), plans, "2d", label)
    # transposed spacing (2, 1) -> 0.5 mm: 30 * 4 by 20 * 2
    assert data.shape == seg.shape == (1, 120, 40) and props["target_spacing"] == [0.5, 0.5]
    assert props["class_locations"]["1"].shape[1] == 2
    assert abs(int((seg == 1).sum()) - 5 * 12 * 8) <= 12 * 4   # area scales by 8, up to the rim


def test_region_labels_sample_each_region(rng, plans_factory):
    from dataclasses import replace

    image, label = _case(rng)
    plans = replace(plans_factory(spacing3d=(1.0, 1.0, 1.0), labels={"background": 0, "whole": [1, 2], "core": [2]}),
                    regions_class_order=(1, 2))
    _, seg, props = preprocess_case(image, Geometry.identity((1.0, 1.0, 1.0)), plans, "3d_fullres", label)
    locs = props["class_locations"]
    assert set(locs) == {"1,2", "2"}
    assert len(locs["1,2"]) == int(np.isin(seg, [1, 2]).sum()) and len(locs["2"]) == int((seg == 2).sum())
