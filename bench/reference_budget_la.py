"""Benchmark: the reference implementation under the same CPU training budget and the same held-out cases as
``budget_la.py``, so that its row joins that table (issue #11).

    .bench-venv/bin/python bench/reference_budget_la.py --from-run /tmp/autoseg_bench_budget/budget_float32_15min
                                                        [--budget-minutes 15] [--snapshot-minutes M ...]
                                                        [--root /tmp/autoseg_bench_reference] [--resume]

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
   with ``--snapshot-minutes``, the weights after the epoch that crosses each of those times are saved too:
   the reference's learning rate follows its fixed epoch count whatever the budget, so they are the weights a
   run with that budget ends with, and one 60-minute run gives the 15-, 30- and 60-minute rows;
3. ``nnUNetv2_predict`` of the 16 held-out cases from each checkpoint (test-time mirroring on, as
   ``budget_la.py``);
4. AutoSeg's evaluator (``autoseg evaluate``) on those label maps: Dice and HD95, the same code that scores
   AutoSeg's rows.

The reference trains on the CPU in float32 (it uses autocast on CUDA only), so its row compares with
budget_la.py's ``--precisions float32`` rows. ``--resume`` skips steps 1-2 and predicts from the training already
in ``--root`` (its train.json, and steps.json with their measurements), for a run whose prediction was
interrupted. Results: bench/results/reference_budget_la_<time>.json/.md.
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
DATASET_NAME = f"Dataset{DATASET_ID:03d}_LA64"

TRAIN_SCRIPT = r"""
import json, os, sys, time, torch
budget_s, iters, val_iters, out = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
snapshots_s = sorted(float(s) for s in sys.argv[5].split(",") if s)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
from nnunetv2.run.run_training import get_trainer_from_args
tr = get_trainer_from_args("%d", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch = iters, val_iters
snapshots = []
_epoch_end = tr.on_epoch_end
def on_epoch_end():
    # after the epoch that crosses a snapshot time: the weights a run with that budget would have ended with
    # (the reference's schedule runs on epochs of its fixed num_epochs, whatever the budget)
    _epoch_end()
    elapsed = time.perf_counter() - t_start
    while len(snapshots) < len(snapshots_s) and elapsed >= snapshots_s[len(snapshots)]:
        name = "checkpoint_%%gs.pth" %% snapshots_s[len(snapshots)]
        tr.save_checkpoint(os.path.join(tr.output_folder, name))
        snapshots.append({"budget_s": snapshots_s[len(snapshots)], "checkpoint": name, "train_s": elapsed,
                          "epochs": tr.current_epoch, "iterations": tr.current_epoch * iters})
tr.on_epoch_end = on_epoch_end
%sjson.dump({"train_s": train_s, "epochs": tr.current_epoch, "iterations": tr.current_epoch * iters,
           "fold_dir": tr.output_folder, "snapshots": snapshots},
          open(out, "w"))
os._exit(0)
""" % (DATASET_ID, REFERENCE_LOOP)


def make_raw(root: Path, source: Path, cases) -> dict:
    """nnUNet_raw/preprocessed/results under ``root``, the raw dataset holding exactly ``cases`` (links)."""
    raw = root / "nnUNet_raw" / DATASET_NAME
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
    return raw_env(root)


def raw_env(root: Path) -> dict:
    """The nnU-Net environment variables of the folders under ``root``."""
    return {sub: str(root / sub) for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


def train_reference(args, root: Path, env: dict, splits, out: Path) -> dict:
    """Plan, preprocess and train fold 0 with the reference; the measured steps (wall time, peak memory)."""
    benv = bench_env(env, threads=args.threads)
    steps = {}
    print(f"reference: plan and preprocess {len(splits[0]['train']) + len(splits[0]['val'])} cases ...", flush=True)
    steps["plan_and_preprocess"] = run_measured(
        [str(BENCH_VENV / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
         "-np", str(args.threads), "-npfp", str(args.threads), "--no_pbar"],
        env=benv, log_path=root / "plan_and_preprocess.log")
    pre = Path(env["nnUNet_preprocessed"]) / DATASET_NAME
    (pre / "splits_final.json").write_text(json.dumps(splits, indent=1))
    snapshots = sorted(m for m in args.snapshot_minutes if 0 < m < args.budget_minutes)
    print(f"reference: training fold 0 for {args.budget_minutes:g} min"
          + (f" (weights kept after {', '.join(f'{m:g}' for m in snapshots)} min)" if snapshots else "") + " ...",
          flush=True)
    steps["train"] = run_measured([str(BENCH_PYTHON), "-c", TRAIN_SCRIPT, str(args.budget_minutes * 60),
                                   str(args.iterations_per_epoch), str(args.val_iterations), str(out),
                                   ",".join(str(m * 60) for m in snapshots)],
                                  env=benv, log_path=root / "train.log", interval=2.0)
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-run", type=Path, required=True, help="a budget_la.py run folder (holdout/, work/)")
    ap.add_argument("--budget-minutes", type=float, default=15.0)
    ap.add_argument("--snapshot-minutes", type=float, nargs="*", default=[], metavar="M",
                    help="also predict from the weights after the epoch that crosses each of these times: the "
                         "reference's schedule does not depend on the budget, so they are what a run of M minutes "
                         "ends with (one 60-minute run gives the 15-, 30- and 60-minute rows)")
    ap.add_argument("--iterations-per-epoch", type=int, default=10)
    ap.add_argument("--val-iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_reference"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the training in --root (its train.json and steps.json) and only predict and "
                         "evaluate: for a run whose prediction was interrupted")
    args = ap.parse_args()
    source = SHARED / "data" / "LA2018_1p25mm"
    splits = json.loads((args.from_run / "work" / "splits_final.json").read_text())
    held_images, held_labels = args.from_run / "holdout" / "images", args.from_run / "holdout" / "labels"
    cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
    held = sorted(p.name[:-len(".nii.gz")] for p in held_labels.glob("*.nii.gz"))
    if set(cases) & set(held) or not held:
        raise SystemExit(f"{args.from_run}: the split and the held-out cases overlap or no held-out case found")
    t_all = time.time()
    root = args.root
    out, steps_file = root / "train.json", root / "steps.json"
    if args.resume:
        if not (out.is_file() and steps_file.is_file()):
            raise SystemExit(f"--resume: {root} has no finished training (train.json and steps.json)")
        env = raw_env(root)
        steps = json.loads(steps_file.read_text())
        print(f"reference: resuming after the training in {root}", flush=True)
    else:
        root.mkdir(parents=True, exist_ok=True)
        env = make_raw(root, source, cases)
        steps = train_reference(args, root, env, splits, out)
        steps_file.write_text(json.dumps(steps, indent=1) + "\n")
    benv = bench_env(env, threads=args.threads)
    trained = json.loads(out.read_text())
    ends = [dict(s, budget_minutes=s["budget_s"] / 60) for s in trained["snapshots"]]
    ends.append({"budget_minutes": args.budget_minutes, "checkpoint": "checkpoint_final.pth",
                 "train_s": trained["train_s"], "epochs": trained["epochs"], "iterations": trained["iterations"]})
    rows = []
    for end in ends:
        print(f"  {end['budget_minutes']:g} min: {end['iterations']} iterations in {end['train_s']:.0f} s; "
              f"predicting {len(held)} cases from {end['checkpoint']} ...", flush=True)
        tag = f"{end['budget_minutes']:g}min"
        pred = root / f"predictions_{tag}"
        shutil.rmtree(pred, ignore_errors=True)
        cmd = [str(BENCH_VENV / "bin" / "nnUNetv2_predict"), "-i", str(held_images), "-o", str(pred), "-d",
               str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-chk", end["checkpoint"], "-device", "cpu",
               "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if args.no_tta:
            cmd.append("--disable_tta")
        predict = run_measured(cmd, env=benv, log_path=root / f"predict_{tag}.log", interval=1.0)
        evaluation = root / f"evaluation_{tag}"
        evaluate = run_measured([str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "evaluate", str(pred), str(held_labels),
                                 "-o", str(evaluation), "--labels", str(source / "dataset.json")],
                                env=bench_env(threads=args.threads), cwd=REPO, log_path=root / f"evaluate_{tag}.log")
        m = json.loads((evaluation / "summary.json").read_text())["mean"]["left_atrium"]
        # a snapshot's wall time: preprocessing, training up to it, its prediction (not the rest of the run)
        wall = steps["plan_and_preprocess"]["wall_s"] + end["train_s"] + predict["wall_s"]
        rows.append({"budget_minutes": end["budget_minutes"], "variant": "reference nnUNetTrainer (3d_fullres)",
                     "precision": "float32", "iterations": end["iterations"], "epochs": end["epochs"],
                     "train_s": round(end["train_s"], 1), "dice": m["Dice"], "hd95_mm": m["HD95_mm"],
                     "wall_s_without_evaluation": round(wall, 1),
                     "snapshot_of_minutes": args.budget_minutes if end["checkpoint"] != "checkpoint_final.pth" else None,
                     "peak_rss_mib": round(max(step["peak_rss_mib"] for step in (*steps.values(), predict)
                                               if step.get("peak_rss_mib") is not None), 1),
                     "steps": dict(steps, predict=predict, evaluate=evaluate), "held_out": held,
                     "tta": not args.no_tta, "from_run": str(args.from_run)})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = REPO / "bench" / "results" / f"reference_budget_la_{stamp}"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    md = ["| budget | plans | precision | iterations | train s | wall s | peak MiB | held-out Dice | HD95 mm |",
          "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        snap = f" (its weights after {row['budget_minutes']:g} of {row['snapshot_of_minutes']:g} min)" \
            if row["snapshot_of_minutes"] else ""
        md.append(f"| {row['budget_minutes']:g} min | reference 3d_fullres (nnUNetTrainer){snap} | float32 | "
                  f"{row['iterations']} | {row['train_s']:.0f} | {row['wall_s_without_evaluation']:.0f} | "
                  f"{row['peak_rss_mib']:.0f} | {row['dice']:.4f} | {row['hd95_mm']:.2f} |")
    res.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), f"\n{time.time() - t_all:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
