"""U-Net topology rules: how often each axis is downsampled, with which kernels, and what that
requires of the patch size.

The rule, per resolution step: an axis may be pooled (stride 2) while its feature map stays at least
``2 * min_edge`` voxels and its current spacing is within a factor 2 of the finest poolable axis; when
only one axis qualifies it needs ``3 * min_edge`` voxels. An axis gets kernel size 3 from the first
step at which its spacing is within 2x of the finest axis (kernel 1 until then, so strongly
anisotropic data starts with in-plane convolutions). The bottleneck always has kernel 3. The patch is
then padded up to a multiple of ``2 ** pools`` per axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from AutoSegLib.planning.plans import NetworkTopology

FEATUREMAP_MIN_EDGE = 4
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
CONVS_PER_STAGE = 2


@dataclass(frozen=True)
class PoolingPlan:
    """Result of `pooling_plan`: per-axis pool counts, per-stage strides (stage 0: ones) and kernel
    sizes, the padded patch size and the divisibility it requires."""
    pools_per_axis: Tuple[int, ...]
    strides: Tuple[Tuple[int, ...], ...]
    kernel_sizes: Tuple[Tuple[int, ...], ...]
    patch_size: Tuple[int, ...]
    divisible_by: Tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_to_multiple(shape: Sequence[float], divisors: Sequence[int]) -> Tuple[int, ...]:
    """Round each entry of ``shape`` up to a multiple of the matching divisor (e.g. 84.5, 4 -> 88)."""
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, divisors))


def pooling_plan(spacing: Sequence[float], patch_size: Sequence[float], min_edge: int = FEATUREMAP_MIN_EDGE,
                 max_pools: Optional[int] = None) -> PoolingPlan:
    """Apply the pooling/kernel rule (module docstring) to a patch of ``patch_size`` voxels at ``spacing``.

    Parameters
    ----------
    spacing : sequence of float, length 2 or 3
        Voxel spacing (mm) in the network's axis order.
    patch_size : sequence of number
        Starting patch size (may be fractional: a median image size); padded in the result.
    min_edge : int
        Smallest feature-map edge allowed in the bottleneck (4).
    max_pools : int, optional
        Upper bound on pools per axis.
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    pools = [0] * dim
    kernel = [1] * dim
    strides = [(1,) * dim]
    kernels = []
    while True:
        axes = [a for a in range(dim) if cur_size[a] >= 2 * min_edge]
        if not axes:
            break
        finest = min(cur_spacing[a] for a in axes)
        axes = [a for a in axes if cur_spacing[a] / finest < 2]
        if max_pools is not None:
            axes = [a for a in axes if pools[a] < max_pools]
        if not axes or (len(axes) == 1 and cur_size[axes[0]] < 3 * min_edge):
            break
        finest_all = min(cur_spacing)
        for a in range(dim):
            if kernel[a] != 3 and cur_spacing[a] / finest_all < 2:
                kernel[a] = 3
        for a in axes:
            pools[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(2 if a in axes else 1 for a in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisible = tuple(2 ** p for p in pools)
    return PoolingPlan(tuple(pools), tuple(strides), tuple(kernels), pad_to_multiple(patch_size, divisible),
                       divisible)


def features_per_stage(n_stages: int, ndim: int) -> Tuple[int, ...]:
    """32 features in stage 0, doubling per stage, capped at 320 (3D) / 512 (2D)."""
    cap = MAX_FEATURES_3D if ndim == 3 else MAX_FEATURES_2D
    return tuple(min(cap, BASE_FEATURES * 2 ** s) for s in range(n_stages))


def plain_topology(pooling: PoolingPlan) -> NetworkTopology:
    """The plain U-Net (2 convs per stage, encoder and decoder) for a pooling plan."""
    n, ndim = pooling.n_stages, len(pooling.patch_size)
    return NetworkTopology(architecture="plain_unet", n_stages=n, features_per_stage=features_per_stage(n, ndim),
                           kernel_sizes=pooling.kernel_sizes, strides=pooling.strides,
                           n_conv_per_stage=(CONVS_PER_STAGE,) * n, n_conv_per_stage_decoder=(CONVS_PER_STAGE,) * (n - 1),
                           conv_bias=True)
