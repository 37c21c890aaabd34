"""Regenerate data/reference_postprocessing.{npz,json}: constructed cross-validation predictions and the
reference implementation's post-processing decision on them (determine_postprocessing).

Run with the benchmark environment (it has nnunetv2):
    .bench-venv/bin/python Testing/lib/postprocessing/make_reference_postprocessing.py

The cases are built so that the decisions are mixed: some references hold a second, separate lesion that
the predictions find (keeping only the largest merged component or lesion component would delete it), and
some predictions hold spurious organ blobs (removing them helps the organ).
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build_cases(n=12, seed=11):
    sys.path.insert(0, str(HERE.parents[2]))
    from AutoSegLib.io.synthetic import make_case

    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for i in range(n):
        _, ref = make_case((16, 32, 32), (2.0, 1.0, 1.0), rng)
        ref = ref.astype(np.uint8)
        pred = ref.copy()
        # imperfect boundaries: shift the prediction by one voxel along a random axis
        pred = np.roll(pred, int(rng.choice([-1, 1])), axis=int(rng.integers(0, 3)))
        if i % 3 == 0:  # a second, real lesion far from the organ, found by the prediction
            ref[1:3, 1:4, 1:4] = 2
            pred[1:3, 1:4, 1:3] = 2
        if i % 2 == 0:  # a spurious organ blob
            z, y = int(rng.integers(12, 15)), int(rng.integers(26, 29))
            pred[z:z + 2, y:y + 3, 27:30] = 1
        preds.append(pred)
        refs.append(ref)
    return preds, refs


def main():
    import SimpleITK as sitk
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

    preds, refs = build_cases()
    labels = {"background": 0, "organ": 1, "lesion": 2}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub, arrays in (("pred", preds), ("ref", refs)):
            (tmp / sub).mkdir()
            for i, a in enumerate(arrays):
                sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp / sub / f"c{i:02d}.nii.gz"))
        plans = {"dataset_name": "x", "plans_name": "p", "original_median_spacing_after_transp": [1, 1, 1],
                 "original_median_shape_after_transp": [1, 1, 1], "image_reader_writer": "SimpleITKIO",
                 "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {},
                 "experiment_planner_used": "x", "label_manager": "LabelManager",
                 "foreground_intensity_properties_per_channel": {}}
        dataset = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "MRI"}, "numTraining": 12}
        fns, kwargs = determine_postprocessing(str(tmp / "pred"), str(tmp / "ref"), plans, dataset, num_processes=1)
        summary = json.loads((tmp / "pred" / "postprocessing.json").read_text())
    np.savez_compressed(HERE / "data" / "reference_postprocessing.npz",
                        **{f"pred_{i}": p for i, p in enumerate(preds)}, **{f"ref_{i}": r for i, r in enumerate(refs)})
    out = {"labels": labels, "kwargs": [k["labels_or_regions"] for k in kwargs],
           "foreground_dice_before": summary["input_folder"]["foreground_mean"]["Dice"],
           "foreground_dice_after": summary["postprocessed"]["foreground_mean"]["Dice"],
           "mean_before": summary["input_folder"]["mean"], "mean_after": summary["postprocessed"]["mean"]}
    (HERE / "data" / "reference_postprocessing.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["kwargs"]), out["foreground_dice_before"], out["foreground_dice_after"])


if __name__ == "__main__":
    main()
