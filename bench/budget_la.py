"""Benchmark: plans that fit the compute. Held-out Dice on LA2018_1p25mm after a fixed CPU training budget,
the budget configuration against the stock 3d_fullres plans, at float32 (every AVX2 laptop) and auto.

    .venv/bin/python bench/budget_la.py [--budgets 15 30 60] [--variants budget stock]
                                        [--precisions float32 auto] [--budget-iterations N]
                                        [--base-features F]
                                        [--root /tmp/autoseg_bench_budget]

For each budget x variant x precision, one ``autoseg demo --dataset LA2018_1p25mm --holdout 16 --folds 0``
run in a child process (wall time and peak memory of its process tree measured): the same 16 cases
(fixed seed) are held out before preprocessing and never trained or validated on; the other 64 are
planned, preprocessed and split 5-fold, and fold 0 trains for the budget, its validation included
(``budget``: the 3d_budget configuration planned for that budget on this device; ``stock``: 3d_fullres,
the reference's plans, stopped by the same budget). Then find-best, prediction of the held-out cases
(test-time mirroring on) and evaluation.

Reported per run: held-out Dice and HD95, the iterations completed, the training time (must not exceed
the budget), the whole wall time (preprocessing and prediction included), peak memory, and the plan
(spacing, patch, features). Results: bench/results/budget_la_<time>.json and .md. The reference
implementation's rows come from ``bench/reference_budget_la.py --from-run`` one of these run folders (the same
held-out cases and split).
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


def run_one(root: Path, budget: float, variant: str, precision: str, threads: int,
            budget_iterations: "int | None" = None, base_features: "int | None" = None) -> dict:
    from AutoSegLib.io.work_folder import fold_dir
    data = SHARED / "data" / "LA2018_1p25mm"
    target = f"_it{budget_iterations}" if budget_iterations and variant == "budget" else ""
    entry = ["-m", "AutoSegLib"]
    if base_features and variant == "budget":  # the rule's candidates with this first-stage width only
        target += f"_f{base_features}"
        entry = ["-c", "import sys; from AutoSegLib.planning import budget as B; "
                 f"B.BASE_FEATURES = ({int(base_features)},); from AutoSegLib.cli import main; sys.exit(main())"]
    out = root / f"{variant}_{precision}_{budget:g}min{target}"
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(AUTOSEG_PYTHON), *entry, "demo", "--dataset", str(data), "-o", str(out),
           "--holdout", "16", "--folds", "0", "--time-budget-minutes", str(budget), "--device", "cpu",
           "--precision", precision, "--workers", str(threads), "--tta",
           "--configuration", "auto" if variant == "budget" else "3d_fullres"]
    if target:  # the plan rule's iteration target (planning.budget.TARGET_ITERATIONS unless given)
        cmd += ["--budget-iterations", str(budget_iterations)]
    if variant == "stock":  # the recipe's epochs, shortened so that progress and checkpoints come regularly
        cmd += ["--iterations-per-epoch", "10", "--val-iterations", "2"]
    measured = run_measured(cmd, env=bench_env(threads=threads), cwd=REPO, log_path=root / f"{out.name}.log",
                            interval=2.0)
    summary = json.loads((out / "demo_summary.json").read_text())
    evaluation = json.loads((out / "evaluation" / "summary.json").read_text())
    work = out / "work"
    conf = summary["configuration"]
    fold = fold_dir(work, conf, 0)
    log = [json.loads(line) for line in (fold / "training_log.jsonl").read_text().splitlines() if line.strip()]
    plans = json.loads((work / "plans.json").read_text())
    plan = plans["configurations"][conf]
    resolved = json.loads((fold / "training_config.json").read_text())["resolved"]
    m = evaluation["mean"]["left_atrium"]
    return {"budget_minutes": budget, "variant": variant, "precision": precision, "configuration": conf,
            "autocast": resolved["autocast"] if resolved["autocast"] not in (None, "None") else "float32", "spacing": plan["spacing"], "patch": plan["patch_size"],
            "features": plan["network"]["features_per_stage"], "batch": plan["batch_size"],
            "iterations": sum(e["iterations"] for e in log), "epochs": len(log),
            "train_s": summary["timings_s"]["train"], "wall_s": round(measured["wall_s"], 1),
            "peak_rss_mib": round(measured["peak_rss_mib"], 1), "dice": m["Dice"], "hd95_mm": m["HD95_mm"],
            "cv_dice": summary["cv_foreground_dice"], "planned": plans.get("budget"),
            "timings_s": summary["timings_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[15.0, 30.0, 60.0])
    ap.add_argument("--variants", nargs="+", default=["budget", "stock"], choices=("budget", "stock"))
    ap.add_argument("--precisions", nargs="+", default=["float32", "auto"], choices=("float32", "auto", "bfloat16"))
    ap.add_argument("--budget-iterations", type=int, default=None, metavar="N",
                    help="the budget plans' iteration target (autoseg --budget-iterations; default the planner's)")
    ap.add_argument("--base-features", type=int, default=None, metavar="F",
                    help="the budget plans' candidates with F first-stage features only (default the planner's "
                         "BASE_FEATURES, widest first at each spacing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default="/tmp/autoseg_bench_budget")
    args = ap.parse_args()
    if not (SHARED / "data" / "LA2018_1p25mm").is_dir():
        print(f"LA2018_1p25mm not found under {SHARED / 'data'}", file=sys.stderr)
        return 1
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "bench" / "results" / f"budget_la_{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for budget in args.budgets:
        for precision in args.precisions:
            for variant in args.variants:
                row = run_one(root, budget, variant, precision, args.threads, args.budget_iterations,
                              args.base_features)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("budget_minutes", "variant", "precision", "dice", "hd95_mm",
                                                      "iterations", "train_s", "wall_s")}), flush=True)
                md = write_results(out, rows, stamp)  # after every run: a stopped benchmark keeps its rows
    print("\n".join(md))
    return 0


def write_results(out: Path, rows: list, stamp: str) -> list:
    """Write ``rows`` to ``out``.json and .md; returns the Markdown lines."""
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    md = [f"# LA2018_1p25mm, 64 training / 16 held-out cases, fold 0, CPU ({stamp})", "",
          "| budget | plans | target iterations | precision | spacing | patch | features | iterations | train s | "
          "wall s | peak MiB | held-out Dice | HD95 mm |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = (r["planned"] or {}).get("target_iterations", "") if r["variant"] == "budget" else ""
        md.append(f"| {r['budget_minutes']:g} min | {r['configuration']} | {target} | {r['autocast']} | "
                  f"{r['spacing'][0]:.3g} | {'x'.join(map(str, r['patch']))} | {r['features'][0]}..{r['features'][-1]} | "
                  f"{r['iterations']} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} | "
                  f"{r['dice']:.4f} | {r['hd95_mm']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return md


if __name__ == "__main__":
    raise SystemExit(main())
