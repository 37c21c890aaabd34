"""Fixtures for the planning tests: `plan_differences` compares our Plans with a reference nnUNetPlans.json."""
import pytest
import numpy as np

SCHEME_NAMES = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
                "RescaleTo01Normalization": "rescale_0_1", "RGBTo01Normalization": "rgb_to_0_1"}


def _t(x):
    return tuple(_t(v) for v in x) if isinstance(x, (list, tuple)) else x


def plan_differences(ours, ref: dict) -> list:
    """Every difference that matters between our Plans and the reference plans dict ([] when equal):
    set of configurations, transposition, and per configuration spacing (1%), patch, batch, strides,
    kernels, features, normalisation, mask use, batch dice, cascade links."""
    diffs = []
    if set(ours.configurations) != set(ref["configurations"]):
        diffs.append(f"configurations {sorted(ours.configurations)} != {sorted(ref['configurations'])}")
    if list(ours.transpose_forward) != ref["transpose_forward"]:
        diffs.append(f"transpose_forward {ours.transpose_forward} != {ref['transpose_forward']}")
    if list(ours.transpose_backward) != ref["transpose_backward"]:
        diffs.append(f"transpose_backward {ours.transpose_backward} != {ref['transpose_backward']}")
    for name, rc in ref["configurations"].items():
        if name not in ours.configurations:
            continue
        c = ours.configurations[name]
        if "inherits_from" in rc:
            base = ref["configurations"][rc["inherits_from"]]
            rc = {**base, **rc}
            if c.previous_stage != rc.get("previous_stage"):
                diffs.append(f"{name}: previous_stage {c.previous_stage} != {rc.get('previous_stage')}")
        a = rc["architecture"]["arch_kwargs"]
        checks = [
            ("patch_size", c.patch_size, _t(rc["patch_size"])),
            ("batch_size", c.batch_size, rc["batch_size"]),
            ("strides", c.network.strides, _t(a["strides"])),
            ("kernel_sizes", c.network.kernel_sizes, _t(a["kernel_sizes"])),
            ("features_per_stage", c.network.features_per_stage, _t(a["features_per_stage"])),
            ("n_conv_per_stage", c.network.n_conv_per_stage, _t(a["n_conv_per_stage"])),
            ("normalization", c.normalization, tuple(SCHEME_NAMES[s] for s in rc["normalization_schemes"])),
            ("use_mask_for_norm", c.use_mask_for_norm, _t(rc["use_mask_for_norm"])),
            ("batch_dice", c.batch_dice, rc["batch_dice"]),
        ]
        if "next_stage" in rc:
            checks.append(("next_stages", c.next_stages, (rc["next_stage"],)))
        for what, mine, theirs in checks:
            if mine != theirs:
                diffs.append(f"{name}: {what} {mine} != {theirs}")
        if len(c.spacing) != len(rc["spacing"]) or not np.allclose(c.spacing, rc["spacing"], rtol=0.01, atol=0):
            diffs.append(f"{name}: spacing {c.spacing} != {rc['spacing']}")
        if not np.allclose(c.median_image_size, rc["median_image_size_in_voxels"], rtol=1e-6):
            diffs.append(f"{name}: median_image_size {c.median_image_size} != {rc['median_image_size_in_voxels']}")
    return diffs


@pytest.fixture
def compare_plans():
    """plan_differences(ours, ref_dict) -> list of differences ([] when the plans agree)."""
    return plan_differences
