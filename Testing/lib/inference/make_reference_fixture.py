"""Writes data/reference_sliding_window.pt: the reference implementation's sliding-window logits
(nnU-Net v2 nnUNetPredictor.predict_sliding_window_return_logits, CPU) for tiny random networks, with
the networks' weights and inputs, so tests can check AutoSeg's stitching against it.

Run by hand with the benchmark environment (the library never imports the reference):
    .bench-venv/bin/python Testing/lib/inference/make_reference_fixture.py
"""
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

torch.set_num_threads(1)

CASES = {
    # name: (ndim of net, patch, input spatial shape, mirror axes, step, gaussian)
    "3d_tta": (3, (8, 16, 16), (13, 30, 21), (0, 1, 2), 0.5, True),
    "3d_pad_notta": (3, (8, 16, 16), (5, 12, 40), None, 0.5, True),
    "3d_step07_nogauss": (3, (8, 16, 16), (12, 20, 33), (1, 2), 0.7, False),
    "2d_on_3d_tta": (2, (16, 16), (3, 20, 37), (0, 1), 0.5, True),
    "2d_on_3d_pad": (2, (16, 16), (2, 10, 20), None, 0.5, True),
}


def net_for(nd, g):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if nd == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    k = [[3] * nd] * 3
    st = [[1] * nd, [2] * nd, [2] * nd]
    net = PlainConvUNet(2, 3, [4, 8, 8], conv, k, st, [1, 1, 1], 3, [1, 1], True, norm,
                        {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                        deep_supervision=False)
    sd = net.state_dict()
    for key in sd:
        sd[key] = torch.randn(sd[key].shape, generator=g) * 0.5 + (1.0 if key.endswith("norm.weight") else 0.0)
    net.load_state_dict(sd)
    sd = {k2: v.clone() for k2, v in net.state_dict().items()
          if "all_modules" not in k2 and not k2.startswith("decoder.encoder.")}
    topo = {"architecture": "plain_unet", "n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": k,
            "strides": st, "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True}
    return net.eval(), sd, topo


def main():
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, (nd, patch, shape, mirror, step, gauss) in CASES.items():
        net, sd, topo = net_for(nd, g)
        p = nnUNetPredictor(tile_step_size=step, use_gaussian=gauss, use_mirroring=mirror is not None,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        p.network = net
        p.configuration_manager = SimpleNamespace(patch_size=list(patch))
        p.label_manager = SimpleNamespace(num_segmentation_heads=3)
        p.allowed_mirroring_axes = mirror
        x = torch.randn(2, *shape, generator=g)
        logits = p.predict_sliding_window_return_logits(x.clone())
        out[name] = {"topology": topo, "state_dict": sd, "input": x, "logits": logits.clone(),
                     "patch_size": list(patch), "mirror_axes": list(mirror or []), "step_size": step,
                     "gaussian": gauss}
        print(name, tuple(logits.shape), logits.dtype)
    dest = Path(__file__).parent / "data" / "reference_sliding_window.pt"
    torch.save(out, dest)
    print(dest, dest.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
