"""network.memory.feature_map_size: hand-computed small cases and values of the reference network package."""
import json
from pathlib import Path

import pytest

from AutoSegLib.network.memory import feature_map_size
from AutoSegLib.planning.plans import NetworkTopology

DATA = Path(__file__).parent / "data" / "reference_feature_map_sizes.json"


def _topo(arch, features, kernels, strides, n_conv):
    n = len(features)
    return NetworkTopology(arch, n, tuple(features), tuple(map(tuple, kernels)), tuple(map(tuple, strides)),
                           tuple(n_conv), (2,) * (n - 1))


def test_two_stage_plain_2d_by_hand():
    # patch 8x8, stages: 4 features at 8x8, 8 features at 4x4; 2 convs each; 3 outputs
    t = _topo("plain_unet", [4, 8], [[3, 3]] * 2, [[1, 1], [2, 2]], [2, 2])
    enc = 2 * 4 * 64 + 2 * 8 * 16
    dec = 2 * 4 * 64 + 4 * 64 + 3 * 64   # two convs, transposed conv, head, all at the skip size 8x8
    assert feature_map_size(t, (8, 8), 1, 3) == enc + dec


def test_odd_sizes_floor_like_same_padding():
    t = _topo("plain_unet", [2, 2], [[3, 3]] * 2, [[1, 1], [2, 2]], [1, 1])
    # 5x7 -> 2x3 after the strided conv
    # encoder: one conv per stage; decoder: two convs of 2 maps + transposed conv + 1-map head at 5x7
    assert feature_map_size(t, (5, 7), 1, 1) == 2 * 35 + 2 * 6 + (2 * 2 * 35 + 2 * 35 + 35)


@pytest.mark.parametrize("case", json.loads(DATA.read_text()), ids=lambda c: f"{c['arch']}-{c['patch']}-ds{c['ds']}")
def test_matches_reference_network_package(case):
    t = _topo(case["arch"], case["features"], case["kernels"], case["strides"], case["n_conv"])
    assert feature_map_size(t, case["patch"], case["cin"], case["nout"], deep_supervision=case["ds"]) == case["value"]


def test_wrong_dimensionality_is_an_error():
    t = _topo("plain_unet", [4, 8], [[3, 3]] * 2, [[1, 1], [2, 2]], [2, 2])
    with pytest.raises(ValueError, match="2D"):
        feature_map_size(t, (8, 8, 8), 1, 2)
