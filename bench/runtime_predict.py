"""The whole `autoseg predict` command with the compiled CPU runtime vs with torch, side by side.

    PYTHONPATH=$PWD .venv/bin/python bench/runtime_predict.py [--cases 3] [--rounds 1] [--threads 2]
        [--runtimes torch,openvino] [--isa native] [--json out.json]

Models (set up once under ``--root``, networks exported as `import-model` does):
- ``nnunet_synth``: the shared nnU-Net v2 model ``reference/nnunet_models/Dataset900_Synth`` 3d_fullres
  (fold 0, patch 48x56x48 at 1 mm), installed with `import-model`;
- ``la_trained`` (with ``--trained-model WORK``): an LA model trained by AutoSeg (e.g. a ``budget_la.py``
  run's ``work`` folder), installed with `import-model`;
- ``la_arch``: an AutoSeg model folder with the LA 3d_fullres plans of ``reference/LA2018_1p25mm`` (patch
  48x80x96, 5 stages) and He-initialised weights (seed 0): the network, windows and resampling of an
  AutoSeg LA model, without its training (no trained LA model is at hand; Dice between the runtimes is
  still meaningful, Dice against the truth is not).

Cases: the first ``--cases`` LA cases of ``data/LA2018_1p25mm/imagesTr`` (one folder, one command per run).
For each model and TTA setting, every runtime runs the same command (``--device cpu --threads N``) in
alternating order over ``--rounds``; wall time and the peak summed RSS/PSS of the process tree (sampled
every 0.2 s, `bench/common.run_measured`) are recorded. The label maps of the runtimes are then compared
with torch's (Dice per class), and once per model without TTA the probabilities (``--save-probabilities``,
max abs difference). ``--isa AVX2`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` for every child (torch and
OpenVINO honour it) to emulate an AVX2 CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import run_measured  # noqa: E402

SHARED = Path(os.environ.get("AUTOSEG_SHARED", REPO.parent / "shared"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared")


def setup_models(root: Path, trained: "Path | None" = None) -> dict:
    from AutoSegLib.io.work_folder import fold_dir
    import torch

    from AutoSegLib.inference.compiled import export_model
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.models.install import import_models
    from AutoSegLib.models.nnunet_plans import convert_plans
    from AutoSegLib.network.unet import build_network

    models = {}
    synth = root / "models" / "nnunet_synth"
    if not synth.is_dir():
        src = SHARED / "reference" / "nnunet_models" / "Dataset900_Synth" / "nnUNetTrainerCPUBench__nnUNetPlans__3d_fullres"
        import_models([src], root / "models", name="nnunet_synth")
    models["nnunet_synth"] = synth
    la = root / "models" / "la_arch"
    if not (fold_dir(la, "3d_fullres", 0) / "network.onnx").is_file():
        ref = SHARED / "reference" / "LA2018_1p25mm" / "nnUNetPlans.json"
        dataset = json.loads((SHARED / "data" / "LA2018_1p25mm" / "dataset.json").read_text())
        plans = convert_plans(json.loads(ref.read_text()), dataset, ["3d_fullres"], ref)
        fold = fold_dir(la, "3d_fullres", 0)
        fold.mkdir(parents=True, exist_ok=True)
        plans.to_json(la / "plans.json")
        (la / "dataset.json").write_text(json.dumps({k: dataset[k] for k in ("name", "channel_names", "labels",
                                                                              "numTraining", "file_ending")}))
        torch.manual_seed(0)
        net = build_network(plans.configuration("3d_fullres").network, 1, 2)
        torch.save({"network_weights": net.state_dict(), "configuration": "3d_fullres", "num_input_channels": 1,
                    "num_outputs": 2, "epoch": -1}, fold / "checkpoint_final.pt")
        export_model(load_model(la))
    models["la_arch"] = la
    if trained is not None:  # an AutoSeg-trained LA model (a work or model folder), installed like import-model
        dest = root / "models" / "la_trained"
        if dest.exists():
            shutil.rmtree(dest)
        import_models([trained], root / "models", name="la_trained")
        export_model(load_model(dest))
        models["la_trained"] = dest
    return models


def dice(a, b, value) -> float:
    ma, mb = a == value, b == value
    denom = ma.sum() + mb.sum()
    return 1.0 if denom == 0 else float(2.0 * (ma & mb).sum() / denom)


def run(model: Path, inp: Path, out: Path, runtime: str, tta: bool, threads: int, isa: str, probs: bool,
        log: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "AutoSegLib", "predict", "-m", str(model), "-i", str(inp), "-o", str(out),
           "--runtime", runtime, "--device", "cpu", "--threads", str(threads)]
    cmd += [] if tta else ["--no-tta"]
    cmd += ["--save-probabilities"] if probs else []
    return run_measured(cmd, env=env, cwd=REPO, log_path=log)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_runtime"))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtimes", default="torch,openvino")
    ap.add_argument("--models", default="nnunet_synth,la_arch")
    ap.add_argument("--trained-model", type=Path, default=None,
                    help="an AutoSeg-trained LA work or model folder, benchmarked as model la_trained")
    ap.add_argument("--tta", default="off,on")
    ap.add_argument("--isa", default="native")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import numpy as np
    import SimpleITK as sitk

    args.root.mkdir(parents=True, exist_ok=True)
    models = setup_models(args.root, args.trained_model)
    inp = args.root / f"in_{args.cases}"
    if not inp.is_dir():
        inp.mkdir()
        for f in sorted((SHARED / "data" / "LA2018_1p25mm" / "imagesTr").glob("*_0000.nii.gz"))[:args.cases]:
            (inp / f.name).symlink_to(f)
    runtimes = args.runtimes.split(",")
    rows = []
    print(f"{args.cases} LA cases, {args.threads} threads, ISA {args.isa}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    for mname in args.models.split(","):
        model = models[mname]
        for tta in [t == "on" for t in args.tta.split(",")]:
            res = {r: [] for r in runtimes}
            for rnd in range(args.rounds):
                order = runtimes if rnd % 2 == 0 else list(reversed(runtimes))
                for r in order:
                    out = args.root / "out" / f"{mname}_{'tta' if tta else 'notta'}_{r}"
                    m = run(model, inp, out, r, tta, args.threads, args.isa, False, args.root / f"log_{r}.txt")
                    res[r].append(m)
                    print(f"{mname} tta={'on' if tta else 'off'} round {rnd + 1} {r:12s} {m['wall_s']:.1f} s, "
                          f"peak RSS {m['peak_rss_mib']:.0f} MiB, PSS {m['peak_pss_mib']:.0f} MiB", flush=True)
            ref_out = args.root / "out" / f"{mname}_{'tta' if tta else 'notta'}_torch"
            for r in runtimes:
                out = args.root / "out" / f"{mname}_{'tta' if tta else 'notta'}_{r}"
                dices = []
                for f in sorted(ref_out.glob("*.nii.gz")):
                    a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
                    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f.name)))
                    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
                    dices += [dice(a, b, v) for v in labels]
                wall = statistics.median(m["wall_s"] for m in res[r])
                rows.append({"model": mname, "tta": tta, "runtime": r, "wall_s": wall,
                             "wall_per_case_s": wall / args.cases,
                             "peak_rss_mib": max(m["peak_rss_mib"] for m in res[r]),
                             "peak_pss_mib": max(m["peak_pss_mib"] for m in res[r]),
                             "min_dice_vs_torch": min(dices) if dices else float("nan"), "raw": res[r]})
        # probabilities once per model (no TTA): the runtimes against torch
        outs = {}
        for r in runtimes:
            outs[r] = args.root / "out" / f"{mname}_probs_{r}"
            run(model, inp, outs[r], r, False, args.threads, args.isa, True, args.root / f"log_{r}.txt")
        for r in runtimes:
            err = max(float(np.abs(np.load(f)["probabilities"] - np.load(outs[r] / f.name)["probabilities"]).max())
                      for f in sorted(outs["torch"].glob("*.npz")))
            for row in rows:
                if row["model"] == mname and row["runtime"] == r:
                    row["max_prob_diff_notta"] = err
    print("\n| model | TTA | runtime | wall per case (s) | vs torch | peak RSS (MiB) | peak PSS (MiB) | "
          "min Dice vs torch | max prob diff vs torch (no TTA) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        t = [x for x in rows if x["model"] == row["model"] and x["tta"] == row["tta"] and x["runtime"] == "torch"]
        ratio = row["wall_s"] / t[0]["wall_s"] if t else float("nan")
        print(f"| {row['model']} | {'on' if row['tta'] else 'off'} | {row['runtime']} | {row['wall_per_case_s']:.1f} | "
              f"{ratio:.2f} | {row['peak_rss_mib']:.0f} | {row['peak_pss_mib']:.0f} | {row['min_dice_vs_torch']:.4f} | "
              f"{row.get('max_prob_diff_notta', float('nan')):.1e} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
