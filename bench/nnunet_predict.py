"""Inference on an nnU-Net v2 model: the reference's predictor vs `autoseg predict`, side by side.

Same machine, same model folder, same cases, same settings (fold(s), checkpoint_final, step 0.5, test-time
mirroring on or off, CPU, every core): each case is run as its own process by both programs, interleaved
(the order alternates per repeat) so that background load hits both alike; then all cases in one process
each. Measured per run: wall time, CPU time (user + sys of the whole process tree, less sensitive to other
load on the machine) and the peaks of the process tree's summed RSS and PSS (`common.run_measured`, sampled
every 0.2 s from /proc: a heavier sampler competed with the measured process for the 2 cores). The two
label maps are compared (Dice per class) as a sanity check.

    .bench-venv/bin/python bench/nnunet_predict.py                       # reference fixture model, TTA on
    .bench-venv/bin/python bench/nnunet_predict.py --no-tta --repeats 3
    .bench-venv/bin/python bench/nnunet_predict.py --model DIR --cases a_0000.nii.gz b_0000.nii.gz

Default cases: the three reference test images and three LA2018_1p25mm images (about 96 x 71 x 44 at
1.25 mm, i.e. about 120 x 89 x 55 voxels after resampling to the model's 1 mm). Results (JSON + a markdown
table) go to bench/results/nnunet_predict_<timestamp>.{json,md}. Target: AutoSeg at most 0.5x the
reference in wall time and in peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTOSEG_PYTHON, BENCH_VENV, REPO, SHARED, bench_env, run_measured  # noqa: E402

DEFAULT_MODEL = SHARED / "reference" / "nnunet_models" / "Dataset900_Synth" / "nnUNetTrainerCPUBench__nnUNetPlans__3d_fullres"
DEFAULT_CASES = ([SHARED / "reference" / "nnunet_models" / "inputs" / f"test_00{i}_0000.nii.gz" for i in range(3)] +
                 [SHARED / "data" / "LA2018_1p25mm" / "imagesTr" / f"la_00{i}_0000.nii.gz" for i in (1, 2, 3)])


def reference_cmd(model: Path, inp: Path, out: Path, args) -> list:
    cmd = [str(BENCH_VENV / "bin" / "nnUNetv2_predict_from_modelfolder"), "-i", str(inp), "-o", str(out),
           "-m", str(model), "-f", *args.folds, "-chk", "checkpoint_final.pth", "-device", "cpu",
           "-step_size", str(args.step_size)]
    if args.no_tta:
        cmd.append("--disable_tta")
    if args.reference_processes:
        cmd += ["-npp", str(args.reference_processes), "-nps", str(args.reference_processes)]
    return cmd


def autoseg_cmd(model: Path, inp: Path, out: Path, args) -> list:
    cmd = [str(AUTOSEG_PYTHON), "-m", "AutoSegLib", "predict", "-m", str(model), "-i", str(inp), "-o", str(out),
           "-f", *args.folds, "--device", "cpu", "--step-size", str(args.step_size), "--threads", str(args.threads),
           "--precision", args.precision]
    if args.no_tta:
        cmd.append("--no-tta")
    return cmd


def _trainer_stub(model: Path, work: Path) -> dict:
    """The reference looks up the trainer class named in the checkpoint to build the network. A trainer that
    only shortened training (like the fixture's nnUNetTrainerCPUBench: 2 epochs of 25 iterations) builds the
    standard network, so a subclass without changes stands in for it when it is not installed."""
    import nnunetv2
    trainer = model.name.split("__")[0]
    stock = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    if any(trainer in f.read_text(errors="ignore") for f in stock.rglob("*.py")):
        return {}
    ext = work / "ext_trainers"
    ext.mkdir(exist_ok=True)
    (ext / f"{trainer.lower()}.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
        f"class {trainer}(nnUNetTrainer):\n    pass  # inference only: the standard network\n")
    return {"nnUNet_extTrainer": str(ext)}


def dice_per_class(a_path: Path, b_path: Path):
    import numpy as np
    import SimpleITK as sitk
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_path)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_path)))
    out = {}
    for c in sorted(set(np.unique(a)) | set(np.unique(b))):
        if c == 0:
            continue
        ma, mb = a == c, b == c
        out[int(c)] = round(float(2 * (ma & mb).sum() / (ma.sum() + mb.sum())), 5)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="reference results folder <Trainer>__<Plans>__<configuration>")
    parser.add_argument("--cases", type=Path, nargs="+", default=DEFAULT_CASES,
                        help="single-channel case files <case>_0000.nii.gz")
    parser.add_argument("--folds", nargs="+", default=["0"])
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads for both (the reference's CLI uses every core on CPU)")
    parser.add_argument("--precision", default="auto",
                        help="AutoSeg's --precision (auto: float32 for an nnU-Net model, the reference's numbers)")
    parser.add_argument("--autoseg-model", type=Path, default=None,
                        help="AutoSeg predicts with this model instead of --model (its own training with the same "
                             "plans: same architecture, patch and folds, its own weights and precision)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="folder of reference label maps <case>.nii.gz: Dice of each side against them")
    parser.add_argument("--reference-processes", type=int, default=None,
                        help="the reference's -npp/-nps (default: its own default, 3)")
    parser.add_argument("--skip-folder-run", action="store_true", help="only the per-case runs")
    args = parser.parse_args(argv)

    cases = [c for c in args.cases if c.is_file()]
    if not cases:
        parser.error("no case files found")
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="nnunet_predict_"))
    env = bench_env({"nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "pre"),
                     "nnUNet_results": str(work / "res"), "PYTHONUNBUFFERED": "1"}, threads=args.threads)
    env["PYTHONPATH"] = str(REPO)  # AutoSegLib from this checkout (.venv may not have it installed)
    env.update(_trainer_stub(args.model, work))

    rows, per_case = [], {}
    all_in = work / "in_all"
    all_in.mkdir()
    for case in cases:
        name = case.name[: -len("_0000.nii.gz")]
        d = work / f"in_{name}"
        d.mkdir()
        (d / case.name).symlink_to(case.resolve())
        (all_in / case.name).symlink_to(case.resolve())
        per_case[name] = d

    def run_pair(label, inp, rep):
        order = ("reference", "autoseg") if rep % 2 == 0 else ("autoseg", "reference")
        got = {}
        for who in order:
            out = work / f"out_{who}_{label}_{rep}"
            cmd = (reference_cmd(args.model, inp, out, args) if who == "reference"
                   else autoseg_cmd(args.autoseg_model or args.model, inp, out, args))
            got[who] = run_measured(cmd, env=env, log_path=work / f"log_{who}_{label}_{rep}.txt")
            got[who]["out"] = out
            print(f"  {label:>12} rep {rep} {who:>9}: {got[who]['wall_s']:7.2f} s wall, {got[who]['cpu_s']:7.2f} s CPU, "
                  f"{got[who]['peak_rss_mib']:7.0f} MiB RSS, {got[who]['peak_pss_mib']:7.0f} MiB PSS", flush=True)
        return got

    print(f"model {args.model}" + (f", AutoSeg model {args.autoseg_model}" if args.autoseg_model else "") + f"\nTTA {'off' if args.no_tta else 'on'}, folds {args.folds}, threads {args.threads}, "
          f"step {args.step_size}, AutoSeg precision {args.precision}", flush=True)
    def save():  # after every row: an interrupted run keeps what it measured
        (results_dir / f"nnunet_predict_{stamp}.md").write_text(_table(rows, args) + "\n")
        (results_dir / f"nnunet_predict_{stamp}.json").write_text(json.dumps(
            {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cases"},
             "cases": [str(c) for c in cases], "rows": rows}, indent=2, default=str))

    for name, inp in per_case.items():
        reps = [run_pair(name, inp, r) for r in range(args.repeats)]
        ref_out, our_out = (reps[0][w]["out"] / f"{name}.nii.gz" for w in ("reference", "autoseg"))
        dice = {"AutoSeg vs reference": dice_per_class(ref_out, our_out)}
        if args.labels is not None:
            truth = args.labels / f"{name}.nii.gz"
            dice.update({"reference vs labels": dice_per_class(ref_out, truth),
                         "AutoSeg vs labels": dice_per_class(our_out, truth)})
        rows.append(_row(name, reps, dice))
        save()
    if not args.skip_folder_run and len(cases) > 1:
        reps = [run_pair(f"all {len(cases)}", all_in, r) for r in range(args.repeats)]
        rows.append(_row(f"all {len(cases)} cases, one process", reps, None))
        save()

    print("\n" + _table(rows, args))
    print(f"\nwritten {results_dir / f'nnunet_predict_{stamp}.md'}")
    return 0


def _row(label, reps, dice):
    def med(who, key):
        return statistics.median(r[who][key] for r in reps)
    row = {"case": label}
    for who in ("reference", "autoseg"):
        for key in ("wall_s", "cpu_s", "peak_rss_mib", "peak_pss_mib"):
            row[f"{who}_{key}"] = med(who, key)
    for key in ("wall_s", "cpu_s", "peak_rss_mib", "peak_pss_mib"):
        row[f"ratio_{key}"] = row[f"autoseg_{key}"] / row[f"reference_{key}"]
    row["dice"] = dice
    return row


def _table(rows, args):
    lines = [f"TTA {'off' if args.no_tta else 'on'}, folds {' '.join(args.folds)}, {args.threads} threads, medians of "
             f"{args.repeats} run(s)", "",
             "| case | reference wall s | AutoSeg wall s | ratio | reference CPU s | AutoSeg CPU s | ratio | "
             "ref. peak RSS MiB | AutoSeg peak RSS MiB | ratio | ref. peak PSS MiB | AutoSeg peak PSS MiB | ratio | "
             "Dice |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['reference_wall_s']:.2f} | {r['autoseg_wall_s']:.2f} | {r['ratio_wall_s']:.2f} | "
                     f"{r['reference_cpu_s']:.2f} | {r['autoseg_cpu_s']:.2f} | {r['ratio_cpu_s']:.2f} | "
                     f"{r['reference_peak_rss_mib']:.0f} | {r['autoseg_peak_rss_mib']:.0f} | {r['ratio_peak_rss_mib']:.2f} | "
                     f"{r['reference_peak_pss_mib']:.0f} | {r['autoseg_peak_pss_mib']:.0f} | {r['ratio_peak_pss_mib']:.2f} | "
                     f"{r['dice'] if r['dice'] is not None else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
