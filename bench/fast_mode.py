"""Fast mode and ROI on held-out LA cases: Dice against the ground truth and wall-time ratios, side by side.

    PYTHONPATH=$PWD .venv/bin/python bench/fast_mode.py --model /tmp/la_b15 [--cases 16] [--json out.json]

The model is an AutoSeg work folder trained on fold 0 (one fold). Its held-out cases are fold 0's
validation cases (``splits_final.json``: never trained on). The model folder is copied first (the compiled
runtime exports its network beside the checkpoint; the original is not written to).

Variants, each case predicted by every variant in turn (interleaved, so that load drifts hit all alike),
OpenVINO, 2 threads, time of ``predict_arrays`` (preprocessing, sliding window, export, no file I/O):

- the model's own patch: mirroring on / off (the LA images are small: at the model's 1.875 mm one to four
  windows cover a case, so the step hardly matters there);
- the same network with a smaller patch (16x32x32: 12-27 windows per case; the network is fully
  convolutional), to measure the step: mirroring on at step 0.5 and off at steps 0.5, 0.7, 0.9.

Folds: with one fold, fast mode's "first fold only" cannot be measured here (see bench/README.md).

ROI: a 64 mm cube centred on the left atrium's centroid (from the ground truth), default settings, against
the whole-volume prediction: time, Dice to the ground truth inside the box, agreement with the whole-volume
labels inside the box.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path("/work/shared/data/LA2018_1p25mm")
SMALL_PATCH = (16, 32, 32)


def copy_model(src: Path, dest: Path, patch=None) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in ("plans.json", "dataset.json", "fingerprint.json", "splits_final.json"):
        if (src / f).exists():
            shutil.copy2(src / f, dest / f)
    for ck in src.glob("trained/*/fold_*/checkpoint_final.pt"):
        d = dest / ck.relative_to(src).parent
        d.mkdir(parents=True)
        shutil.copy2(ck, d / ck.name)
    if patch is not None:
        plans = json.loads((dest / "plans.json").read_text())
        for name, conf in plans["configurations"].items():
            if (dest / "trained" / name).is_dir() and len(conf.get("patch_size", ())) == len(patch):
                conf["patch_size"] = list(patch)
        (dest / "plans.json").write_text(json.dumps(plans, indent=1))
    return dest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/la_b15")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--work", default="/tmp/infer-bench-fast")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("AUTOSEG_THREADS", "2")
    import SimpleITK as sitk

    from AutoSegLib.inference.predict import predict_arrays
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.folder import load_model

    work = Path(args.work)
    native = load_model(copy_model(Path(args.model), work / "native"))
    small = load_model(copy_model(Path(args.model), work / "small_patch", SMALL_PATCH))
    for m in (native, small):
        m.cache_weights = True
    splits = json.loads((Path(args.model) / "splits_final.json").read_text())
    cases = sorted(splits[0]["val"])[: args.cases]
    variants = [("native", "on", 0.5), ("native", "off", 0.5),
                ("small", "on", 0.5), ("small", "off", 0.5), ("small", "off", 0.7), ("small", "off", 0.9)]
    models = {"native": native, "small": small}
    rows = {v: {"dice": [], "seconds": []} for v in variants}
    warm, wgeo = read_case([DATA / "imagesTr" / f"{cases[0]}_0000.nii.gz"])
    for m in (native, small):  # export and compile each network once before timing
        predict_arrays(m, warm, wgeo, tta=False, runtime="openvino")
    roi_rows = []
    for i, case in enumerate(cases):
        images, geo = read_case([DATA / "imagesTr" / f"{case}_0000.nii.gz"])
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz"))) > 0
        whole = None
        for v in variants:
            name, tta, step = v
            t0 = time.perf_counter()
            labels, _ = predict_arrays(models[name], images, geo, tta=tta == "on", step_size=step, runtime="openvino")
            rows[v]["seconds"].append(time.perf_counter() - t0)
            rows[v]["dice"].append(dice(labels > 0, gt))
            if v == variants[0]:
                whole = labels
        # ROI: a 64 mm cube around the atrium, default settings (mirroring on), vs the whole volume above
        img = sitk.ReadImage(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"))
        zyx = np.argwhere(gt).mean(0)
        centre = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))
        roi = (tuple(centre - 32), tuple(centre + 32))
        t0 = time.perf_counter()
        labels, _ = predict_arrays(native, images, geo, tta=True, runtime="openvino", roi=roi)
        t_roi = time.perf_counter() - t0
        from AutoSegLib.inference.roi import roi_mask, roi_to_box
        box = roi_to_box(roi, images.shape[1:], geo)
        inside = np.zeros(images.shape[1:], bool)
        inside[tuple(slice(a, b) for a, b in box)] = roi_mask(roi, images.shape[1:], geo, box)
        roi_rows.append({"case": case, "roi_s": t_roi, "whole_s": rows[variants[0]]["seconds"][-1],
                         "box_voxels": int(inside.sum()), "image_voxels": int(inside.size),
                         "dice_gt_roi": dice((labels > 0) & inside, gt & inside),
                         "dice_gt_whole": dice((whole > 0) & inside, gt & inside),
                         "dice_roi_vs_whole": dice((labels > 0) & inside, (whole > 0) & inside),
                         "gt_outside_box": int((gt & ~inside).sum())})
        print(f"{i + 1}/{len(cases)} {case}: " + ", ".join(
            f"{n}/{t}/{s}: {rows[(n, t, s)]['dice'][-1]:.3f} {rows[(n, t, s)]['seconds'][-1]:.1f}s"
            for n, t, s in variants) + f"; roi {t_roi:.1f}s", file=sys.stderr, flush=True)
    ref = {"native": sum(rows[variants[0]]["seconds"]), "small": sum(rows[variants[2]]["seconds"])}
    print("| patch | mirroring | step | mean Dice | min Dice | s per case | time vs mirroring on, step 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        d, s = rows[v]["dice"], rows[v]["seconds"]
        patch = "model's (32x48x64)" if v[0] == "native" else "x".join(map(str, SMALL_PATCH))
        print(f"| {patch} | {v[1]} | {v[2]} | {np.mean(d):.4f} | {np.min(d):.4f} | {np.mean(s):.2f} | "
              f"{sum(s) / ref[v[0]]:.2f} |")
    r = roi_rows
    print(f"\nROI (64 mm cube around the atrium, {len(r)} cases): time ROI / whole "
          f"{sum(x['roi_s'] for x in r) / sum(x['whole_s'] for x in r):.2f}; box = "
          f"{np.mean([x['box_voxels'] / x['image_voxels'] for x in r]):.2f} of the image; Dice to GT inside the box "
          f"ROI {np.mean([x['dice_gt_roi'] for x in r]):.4f} vs whole {np.mean([x['dice_gt_whole'] for x in r]):.4f}; "
          f"ROI vs whole labels inside the box: mean {np.mean([x['dice_roi_vs_whole'] for x in r]):.4f}, min "
          f"{np.min([x['dice_roi_vs_whole'] for x in r]):.4f}; atrium voxels outside the box: "
          f"{sum(x['gt_outside_box'] for x in r)}")
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases, "variants": {"/".join(map(str, v)): rows[v]
                                                                            for v in variants}, "roi": roi_rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
