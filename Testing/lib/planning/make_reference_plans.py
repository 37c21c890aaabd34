"""Regenerate data/reference_plans_scenarios.json: the reference planner (nnunetv2's ExperimentPlanner)
run on made-up fingerprints that exercise rules the shared datasets do not (3d_lowres + cascade, CT,
the mask rule, transposition, other memory budgets, the 10th-percentile spacing). Run in .bench-venv:

    .bench-venv/bin/python Testing/lib/planning/make_reference_plans.py Testing/lib/planning/data/reference_plans_scenarios.json
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

SCENARIOS = {
    # large CT volumes: fullres patch covers < 25% of the median image -> 3d_lowres + cascade
    "ct_large": dict(channels={"0": "CT"}, labels={"background": 0, "liver": 1, "tumour": 2}, n=40,
                     spacing=(2.5, 0.78, 0.78), shape=(210, 512, 512), jitter=0.2, rel=0.93, gpu=8),
    # coarse LAST array axis -> transpose; cropping shrank the images -> mask for z-score
    "aniso_transposed_mask": dict(channels={"0": "T2"}, labels={"background": 0, "prostate": 1}, n=30,
                                  spacing=(0.6, 0.6, 4.0), shape=(320, 320, 24), jitter=0.25, rel=0.6, gpu=8,
                                  spacing_choices=[3.0, 3.6, 4.0, 4.0, 5.0]),
    # two channels, CT never masked, z-score masked; 2D-like thin volumes
    "ct_and_mri_mask": dict(channels={"0": "ct", "1": "FLAIR"}, labels={"background": 0, "a": 1, "b": 2, "c": 3},
                            n=12, spacing=(1.0, 1.0, 1.0), shape=(140, 170, 150), jitter=0.15, rel=0.55, gpu=8),
    # the same data with other memory budgets
    "mri_4gb": dict(channels={"0": "MRI"}, labels={"background": 0, "x": 1}, n=20, spacing=(1.5, 1.0, 1.0),
                    shape=(120, 200, 180), jitter=0.1, rel=0.95, gpu=4),
    "mri_24gb": dict(channels={"0": "MRI"}, labels={"background": 0, "x": 1}, n=20, spacing=(1.5, 1.0, 1.0),
                     shape=(120, 200, 180), jitter=0.1, rel=0.95, gpu=24),
    # few small cases: batch size clipped by the 5% cap (3D and 2D)
    "tiny_cap": dict(channels={"0": "MRI"}, labels={"background": 0, "x": 1}, n=3, spacing=(1.0, 1.0, 1.0),
                     shape=(40, 44, 48), jitter=0.05, rel=1.0, gpu=8),
    # anisotropic with the 10th percentile finer than the in-plane spacing -> in-plane spacing + 1e-5
    "aniso_tenth_below_inplane": dict(channels={"0": "MRI"}, labels={"background": 0, "x": 1}, n=10,
                                      spacing=(5.0, 1.2, 1.2), shape=(20, 256, 256), jitter=0.1, rel=0.9, gpu=8,
                                      spacing_choices=[0.9, 0.9, 5.0, 5.0, 5.0, 5.0, 6.0]),
}



def random_scenarios(n=24, seed=7):
    """Random datasets: 1-3 channels (some CT), 2-6 labels, spacing anisotropic on a random axis or not,
    shapes from tiny to CT-sized, memory budgets 4-40 GB, mask rule on or off."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        n_ch = int(rng.integers(1, 4))
        names = [str(rng.choice(["CT", "MRI", "T2", "FLAIR", "ADC"])) for _ in range(n_ch)]
        n_lab = int(rng.integers(2, 7))
        spacing = [float(rng.choice([0.5, 0.7, 0.8, 1.0, 1.5]))] * 3
        shape = [int(rng.integers(40, 400))] * 3
        kind = rng.integers(0, 3)
        s = dict(channels={str(c): names[c] for c in range(n_ch)},
                 labels={"background": 0, **{f"l{j}": j for j in range(1, n_lab)}},
                 n=int(rng.integers(2, 60)), jitter=float(rng.uniform(0, 0.3)),
                 rel=float(rng.choice([0.5, 0.7, 0.8, 1.0])), gpu=float(rng.choice([4, 8, 8, 11, 24, 40])))
        if kind > 0:  # anisotropic on a random axis
            axis = int(rng.integers(0, 3))
            spacing[axis] = float(rng.uniform(2.5, 8.0))
            shape[axis] = int(rng.integers(10, 80))
            s["spacing_choices"] = [float(v) for v in rng.uniform(0.5, 1.5, 5) * spacing[axis]]
        s["spacing"] = tuple(spacing)
        s["shape"] = tuple(int(v * rng.uniform(0.6, 1.4)) for v in shape)
        out[f"random_{i:02d}"] = s
    return out


