"""The network's activation-memory estimate: the one formula the planner and the network builder share.

The estimate is the number of feature-map elements that every convolution, transposed convolution and
segmentation head of the U-Net writes for one sample of a given patch size (the quantity nnU-Net's
planner calls the "conv feature map size" and compares with a reference value measured for 8 GB of
GPU memory). It is pure integer arithmetic over a ``NetworkTopology``: no torch, no network instance.

Convolutions use "same" padding, so a conv with stride ``s`` turns a size ``n`` into ``n // s``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Tuple

if TYPE_CHECKING:  # only attributes are read; no import cycle with planning at run time
    from AutoSegLib.network.topology import NetworkTopology


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _div(size: Sequence[int], stride: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(n) // int(s) for n, s in zip(size, stride))


def _conv_stack(size, stride, n_convs: int, features: int) -> int:
    """``n_convs`` conv units, the first strided: each writes ``features`` maps at the strided size."""
    out = _div(size, stride)
    return n_convs * features * _prod(out)


def _residual_stack(size, stride, n_blocks: int, in_features: int, features: int) -> int:
    """ResNet-D basic blocks: conv1 + conv2, plus the 1x1 skip conv where width or resolution changes."""
    total, in_ch = 0, in_features
    for b in range(n_blocks):
        s = stride if b == 0 else (1,) * len(size)
        out = _div(size, s)
        total += 2 * features * _prod(out)
        if in_ch != features or tuple(out) != tuple(size):
            total += features * _prod(out)
        size, in_ch = out, features
    return total


def feature_map_size(topology: "NetworkTopology", patch_size: Sequence[int], n_input_channels: int,
                     n_outputs: int, deep_supervision: bool = False) -> int:
    """Feature-map elements written by the U-Net of ``topology`` for one sample of ``patch_size``.

    Parameters
    ----------
    topology : NetworkTopology
        Plain or residual-encoder U-Net (``architecture`` "plain_unet" / "residual_encoder_unet").
    patch_size : sequence of int, length ``topology.ndim``
        Spatial input size (transposed array order).
    n_input_channels : int
        Image channels; only the residual encoder's stem width depends on it (it does not change the
        count, which is what the planner's reference values were calibrated with).
    n_outputs : int
        Number of segmentation-head output channels.
    deep_supervision : bool
        Count every decoder head (True) or only the full-resolution one (False, what the planner uses).

    Returns
    -------
    int
        Element count (not bytes). The planner compares it with its reference value
        (3D: 560e6, 2D: 85e6 at 8 GB with batch 2 / 12).

    Notes
    -----
    Encoder stage ``s`` writes ``n_conv_per_stage[s] * features[s]`` maps at its (strided) size;
    decoder stage ``d`` (0 = lowest) writes its transposed-conv output and ``n_conv_per_stage_decoder[d]``
    conv outputs with the skip's width at the skip's size, plus ``n_outputs`` maps for its head.
    """
    if len(patch_size) != topology.ndim:
        raise ValueError(f"patch_size {tuple(patch_size)} has {len(patch_size)} axes; the topology is "
                         f"{topology.ndim}D")
    del n_input_channels  # the stem's output width is features_per_stage[0] whatever the input
    f = topology.features_per_stage
    size = tuple(int(p) for p in patch_size)
    total = 0
    # encoder
    residual = topology.architecture == "residual_encoder_unet"
    if residual:
        total += f[0] * _prod(size)  # stem: one conv unit at full resolution
    in_ch = f[0]
    for s in range(topology.n_stages):
        if residual:
            total += _residual_stack(size, topology.strides[s], topology.n_conv_per_stage[s], in_ch, f[s])
        else:
            total += _conv_stack(size, topology.strides[s], topology.n_conv_per_stage[s], f[s])
        size = _div(size, topology.strides[s])
        in_ch = f[s]
    # decoder: sizes of the skips (outputs of encoder stages 0..n-2)
    skip_sizes, size = [], tuple(int(p) for p in patch_size)
    for s in range(topology.n_stages - 1):
        size = _div(size, topology.strides[s])
        skip_sizes.append(size)
    n_dec = topology.n_stages - 1
    for d in range(n_dec):
        skip_size = skip_sizes[-(d + 1)]
        width = f[-(d + 2)]
        total += topology.n_conv_per_stage_decoder[d] * width * _prod(skip_size)  # conv units
        total += width * _prod(skip_size)                                         # transposed conv
        if deep_supervision or d == n_dec - 1:
            total += int(n_outputs) * _prod(skip_size)                            # segmentation head
    return int(total)


def _kvol(kernel: Sequence[int]) -> int:
    return _prod(kernel)


def conv_macs(topology: "NetworkTopology", patch_size: Sequence[int], n_input_channels: int, n_outputs: int,
              deep_supervision: bool = True) -> int:
    """Multiply-accumulates of every convolution of one forward pass for one sample of ``patch_size``.

    The compute the planner's time budget is about (``budget.py``): a training step costs about three
    forward passes (forward, gradients of inputs and of weights). Instance norms and activations are not
    counted; the device calibration (``training.calibration``) measures what they add on top.

    Parameters are those of `feature_map_size`; ``n_input_channels`` matters here (the first conv).

    Returns
    -------
    int
        MACs (one multiply + one add each): output elements x input channels x kernel volume, summed.
        A transposed conv with kernel = stride contributes output elements x input channels.
    """
    if len(patch_size) != topology.ndim:
        raise ValueError(f"patch_size {tuple(patch_size)} has {len(patch_size)} axes; the topology is "
                         f"{topology.ndim}D")
    f = topology.features_per_stage
    size = tuple(int(p) for p in patch_size)
    residual = topology.architecture == "residual_encoder_unet"
    total = 0
    in_ch = int(n_input_channels)
    if residual:  # stem: one conv unit at full resolution
        total += _prod(size) * f[0] * in_ch * _kvol(topology.kernel_sizes[0])
        in_ch = f[0]
    skip_sizes = []
    for s in range(topology.n_stages):
        k = _kvol(topology.kernel_sizes[s])
        for i in range(topology.n_conv_per_stage[s]):
            out = _div(size, topology.strides[s]) if i == 0 else size
            if residual:  # block i: conv1 (in -> f, strided when i == 0), conv2 (f -> f), 1x1 skip if needed
                total += _prod(out) * f[s] * (in_ch + f[s]) * k
                if in_ch != f[s] or tuple(out) != tuple(size):
                    total += _prod(out) * f[s] * in_ch
            else:
                total += _prod(out) * f[s] * in_ch * k
            size, in_ch = out, f[s]
        skip_sizes.append(size)
    n_dec = topology.n_stages - 1
    for d in range(n_dec):
        skip_size = skip_sizes[-(d + 2)]
        width = f[-(d + 2)]
        below = f[-(d + 1)]
        total += _prod(skip_size) * width * below                                   # transposed conv
        k = _kvol(topology.kernel_sizes[-(d + 2)])
        for i in range(topology.n_conv_per_stage_decoder[d]):
            total += _prod(skip_size) * width * (2 * width if i == 0 else width) * k  # after the concatenation
        if deep_supervision or d == n_dec - 1:
            total += _prod(skip_size) * n_outputs * width                            # 1x1 segmentation head
    return int(total)
