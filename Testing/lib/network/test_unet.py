"""U-Net builder: shapes for 2D/3D/anisotropic topologies, deep supervision switch, key layout, init,
and bit-exact agreement with the reference implementation's networks (fixture made by
make_reference_fixture.py with the benchmark environment)."""
from pathlib import Path

import pytest
import torch

from AutoSegLib.network.unet import build_network
from AutoSegLib.planning.plans import NetworkTopology

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data" / "reference_unets.pt"


def topo(arch="plain_unet", feats=(4, 8, 16), ks=((3, 3, 3),) * 3, st=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
         nc=None, ncd=None):
    n = len(feats)
    return NetworkTopology(arch, n, tuple(feats), tuple(ks), tuple(st), tuple(nc or (2,) * n),
                           tuple(ncd or (2,) * (n - 1)), True)


@pytest.mark.parametrize("arch", ["plain_unet", "residual_encoder_unet"])
@pytest.mark.parametrize("case", ["3d", "3d_aniso", "2d"])
def test_output_shapes_with_and_without_deep_supervision(arch, case):
    if case == "3d":
        t, shape = topo(arch), (8, 12, 16)
    elif case == "3d_aniso":  # z pooled once, late; kernel 1 on z in the first stage
        t = topo(arch, feats=(4, 8, 8, 16), ks=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)),
                 st=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)))
        shape = (4, 16, 24)
    else:
        t = topo(arch, feats=(4, 8, 16, 16), ks=((3, 3),) * 4, st=((1, 1), (2, 2), (2, 2), (2, 1)))
        shape = (16, 12)
    net = build_network(t, 2, 3, deep_supervision=True).eval()
    x = torch.randn(2, 2, *shape)
    with torch.no_grad():
        outs = net(x)
    assert isinstance(outs, list) and len(outs) == t.n_stages - 1
    size = list(shape)
    for level, o in enumerate(outs):  # highest resolution first; each level divided by that stage's stride
        assert o.shape == (2, 3, *size), (level, o.shape, size)
        size = [s // f for s, f in zip(size, t.strides[level + 1])]
    net.deep_supervision = False
    with torch.no_grad():
        single = net(x)
    assert torch.is_tensor(single) and single.shape == (2, 3, *shape)
    torch.testing.assert_close(single, outs[0], rtol=0, atol=0)


def test_key_layout_is_the_documented_one():
    keys = set(build_network(topo(), 1, 2).state_dict())
    for k in ("encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.2.0.convs.1.norm.bias",
              "decoder.transpconvs.0.weight", "decoder.stages.1.convs.1.conv.bias", "decoder.seg_layers.1.weight"):
        assert k in keys
    rkeys = set(build_network(topo("residual_encoder_unet", nc=(1, 2, 2), ncd=(1, 1)), 1, 2).state_dict())
    for k in ("encoder.stem.convs.0.conv.weight", "encoder.stages.1.blocks.0.conv1.conv.weight",
              "encoder.stages.1.blocks.0.conv2.norm.weight", "encoder.stages.1.blocks.0.skip.1.conv.weight",
              "encoder.stages.1.blocks.1.conv2.conv.weight"):
        assert k in rkeys
    assert "encoder.stages.0.blocks.0.skip.0.conv.weight" not in rkeys  # same width, no stride: identity skip
    assert "encoder.stages.1.blocks.0.skip.1.conv.bias" not in rkeys    # projection has no bias


def test_he_init_statistics_and_zeroed_residual_norms():
    torch.manual_seed(0)
    net = build_network(topo("residual_encoder_unet", feats=(16, 32, 64)), 1, 2)
    w = net.encoder.stages[2].blocks[0].conv1.conv.weight  # fan_in = 32 * 27
    expected_std = (2.0 / (1 + 0.01 ** 2) / (32 * 27)) ** 0.5
    assert abs(w.std().item() / expected_std - 1) < 0.05
    assert torch.count_nonzero(net.encoder.stages[2].blocks[0].conv1.conv.bias) == 0
    assert torch.count_nonzero(net.encoder.stages[1].blocks[0].conv2.norm.weight) == 0
    assert torch.all(net.encoder.stages[1].blocks[0].conv1.norm.weight == 1)


def test_refuses_inconsistent_topology():
    bad = NetworkTopology("plain_unet", 3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2)), (2, 2, 2), (2, 2))
    with pytest.raises(ValueError, match="strides has 2 entries"):
        build_network(bad, 1, 2)
    with pytest.raises(ValueError, match="architecture"):
        build_network(topo(arch="transformer"), 1, 2)


@pytest.mark.parametrize("name", ["plain_3d_aniso", "resenc_3d", "plain_2d", "resenc_2d"])
def test_matches_reference_network_bit_for_bit(name):
    case = torch.load(DATA, weights_only=True)[name]
    t = case["topology"]
    t = NetworkTopology(t["architecture"], t["n_stages"], tuple(t["features_per_stage"]),
                        tuple(map(tuple, t["kernel_sizes"])), tuple(map(tuple, t["strides"])),
                        tuple(t["n_conv_per_stage"]), tuple(t["n_conv_per_stage_decoder"]), t["conv_bias"])
    net = build_network(t, case["input"].shape[1], case["outputs"][0].shape[1])
    net.load_state_dict(case["state_dict"], strict=True)  # same keys, nothing missing or extra
    net.eval()
    with torch.no_grad():
        outs = net(case["input"])
    assert len(outs) == len(case["outputs"])
    for mine, ref in zip(outs, case["outputs"]):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_memory_estimate_delegates_to_the_planner_formula():
    memory = pytest.importorskip("AutoSegLib.network.memory")
    from AutoSegLib.network.unet import network_memory_estimate
    t = topo()
    assert network_memory_estimate(t, (16, 16, 16), 1, 3) == memory.feature_map_size(t, (16, 16, 16), 1, 3)
    assert build_network(t, 1, 3).memory_estimate((16, 16, 16)) == memory.feature_map_size(t, (16, 16, 16), 1, 3)