def random_big_scenarios(n=8, seed=11):
    """Large images (the 3d_lowres search, including anisotropic spacing where only the fine axes grow
    first)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        spacing = [float(rng.choice([0.6, 0.8, 1.0]))] * 3
        shape = [int(rng.integers(250, 600))] * 3
        if i % 2:
            axis = int(rng.integers(0, 3))
            spacing[axis] = float(rng.uniform(1.8, 4.0))
            shape[axis] = int(rng.integers(80, 250))
        out[f"random_big_{i:02d}"] = dict(
            channels={"0": str(rng.choice(["CT", "MRI"]))}, labels={"background": 0, "a": 1, "b": 2},
            n=int(rng.integers(5, 80)), jitter=float(rng.uniform(0, 0.25)), rel=float(rng.choice([0.6, 1.0])),
            gpu=float(rng.choice([6, 8, 16])), spacing=tuple(spacing),
            shape=tuple(int(v * rng.uniform(0.8, 1.2)) for v in shape))
    return out


SCENARIOS.update(random_scenarios())
SCENARIOS.update(random_big_scenarios())


def make_fingerprint(s, rng):
    spacings, shapes = [], []
    for i in range(s["n"]):
        sp = list(s["spacing"])
        if "spacing_choices" in s:
            axis = int(np.argmax(s["spacing"]))
            sp[axis] = float(s["spacing_choices"][i % len(s["spacing_choices"])])
        sh = [max(4, int(round(v * rng.uniform(1 - s["jitter"], 1 + s["jitter"])))) for v in s["shape"]]
        spacings.append(sp)
        shapes.append(sh)
    stats = {str(c): {"max": 3000.0, "mean": 100.0 + c, "median": 90.0, "min": -1000.0,
                      "percentile_00_5": -900.0, "percentile_99_5": 2000.0, "std": 250.0}
             for c in range(len(s["channels"]))}
    return {"foreground_intensity_properties_per_channel": stats,
            "median_relative_size_after_cropping": s["rel"], "shapes_after_crop": shapes, "spacings": spacings}


def main(out_path):
    root = tempfile.mkdtemp()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = os.path.join(root, k)
        os.makedirs(os.environ[k])
    import SimpleITK as sitk
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    rng = np.random.default_rng(20261123)
    out = {}
    for i, (name, s) in enumerate(SCENARIOS.items()):
        ds_name = f"Dataset{950 + i}_{name}"
        raw = os.path.join(os.environ["nnUNet_raw"], ds_name)
        os.makedirs(os.path.join(raw, "imagesTr"))
        for c in range(len(s["channels"])):
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)),
                            os.path.join(raw, "imagesTr", f"case_{c:04d}.nii.gz"))
        dataset_json = {"channel_names": s["channels"], "labels": s["labels"], "numTraining": s["n"],
                        "file_ending": ".nii.gz"}
        json.dump(dataset_json, open(os.path.join(raw, "dataset.json"), "w"))
        fp = make_fingerprint(s, rng)
        pre = os.path.join(os.environ["nnUNet_preprocessed"], ds_name)
        os.makedirs(pre)
        json.dump(fp, open(os.path.join(pre, "dataset_fingerprint.json"), "w"))
        plans = ExperimentPlanner(ds_name, gpu_memory_target_in_gb=s["gpu"]).plan_experiment()
        plans = json.load(open(os.path.join(pre, "nnUNetPlans.json")))
        out[name] = {"gpu_memory_gb": s["gpu"], "dataset_json": dataset_json, "fingerprint": fp, "plans": plans}
    json.dump(out, open(out_path, "w"), indent=1)
    shutil.rmtree(root)


if __name__ == "__main__":
    main(sys.argv[1])
