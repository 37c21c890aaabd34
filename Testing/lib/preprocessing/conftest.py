"""Hand-built plans for preprocessing tests (independent of the planner)."""
from __future__ import annotations

import pytest

from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans, ResamplingSettings


def make_plans(spacing3d=(2.0, 1.0, 1.0), spacing2d=(1.0, 1.0), normalization=("zscore",), use_mask=(False,),
               transpose=(0, 1, 2), labels=None, intensity=None, same_identifier=False, **resampling) -> Plans:
    n = len(normalization)
    topo3 = NetworkTopology("plain_unet", 2, (4, 8), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (1, 1), (1,))
    topo2 = NetworkTopology("plain_unet", 2, (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,))
    res = ResamplingSettings(**resampling)
    common = dict(batch_size=2, normalization=tuple(normalization), use_mask_for_norm=tuple(use_mask), resampling=res)
    confs = {
        "3d_fullres": ConfigurationPlan("3d_fullres", tuple(spacing3d), (16, 16, 16), median_image_size=(16, 16, 16),
                                        network=topo3, data_identifier="Plans_3d_fullres", **common),
        "2d": ConfigurationPlan("2d", tuple(spacing2d), (16, 16), median_image_size=(16, 16), network=topo2,
                                data_identifier="Plans_3d_fullres" if same_identifier else "Plans_2d", **common),
    }
    back = tuple(int(i) for i in sorted(range(3), key=lambda a: transpose[a]))
    return Plans(dataset_name="Synth", channel_names={str(i): ("CT" if normalization[i] == "ct" else f"ch{i}")
                                                      for i in range(n)},
                 labels=labels or {"background": 0, "organ": 1, "lesion": 2},
                 transpose_forward=tuple(transpose), transpose_backward=back,
                 original_median_spacing=tuple(spacing3d), original_median_shape=(16.0, 16.0, 16.0),
                 intensity_properties=intensity or {str(i): {"mean": 0.0, "std": 1.0, "percentile_00_5": -1.0,
                                                             "percentile_99_5": 1.0} for i in range(n)},
                 configurations=confs)


@pytest.fixture
def plans_factory():
    return make_plans
