"""Benchmark: is the human-in-the-loop cycle worth it? Fine-tuning on corrected cases against a new model and
against the unchanged model (LA2018_1p25mm, CPU, held-out Dice).

    .venv/bin/python bench/finetune_loop.py [--first-minutes 15] [--next-minutes 10] [--precision float32]
                                           [--root /tmp/autoseg_bench_loop] [--threads 2]

The 16 cases `autoseg demo --holdout 16` holds out (seed 0; never trained or validated on) are the test set.
Of the other 64 (sorted, shuffled with seed 1), 16 make the first dataset and 16 more the corrections:

- A: `plan-and-preprocess` the 16 cases with `--time-budget-minutes FIRST`, `train auto 0` (the Slicer
  module's quick mode: the budget configuration, fold 0, no test-time mirroring in the fold's validation).
- (a) fine-tune: the 32 cases prepared with A's plans (`--plans-from A`), `train auto 0 --init-from A
  --time-budget-minutes NEXT` (fine-tuning defaults: learning rate 1e-3, the schedule the time buys).
- (b) new: the 32 cases planned for `--time-budget-minutes NEXT` and trained from scratch.
- (c) A unchanged.

Each model predicts the 16 test cases (`predict` defaults: test-time mirroring, the compiled CPU runtime)
and is scored by `evaluate`. Every step is a child process (wall time and peak memory measured). The loop
is worth building only if (a) beats (b) and (c). Results: bench/results/finetune_loop_<time>.json and .md.
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


def split(data: Path):
    sys.path.insert(0, str(REPO))
    import numpy as np

    from AutoSegLib.commands.demo import _holdout_cases
    from AutoSegLib.io.datasets import load_dataset

    ds = load_dataset(data)
    held = _holdout_cases(ds.case_ids, 16, 0)
    pool = sorted(c for c in ds.case_ids if c not in held)
    order = [pool[i] for i in np.random.default_rng(1).permutation(len(pool))]
    return ds, held, order[:16], order[16:32]


def raw_dataset(ds, cases, dest: Path) -> Path:
    """A raw dataset of ``cases`` made of links to the shared files."""
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        for img in ds.cases[c].images:
            (dest / "imagesTr" / img.name).symlink_to(img)
        (dest / "labelsTr" / ds.cases[c].label.name).symlink_to(ds.cases[c].label)
    meta = dict(ds.raw_json, numTraining=len(cases))
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest


def test_set(ds, held, dest: Path):
    images, labels = dest / "images", dest / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for c in held:
        for img in ds.cases[c].images:
            (images / img.name).symlink_to(img)
        (labels / ds.cases[c].label.name).symlink_to(ds.cases[c].label)
    return images, labels


class Runner:
    def __init__(self, root: Path, threads: int):
        self.root, self.threads, self.steps = root, threads, []

    def __call__(self, name: str, *argv: str) -> dict:
        cmd = [str(AUTOSEG_PYTHON), "-m", "AutoSegLib", *argv]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: autoseg {' '.join(argv)}", flush=True)
        m = run_measured(cmd, env=bench_env({"PYTHONPATH": str(REPO)}, threads=self.threads), cwd=REPO,
                         log_path=self.root / f"{name}.log")
        self.steps.append({"step": name, **{k: round(v, 1) for k, v in m.items()}})
        return m


def trained(work: Path) -> dict:
    from AutoSegLib.io.work_folder import fold_dir
    plans = json.loads((work / "plans.json").read_text())
    conf = plans["budget"]["configuration"]
    fold = fold_dir(work, conf, 0)
    log = [json.loads(line) for line in (fold / "training_log.jsonl").read_text().splitlines() if line.strip()]
    plan = plans["configurations"][conf]
    resolved = json.loads((fold / "training_config.json").read_text())
    return {"configuration": conf, "spacing": plan["spacing"], "patch": plan["patch_size"],
            "features": plan["network"]["features_per_stage"], "iterations": sum(e["iterations"] for e in log),
            "train_s": round(sum(e["epoch_time_s"] for e in log), 1),
            "initial_lr": resolved.get("initial_lr"), "init_from": resolved.get("init_from"),
            "planned_minutes": plans["budget"]["minutes"]}


def score(run: Runner, name: str, model: Path, images: Path, labels: Path) -> dict:
    dataset_json = model / "dataset.json"
    out = run.root / f"pred_{name}"
    shutil.rmtree(out, ignore_errors=True)
    m = run(f"predict_{name}", "predict", "-m", str(model), "-i", str(images), "-o", str(out), "--device", "cpu")
    run(f"evaluate_{name}", "evaluate", str(out), str(labels), "-o", str(out / "evaluation"), "--labels",
        str(dataset_json))
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    mean = summary["mean"]["left_atrium"]
    return {"dice": mean["Dice"], "hd95_mm": mean["HD95_mm"], "predict_s": round(m["wall_s"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first-minutes", type=float, default=15.0)
    ap.add_argument("--next-minutes", type=float, default=10.0)
    ap.add_argument("--precision", default="float32", choices=("float32", "auto", "bfloat16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_loop"))
    ap.add_argument("--finetune-lrs", default="default",
                    help="comma-separated initial learning rates for (a), one fine-tuned model each; "
                         "'default' is train's own fine-tuning default (e.g. default,0.01)")
    args = ap.parse_args()
    data = SHARED / "data" / "LA2018_1p25mm"
    if not data.is_dir():
        print(f"{data} not found", file=sys.stderr)
        return 1
    root = args.root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ds, held, first, more = split(data)
    raw_a = raw_dataset(ds, first, root / "raw_A")
    raw_ab = raw_dataset(ds, first + more, root / "raw_AB")
    images, labels = test_set(ds, held, root / "test")
    run = Runner(root, args.threads)
    dev = ["--device", "cpu", "--precision", args.precision]
    train_opts = ["--no-mirroring", *dev]
    t0 = time.time()

    wa, wf, wn = root / "work_A", root / "work_finetune", root / "work_new"
    lrs = [x.strip() for x in args.finetune_lrs.split(",") if x.strip()]
    finetuned = [(lr, wf if i == 0 else root / f"work_finetune_lr{lr}") for i, lr in enumerate(lrs)]
    run("plan_A", "plan-and-preprocess", str(raw_a), "-o", str(wa), "--time-budget-minutes",
        f"{args.first_minutes:g}", "--workers", str(args.threads), *dev)
    run("train_A", "train", str(wa), "auto", "0", *train_opts)
    run("plan_finetune", "plan-and-preprocess", str(raw_ab), "-o", str(wf), "--plans-from", str(wa),
        "--workers", str(args.threads))
    for lr, work in finetuned:  # the same plans and preprocessed cases, each its own training output
        if work != wf:
            shutil.copytree(wf, work, ignore=shutil.ignore_patterns("trained"))
    for lr, work in finetuned:
        lr_opts = [] if lr == "default" else ["--learning-rate", lr]
        run(f"train_finetune_{lr}", "train", str(work), "auto", "0", "--init-from", str(wa),
            "--time-budget-minutes", f"{args.next_minutes:g}", *lr_opts, *train_opts)
    run("plan_new", "plan-and-preprocess", str(raw_ab), "-o", str(wn), "--time-budget-minutes",
        f"{args.next_minutes:g}", "--workers", str(args.threads), *dev)
    run("train_new", "train", str(wn), "auto", "0", *train_opts)

    rows = []
    models = [("A", wa, 16, f"16 cases, new, {args.first_minutes:g} min")]
    models += [(f"finetune_{lr}", work, 32, f"A fine-tuned on 32 cases, {args.next_minutes:g} min")
               for lr, work in finetuned]
    models += [("new", wn, 32, f"32 cases, new, {args.next_minutes:g} min")]
    for name, work, cases, what in models:
        rows.append({"model": name, "what": what, "cases": cases, **trained(work),
                     **score(run, name, work, images, labels)})
        print(json.dumps(rows[-1]), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "bench" / "results" / f"finetune_loop_{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"held_out": held, "first": first, "more": more, "precision": args.precision, "rows": rows,
              "steps": run.steps, "wall_s": round(time.time() - t0, 1)}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Fine-tuning loop, LA2018_1p25mm, 16 held-out cases, CPU {args.precision} ({stamp})", "",
          "| model | training | spacing | patch | iterations | train s | initial lr | held-out Dice | HD95 mm |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['what']} | {r['spacing'][0]:.3g} | {'x'.join(map(str, r['patch']))} | "
                  f"{r['iterations']} | {r['train_s']:.0f} | {r['initial_lr']} | {r['dice']:.4f} | {r['hd95_mm']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
