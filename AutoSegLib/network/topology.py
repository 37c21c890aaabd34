"""The U-Net topology record (`NetworkTopology`): what `network.unet.build_network` builds and what a
configuration plan carries (planning depends on this module, never the other way round)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

ARCHITECTURES = ("plain_unet", "residual_encoder_unet")


@dataclass(frozen=True)
class NetworkTopology:
    """U-Net topology. Stage s has ``features_per_stage[s]`` features, is reached by a strided conv
    with ``strides[s]`` (stage 0: all ones) and uses ``kernel_sizes[s]``. ``n_conv_per_stage`` counts
    convs (plain) or residual blocks (residual encoder) per encoder stage; ``n_conv_per_stage_decoder``
    has n_stages - 1 entries. Conv -> InstanceNorm(affine, eps 1e-5) -> LeakyReLU(0.01)."""
    architecture: str
    n_stages: int
    features_per_stage: Tuple[int, ...]
    kernel_sizes: Tuple[Tuple[int, ...], ...]
    strides: Tuple[Tuple[int, ...], ...]
    n_conv_per_stage: Tuple[int, ...]
    n_conv_per_stage_decoder: Tuple[int, ...]
    conv_bias: bool = True

    @property
    def ndim(self) -> int:
        return len(self.kernel_sizes[0])

    def pools_per_axis(self) -> Tuple[int, ...]:
        return tuple(sum(1 for s in self.strides if s[a] > 1) for a in range(self.ndim))
