"""Benchmark: how much of the full-annotation Dice a model keeps when only one axial slice in N is annotated
(the rest carrying the dataset's "ignore" label), on real data, for the same training budget.

    .venv/bin/python bench/partial_annotation.py [--budget-minutes 3] [--train-cases 8] [--test-cases 4]
                                                 [--every 4] [--control] [--root /tmp/autoseg_bench_partial]

LA2018_1p25mm (left atrium, MRI): the first --train-cases cases train, the next --test-cases are held out.
Variants, each planned, preprocessed and trained (3d_fullres, fold "all", CPU) with the same time budget,
then predicting the held-out cases (no test-time mirroring) scored with Dice against their full labels:

- ``full``:    every voxel annotated;
- ``partial``: slices k % every == 0 (axial, array axis 0) annotated, every other voxel "ignore";
- ``background`` (with --control): the same slices annotated, every other voxel labelled background (what a
  tool without an ignore label would train on).

Images are symlinked from ../shared/data (never copied into the repository). Results go to
bench/results/partial_annotation_<time>.json/.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("AUTOSEG_SHARED", REPO.parent / "shared"))


def make_variant(src: Path, root: Path, name: str, train, every: int) -> Path:
    from AutoSegLib.io.images import read_image, write_image

    out = root / name
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    raw = json.loads((src / "dataset.json").read_text())
    annotated = total = 0
    for case in train:
        link = out / "imagesTr" / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(src / "imagesTr" / f"{case}_0000.nii.gz")
        label, geo = read_image(src / "labelsTr" / f"{case}.nii.gz")
        label = label.astype(np.uint8)
        off = np.arange(label.shape[0]) % every != 0
        if name == "partial":
            label[off] = 2
        elif name == "background":
            label[off] = 0
        annotated += int((~off).sum()) * label[0].size if name != "full" else label.size
        total += label.size
        write_image(label, geo, out / "labelsTr" / f"{case}.nii.gz")
    labels = dict(raw["labels"])
    if name == "partial":
        labels["ignore"] = 2
    (out / "dataset.json").write_text(json.dumps({"name": f"LA_{name}", "channel_names": raw["channel_names"],
                                                  "labels": labels, "numTraining": len(train),
                                                  "file_ending": raw["file_ending"]}))
    return out, annotated / total


def run(argv, log):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "AutoSegLib", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    log.write(f"$ {' '.join(argv)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n")
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def dice(pred, ref) -> float:
    s = pred.sum() + ref.sum()
    return float(2 * np.logical_and(pred, ref).sum() / s) if s else 1.0


def main():
    from AutoSegLib.io.work_folder import fold_dir
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=3.0)
    ap.add_argument("--train-cases", type=int, default=8)
    ap.add_argument("--test-cases", type=int, default=4)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--control", action="store_true", help="also train the 'background' variant")
    ap.add_argument("--root", default="/tmp/autoseg_bench_partial")
    args = ap.parse_args()
    from AutoSegLib.io.images import read_image

    src = SHARED / "data" / "LA2018_1p25mm"
    cases = sorted(p.name[:-len(".nii.gz")] for p in (src / "labelsTr").glob("*.nii.gz"))
    train, test = cases[:args.train_cases], cases[args.train_cases:args.train_cases + args.test_cases]
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    test_dir = root / "test_images"
    test_dir.mkdir(exist_ok=True)
    for case in test:
        link = test_dir / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(src / "imagesTr" / f"{case}_0000.nii.gz")
    variants = ["full", "partial"] + (["background"] if args.control else [])
    results = {}
    with open(root / "log.txt", "a") as log:
        for name in variants:
            ds, fraction = make_variant(src, root, name, train, args.every)
            work = root / f"work_{name}"
            t_prep = run(["plan-and-preprocess", str(ds), "--output", str(work), "-c", "3d_fullres", "--workers", "1"], log)
            fold = fold_dir(work, "3d_fullres", "all")
            if fold.exists():
                import shutil
                shutil.rmtree(fold)
            t_train = run(["train", str(work), "3d_fullres", "all", "--device", "cpu", "--time-budget-minutes",
                           f"{args.budget_minutes:g}", "--iterations-per-epoch", "10", "--val-iterations", "2",
                           "--no-validation", "--seed", "1"], log)
            out = root / f"pred_{name}"
            t_pred = run(["predict", "-m", str(work), "-i", str(test_dir), "-o", str(out), "--no-tta",
                          "--device", "cpu"], log)
            scores = {}
            for case in test:
                ref, _ = read_image(src / "labelsTr" / f"{case}.nii.gz")
                pred, _ = read_image(out / f"{case}.nii.gz")
                scores[case] = dice(pred == 1, ref == 1)
            epochs = len((fold / "training_log.jsonl").read_text().splitlines())
            results[name] = {"annotated_fraction": fraction, "epochs": epochs, "dice_per_case": scores,
                             "mean_dice": float(np.mean(list(scores.values()))), "preprocess_s": t_prep,
                             "train_s": t_train, "predict_s": t_pred}
            print(name, json.dumps(results[name]), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    meta = {"budget_minutes": args.budget_minutes, "train_cases": train, "test_cases": test, "every": args.every,
            "cpu_count": os.cpu_count(), "results": results}
    (out_dir / f"partial_annotation_{stamp}.json").write_text(json.dumps(meta, indent=2))
    lines = [f"# Partial annotation on LA2018_1p25mm ({len(train)} training / {len(test)} held-out cases, "
             f"{args.budget_minutes:g} min CPU budget each, 1 axial slice in {args.every} annotated)", "",
             "| variant | voxels annotated | epochs | held-out Dice (mean) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['annotated_fraction']:.0f} % | {r['epochs']} | {r['mean_dice']:.3f} |")
    (out_dir / f"partial_annotation_{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
