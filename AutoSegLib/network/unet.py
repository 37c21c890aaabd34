"""The self-configuring U-Net, built from a configuration's ``NetworkTopology``.

Two architectures, 2D or 3D, any number of stages, per-axis kernels and strides:

- ``"plain_unet"``: each encoder stage is ``n_conv_per_stage[s]`` units of conv -> InstanceNorm(affine,
  eps 1e-5) -> LeakyReLU(0.01); stage ``s > 0`` starts with a conv strided by ``strides[s]``.
- ``"residual_encoder_unet"``: a stem unit, then ``n_conv_per_stage[s]`` ResNet-D basic blocks per stage
  (the first strided); the decoder is the plain one.

Decoder stage ``d`` (``d = 0`` is the lowest resolution): transposed conv (kernel = stride of the encoder
stage it undoes) -> concatenate ``[upsampled, skip]`` on channels -> ``n_conv_per_stage_decoder[d]``
units -> a 1x1 conv segmentation head. With ``deep_supervision`` (an attribute, switchable at runtime)
the forward returns a list of every head's logits, highest resolution first (``n_stages - 1`` tensors of
shape ``(B, num_outputs, *spatial / cumulative stride)``); otherwise one tensor ``(B, num_outputs,
*spatial)``. Weights are He-initialised (Kaiming normal, slope 0.01, zero biases; last norm of every
residual block zeroed).

State-dict key layout (a file-format convention shared with nnU-Net v2 checkpoints, whose own files add
duplicate aliases ``...all_modules.<i>...`` for every unit and ``decoder.encoder.*`` for the whole
encoder; drop those and the remaining keys load here unchanged):

plain_unet::

    encoder.stages.<s>.0.convs.<i>.conv.{weight,bias}
    encoder.stages.<s>.0.convs.<i>.norm.{weight,bias}

residual_encoder_unet::

    encoder.stem.convs.0.{conv,norm}.*
    encoder.stages.<s>.blocks.<b>.conv1.{conv,norm}.*
    encoder.stages.<s>.blocks.<b>.conv2.{conv,norm}.*
    encoder.stages.<s>.blocks.<b>.skip.<j>.{conv,norm}.*   (j = 1 after an AvgPool, else 0; 1x1, no bias)

both::

    decoder.transpconvs.<d>.{weight,bias}
    decoder.stages.<d>.convs.<i>.{conv,norm}.*
    decoder.seg_layers.<d>.{weight,bias}

Every head exists whether or not deep supervision is on, so one state dict serves training and inference.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import nn

from AutoSegLib.network.blocks import ConvStack, ResidualStack, he_init, ops_for
from AutoSegLib.network.topology import ARCHITECTURES, NetworkTopology


def _check_topology(t: NetworkTopology) -> None:
    n = t.n_stages
    problems = []
    if t.architecture not in ARCHITECTURES:
        problems.append(f"architecture {t.architecture!r} is not one of {ARCHITECTURES}")
    for name, value, want in (("features_per_stage", t.features_per_stage, n), ("kernel_sizes", t.kernel_sizes, n),
                              ("strides", t.strides, n), ("n_conv_per_stage", t.n_conv_per_stage, n),
                              ("n_conv_per_stage_decoder", t.n_conv_per_stage_decoder, n - 1)):
        if len(value) != want:
            problems.append(f"{name} has {len(value)} entries, expected {want} for {n} stages")
    if n < 2:
        problems.append(f"n_stages is {n}; a U-Net needs at least 2")
    if t.ndim not in (2, 3) or any(len(k) != t.ndim for k in t.kernel_sizes) or any(len(s) != t.ndim for s in t.strides):
        problems.append(f"kernel_sizes/strides must all have 2 or 3 entries each; got {t.kernel_sizes} / {t.strides}")
    if problems:
        raise ValueError("invalid network topology: " + "; ".join(problems))


class Encoder(nn.Module):
    """Returns the list of every stage's output (skips), bottleneck last."""

    def __init__(self, t: NetworkTopology, in_ch: int):
        super().__init__()
        nd = t.ndim
        self.residual = t.architecture == "residual_encoder_unet"
        stages = []
        if self.residual:
            self.stem = ConvStack(nd, 1, in_ch, t.features_per_stage[0], t.kernel_sizes[0], (1,) * nd, t.conv_bias)
            in_ch = t.features_per_stage[0]
        for s in range(t.n_stages):
            if self.residual:
                stage = ResidualStack(nd, t.n_conv_per_stage[s], in_ch, t.features_per_stage[s],
                                      t.kernel_sizes[s], t.strides[s], t.conv_bias)
            else:  # the extra Sequential level keeps nnU-Net's key layout (encoder.stages.<s>.0.convs...)
                stage = nn.Sequential(ConvStack(nd, t.n_conv_per_stage[s], in_ch, t.features_per_stage[s],
                                                t.kernel_sizes[s], t.strides[s], t.conv_bias))
            stages.append(stage)
            in_ch = t.features_per_stage[s]
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.residual:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    def __init__(self, t: NetworkTopology, num_outputs: int, deep_supervision: bool):
        super().__init__()
        nd = t.ndim
        conv, transp, _, _ = ops_for(nd)
        f = t.features_per_stage
        transpconvs, stages, heads = [], [], []
        for d in range(t.n_stages - 1):
            below, skip = f[-(d + 1)], f[-(d + 2)]
            stride = tuple(t.strides[-(d + 1)])
            transpconvs.append(transp(below, skip, stride, stride, bias=t.conv_bias))
            stages.append(ConvStack(nd, t.n_conv_per_stage_decoder[d], 2 * skip, skip, t.kernel_sizes[-(d + 2)],
                                    (1,) * nd, t.conv_bias))
            heads.append(conv(skip, num_outputs, 1, 1, 0, bias=True))
        self.transpconvs = nn.ModuleList(transpconvs)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(heads)
        self.deep_supervision = deep_supervision

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for d in range(len(self.stages)):
            x = self.transpconvs[d](x)
            x = torch.cat((x, skips[-(d + 2)]), 1)
            x = self.stages[d](x)
            if self.deep_supervision:
                outputs.append(self.seg_layers[d](x))
            elif d == last:
                return self.seg_layers[d](x)
        return outputs[::-1]


