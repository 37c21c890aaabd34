"""Speed and agreement of AutoSeg's inference variants on the reference fixture models.

For each variant (float32 as the reference computes it; float32 with channels-last convolutions;
bfloat16 autocast; larger window batches) and each fixture input, predicts in-process with the
reference's nnU-Net model folder (imported on the fly) and compares with the reference's own outputs in
../shared/reference/nnunet_models/outputs: max |p - p_ref|, label voxels that differ, Dice per class,
and the wall and CPU time of `predict_arrays` (after one warm-up case; on a shared machine the CPU
time is the steadier figure).

    .venv/bin/python bench/predict_precision.py [--configurations 3d_fullres 2d] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "reference" / "nnunet_models"

VARIANTS = {
    "float32": dict(precision="float32"),
    "float32+channels_last": dict(precision="float32", channels_last=True),
    "float32 batch 4": dict(precision="float32", batch_size=4),
    "bfloat16": dict(precision="bfloat16"),
}


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def main() -> int:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from AutoSegLib.inference.predict import predict_arrays
    from AutoSegLib.io.images import read_case
    from AutoSegLib.models.folder import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configurations", nargs="+", default=["3d_fullres"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--tta", choices=["both", "on", "off"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (SHARED / "inputs").glob("*_0000.nii.gz"))
    rows = []
    for conf in args.configurations:
        model = load_model(SHARED / "Dataset900_Synth" / f"nnUNetTrainerCPUBench__nnUNetPlans__{conf}")
        model.cache_weights = True
        for tta in {"both": (False, True), "on": (True,), "off": (False,)}[args.tta]:
            ref_dir = SHARED / "outputs" / f"{conf}_{'tta' if tta else 'notta'}"
            if not ref_dir.is_dir():
                continue
            for variant in args.variants:
                kw = VARIANTS[variant]
                warm = read_case([SHARED / "inputs" / f"{cases[0]}_0000.nii.gz"])
                predict_arrays(model, *warm, conf, tta=tta, device="cpu", **kw)  # warm-up
                for case in cases:
                    img, geo = read_case([SHARED / "inputs" / f"{case}_0000.nii.gz"])
                    t0, c0 = time.perf_counter(), time.process_time()
                    labels, probs = predict_arrays(model, img, geo, conf, tta=tta, device="cpu",
                                                   return_probabilities=True, **kw)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    ref_p = np.load(ref_dir / f"{case}.npz")["probabilities"]
                    ref_l = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"{case}.nii.gz")))
                    row = {"configuration": conf, "tta": tta, "variant": variant, "case": case,
                           "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "max_abs_prob_diff": float(np.abs(probs - ref_p).max()),
                           "label_voxels_differing": int((labels != ref_l).sum()),
                           "dice": {int(c): round(dice(labels == c, ref_l == c), 5) for c in (1, 2)}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| configuration | TTA | variant | case | wall s | CPU s | max abs prob diff | labels differing | Dice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['configuration']} | {'on' if r['tta'] else 'off'} | {r['variant']} | {r['case']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['max_abs_prob_diff']:.2e} | {r['label_voxels_differing']} | {r['dice']} |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
