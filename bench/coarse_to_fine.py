"""Benchmark: coarse to fine for compute. A budget that forces one plan to coarsen, on images where the
structure is small, trained as one plan and as a coarse-to-fine pair, side by side.

    .venv/bin/python bench/coarse_to_fine.py [--minutes 10] [--precision float32] [--cases 40] [--test 10]
                                             [--shape 80 160 160] [--size 0.4] [--root /tmp/autoseg_bench_c2f]

The data: `io.synthetic` cases (body, organ, lesion inside it) of ``--shape`` voxels at 1.5 x 1 x 1 mm with
the organ scaled by ``--size`` (0.4: its bounding box is about 1 % of the image, the lesion a few
millimetres across), ``--cases`` to train on and ``--test`` held out (imagesTs/labelsTs), seed 7. No
shared data is needed. Both runs are ``autoseg demo --dataset D --folds 0 --time-budget-minutes M``
(fold 0 trained for M minutes, its validation included; find-best; the held-out cases predicted with
test-time mirroring and evaluated), one with the planner's choice (the pair where it pays) and one with
``--no-coarse-to-fine``. Reported per run: the configurations and their plans, the iterations trained,
held-out Dice and HD95 per label, wall time and peak memory. Results:
bench/results/coarse_to_fine_<time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTOSEG_PYTHON, REPO, bench_env, run_measured  # noqa: E402


def run_one(root: Path, data: Path, minutes: float, precision: str, pair: bool, threads: int) -> dict:
    from AutoSegLib.io.work_folder import fold_dir
    out = root / ("pair" if pair else "single")
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "demo", "--dataset", str(data), "-o", str(out), "--folds", "0",
           "--time-budget-minutes", str(minutes), "--device", "cpu", "--precision", precision, "--workers",
           str(threads), "--tta"] + ([] if pair else ["--no-coarse-to-fine"])
    measured = run_measured(cmd, env=bench_env(threads=threads), cwd=REPO, log_path=root / f"{out.name}.log",
                            interval=2.0)
    summary = json.loads((out / "demo_summary.json").read_text())
    evaluation = json.loads((out / "evaluation" / "summary.json").read_text())
    work = out / "work"
    plans = json.loads((work / "plans.json").read_text())
    budget = plans["budget"]
    stages = [budget] + ([budget["fine"]] if budget.get("fine") else [])
    rows = []
    for b in stages:
        conf = plans["configurations"][b["configuration"]]
        log = [json.loads(line) for line in
               (fold_dir(work, b["configuration"], 0) / "training_log.jsonl").read_text().splitlines() if line.strip()]
        rows.append({"configuration": b["configuration"], "minutes": b["minutes"], "spacing": conf["spacing"],
                     "patch": conf["patch_size"], "features": conf["network"]["features_per_stage"],
                     "planned_iterations": b["iterations"], "iterations": sum(e["iterations"] for e in log)})
    return {"pair": pair, "stages": rows, "dice": {n: m["Dice"] for n, m in evaluation["mean"].items()},
            "hd95_mm": {n: m["HD95_mm"] for n, m in evaluation["mean"].items()},
            "train_s": summary["timings_s"]["train"], "predict_s": summary["timings_s"]["predict"],
            "wall_s": round(measured["wall_s"], 1), "peak_rss_mib": round(measured["peak_rss_mib"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--precision", default="float32", choices=("float32", "auto", "bfloat16"))
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[80, 160, 160])
    ap.add_argument("--size", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default="/tmp/autoseg_bench_c2f")
    ap.add_argument("--only", choices=("pair", "single"), default=None, help="run one of the two")
    args = ap.parse_args()
    from AutoSegLib.io.synthetic import make_synthetic_dataset

    root = Path(args.root)
    data = root / "data" / "SmallStructure"
    if not (data / "dataset.json").is_file():
        make_synthetic_dataset(data, n_cases=args.cases, n_test=args.test, shape=args.shape, spacing=(1.5, 1.0, 1.0),
                               seed=7, structure_size=args.size)
    runs = []
    for pair in (True, False):
        if args.only and args.only != ("pair" if pair else "single"):
            continue
        r = run_one(root, data, args.minutes, args.precision, pair, args.threads)
        runs.append(r)
        print(json.dumps(r), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "bench" / "results" / f"coarse_to_fine_{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    md = [f"# Coarse to fine: synthetic {'x'.join(map(str, args.shape))} at 1.5x1x1 mm, organ size x{args.size}, "
          f"{args.cases} training / {args.test} held-out cases, fold 0, {args.minutes:g} min, {args.precision} "
          f"({stamp})", "",
          "| plans | stage | minutes | spacing | patch | features | iterations (planned) | organ Dice | lesion Dice | "
          "organ HD95 mm | lesion HD95 mm | train s | predict s | wall s | peak MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for i, st in enumerate(r["stages"]):
            scores = (f"{r['dice']['organ']:.4f} | {r['dice']['lesion']:.4f} | {r['hd95_mm']['organ']:.2f} | "
                      f"{r['hd95_mm']['lesion']:.2f} | {r['train_s']:.0f} | {r['predict_s']:.0f} | {r['wall_s']:.0f} | "
                      f"{r['peak_rss_mib']:.0f}") if i == len(r["stages"]) - 1 else "| | | | | | | "
            md.append(f"| {'pair' if r['pair'] else 'single'} | {st['configuration']} | {st['minutes']:.3g} | "
                      f"{'x'.join(f'{v:.3g}' for v in st['spacing'])} | {'x'.join(map(str, st['patch']))} | "
                      f"{st['features'][0]}..{st['features'][-1]} | {st['iterations']} ({st['planned_iterations']}) | "
                      f"{scores} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
