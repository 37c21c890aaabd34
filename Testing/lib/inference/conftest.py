"""A tiny random-weight AutoSeg model folder for inference tests (no training needed)."""
from __future__ import annotations

import json

import pytest
import torch

from AutoSegLib.network.unet import build_network
from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans

TOPO3 = NetworkTopology("plain_unet", 2, (4, 8), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (1, 1), (1,), True)
TOPO2 = NetworkTopology("plain_unet", 2, (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,), True)


def make_plans(num_channels=1, labels=None, configurations=("3d_fullres",), spacing=(2.0, 1.0, 1.0),
               transpose=(0, 1, 2), regions_class_order=None, lowres_spacing=None):
    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    confs = {}
    for name in configurations:
        is2d = name == "2d"
        sp = spacing[1:] if is2d else (lowres_spacing or spacing if name == "3d_lowres" else spacing)
        confs[name] = ConfigurationPlan(
            name=name, spacing=tuple(sp), patch_size=(16, 16) if is2d else (8, 16, 16), batch_size=2,
            median_image_size=(20, 20) if is2d else (10, 20, 20), normalization=("zscore",) * num_channels,
            use_mask_for_norm=(False,) * num_channels, network=TOPO2 if is2d else TOPO3,
            data_identifier=f"tiny_{name}",
            previous_stage="3d_lowres" if name == "3d_cascade_fullres" else None,
            next_stages=("3d_cascade_fullres",) if name == "3d_lowres" and "3d_cascade_fullres" in configurations else ())
    back = tuple(int(i) for i in sorted(range(3), key=lambda a: transpose[a]))
    return Plans(dataset_name="Tiny", channel_names={str(i): f"MR{i}" for i in range(num_channels)}, labels=labels,
                 transpose_forward=tuple(transpose), transpose_backward=back,
                 original_median_spacing=tuple(spacing), original_median_shape=(10.0, 20.0, 20.0),
                 intensity_properties={}, configurations=confs, regions_class_order=regions_class_order)


def write_model(folder, plans: Plans, folds=("0",), seed=0, checkpoint="checkpoint_final.pt"):
    from AutoSegLib.io.labels import cascade_label_values
    folder.mkdir(parents=True, exist_ok=True)
    plans.to_json(folder / "plans.json")
    ds = {"channel_names": plans.channel_names, "labels": plans.labels, "file_ending": ".nii.gz", "numTraining": 0}
    if plans.regions_class_order:
        ds["regions_class_order"] = list(plans.regions_class_order)
    (folder / "dataset.json").write_text(json.dumps(ds))
    layout = plans.label_layout()
    torch.manual_seed(seed)
    for name, conf in plans.configurations.items():
        n_in = plans.num_channels + (len(cascade_label_values(layout)) if conf.previous_stage else 0)
        for fold in folds:
            net = build_network(conf.network, n_in, layout.num_outputs)
            with torch.no_grad():  # random norms too, so that folds differ everywhere
                for k, v in net.state_dict().items():
                    if "norm" in k:
                        v.copy_(torch.randn_like(v) * 0.3 + (1 if k.endswith("weight") else 0))
            d = folder / "trained" / name / f"fold_{fold}"
            d.mkdir(parents=True, exist_ok=True)
            torch.save({"network_weights": net.state_dict(), "configuration": name, "num_input_channels": n_in,
                        "num_outputs": layout.num_outputs, "epoch": 1, "plans_identifier": "test"}, d / checkpoint)
    return folder


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: tiny_model(**make_plans kwargs, folds=..., name=...) -> loaded Model."""
    from AutoSegLib.models.folder import load_model

    def make(name="model", folds=("0",), **kwargs):
        folder = write_model(tmp_path / name, make_plans(**kwargs), folds=folds)
        return load_model(folder)

    return make
