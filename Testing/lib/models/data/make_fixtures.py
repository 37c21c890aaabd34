"""Make the tiny nnU-Net v2 fixture models of test_nnunet*.py WITH THE REFERENCE (run by hand, in .bench-venv).

    .bench-venv/bin/python Testing/lib/models/data/make_fixtures.py

Writes ``Testing/lib/models/data/nnunet_tiny/``:

- ``Dataset901_ResEncRegions/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres``: a residual-encoder
  U-Net, 2 input channels (CT + MRI normalisation), region-based labels (sigmoid), random weights.
- ``Dataset902_Cascade/nnUNetTrainer__nnUNetPlans__{3d_lowres,3d_cascade_fullres}``: a plain U-Net
  cascade (the full-resolution stage inherits from 3d_fullres, mirroring only on axes 1 and 2), with the
  reference's ``postprocessing.json`` and ``inference_information.json``.
- ``inputs/``: one small anisotropic, oblique test case per dataset.
- ``expected/<dataset>/``: what the reference's ``nnUNetPredictor`` wrote for them (label map +
  ``.npz`` probabilities), and for the cascade the post-processed label map (reference's
  ``remove_all_but_largest_component_from_segmentation``).

The weights are random (He init, then perturbed norms so every block matters): the point is numerical
agreement with the reference, not segmentation quality. Checkpoints are written in the reference's format
(network_weights with its duplicate aliases, init_args, trainer_name, numpy float scalars in the log,
inference_allowed_mirroring_axes).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

OUT = Path(__file__).resolve().parent / "nnunet_tiny"
torch.manual_seed(0)
torch.set_num_threads(2)


def arch(cls, ndim, features, strides, per_stage, decoder):
    n = len(features)
    key = "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"
    return {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": features, "conv_op": f"torch.nn.modules.conv.Conv{ndim}d",
            "kernel_sizes": [[3] * ndim] * n, "strides": strides, key: per_stage,
            "n_conv_per_stage_decoder": decoder, "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def configuration(data_identifier, patch, spacing, architecture, schemes, use_mask, **extra):
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    return {"data_identifier": data_identifier, "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": patch, "median_image_size_in_voxels": [20, 32, 32], "spacing": spacing,
            "normalization_schemes": schemes, "use_mask_for_norm": use_mask, **resampling,
            "architecture": architecture, "batch_dice": False, **extra}


def plans_file(name, plans_name, configurations, n_channels):
    props = {str(c): {"max": 3000.0, "mean": 100.0 + 50 * c, "median": 110.0, "min": -1000.0,
                      "percentile_00_5": -200.0, "percentile_99_5": 400.0, "std": 80.0} for c in range(n_channels)}
    return {"dataset_name": name, "plans_name": plans_name, "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
            "original_median_shape_after_transp": [20, 32, 32], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": configurations,
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": props}


def perturb(net):
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))


def write_model(folder: Path, plans, dataset, conf_name, n_in, n_out, mirror_axes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    a = plans["configurations"][conf_name].get("architecture") or plans["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], n_in, n_out,
                                 allow_init=True, deep_supervision=True)
    perturb(net)
    ckpt = {"network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float32(0.5)], "ema_fg_dice": [np.float32(0.5)]},
            "_best_ema": np.float32(0.5), "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": conf_name, "fold": 0, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": mirror_axes}
    (folder / "fold_0").mkdir(exist_ok=True)
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")


def write_case(path_stem: Path, n_channels, shape, spacing, seed):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = np.exp(-((z / 0.6) ** 2 + ((y - 0.2) / 0.5) ** 2 + ((x + 0.1) / 0.4) ** 2))
    direction = (0.9950042, -0.0998334, 0.0, 0.0998334, 0.9950042, 0.0, 0.0, 0.0, 1.0)
    files = []
    for c in range(n_channels):
        arr = (300 * blob * (1 + 0.5 * c) + 40 * rng.standard_normal(shape) - 50 * c).astype(np.float32)
        arr[:, :2, :] = 0  # a zero border, so cropping to the non-zero region matters
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        img.SetOrigin((10.0, -5.0, 3.0))
        img.SetDirection(direction)
        f = path_stem.parent / f"{path_stem.name}_{c:04d}.nii.gz"
        sitk.WriteImage(img, str(f))
        files.append(str(f))
    return files


def predict(model_folder, files, out_stem, prev=None, mirroring=True):
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    p.predict_from_files([files], [str(out_stem)], save_probabilities=True, overwrite=True,
                         num_processes_preprocessing=1, num_processes_segmentation_export=1,
                         folder_with_segs_from_prev_stage=prev)


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "inputs").mkdir(parents=True)

    # ---- Dataset901: residual encoder, 2 channels (CT + MRI), regions ----
    name = "Dataset901_ResEncRegions"
    dataset = {"channel_names": {"0": "CT", "1": "MRI"},
               "labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2],
               "numTraining": 10, "file_ending": ".nii.gz", "name": name}
    a = arch("ResidualEncoderUNet", 3, [4, 8, 16], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [1, 2, 2], [1, 1])
    confs = {"3d_fullres": configuration("nnUNetPlans_3d_fullres", [8, 16, 16], [2.0, 1.0, 1.0], a,
                                         ["CTNormalization", "ZScoreNormalization"], [False, False])}
    plans = plans_file(name, "nnUNetResEncUNetMPlans", confs, 2)
    folder = OUT / name / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    write_model(folder, plans, dataset, "3d_fullres", 2, 2, (0, 1, 2))
    files = write_case(OUT / "inputs" / "resenc_000", 2, (9, 27, 30), (2.4, 0.9, 1.1), 1)
    for tta in (True, False):
        out = OUT / "expected" / name / ("tta" if tta else "notta")
        out.mkdir(parents=True)
        predict(folder, files, out / "resenc_000", mirroring=tta)

    # ---- Dataset902: plain cascade with post-processing ----
    name = "Dataset902_Cascade"
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
               "numTraining": 10, "file_ending": ".nii.gz", "name": name}
    a = arch("PlainConvUNet", 3, [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [2, 2, 2], [2, 2])
    confs = {"3d_fullres": configuration("nnUNetPlans_3d_fullres", [16, 16, 16], [1.5, 1.0, 1.0], a,
                                         ["ZScoreNormalization"], [True]),
             "3d_lowres": configuration("nnUNetPlans_3d_lowres", [16, 16, 16], [3.0, 2.0, 2.0], a,
                                        ["ZScoreNormalization"], [True], next_stage="3d_cascade_fullres"),
             "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    plans = plans_file(name, "nnUNetPlans", confs, 1)
    low = OUT / name / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    casc = OUT / name / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    write_model(low, plans, dataset, "3d_lowres", 1, 3, (0, 1, 2))
    write_model(casc, plans, dataset, "3d_cascade_fullres", 1 + 2, 3, (1, 2))
    pp = {"input_folder": {}, "postprocessed": {},
          "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"] * 2,
          "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}]}
    pp_dir = casc / "crossval_results_folds_0"
    pp_dir.mkdir()
    (pp_dir / "postprocessing.json").write_text(json.dumps(pp, indent=2))
    info = {"folds": [0], "dataset_name_or_id": name, "best_model_or_ensemble": {
        "postprocessing_file": f"/elsewhere/nnUNet_results/{name}/{casc.name}/crossval_results_folds_0/postprocessing.pkl",
        "some_plans_file": f"/elsewhere/nnUNet_results/{name}/{casc.name}/crossval_results_folds_0/plans.json",
        "selected_model_or_models": [{"configuration": "3d_cascade_fullres", "trainer": "nnUNetTrainer",
                                      "plans_identifier": "nnUNetPlans"}]}}
    (OUT / name / "inference_information.json").write_text(json.dumps(info, indent=2))
    files = write_case(OUT / "inputs" / "cascade_000", 1, (14, 33, 29), (2.0, 1.1, 0.8), 2)
    out = OUT / "expected" / name
    (out / "lowres").mkdir(parents=True)
    predict(low, files, out / "lowres" / "cascade_000")
    predict(casc, files, out / "cascade_000", prev=str(out / "lowres"))
    seg_img = sitk.ReadImage(str(out / "cascade_000.nii.gz"))
    seg = sitk.GetArrayFromImage(seg_img)
    for kw in pp["postprocessing_kwargs"]:
        lr = kw["labels_or_regions"]
        seg = remove_all_but_largest_component_from_segmentation(seg, lr if isinstance(lr, int) else list(lr))
    pp_img = sitk.GetImageFromArray(seg)
    pp_img.CopyInformation(seg_img)
    sitk.WriteImage(pp_img, str(out / "cascade_000_postprocessed.nii.gz"))
    for f in OUT.rglob("*.pkl"):
        f.unlink()  # the predictor's property pickles: not needed, and pickles are never read by AutoSeg
    print("written", OUT)


if __name__ == "__main__":
    main()
