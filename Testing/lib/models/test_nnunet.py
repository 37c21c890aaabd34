"""Reading nnU-Net v2 results folders: plans conversion, weights mapping, cascade, regions, refusals."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.models.folder import load_model
from AutoSegLib.models.nnunet import convert_postprocessing, load_nnunet_results_folder
from AutoSegLib.models.nnunet_plans import convert_plans, resolve_configuration

TINY = Path(__file__).resolve().parent / "data" / "nnunet_tiny"
RESENC = TINY / "Dataset901_ResEncRegions"
RESENC_MODEL = RESENC / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
CASCADE = TINY / "Dataset902_Cascade"


@pytest.fixture
def tiny_copy(tmp_path):
    """A writable copy of the tiny fixture models."""
    def copy(name):
        dest = tmp_path / name
        shutil.copytree(TINY / name, dest)
        return dest
    return copy


def _edit_plans(folder: Path, edit):
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))


def test_trained_reference_models_convert(nnunet_reference):
    model = load_nnunet_results_folder(nnunet_reference.dataset)
    assert model.source == "nnunet" and set(model.configurations) == {"2d", "3d_fullres"}
    full = model.plans.configurations["3d_fullres"]
    # numbers read off the reference's plans.json by hand (make_reference_models.py shrank the network)
    assert full.patch_size == (16, 32, 32) and full.spacing == pytest.approx((2.95, 0.9, 0.9), abs=1e-6)
    assert full.normalization == ("zscore",) and full.use_mask_for_norm == (False,)
    assert full.network.architecture == "plain_unet" and full.network.features_per_stage == (4, 8, 16)
    assert full.network.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert model.plans.configurations["2d"].patch_size == (32, 32)
    assert model.configurations["3d_fullres"].mirror_axes == (0, 1, 2)
    assert model.configurations["2d"].mirror_axes == (0, 1)
    assert model.label_layout.num_outputs == 3
    assert abs(model.plans.intensity_properties["0"]["mean"] - 320.54449462890625) < 1e-9
    one = load_model(nnunet_reference.model("2d"))
    assert set(one.configurations) == {"2d"}


@pytest.mark.slow
def test_shared_reference_models_convert(shared_dir):
    root = shared_dir / "reference" / "nnunet_models" / "Dataset900_Synth"
    if not root.is_dir():
        pytest.skip("reference nnU-Net models not found")
    model = load_nnunet_results_folder(root)
    assert model.source == "nnunet" and set(model.configurations) == {"2d", "3d_fullres"}
    full = model.plans.configurations["3d_fullres"]
    # numbers read off the reference's plans.json by hand
    assert full.patch_size == (48, 56, 48) and full.spacing == (1.0, 1.0, 1.0)
    assert full.normalization == ("zscore",) and full.use_mask_for_norm == (True,)
    assert full.network.architecture == "plain_unet" and full.network.features_per_stage == (32, 64, 128, 256)
    assert model.plans.configurations["2d"].patch_size == (56, 48)
    assert model.configurations["3d_fullres"].mirror_axes == (0, 1, 2)
    assert model.configurations["2d"].mirror_axes == (0, 1)
    assert model.label_layout.num_outputs == 3
    assert abs(model.plans.intensity_properties["0"]["mean"] - 157.9007110595703) < 1e-9
    # the same through the generic loader, on one model folder
    one = load_model(root / "nnUNetTrainerCPUBench__nnUNetPlans__2d")
    assert set(one.configurations) == {"2d"}


@pytest.mark.parametrize("source", ["repository", pytest.param("shared", marks=pytest.mark.slow)])
def test_weights_map_onto_our_network_exactly(source, nnunet_reference, request):
    from AutoSegLib.models.safe_load import load_checkpoint
    from AutoSegLib.network.unet import build_network

    if source == "repository":
        # by hand: 3 encoder stages x 2 convs x (conv weight, bias, norm weight, bias) = 24, 2 decoder stages
        # x 2 convs x 4 = 16, 2 transposed convs x 2 = 4, 2 segmentation heads x 2 = 4
        folder, counts = nnunet_reference.model("3d_fullres"), (None, 48)
    else:
        shared_dir = request.getfixturevalue("shared_dir")
        folder = shared_dir / "reference" / "nnunet_models" / "Dataset900_Synth" / "nnUNetTrainerCPUBench__nnUNetPlans__3d_fullres"
        if not folder.is_dir():
            pytest.skip("reference nnU-Net models not found")
        counts = (188, 68)
    model = load_nnunet_results_folder(folder)
    conf = model.configurations["3d_fullres"]
    sd = conf.folds["0"].state_dict()
    raw = load_checkpoint(conf.folds["0"].path)["network_weights"]
    assert len(sd) == counts[1] and (counts[0] is None or len(raw) == counts[0])
    assert len(raw) > len(sd)  # the aliases (all_modules, decoder.encoder) dropped
    net = build_network(model.plans.configurations["3d_fullres"].network, 1, 3, deep_supervision=False)
    net.load_state_dict(sd, strict=True)
    for key, value in sd.items():
        assert torch.equal(net.state_dict()[key], value)
        assert torch.equal(raw[key], value)


def test_residual_encoder_regions_two_channels():
    model = load_nnunet_results_folder(RESENC)
    conf = model.plans.configurations["3d_fullres"]
    assert conf.network.architecture == "residual_encoder_unet"
    assert conf.network.n_conv_per_stage == (1, 2, 2) and conf.network.n_conv_per_stage_decoder == (1, 1)
    assert conf.network.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert conf.normalization == ("ct", "zscore") and conf.use_mask_for_norm == (False, False)
    layout = model.label_layout
    assert layout.has_regions and layout.num_outputs == 2 and layout.regions_class_order == (1, 2)
    cm = model.configurations["3d_fullres"]
    assert (cm.num_input_channels, cm.num_outputs) == (2, 2)
    assert model.plans.intensity_properties["0"]["percentile_99_5"] == 400.0
    assert model.inference is None


def test_cascade_with_inference_information_and_postprocessing():
    model = load_nnunet_results_folder(CASCADE)
    assert set(model.configurations) == {"3d_cascade_fullres", "3d_lowres"}
    casc = model.plans.configurations["3d_cascade_fullres"]
    full_entry = resolve_configuration(json.loads((CASCADE / "nnUNetTrainer__nnUNetPlans__3d_lowres" / "plans.json")
                                                  .read_text()), "3d_fullres")
    assert casc.previous_stage == "3d_lowres" and list(casc.patch_size) == full_entry["patch_size"]
    assert casc.spacing == (1.5, 1.0, 1.0)
    assert model.plans.configurations["3d_lowres"].next_stages == ("3d_cascade_fullres",)
    assert model.configurations["3d_cascade_fullres"].num_input_channels == 3  # image + one-hot labels 1, 2
    assert model.configurations["3d_cascade_fullres"].mirror_axes == (1, 2)
    assert model.inference == {"configurations": ["3d_cascade_fullres"],
                               "postprocessing": [{"step": "largest_component", "labels": [1, 2]},
                                                  {"step": "largest_component", "labels": [2]}]}
    assert model.default_configurations() == ("3d_cascade_fullres",)


def test_cascade_stage_without_its_previous_stage_is_refused(tiny_copy):
    folder = tiny_copy("Dataset902_Cascade")
    shutil.rmtree(folder / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    with pytest.raises(AutoSegError, match="3d_lowres"):
        load_nnunet_results_folder(folder)


def test_cascade_stage_passed_alone_finds_its_sibling_previous_stage():
    model = load_nnunet_results_folder(CASCADE / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")
    assert set(model.configurations) == {"3d_cascade_fullres", "3d_lowres"}
    assert model.inference["configurations"] == ["3d_cascade_fullres"]


def test_inheritance_resolution_and_cycles():
    plans = {"configurations": {"a": {"x": 1, "y": 2}, "b": {"inherits_from": "a", "y": 3},
                                "c": {"inherits_from": "b", "z": 4}, "d": {"inherits_from": "e"},
                                "e": {"inherits_from": "d"}}}
    assert resolve_configuration(plans, "c") == {"x": 1, "y": 3, "z": 4}
    with pytest.raises(AutoSegError, match="circular"):
        resolve_configuration(plans, "d")
    with pytest.raises(AutoSegError, match="not found"):
        resolve_configuration(plans, "nope")


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(network_class_name="dynamic_network_architectures.architectures.primus.Primus"), "Primus"),
    (lambda a: a["arch_kwargs"].update(norm_op="torch.nn.BatchNorm3d"), "BatchNorm3d"),
    (lambda a: a["arch_kwargs"].update(nonlin="torch.nn.ReLU"), "ReLU"),
    (lambda a: a["arch_kwargs"].update(dropout_op="torch.nn.Dropout3d", dropout_op_kwargs={"p": 0.2}), "Dropout3d"),
])
def test_unsupported_architecture_is_named(tiny_copy, edit, message):
    folder = tiny_copy("Dataset901_ResEncRegions") / RESENC_MODEL.name
    _edit_plans(folder, lambda p: edit(p["configurations"]["3d_fullres"]["architecture"]))
    with pytest.raises(AutoSegError, match=message):
        load_nnunet_results_folder(folder)


@pytest.mark.parametrize("key, value, message", [
    ("normalization_schemes", ["CTNormalization", "MyOwnNormalization"], "MyOwnNormalization"),
    ("resampling_fn_data", "resample_torch_fornnunet", "resample_torch_fornnunet"),
    ("preprocessor_name", "MyPreprocessor", "MyPreprocessor"),
])
def test_unsupported_preprocessing_is_named(tiny_copy, key, value, message):
    folder = tiny_copy("Dataset901_ResEncRegions") / RESENC_MODEL.name
    _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"].update({key: value}))
    with pytest.raises(AutoSegError, match=message):
        load_nnunet_results_folder(folder)


def test_weights_that_do_not_fit_the_plans_are_refused(tiny_copy):
    folder = tiny_copy("Dataset901_ResEncRegions") / RESENC_MODEL.name
    _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        features_per_stage=[4, 8, 32]))
    with pytest.raises(AutoSegError, match="do not match"):
        load_nnunet_results_folder(folder)


def test_missing_pieces_are_named(tiny_copy, tmp_path):
    folder = tiny_copy("Dataset901_ResEncRegions") / RESENC_MODEL.name
    (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "other.pth")
    with pytest.raises(AutoSegError, match="checkpoint_final.pth"):
        load_nnunet_results_folder(folder)
    (folder / "fold_0" / "other.pth").rename(folder / "fold_0" / "checkpoint_best.pth")
    assert load_nnunet_results_folder(folder).configurations["3d_fullres"].folds["0"].path.name == "checkpoint_best.pth"
    (folder / "dataset.json").unlink()
    with pytest.raises(AutoSegError, match="dataset.json"):
        load_nnunet_results_folder(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AutoSegError, match="no nnU-Net v2 model"):
        load_nnunet_results_folder(empty)


def test_pickles_next_to_the_model_are_never_loaded(tiny_copy, tmp_path):
    folder = tiny_copy("Dataset902_Cascade")
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    import pickle
    for pkl in (folder / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres" / "crossval_results_folds_0" / "postprocessing.pkl",
                folder / "nnUNetTrainer__nnUNetPlans__3d_lowres" / "fold_0" / "debug.pkl"):
        pkl.write_bytes(pickle.dumps(RunsCode()))
    model = load_nnunet_results_folder(folder)
    assert model.inference["postprocessing"]
    assert not marker.exists()


def test_postprocessing_json_conversion():
    pp = {"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"] * 3,
          "postprocessing_kwargs": [{"labels_or_regions": [[1, 2], [2]]}, {"labels_or_regions": [1, 2]},
                                    {"labels_or_regions": 2}]}
    assert convert_postprocessing(pp) == [{"step": "largest_component", "labels": [[1, 2], [2]]},
                                          {"step": "largest_component", "labels": [1, 2]},
                                          {"step": "largest_component", "labels": [2]}]
    with pytest.raises(AutoSegError, match="my_fn"):
        convert_postprocessing({"postprocessing_fns": ["my_fn"], "postprocessing_kwargs": [{}]})


def test_convert_plans_rejects_channel_mismatch():
    plans = json.loads((RESENC_MODEL / "plans.json").read_text())
    dataset = json.loads((RESENC_MODEL / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "CT"}
    with pytest.raises(AutoSegError, match="1 channel"):
        convert_plans(plans, dataset)


def test_plans_of_nnunet_before_2_2_convert_like_current_ones():
    """Older plans name the same network with other keys (UNet_class_name, conv_kernel_sizes, ...)."""
    plans = json.loads((CASCADE / "nnUNetTrainer__nnUNetPlans__3d_lowres" / "plans.json").read_text())
    dataset = json.loads((CASCADE / "nnUNetTrainer__nnUNetPlans__3d_lowres" / "dataset.json").read_text())
    current = convert_plans(plans, dataset, ["3d_fullres"])
    entry = plans["configurations"]["3d_fullres"]
    kw = entry.pop("architecture")["arch_kwargs"]
    entry.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=16,
                 n_conv_per_stage_encoder=kw["n_conv_per_stage"], n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
                 pool_op_kernel_sizes=kw["strides"], conv_kernel_sizes=kw["kernel_sizes"])
    legacy = convert_plans(plans, dataset, ["3d_fullres"])
    assert legacy.configurations["3d_fullres"] == current.configurations["3d_fullres"]
    del entry["UNet_base_num_features"]
    with pytest.raises(AutoSegError, match="UNet_base_num_features"):
        convert_plans(plans, dataset, ["3d_fullres"])


def test_postprocessing_file_of_the_training_machine_maps_onto_this_copy(tmp_path):
    from AutoSegLib.models.nnunet import _local_pp_json

    ds = tmp_path / "copy" / "Dataset123_X"
    ens = ds / "ensembles" / "ensemble___a__p__2d___a__p__3d_fullres___0_1_2_3_4"
    ens.mkdir(parents=True)
    (ens / "postprocessing.json").write_text("{}")
    recorded = "/old/machine/results/Dataset123_X/ensembles/ensemble___a__p__2d___a__p__3d_fullres___0_1_2_3_4/postprocessing.pkl"
    assert _local_pp_json(ds, recorded) == ens / "postprocessing.json"
    renamed = tmp_path / "renamed_copy"
    ds.rename(renamed)  # the dataset folder itself renamed: found by the path's tail
    assert _local_pp_json(renamed, recorded) == renamed / "ensembles" / ens.name / "postprocessing.json"
    assert _local_pp_json(renamed, "/old/Dataset123_X/other/postprocessing.pkl") is None
