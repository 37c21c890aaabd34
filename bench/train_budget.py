"""Benchmark: validation Dice after the same wall-clock training budget, AutoSeg against the reference.

    .venv/bin/python bench/train_budget.py [--budget-minutes 12] [--iterations-per-epoch 10]
                                           [--val-iterations 2] [--epochs 1000] [--root /tmp/autoseg_bench_train]
                                           [--json out.json] [--plot curves.png]

Fold 0 of LA2018_1p25mm 3d_fullres on the CPU, same plans on both sides (see train_throughput.prepare),
same split (the reference's splits_final.json is copied into AutoSeg's work folder), same schedule
settings (epochs, iterations per epoch, validation iterations, hence the same poly learning rate). Each
side trains until the budget is used, then predicts the fold's validation cases in full (sliding window;
test-time mirroring only with --mirroring, on both sides) and scores Dice in the raw grid:

- reference: its own epoch loop driven from a script (``on_train_start``, per epoch ``on_epoch_start`` ...
  ``on_epoch_end`` exactly as ``nnUNetTrainer.run_training``), stopped after the epoch that crosses the
  budget, then ``on_train_end`` and ``perform_actual_validation``; Dice from its validation/summary.json.
- AutoSeg: ``train_fold(..., TrainingConfig(time_budget_minutes=budget, ...))``; Dice from
  validation/summary.json.

The sides run one after the other (the machine has 2 cores); the full 40-minute version of the brief does
not fit a shared development session, so the budget is an argument. Curves (EMA pseudo-Dice per epoch
against training time) go to --plot.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_PYTHON, REPO, bench_env  # noqa: E402
from train_throughput import DATASET_ID, autoseg_python, prepare, run_group, use_reference_split  # noqa: E402

# nnUNetTrainer.run_training's epoch loop, stopped after the epoch that crosses ``budget_s`` (the script
# defines ``tr``, ``budget_s``, ``time`` and ``torch``); reference_budget_la.py runs it too.
REFERENCE_LOOP = r"""
tr.on_train_start()
t_start = time.perf_counter()
for epoch in range(tr.current_epoch, tr.num_epochs):
    tr.on_epoch_start()
    tr.on_train_epoch_start()
    outs = [tr.train_step(next(tr.dataloader_train)) for _ in range(tr.num_iterations_per_epoch)]
    tr.on_train_epoch_end(outs)
    with torch.no_grad():
        tr.on_validation_epoch_start()
        vals = [tr.validation_step(next(tr.dataloader_val)) for _ in range(tr.num_val_iterations_per_epoch)]
        tr.on_validation_epoch_end(vals)
    tr.on_epoch_end()
    if time.perf_counter() - t_start >= budget_s:
        break
train_s = time.perf_counter() - t_start
tr.on_train_end()
"""

REFERENCE_SCRIPT = r"""
import json, multiprocessing, os, sys, time, torch
budget_s, iters, val_iters, epochs, out, mirror = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"
torch.set_num_threads(multiprocessing.cpu_count())
from nnunetv2.run.run_training import get_trainer_from_args
tr = get_trainer_from_args("%d", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch, tr.num_epochs = iters, val_iters, epochs
%sif not mirror:
    tr.inference_allowed_mirroring_axes = None   # its predictor then predicts without test-time mirroring
t0 = time.perf_counter()
tr.perform_actual_validation(False)
val_s = time.perf_counter() - t0
lg = tr.logger
log = getattr(lg, "my_fantastic_logging", None) or getattr(getattr(lg, "local_logger", None), "my_fantastic_logging", None) or {}
def plain(v):
    return [float(x) if not isinstance(x, (list, tuple)) else [float(y) for y in x] for x in v]
curves = {k: plain(log[k]) for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "epoch_end_timestamps") if k in log}
summary = json.load(open(os.path.join(tr.output_folder, "validation", "summary.json")))
json.dump({"train_s": train_s, "validation_s": val_s, "epochs": tr.current_epoch, "curves": curves,
           "mean_foreground_dice": summary["foreground_mean"]["Dice"], "fold_dir": tr.output_folder}, open(out, "w"))
os._exit(0)
""" % (DATASET_ID, REFERENCE_LOOP)

AUTOSEG_SCRIPT = r"""
import json, shutil, sys, time
from pathlib import Path
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold
work, budget_min, iters, val_iters, epochs, out_root, out, mirror = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]), sys.argv[7], sys.argv[8] == "1"
shutil.rmtree(out_root, ignore_errors=True)
cfg = TrainingConfig(epochs=epochs, iterations_per_epoch=iters, val_iterations=val_iters, time_budget_minutes=budget_min,
                     device="cpu", mirror_at_validation=mirror)
events = []
t0 = time.perf_counter()
fold_dir = train_fold(work, "3d_fullres", 0, cfg, output_dir=out_root, progress=events.append)
total = time.perf_counter() - t0
log = [json.loads(l) for l in (fold_dir / "training_log.jsonl").read_text().splitlines()]
summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
train_s = sum(e["epoch_time_s"] for e in log)
json.dump({"train_s": train_s, "total_s": total, "epochs": len(log), "log": log, "fold_dir": str(fold_dir),
           "mean_foreground_dice": summary["mean_foreground_dice"]}, open(out, "w"))
