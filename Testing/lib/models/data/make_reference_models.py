"""Make the small TRAINED reference models of the default suite WITH THE REFERENCE (run by hand, in .bench-venv).

    .bench-venv/bin/python Testing/lib/models/data/make_reference_models.py [--work /tmp/refmodels]

The reference's own pipeline, end to end, on a few synthetic cases, so that a fresh clone (no ../shared)
still checks AutoSeg against the reference implementation:

1. ``raw/``: 8 synthetic training cases (anisotropic, 1 channel MRI, labels organ and lesion), written by
   `make_raw` (numpy + SimpleITK only; `Testing/lib/planning` re-plans them with AutoSeg).
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres 2d --verify_dataset_integrity``; the reference's plans and
   fingerprint are kept as ``reference_plans/nnUNetPlans.json`` and ``dataset_fingerprint.json`` (what our
   planner must reproduce from ``raw/``).
3. The plans are then shrunk to a tiny network (3 stages, 4-8-16 features, patch 16x32x32 / 32x32) and both
   configurations trained for 2 epochs of 10 iterations by ``nnUNetv2_train`` with ``nnUNetTrainerTiny``
   (the standard trainer, shortened). Kept: ``Dataset900_Synth/nnUNetTrainerTiny__nnUNetPlans__<c>/``
   (dataset.json, plans.json, dataset_fingerprint.json, fold_0/checkpoint_final.pth: the reference's own
   checkpoint format, optimizer state included).
4. ``inputs/``: three test images (two anisotropic at 0.9 x 0.9 x 3 mm, one of them oblique; one isotropic).
   ``outputs/<c>_<tta|notta>/``: what ``nnUNetv2_predict_from_modelfolder -f 0 -chk checkpoint_final.pth
   -device cpu --save_probabilities [--disable_tta]`` wrote (label maps + ``.npz`` probabilities).
5. ``preprocessed/``: the reference's DefaultPreprocessor output for one training case (3d_fullres), float32.

Everything lands in ``Testing/lib/models/data/nnunet_ref`` (about 3 MB, most of it the probabilities).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OUT = Path(__file__).resolve().parent / "nnunet_ref"
BIN = Path(sys.executable).parent
DATASET = "Dataset900_Synth"
TRAINER = "nnUNetTrainerTiny"
CONFIGURATIONS = ("3d_fullres", "2d")

_TRAINER_CODE = '''import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerTiny(nnUNetTrainer):
    """The standard trainer, 2 epochs of 10 iterations (fixture models for AutoSeg's tests)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
'''


def _case(shape, spacing, seed, direction=None, origin=(0.0, 0.0, 0.0)):
    """An int16 MRI-like image (organ ellipsoid ~ 300, lesion ~ 600 inside it, noise sd 40, a zero border)
    and its label map (1 organ, 2 lesion), as SimpleITK images with ``spacing`` in array order (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    c = rng.uniform(-3, 3, 3)
    r = rng.uniform([12, 9, 9], [16, 12, 12])
    organ = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    lesion = ((z - c[0] - 2) / 6.5) ** 2 + ((y - c[1]) / 4.0) ** 2 + ((x - c[2] + 1) / 4.0) ** 2 <= 1
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[organ & lesion] = 2
    image = 100 + 200 * (label == 1) + 500 * (label == 2) + 40 * rng.standard_normal(shape)
    image[:, :3, :] = 0  # a zero border: cropping to the non-zero region matters
    label[:, :3, :] = 0
    images = []
    for arr in (np.round(image).astype(np.int16), label):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        img.SetOrigin(origin)
        if direction is not None:
            img.SetDirection(direction)
        images.append(img)
    return images


def make_raw(folder: Path, n_cases: int = 8) -> Path:
    """The raw training dataset (nnU-Net layout) in ``folder``; deterministic."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        shape = (14 + i % 3, 38 + 2 * (i % 2), 40 - 2 * (i % 3))
        spacing = (2.8 + 0.1 * (i % 4), 0.9, 0.9)
        image, label = _case(shape, spacing, seed=100 + i)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"synth_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"synth_{i:03d}.nii.gz"))
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": n_cases, "file_ending": ".nii.gz", "name": DATASET}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def make_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    oblique = (0.9950042, -0.0998334, 0.0, 0.0998334, 0.9950042, 0.0, 0.0, 0.0, 1.0)
    cases = [((14, 38, 42), (3.0, 0.9, 0.9), None, (5.0, -3.0, 1.0)),
             ((17, 44, 40), (3.0, 0.9, 0.9), oblique, (-4.0, 2.0, 7.0)),
             ((34, 36, 32), (1.0, 1.0, 1.0), None, (0.0, 0.0, 0.0))]
    for i, (shape, spacing, direction, origin) in enumerate(cases):
        image, _ = _case(shape, spacing, seed=900 + i, direction=direction, origin=origin)
        sitk.WriteImage(image, str(folder / f"test_{i:03d}_0000.nii.gz"))


def shrink(plans: dict) -> dict:
    """A tiny network for both configurations: 3 stages, features 4-8-16, small patches."""
    tiny = {"3d_fullres": ([16, 32, 32], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], 2),
            "2d": ([32, 32], [[1, 1], [2, 2], [2, 2]], [[3, 3]] * 3, 8)}
    for name, (patch, strides, kernels, batch) in tiny.items():
        conf = plans["configurations"][name]
        conf["patch_size"], conf["batch_size"] = patch, batch
        kw = conf["architecture"]["arch_kwargs"]
        kw.update(n_stages=3, features_per_stage=[4, 8, 16], strides=strides, kernel_sizes=kernels,
                  n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
    return plans


def run(cmd, env):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], env=env, check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-reference-models"))
    args = parser.parse_args()
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    raw_root, pre_root, res_root, ext = (work / n for n in ("raw", "preprocessed", "results", "ext_trainers"))
    for d in (raw_root, pre_root, res_root, ext):
        d.mkdir(parents=True)
    (ext / "nnunettrainertiny.py").write_text(_TRAINER_CODE)
    env = dict(os.environ, nnUNet_raw=str(raw_root), nnUNet_preprocessed=str(pre_root), nnUNet_results=str(res_root),
               nnUNet_extTrainer=str(ext), nnUNet_compile="f", OMP_NUM_THREADS="2")
    train_env = dict(env, nnUNet_n_proc_DA="0")  # augmentation in the training process (planning needs >= 1)
    raw = make_raw(raw_root / DATASET)
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "900", "-c", *CONFIGURATIONS, "-np", "1",
         "--verify_dataset_integrity"], env)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "reference_plans").mkdir(parents=True)
    plans_path = pre_root / DATASET / "nnUNetPlans.json"
    for f in (plans_path, pre_root / DATASET / "dataset_fingerprint.json"):
        shutil.copy(f, OUT / "reference_plans" / f.name)
    plans = shrink(json.loads(plans_path.read_text()))
    plans_path.write_text(json.dumps(plans, indent=4))

    # the reference's preprocessing of one case, with the tiny plans (spacing and normalisation as planned)
    code = ("import json, sys, numpy as np\n"
            "from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor\n"
            "from nnunetv2.utilities.plans_handling.plans_handler import PlansManager\n"
            "plans = PlansManager(json.load(open(sys.argv[1])))\n"
            "data, seg, props = DefaultPreprocessor(verbose=False).run_case([sys.argv[2]], sys.argv[3], plans, "
            "plans.get_configuration('3d_fullres'), json.load(open(sys.argv[4])))\n"
            "np.savez_compressed(sys.argv[5], data=data.astype(np.float32), seg=seg.astype(np.int8), "
            "bbox=np.array(props['bbox_used_for_cropping']))\n")
    (OUT / "preprocessed").mkdir()
    run([sys.executable, "-c", code, plans_path, raw / "imagesTr" / "synth_000_0000.nii.gz",
         raw / "labelsTr" / "synth_000.nii.gz", raw / "dataset.json", OUT / "preprocessed" / "synth_000.npz"], env)

    make_raw(OUT / "raw")
    make_inputs(OUT / "inputs")
    for conf in CONFIGURATIONS:
        run([BIN / "nnUNetv2_train", "900", conf, "0", "-tr", TRAINER, "-device", "cpu"], train_env)
        src = res_root / DATASET / f"{TRAINER}__nnUNetPlans__{conf}"
        dst = OUT / DATASET / src.name
        (dst / "fold_0").mkdir(parents=True)
        for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
            shutil.copy(src / name, dst / name)
        shutil.copy(src / "fold_0" / "checkpoint_final.pth", dst / "fold_0" / "checkpoint_final.pth")
        for tta in (True, False):
            out = OUT / "outputs" / f"{conf}_{'tta' if tta else 'notta'}"
            run([BIN / "nnUNetv2_predict_from_modelfolder", "-i", OUT / "inputs", "-o", out, "-m", dst, "-f", "0",
                 "-chk", "checkpoint_final.pth", "-device", "cpu", "--save_probabilities", "-npp", "1", "-nps", "1"]
                + ([] if tta else ["--disable_tta"]), env)
            for f in list(out.iterdir()):
                if f.suffix in (".pkl", ".json"):
                    f.unlink()  # property pickles and copies of plans/dataset.json: not needed
    print("written", OUT, sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file()) // 1024, "KiB")


if __name__ == "__main__":
    main()
