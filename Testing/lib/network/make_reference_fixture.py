"""Writes data/reference_unets.pt: tiny networks built by the reference implementation (nnU-Net v2's
dynamic_network_architectures), their weights (aliases removed), an input and the reference's outputs.

Run by hand with the benchmark environment (the library never imports the reference):
    .bench-venv/bin/python Testing/lib/network/make_reference_fixture.py
"""
import sys
from pathlib import Path

import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

CASES = {
    "plain_3d_aniso": ("plain_unet", 3, [4, 8, 16, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                       [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], [2, 2, 2, 2], [2, 2, 2], (8, 16, 16)),
    "resenc_3d": ("residual_encoder_unet", 3, [4, 8, 16], [[3, 3, 3], [3, 3, 3], [3, 3, 3]],
                  [[1, 1, 1], [2, 2, 2], [2, 2, 1]], [1, 3, 2], [1, 1], (8, 12, 8)),
    "plain_2d": ("plain_unet", 2, [4, 8, 16], [[3, 3], [3, 3], [3, 3]], [[1, 1], [2, 2], [2, 1]], [2, 2, 2],
                 [2, 2], (16, 12)),
    "resenc_2d": ("residual_encoder_unet", 2, [4, 8, 16], [[3, 3], [3, 3], [3, 3]], [[1, 1], [2, 2], [2, 2]],
                  [1, 2, 2], [1, 1], (16, 12)),
}


def main():
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, (arch, nd, feats, ks, st, nc, ncd, shape) in CASES.items():
        conv = nn.Conv3d if nd == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if nd == 3 else nn.InstanceNorm2d
        kw = dict(input_channels=2, n_stages=len(feats), features_per_stage=feats, conv_op=conv, kernel_sizes=ks,
                  strides=st, num_classes=3, n_conv_per_stage_decoder=ncd, conv_bias=True, norm_op=norm,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=True)
        net = PlainConvUNet(n_conv_per_stage=nc, **kw) if arch == "plain_unet" else ResidualEncoderUNet(
            n_blocks_per_stage=nc, **kw)
        sd = net.state_dict()
        for k in sd:  # random values everywhere (norm affine too), so every parameter matters
            sd[k] = torch.randn(sd[k].shape, generator=g) * 0.3 + (1.0 if k.endswith("norm.weight") else 0.0)
        net.load_state_dict(sd)
        sd = {k: v.clone() for k, v in net.state_dict().items()
              if "all_modules" not in k and not k.startswith("decoder.encoder.")}
        x = torch.randn(2, 2, *shape, generator=g)
        net.eval()
        with torch.no_grad():
            y = [t.clone() for t in net(x)]
        out[name] = {"topology": {"architecture": arch, "n_stages": len(feats), "features_per_stage": feats,
                                  "kernel_sizes": ks, "strides": st, "n_conv_per_stage": nc,
                                  "n_conv_per_stage_decoder": ncd, "conv_bias": True},
                     "state_dict": sd, "input": x, "outputs": y}
    dest = Path(__file__).parent / "data" / "reference_unets.pt"
    torch.save(out, dest)
    print(dest, dest.stat().st_size, "bytes")


if __name__ == "__main__":
    sys.exit(main())