"""


def run_reference(setup: dict, args, out: Path) -> dict:
    results = Path(setup["reference_env"]["nnUNet_results"])
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    env = bench_env(setup["reference_env"], threads=os.cpu_count() or 1)
    t0 = time.time()
    if out.exists():
        out.unlink()
    rc, text = run_group([str(BENCH_PYTHON), "-c", REFERENCE_SCRIPT, str(args.budget_minutes * 60),
                          str(args.iterations_per_epoch), str(args.val_iterations), str(args.epochs), str(out),
                          "1" if args.mirroring else "0"],
                         env, args.root, Path(args.root) / "reference_budget.log")
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"reference failed ({rc}):\n{text[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = time.time() - t0
    return data


def run_autoseg(setup: dict, args, out: Path) -> dict:
    env = bench_env({"PYTHONPATH": str(REPO)}, threads=os.cpu_count() or 1)
    t0 = time.time()
    if out.exists():
        out.unlink()
    rc, text = run_group([autoseg_python(args.autoseg_python), "-c", AUTOSEG_SCRIPT, str(setup["work"]), str(args.budget_minutes),
                          str(args.iterations_per_epoch), str(args.val_iterations), str(args.epochs),
                          str(Path(args.root) / "autoseg_budget"), str(out), "1" if args.mirroring else "0"], env, REPO,
                         Path(args.root) / "autoseg_budget.log")
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"AutoSeg failed ({rc}):\n{text[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = time.time() - t0
    return data


def plot(ref: dict, ours: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 5), dpi=90)
    ax = fig.subplots()
    c = ref["curves"]
    ts = c.get("epoch_end_timestamps", [])
    t_ref = [(t - ts[0]) / 60 for t in ts] if ts else list(range(len(c["ema_fg_dice"])))
    ax.plot(t_ref[:len(c["ema_fg_dice"])], c["ema_fg_dice"], "r-", label="reference EMA pseudo-Dice")
    ax.plot(t_ref[:len(c["mean_fg_dice"])], c["mean_fg_dice"], "r:", label="reference pseudo-Dice")
    t, acc = [], 0.0
    for e in ours["log"]:
        acc += e["epoch_time_s"]
        t.append(acc / 60)
    ax.plot(t, [e["ema_pseudo_dice"] for e in ours["log"]], "b-", label="AutoSeg EMA pseudo-Dice")
    ax.plot(t, [e["mean_pseudo_dice"] for e in ours["log"]], "b:", label="AutoSeg pseudo-Dice")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("pseudo-Dice (validation patches)")
    ax.set_title(f"LA2018_1p25mm 3d_fullres fold 0, CPU: final Dice reference {ref['mean_foreground_dice']:.3f}, "
                 f"AutoSeg {ours['mean_foreground_dice']:.3f}", fontsize=9)
    ax.legend()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_train"))
    ap.add_argument("--budget-minutes", type=float, default=12.0)
    ap.add_argument("--iterations-per-epoch", type=int, default=10)
    ap.add_argument("--val-iterations", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--mirroring", action="store_true",
                    help="test-time mirroring in both final validations (8x slower in 3D; off by default here)")
    ap.add_argument("--autoseg-python", choices=("venv", "bench"), default="venv",
                    help="run AutoSeg with .venv (default) or with .bench-venv's interpreter (same torch as the reference)")
    ap.add_argument("--autoseg-only", action="store_true",
                    help="reuse the reference's last result (its validation/summary.json under --root) and run AutoSeg only")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    setup = prepare(args.root)
    print(f"reference: training for {args.budget_minutes} min, then validating fold 0 ...", flush=True)
    if args.autoseg_only:
        found = sorted(Path(setup["reference_env"]["nnUNet_results"]).glob("*/*/fold_0/validation/summary.json"))
        if not found:
            raise SystemExit("no earlier reference result under --root; run without --autoseg-only")
        ref = {"mean_foreground_dice": json.loads(found[-1].read_text())["foreground_mean"]["Dice"], "epochs": -1,
               "train_s": args.budget_minutes * 60, "validation_s": float("nan"), "curves": {}}
    else:
        ref = run_reference(setup, args, args.root / "budget_reference.json")
    use_reference_split(setup)
    print(f"  {ref['epochs']} epochs in {ref['train_s'] / 60:.1f} min; Dice {ref['mean_foreground_dice']:.4f}"
          f" (validation {ref['validation_s']:.0f} s)", flush=True)
    print(f"AutoSeg: training for {args.budget_minutes} min, then validating fold 0 ...", flush=True)
    ours = run_autoseg(setup, args, args.root / "budget_autoseg.json")
    print(f"  {ours['epochs']} epochs in {ours['train_s'] / 60:.1f} min; Dice {ours['mean_foreground_dice']:.4f}"
          f" (total {ours['total_s'] / 60:.1f} min)", flush=True)
    print(f"\nvalidation Dice (fold 0, {args.budget_minutes} min budget): reference {ref['mean_foreground_dice']:.4f}, "
          f"AutoSeg {ours['mean_foreground_dice']:.4f}")
    if args.plot and ref["curves"]:
        plot(ref, ours, args.plot)
    if args.json:
        args.json.write_text(json.dumps({"budget_minutes": args.budget_minutes, "reference": ref, "autoseg": ours},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
