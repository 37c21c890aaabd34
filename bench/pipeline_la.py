"""Benchmark: the full AutoSeg pipeline's Dice on LA2018_1p25mm under a fixed CPU training budget.

    .bench-venv/bin/python bench/pipeline_la.py [--budget-minutes 20] [--folds 0] [--holdout 16]
                                              [--iterations-per-epoch 10] [--val-iterations 2] [--epochs 1000]
                                              [--root /tmp/autoseg_bench_pipeline] [--tta]

Runs ``autoseg demo --dataset ../shared/data/LA2018_1p25mm`` in a child process (wall time and peak RSS of
its process tree measured): verify -> fingerprint -> plan -> preprocess (the training cases only) -> train
the folds on the CPU until the budget (split between the folds) is used -> find-best -> predict the
``--holdout`` cases that were set aside before preprocessing (never trained or validated on) ->
evaluate. The data folder has no test labels, so the held-out cases come from its 80 training cases
(chosen with a fixed seed); the model is therefore trained on 80 - holdout cases.

Reported: Dice, IoU, HD95 and ASSD on the held-out cases, the cross-validation Dice of the trained folds,
the time of each stage, the peak memory. Results go to bench/results/pipeline_la_<time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTOSEG_PYTHON, REPO, SHARED, bench_env, run_measured  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="training time, all folds together")
    ap.add_argument("--folds", nargs="+", default=["0"])
    ap.add_argument("--holdout", type=int, default=16)
    ap.add_argument("--iterations-per-epoch", type=int, default=10)
    ap.add_argument("--val-iterations", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1000, help="schedule length (the budget stops it earlier)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="test-time mirroring when predicting the held-out cases")
    ap.add_argument("--root", default="/tmp/autoseg_bench_pipeline")
    ap.add_argument("--keep", action="store_true", help="keep an existing --root (resume)")
    args = ap.parse_args()

    data = SHARED / "data" / "LA2018_1p25mm"
    if not data.is_dir():
        print(f"LA2018_1p25mm not found at {data}", file=sys.stderr)
        return 1
    root = Path(args.root)
    if root.exists() and not args.keep:
        shutil.rmtree(root)
    cmd = [str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "demo", "--dataset", str(data), "-o", str(root),
           "--holdout", str(args.holdout), "--folds", *args.folds, "--time-budget-minutes", str(args.budget_minutes),
           "--epochs", str(args.epochs), "--iterations-per-epoch", str(args.iterations_per_epoch),
           "--val-iterations", str(args.val_iterations), "--device", "cpu", "--workers", str(args.threads),
           "--tta" if args.tta else "--no-tta"]
    root.mkdir(parents=True, exist_ok=True)
    measured = run_measured(cmd, env=bench_env(threads=args.threads), cwd=REPO, log_path=root.parent / (root.name + ".log"))
    summary = json.loads((root / "demo_summary.json").read_text())
    evaluation = json.loads((root / "evaluation" / "summary.json").read_text())
    report = {"command": " ".join(cmd), "budget_minutes": args.budget_minutes, "folds": args.folds,
              "holdout": summary["test_cases"], "training_cases": summary["training_cases"],
              "wall_s": round(measured["wall_s"], 1), "peak_rss_mib": round(measured["peak_rss_mib"], 1),
              "timings_s": summary["timings_s"], "cv_foreground_dice": summary["cv_foreground_dice"],
              "postprocessing": summary["postprocessing"], "test": evaluation["mean"],
              "epochs_done": _epochs_done(root / "work", summary["configuration"], args.folds)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "bench" / "results" / f"pipeline_la_{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    m = evaluation["mean"]["left_atrium"]
    md = [f"# Full pipeline on LA2018_1p25mm, {args.budget_minutes:g} min CPU training budget ({stamp})", "",
          f"Command: `{' '.join(cmd)}`", "",
          f"- trained on {summary['training_cases']} cases, folds {args.folds}, epochs done {report['epochs_done']}"
          f" ({args.iterations_per_epoch} iterations each)",
          f"- held-out cases ({len(summary['test_cases'])}): Dice {m['Dice']:.4f}, IoU {m['IoU']:.4f}, "
          f"HD95 {m['HD95_mm']:.2f} mm, ASSD {m['ASSD_mm']:.2f} mm",
          f"- cross-validation Dice of the trained folds: {summary['cv_foreground_dice']:.4f}; post-processing "
          f"{summary['postprocessing'] or 'none'}",
          f"- wall {measured['wall_s'] / 60:.1f} min, peak RSS {measured['peak_rss_mib']:.0f} MiB; stages (s): "
          f"{summary['timings_s']}", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


def _epochs_done(work: Path, configuration: str, folds) -> dict:
    from AutoSegLib.io.work_folder import fold_dir
    done = {}
    for f in folds:
        log = fold_dir(work, configuration, f) / "training_log.jsonl"
        done[str(f)] = sum(1 for line in log.read_text().splitlines() if line.strip()) if log.is_file() else 0
    return done


if __name__ == "__main__":
    raise SystemExit(main())
