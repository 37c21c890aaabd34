"""Regenerate data/reference_feature_map_sizes.json with the reference network package (run in .bench-venv):
    .bench-venv/bin/python Testing/lib/planning/make_reference_feature_maps.py > Testing/lib/planning/data/reference_feature_map_sizes.json
Each entry: a topology, a patch and the reference networks compute_conv_feature_map_size value."""
import json, sys
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
import torch
cases = [
 ("plain_unet", [32,64,128,256,320], [[3,3,3]]*5, [[1,1,1],[2,2,2],[2,2,2],[2,2,2],[1,2,2]], [48,80,96], 1, 2),
 ("plain_unet", [32,64,128,256,320], [[1,3,3],[1,3,3],[3,3,3],[3,3,3],[3,3,3]], [[1,1,1],[1,2,2],[1,2,2],[2,2,2],[2,2,2]], [28,96,96], 1, 3),
 ("plain_unet", [32,64,128,256,512], [[3,3]]*5, [[1,1],[2,2],[2,2],[2,2],[2,2]], [80,96], 2, 5),
 ("residual_encoder_unet", [32,64,128,256,320], [[3,3,3]]*5, [[1,1,1],[2,2,2],[2,2,2],[2,2,2],[1,2,2]], [48,80,96], 2, 3),
 ("residual_encoder_unet", [32,64,128], [[3,3]]*3, [[1,1],[2,2],[2,2]], [37,41], 1, 4),
]
out = []
for arch, f, k, s, p, cin, nout in cases:
    n = len(f); nd = len(p)
    conv = torch.nn.Conv3d if nd == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if nd == 3 else torch.nn.InstanceNorm2d
    for ds in (False, True):
        kw = dict(input_channels=cin, n_stages=n, features_per_stage=f, conv_op=conv, kernel_sizes=k, strides=s,
                  num_classes=nout, n_conv_per_stage_decoder=[2]*(n-1), conv_bias=True, norm_op=norm,
                  norm_op_kwargs={"eps":1e-5,"affine":True}, nonlin=torch.nn.LeakyReLU, deep_supervision=ds)
        if arch == "plain_unet":
            net = PlainConvUNet(n_conv_per_stage=[2]*n, **kw)
        else:
            net = ResidualEncoderUNet(n_blocks_per_stage=[1,3,4,6,6][:n], **kw)
        out.append(dict(arch=arch, features=f, kernels=k, strides=s, patch=p, cin=cin, nout=nout, ds=ds,
                        n_conv=[2]*n if arch=="plain_unet" else [1,3,4,6,6][:n],
                        value=int(net.compute_conv_feature_map_size(p))))
json.dump(out, sys.stdout, indent=1)
