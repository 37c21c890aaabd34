"""Building blocks of the U-Net: conv -> InstanceNorm -> LeakyReLU units, their stacks, residual blocks.

Attribute names are part of the checkpoint format (see ``network/unet.py`` for the full key layout):
a unit holds ``conv`` and ``norm``; a stack holds ``convs`` (an ``nn.Sequential`` of units); a residual
block holds ``conv1``, ``conv2`` and, when it changes resolution or width, ``skip`` (an
``nn.Sequential``: optional ``AvgPool`` then a 1x1 unit without activation); a residual stack holds
``blocks``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

NORM_EPS = 1e-5
LEAKY_SLOPE = 1e-2


def ops_for(ndim: int):
    """Return ``(Conv, ConvTranspose, InstanceNorm, AvgPool)`` classes for 2 or 3 spatial dimensions."""
    if ndim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.AvgPool2d
    if ndim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.AvgPool3d
    raise ValueError(f"networks exist for 2 or 3 spatial dimensions, not {ndim}")


class ConvNormAct(nn.Module):
    """Conv (same padding, optional stride) -> InstanceNorm(affine, eps 1e-5) -> LeakyReLU(0.01) (optional).

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    in_ch, out_ch : int
        Channels in and out.
    kernel, stride : tuple of int
        Per spatial axis. Padding is ``(k - 1) // 2`` so the output size is ``input // stride``.
    bias : bool
        Whether the conv has a bias.
    activation : bool
        Apply LeakyReLU after the norm (False for the second conv of a residual block and its skip).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int],
                 bias: bool, activation: bool = True):
        super().__init__()
        conv, _, norm, _ = ops_for(ndim)
        kernel, stride = tuple(kernel), tuple(stride)
        self.conv = conv(in_ch, out_ch, kernel, stride, padding=[(k - 1) // 2 for k in kernel], bias=bias)
        self.norm = norm(out_ch, eps=NORM_EPS, affine=True)
        self.nonlin = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return self.nonlin(x) if self.nonlin is not None else x


class ConvStack(nn.Module):
    """``n`` ConvNormAct units; the first one carries the stride."""

    def __init__(self, ndim: int, n: int, in_ch: int, out_ch: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool):
        super().__init__()
        ones = (1,) * ndim
        self.convs = nn.Sequential(*[
            ConvNormAct(ndim, in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else ones, bias)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class ResidualBlock(nn.Module):
    """ResNet-D basic block: ``act(conv2(conv1(x)) + skip(x))``; the skip average-pools by the stride and
    projects with a 1x1 conv + norm when the width changes (identity otherwise)."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int],
                 bias: bool):
        super().__init__()
        _, _, _, pool = ops_for(ndim)
        stride = tuple(stride)
        self.conv1 = ConvNormAct(ndim, in_ch, out_ch, kernel, stride, bias)
        self.conv2 = ConvNormAct(ndim, out_ch, out_ch, kernel, (1,) * ndim, bias, activation=False)
        self.nonlin2 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        skip = []
        if any(s != 1 for s in stride):
            skip.append(pool(stride, stride))
        if in_ch != out_ch:
            skip.append(ConvNormAct(ndim, in_ch, out_ch, (1,) * ndim, (1,) * ndim, bias=False, activation=False))
        self.skip = nn.Sequential(*skip) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x) if self.skip is not None else x
        out = self.conv2(self.conv1(x))
        out = out + residual
        return self.nonlin2(out)


class ResidualStack(nn.Module):
    """``n`` residual blocks; the first one carries the stride."""

    def __init__(self, ndim: int, n: int, in_ch: int, out_ch: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool):
        super().__init__()
        ones: Tuple[int, ...] = (1,) * ndim
        self.blocks = nn.Sequential(*[
            ResidualBlock(ndim, in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else ones, bias)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def he_init(module: nn.Module, neg_slope: float = LEAKY_SLOPE) -> None:
    """He (Kaiming normal, leaky slope 0.01) weights and zero biases for every conv / transposed conv;
    the last norm of each residual block is zeroed so that every block starts as its skip path."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=neg_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ResidualBlock):
            nn.init.zeros_(m.conv2.norm.weight)
            nn.init.zeros_(m.conv2.norm.bias)