class UNet(nn.Module):
    """U-Net built from a topology; see the module docstring. ``forward(x)`` takes ``(B, C_in, *spatial)``
    float tensors whose spatial sizes are divisible by the cumulative strides."""

    def __init__(self, topology: NetworkTopology, num_input_channels: int, num_outputs: int,
                 deep_supervision: bool = True):
        super().__init__()
        _check_topology(topology)
        self.topology = topology
        self.num_input_channels = int(num_input_channels)
        self.num_outputs = int(num_outputs)
        self.encoder = Encoder(topology, self.num_input_channels)
        self.decoder = Decoder(topology, self.num_outputs, deep_supervision)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.encoder(x))

    def memory_estimate(self, patch_size: Sequence[int]) -> int:
        """Feature-map voxels for one sample of ``patch_size`` (see ``network_memory_estimate``)."""
        return network_memory_estimate(self.topology, patch_size, self.num_input_channels, self.num_outputs)


def build_network(topology: NetworkTopology, num_input_channels: int, num_outputs: int,
                  deep_supervision: bool = True, initialize: bool = True) -> UNet:
    """Build and He-initialise the U-Net of ``topology``.

    Parameters
    ----------
    topology : NetworkTopology
        From ``plans.configurations[name].network``.
    num_input_channels : int
        Image channels (plus one-hot previous-stage classes for a cascade).
    num_outputs : int
        Output channels: number of classes including background (softmax) or of regions (sigmoid).
    deep_supervision : bool
        Initial value of ``net.deep_supervision``.
    initialize : bool
        He initialisation; False skips it (PyTorch's default init) when weights are loaded right after.

    Returns
    -------
    UNet
        An ``nn.Module`` in training mode, float32, on the CPU.

    Raises
    ------
    ValueError
        If the topology is inconsistent (lengths, dimensionality, unknown architecture).
    """
    net = UNet(topology, num_input_channels, num_outputs, deep_supervision)
    if initialize:
        he_init(net)
    return net


def network_memory_estimate(topology: NetworkTopology, patch_size: Sequence[int], num_input_channels: int,
                            num_outputs: int) -> int:
    """The network's activation-memory estimate for one sample (delegates to ``network.memory``, the one
    formula the planner uses too)."""
    from AutoSegLib.network.memory import feature_map_size
    return feature_map_size(topology, patch_size, num_input_channels, num_outputs)
