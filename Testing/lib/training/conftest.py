"""Fixtures for the training tests: a tiny work folder (synthetic dataset, hand-made plans, preprocessed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def tiny_plans(dataset_path: Path, ndim: int = 3, labels=None, patch=None, batch_size: int = 2,
               features=(4, 8, 16), spacing=None, regions_class_order=None, lowres_spacing=None, lowres_patch=None):
    """Plans for a tiny U-Net on the synthetic data: 3 stages, zscore, no resampling. With ``lowres_spacing``
    (3D only) also '3d_lowres' at that spacing (patch ``lowres_patch``) and '3d_cascade_fullres' after it,
    sharing 3d_fullres's data, as the planner makes them."""
    from dataclasses import replace

    from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans

    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    n = len(features)
    confs = {}
    if ndim == 3:
        patch = tuple(patch or (16, 16, 16))
        strides = ((1, 1, 1),) + ((2, 2, 2),) * (n - 1)
        kernels = ((3, 3, 3),) * n
        spacing = tuple(spacing or (1.0, 1.0, 1.0))
        name = "3d_fullres"
    else:
        patch = tuple(patch or (24, 24))
        strides = ((1, 1),) + ((2, 2),) * (n - 1)
        kernels = ((3, 3),) * n
        spacing = tuple(spacing or (1.0, 1.0))
        name = "2d"
    topo = NetworkTopology("plain_unet", n, tuple(features), kernels, strides, (2,) * n, (2,) * (n - 1))
    confs[name] = ConfigurationPlan(
        name=name, spacing=spacing, patch_size=patch, batch_size=batch_size, median_image_size=(16.0, 24.0, 24.0),
        normalization=("zscore",), use_mask_for_norm=(False,), network=topo, data_identifier=f"tiny_{name}")
    if lowres_spacing is not None and ndim == 3:
        confs["3d_lowres"] = replace(confs[name], name="3d_lowres", spacing=tuple(lowres_spacing),
                                     patch_size=tuple(lowres_patch or patch), data_identifier="tiny_3d_lowres",
                                     next_stages=("3d_cascade_fullres",))
        confs["3d_cascade_fullres"] = replace(confs[name], name="3d_cascade_fullres", previous_stage="3d_lowres")
    return Plans(dataset_name=dataset_path.name, channel_names={"0": "MRI"}, labels=labels,
                 transpose_forward=(0, 1, 2), transpose_backward=(0, 1, 2), original_median_spacing=(1.0, 1.0, 1.0),
                 original_median_shape=(16.0, 24.0, 24.0), intensity_properties={}, configurations=confs,
                 regions_class_order=tuple(regions_class_order) if regions_class_order else None)


def make_work_dir(root: Path, ndim: int = 3, n_cases: int = 6, shape=(16, 24, 24), seed: int = 0, **plan_kwargs) -> Path:
    """Write a synthetic dataset, plans.json, dataset.json and preprocessed data under ``root``."""
    from AutoSegLib.io.synthetic import make_synthetic_dataset
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    raw = make_synthetic_dataset(root / "raw", n_cases=n_cases, shape=shape, spacing=(1.0, 1.0, 1.0), seed=seed,
                                 shape_jitter=0.0)
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    plans = tiny_plans(raw, ndim=ndim, **plan_kwargs)
    plans.to_json(work / "plans.json")
    ds = json.loads((raw / "dataset.json").read_text())
    if plan_kwargs.get("labels"):  # other label semantics on the same synthetic values 0, 1, 2
        ds["labels"] = plan_kwargs["labels"]
        if plan_kwargs.get("regions_class_order"):
            ds["regions_class_order"] = list(plan_kwargs["regions_class_order"])
        (raw / "dataset.json").write_text(json.dumps(ds))
    ds["dataset_path"] = str(raw.resolve())
    (work / "dataset.json").write_text(json.dumps(ds))
    preprocess_dataset(raw, plans, work_dir=work, num_workers=1)
    return work


@pytest.fixture(scope="session")
def make_work():
    """The `make_work_dir` function (test modules cannot import conftest in importlib mode)."""
    return make_work_dir


@pytest.fixture
def tiny_work_dir(tmp_path):
    """Factory: tiny_work_dir(ndim=3, n_cases=6, ...) -> work folder ready for training."""
    def make(**kwargs):
        return make_work_dir(tmp_path / f"w{len(list(tmp_path.iterdir()))}", **kwargs)
    return make


@pytest.fixture
def check_validation_dice():
    """``check_validation_dice(fold_dir, regions, ignore_value=None)``: see `_check_validation_dice`."""
    return _check_validation_dice


def _check_validation_dice(fold_dir: Path, regions: dict, ignore_value=None) -> dict:
    """Recompute, by hand, the Dice of every validation case in ``fold_dir/validation/summary.json`` from the
    label map written there and the raw reference it names, and compare with the recorded values.

    ``regions``: name -> tuple of label values counted as that label/region; ``ignore_value``: reference
    voxels with that value count for nothing. Returns the summary. Dice is NaN when both masks are empty."""
    import math

    import numpy as np

    from AutoSegLib.io.images import read_image

    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert summary["cases"], "no validation case"
    per_name = {n: [] for n in regions}
    for case, entry in summary["cases"].items():
        pred = read_image(fold_dir / "validation" / entry["prediction"])[0]
        ref = read_image(entry["reference"])[0]
        assert pred.shape == ref.shape, case
        valid = np.ones(ref.shape, bool) if ignore_value is None else ref != ignore_value
        assert set(entry["dice"]) == set(regions), case
        for name, values in regions.items():
            p, g = np.isin(pred, values) & valid, np.isin(ref, values) & valid
            denom = int(p.sum() + g.sum())
            expected = 2 * int((p & g).sum()) / denom if denom else float("nan")
            got = entry["dice"][name]
            assert (math.isnan(expected) and math.isnan(got)) or abs(got - expected) < 1e-9, (case, name, got, expected)
            assert math.isnan(got) or 0.0 <= got <= 1.0
            per_name[name].append(expected)
    for name, values in per_name.items():
        finite = [v for v in values if not math.isnan(v)]
        mean = summary["mean_dice"][name]
        if finite:
            assert abs(mean - sum(finite) / len(finite)) < 1e-9, (name, mean)
        else:
            assert mean is None or math.isnan(mean), (name, mean)
    return summary
