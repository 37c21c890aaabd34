"""Benchmark: fingerprint + plan + preprocess, AutoSeg against the reference (nnU-Net v2), side by side.

Run with the bench environment (it has psutil and blosc2 to read the reference's arrays):

    .bench-venv/bin/python bench/plan_preprocess.py [--dataset ../shared/data/LA2018_1p25mm] [--workers 2]
                                                    [--repeats 3] [--json results.json]

Each repeat runs both sides from scratch, in alternating order (the machine is shared: alternating
spreads the load evenly), with the same number of worker processes and one thread per process:

- AutoSeg:   ``.venv/bin/python -m AutoSegLib plan-and-preprocess DATASET --output W --workers N``
  (integrity checks + fingerprint + plans + preprocessing of every planned configuration)
- reference: ``nnUNetv2_plan_and_preprocess -d ID -np N -npfp N --verify_dataset_integrity`` in a
  sandbox (nnUNet_raw/preprocessed/results in a temporary folder, the dataset linked in).

Wall time, CPU time (user + sys of the whole process tree; less sensitive to other load on the machine)
and peak memory (summed RSS of the process tree, sampled every 50 ms) are taken per run; the table shows
medians. Then the 3d_fullres arrays of the last runs are compared case by case: images
(max abs difference after normalisation) and labels (fraction of identical voxels), plus crop boxes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (AUTOSEG_PYTHON, BENCH_VENV, REPO, SHARED, bench_env, nnunet_sandbox,  # noqa: E402
                    run_measured)


def run_autoseg(dataset: Path, out: Path, workers: int, log: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "plan-and-preprocess", str(dataset), "--output", str(out),
           "--workers", str(workers), "--progress-json"]
    return run_measured(cmd, env=bench_env(), cwd=REPO, log_path=log)


def run_reference(dataset: Path, root: Path, dataset_id: int, workers: int, log: Path) -> dict:
    if root.exists():
        shutil.rmtree(root)
    env = nnunet_sandbox(root, dataset, dataset_id)
    cmd = [str(BENCH_VENV / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-np", str(workers),
           "-npfp", str(workers), "--verify_dataset_integrity", "--no_pbar"]
    return run_measured(cmd, env=bench_env(env), log_path=log)


def compare_fullres(ours_work: Path, ref_root: Path) -> dict:
    """Compare the 3d_fullres preprocessed cases of both sides."""
    import pickle

    import blosc2
    import numpy as np

    plans = json.loads((ours_work / "plans.json").read_text())
    ident = plans["configurations"]["3d_fullres"]["data_identifier"] or "3d_fullres"
    ours = ours_work / "preprocessed" / ident
    ref_ds = next((ref_root / "nnUNet_preprocessed").iterdir())
    ref_plans = json.loads((ref_ds / "nnUNetPlans.json").read_text())
    ref = ref_ds / ref_plans["configurations"]["3d_fullres"]["data_identifier"]
    cases = sorted(p.name[:-5] for p in ref.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    worst, differing, total, shape_mismatch, bbox_mismatch = 0.0, 0, 0, [], []
    for case in cases:
        a = blosc2.open(str(ref / f"{case}.b2nd"))[:]
        s = blosc2.open(str(ref / f"{case}_seg.b2nd"))[:]
        b = np.load(ours / f"{case}.npy")
        t = np.load(ours / f"{case}_seg.npy")
        if a.shape != b.shape or s.shape != t.shape:
            shape_mismatch.append((case, a.shape, b.shape))
            continue
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
        differing += int((s != t).sum())
        total += s.size
        props = pickle.load(open(ref / f"{case}.pkl", "rb"))
        mine = json.loads((ours / f"{case}.json").read_text())
        if [list(map(int, x)) for x in props["bbox_used_for_cropping"]] != mine["bbox_used_for_cropping"]:
            bbox_mismatch.append(case)
    ref_conf = ref_plans["configurations"]["3d_fullres"]
    our_conf = plans["configurations"]["3d_fullres"]
    return {"cases": len(cases), "image_max_abs_diff": worst,
            "label_identical_fraction": 1.0 - differing / total if total else float("nan"),
            "label_voxels_differing": differing, "shape_mismatches": shape_mismatch,
            "bbox_mismatches": bbox_mismatch,
            "spacing": (our_conf["spacing"], ref_conf["spacing"]),
            "patch_size": (our_conf["patch_size"], ref_conf["patch_size"]),
            "configurations": (sorted(plans["configurations"]), sorted(ref_plans["configurations"]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "LA2018_1p25mm")
    parser.add_argument("--dataset-id", type=int, default=901, help="reference dataset id (DatasetXXX_)")
    parser.add_argument("--workers", type=int, default=2, help="processes on both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="autoseg_bench_pp_"))
    tmp.mkdir(parents=True, exist_ok=True)
    ours_work, ref_root = tmp / "autoseg_work", tmp / "reference"
    runs = {"autoseg": [], "reference": []}
    for r in range(args.repeats):
        order = ("reference", "autoseg") if r % 2 == 0 else ("autoseg", "reference")
        for side in order:
            log = tmp / f"{side}_{r}.log"
            if side == "autoseg":
                m = run_autoseg(args.dataset, ours_work, args.workers, log)
            else:
                m = run_reference(args.dataset, ref_root, args.dataset_id, args.workers, log)
            runs[side].append(m)
            print(f"repeat {r + 1}/{args.repeats} {side:9s}: {m['wall_s']:7.2f} s wall  {m['cpu_s']:7.2f} s CPU  "
                  f"{m['peak_rss_mib']:8.0f} MiB", flush=True)

    cmp = compare_fullres(ours_work, ref_root)
    wall = {k: statistics.median(m["wall_s"] for m in v) for k, v in runs.items()}
    peak = {k: statistics.median(m["peak_rss_mib"] for m in v) for k, v in runs.items()}
    cpu = {k: statistics.median(m["cpu_s"] for m in v) for k, v in runs.items()}
    pairs = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["autoseg"], runs["reference"])]

    print(f"\nFingerprint + plan + preprocess of {args.dataset.name}, {args.workers} processes per side, "
          f"{args.repeats} interleaved repeats (medians)\n")
    print("| measure | AutoSeg | reference | ratio (AutoSeg / reference) | target |")
    print("|---|---|---|---|---|")
    print(f"| wall time | {wall['autoseg']:.2f} s | {wall['reference']:.2f} s | {wall['autoseg'] / wall['reference']:.3f} "
          f"(per repeat: {', '.join(f'{p:.3f}' for p in pairs)}) | <= 0.5 |")
    print(f"| CPU time (user + sys, all processes) | {cpu['autoseg']:.2f} s | {cpu['reference']:.2f} s | "
          f"{cpu['autoseg'] / cpu['reference']:.3f} | |")
    print(f"| peak memory (process tree RSS) | {peak['autoseg']:.0f} MiB | {peak['reference']:.0f} MiB | "
          f"{peak['autoseg'] / peak['reference']:.3f} | <= 1 |")
    print(f"| 3d_fullres images, max abs diff | {cmp['image_max_abs_diff']:.3g} | | | < 1e-3 |")
    print(f"| 3d_fullres labels, identical voxels | {100 * cmp['label_identical_fraction']:.5f} % "
          f"({cmp['label_voxels_differing']} differ) | | | > 99.9 % |")
    print(f"\ncases compared: {cmp['cases']}; shape mismatches: {cmp['shape_mismatches'] or 'none'}; crop box "
          f"mismatches: {cmp['bbox_mismatches'] or 'none'}")
    print(f"configurations (AutoSeg / reference): {cmp['configurations'][0]} / {cmp['configurations'][1]}")
    print(f"3d_fullres spacing: {cmp['spacing'][0]} / {cmp['spacing'][1]}; patch: {cmp['patch_size'][0]} / "
          f"{cmp['patch_size'][1]}")
    ok = (wall["autoseg"] <= 0.5 * wall["reference"] and peak["autoseg"] <= peak["reference"]
          and cmp["image_max_abs_diff"] < 1e-3 and cmp["label_identical_fraction"] > 0.999
          and not cmp["shape_mismatches"])
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}   (scratch: {tmp})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "wall_median": wall, "peak_median": peak, "compare": cmp,
                                         "workers": args.workers, "dataset": str(args.dataset), "pass": ok},
                                        indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
