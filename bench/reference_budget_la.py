"""Benchmark: the reference implementation under the same CPU training budget and the same held-out cases as
``budget_la.py``, so that its row joins that table (issue #11).

    .bench-venv/bin/python bench/reference_budget_la.py --from-run /tmp/autoseg_bench_budget/budget_float32_15min
                                                        [--budget-minutes 15] [--root /tmp/autoseg_bench_reference]

``--from-run`` is a finished ``budget_la.py`` run folder: its ``holdout/`` (the 16 cases AutoSeg held out,
images and labels) and ``work/splits_final.json`` (AutoSeg's 5-fold split of the other 64). The reference
then does, with ``nnunetv2`` from ``.bench-venv`` on the CPU, each step measured (wall time, peak RSS of
the process tree):

1. ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` on a raw dataset of exactly those 64 cases (links);
2. ``nnUNetTrainer`` fold 0 with AutoSeg's split (its splits_final.json is written first), driven epoch by
   epoch as ``run_training`` does and stopped after the epoch that crosses the budget; epochs of
   ``--iterations-per-epoch`` iterations (default 10, as ``train_budget.py``: with the stock 250, one
   float32 CPU epoch is longer than the budget, and nothing would be saved); then ``on_train_end``, which
   writes checkpoint_final.pth. Its per-epoch validation batches count in the budget, as AutoSeg's do; its
   full-case validation is skipped (AutoSeg's runs inside its budget);
3. ``nnUNetv2_predict`` of the 16 held-out cases from that checkpoint (test-time mirroring on, as
   ``budget_la.py``);
4. AutoSeg's evaluator (``autoseg evaluate``) on those label maps: Dice and HD95, the same code that scores
   AutoSeg's rows.

The reference trains on the CPU in float32 (it uses autocast on CUDA only), so its row compares with
budget_la.py's ``--precisions float32`` rows. Results: bench/results/reference_budget_la_<time>.json/.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTOSEG_PYTHON, BENCH_PYTHON, BENCH_VENV, REPO, SHARED, bench_env, run_measured  # noqa: E402
from train_budget import REFERENCE_LOOP  # noqa: E402

DATASET_ID = 502

TRAIN_SCRIPT = r"""
import json, os, sys, time, torch
budget_s, iters, val_iters, out = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
from nnunetv2.run.run_training import get_trainer_from_args
tr = get_trainer_from_args("%d", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch = iters, val_iters
%sjson.dump({"train_s": train_s, "epochs": tr.current_epoch, "iterations": tr.current_epoch * iters,
           "fold_dir": tr.output_folder},
          open(out, "w"))
os._exit(0)
""" % (DATASET_ID, REFERENCE_LOOP)


def make_raw(root: Path, source: Path, cases) -> dict:
    """nnUNet_raw/preprocessed/results under ``root``, the raw dataset holding exactly ``cases`` (links)."""
    name = f"Dataset{DATASET_ID:03d}_LA64"
    raw = root / "nnUNet_raw" / name
    if raw.exists():
        shutil.rmtree(raw)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for case in cases:
        (raw / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
        (raw / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    ds = json.loads((source / "dataset.json").read_text())
    ds["numTraining"] = len(cases)
    (raw / "dataset.json").write_text(json.dumps(ds, indent=1))
    for sub in ("nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    return {"nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            "nnUNet_results": str(root / "nnUNet_results"), "name": name}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-run", type=Path, required=True, help="a budget_la.py run folder (holdout/, work/)")
    ap.add_argument("--budget-minutes", type=float, default=15.0)
    ap.add_argument("--iterations-per-epoch", type=int, default=10)
    ap.add_argument("--val-iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_reference"))
    args = ap.parse_args()
    source = SHARED / "data" / "LA2018_1p25mm"
    splits = json.loads((args.from_run / "work" / "splits_final.json").read_text())
    held_images, held_labels = args.from_run / "holdout" / "images", args.from_run / "holdout" / "labels"
    cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
    held = sorted(p.name[:-len(".nii.gz")] for p in held_labels.glob("*.nii.gz"))
    if set(cases) & set(held) or not held:
        raise SystemExit(f"{args.from_run}: the split and the held-out cases overlap or no held-out case found")
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    env = make_raw(root, source, cases)
    name = env.pop("name")
    benv = bench_env(env, threads=args.threads)
    steps = {}
    t_all = time.time()
    print(f"reference: plan and preprocess {len(cases)} cases ...", flush=True)
    steps["plan_and_preprocess"] = run_measured(
        [str(BENCH_VENV / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
         "-np", str(args.threads), "-npfp", str(args.threads), "--no_pbar"],
        env=benv, log_path=root / "plan_and_preprocess.log")
    pre = Path(env["nnUNet_preprocessed"]) / name
    (pre / "splits_final.json").write_text(json.dumps(splits, indent=1))
    print(f"reference: training fold 0 for {args.budget_minutes:g} min ...", flush=True)
    out = root / "train.json"
    steps["train"] = run_measured([str(BENCH_PYTHON), "-c", TRAIN_SCRIPT, str(args.budget_minutes * 60),
                                   str(args.iterations_per_epoch), str(args.val_iterations), str(out)],
                                  env=benv, log_path=root / "train.log", interval=2.0)
    trained = json.loads(out.read_text())
    print(f"  {trained['iterations']} iterations in {trained['train_s']:.0f} s; predicting {len(held)} cases ...",
          flush=True)
    pred = root / "predictions"
    shutil.rmtree(pred, ignore_errors=True)
    cmd = [str(BENCH_VENV / "bin" / "nnUNetv2_predict"), "-i", str(held_images), "-o", str(pred), "-d",
           str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu",
           "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    if args.no_tta:
        cmd.append("--disable_tta")
    steps["predict"] = run_measured(cmd, env=benv, log_path=root / "predict.log", interval=1.0)
    evaluation = root / "evaluation"
    steps["evaluate"] = run_measured([str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "evaluate", str(pred), str(held_labels),
                                      "-o", str(evaluation), "--labels", str(source / "dataset.json")],
                                     env=bench_env(threads=args.threads), cwd=REPO, log_path=root / "evaluate.log")
    m = json.loads((evaluation / "summary.json").read_text())["mean"]["left_atrium"]
    row = {"budget_minutes": args.budget_minutes, "variant": "reference nnUNetTrainer (3d_fullres)",
           "precision": "float32", "iterations": trained["iterations"], "epochs": trained["epochs"],
           "train_s": round(trained["train_s"], 1), "dice": m["Dice"], "hd95_mm": m["HD95_mm"],
           "wall_s": round(sum(s["wall_s"] for s in steps.values()), 1),
           "wall_s_without_evaluation": round(sum(s["wall_s"] for k, s in steps.items() if k != "evaluate"), 1),
           "peak_rss_mib": round(max(s["peak_rss_mib"] for k, s in steps.items() if k != "evaluate"), 1),
           "steps": steps, "held_out": held, "tta": not args.no_tta, "from_run": str(args.from_run),
           "elapsed_s": round(time.time() - t_all, 1)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = REPO / "bench" / "results" / f"reference_budget_la_{stamp}"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
    md = (f"| {row['budget_minutes']:g} min | reference 3d_fullres (nnUNetTrainer) | float32 | {row['iterations']} | "
          f"{row['train_s']:.0f} | {row['wall_s_without_evaluation']:.0f} | {row['peak_rss_mib']:.0f} | "
          f"{row['dice']:.4f} | {row['hd95_mm']:.2f} |")
    res.with_suffix(".md").write_text("| budget | plans | precision | iterations | train s | wall s | peak MiB | "
                                      "held-out Dice | HD95 mm |\n|---|---|---|---|---|---|---|---|---|\n" + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
