"""Benchmark: training iterations per second, AutoSeg against the reference's nnUNetTrainer, same machine.

    .venv/bin/python bench/train_throughput.py [--root /tmp/autoseg_bench_train] [--iterations 3]
                                               [--rounds 2] [--variants auto,float32] [--json out.json]

Data: LA2018_1p25mm, 3d_fullres, CPU. Both sides use the same plans (the reference plans its sandbox with
``nnUNetv2_plan_and_preprocess -c 3d_fullres``; AutoSeg's work folder takes those plans, converted, and
preprocesses with its own code): patch 48x80x96, batch 3, the same 5-stage U-Net. Cached under --root.

- reference: ``nnUNetTrainer`` built by its ``get_trainer_from_args`` with ``torch.set_num_threads(cpu
  count)`` as its ``run_training -device cpu`` does, its default augmentation processes (min(12, cpus)),
  ``on_train_start()``, then one warm-up and N timed iterations of ``next(dataloader_train)`` +
  ``train_step``.
- AutoSeg: ``train_fold`` with one epoch of 1 + N iterations, no validation; iteration times from its
  per-iteration progress events (the first, warm-up iteration excluded), data wait from its batch
  stream. Variants: ``auto`` (the defaults: bfloat16 autocast on a CPU with native bf16, 1 augmentation
  worker, torch on every core), ``float32`` (the reference's numerics) and ``bf16_cl`` (bfloat16 +
  channels_last_3d).

Rounds alternate the sides (the machine is shared; alternating spreads the load). Reported: median s/it,
data-wait share, and the speed-up ratio per variant. Also the time one augmentation batch takes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTOSEG_PYTHON, BENCH_PYTHON, BENCH_VENV, REPO, SHARED, bench_env, nnunet_sandbox  # noqa: E402

DATASET_ID = 501
LA = SHARED / "data" / "LA2018_1p25mm"


def prepare(root: Path, dataset: Path = LA, workers: int = 2) -> dict:
    """Reference sandbox (planned + preprocessed 3d_fullres) and AutoSeg work folder with the same plans."""
    root = Path(root)
    ref_root = root / "reference"
    env = nnunet_sandbox(ref_root, dataset, DATASET_ID)
    name = f"Dataset{DATASET_ID:03d}_{dataset.name}"
    pre = Path(env["nnUNet_preprocessed"]) / name
    if not (pre / "nnUNetPlans_3d_fullres").is_dir():
        subprocess.run([str(BENCH_VENV / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                        "3d_fullres", "-np", str(workers), "-npfp", str(workers), "--no_pbar"],
                       env=bench_env(env), check=True, stdout=subprocess.DEVNULL)
    work = root / "autoseg"
    if not (work / "preprocessed").is_dir():
        script = f"""
import json
from pathlib import Path
from AutoSegLib.models.nnunet_plans import convert_plans
from AutoSegLib.preprocessing.dataset import preprocess_dataset
work = Path({str(work)!r}); work.mkdir(parents=True, exist_ok=True)
ref = json.loads(Path({str(pre / 'nnUNetPlans.json')!r}).read_text())
ds = json.loads(Path({str(dataset / 'dataset.json')!r}).read_text())
plans = convert_plans(ref, ds, ["3d_fullres"])
plans.to_json(work / "plans.json")
(work / "dataset.json").write_text(json.dumps(dict(ds, dataset_path={str(dataset.resolve())!r})))
preprocess_dataset({str(dataset)!r}, plans, ["3d_fullres"], work_dir=work, num_workers={workers})
"""
        subprocess.run([str(AUTOSEG_PYTHON), "-c", script], env=bench_env({"PYTHONPATH": str(REPO)}), check=True,
                       cwd=REPO)
    return {"reference_env": env, "dataset_name": name, "reference_preprocessed": pre, "work": work}


def use_reference_split(setup: dict) -> None:
    """Give AutoSeg the reference's splits_final.json (written by the reference trainer on first use), so
    that fold 0 validates the same cases on both sides."""
    src = Path(setup["reference_preprocessed"]) / "splits_final.json"
    dst = Path(setup["work"]) / "splits_final.json"
    if src.is_file():
        dst.write_text(src.read_text())


REFERENCE_SCRIPT = r"""
import json, multiprocessing, os, sys, time, torch
warm, n = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(multiprocessing.cpu_count())
from nnunetv2.run.run_training import get_trainer_from_args
tr = get_trainer_from_args("%d", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
tr.on_train_start()
tr.on_train_epoch_start()
tr.network.train()
out = []
for i in range(warm + n):
    t0 = time.perf_counter(); batch = next(tr.dataloader_train); t1 = time.perf_counter()
    c0 = time.process_time(); tr.train_step(batch); c1 = time.process_time(); t2 = time.perf_counter()
    if i >= warm:
        out.append([t1 - t0, t2 - t1, c1 - c0])
print("RESULT " + json.dumps({"iterations": out, "threads": torch.get_num_threads()}), flush=True)
os._exit(0)
""" % DATASET_ID

AUTOSEG_SCRIPT = r"""
import json, shutil, sys, time
from pathlib import Path
import AutoSegLib.training.epochs as E
import AutoSegLib.training.workers as W
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold
work, n, variant, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
shutil.rmtree(out, ignore_errors=True)
waits, stamps, original = [], [], W.BatchStream.__next__
def timed_next(self):
    before = self.wait_s
    batch = original(self)
    waits.append(self.wait_s - before)
    return batch
W.BatchStream.__next__ = timed_next
cpu, original_step = [], E.train_step
def timed_step(*a, **k):  # CPU seconds (all threads of this process) of one training step
    c0 = time.process_time()
    loss = original_step(*a, **k)
    cpu.append(time.process_time() - c0)
    return loss
E.train_step = timed_step
def progress(event):  # one "progress" event per iteration (each takes > 1 s here)
    if event["event"] == "progress":
        stamps.append(time.perf_counter())
extra = {"auto": {}, "float32": {"precision": "float32"}, "bf16_cl": {"channels_last": True}}[variant]
cfg = TrainingConfig(epochs=1, iterations_per_epoch=n + 1, val_iterations=0, validate_at_end=False, device="cpu", **extra)
fold_dir = train_fold(work, "3d_fullres", 0, cfg, output_dir=out, progress=progress)
conf = json.loads((fold_dir / "training_config.json").read_text())["resolved"]
its = [b - a for a, b in zip(stamps, stamps[1:])]   # the first (warm-up) iteration excluded
print("RESULT " + json.dumps({"iterations": its, "waits": waits[1:], "cpu": cpu[1:], "resolved": conf}), flush=True)
"""


def run_group(cmd, env, cwd, log: Path) -> "tuple[int, str]":
    """Run ``cmd`` in its own process group with output to ``log``; when it exits, end whatever it left
    running (the reference's augmentation processes outlive a main process that exits early)."""
    import signal
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return rc, Path(log).read_text()


def run_reference(setup: dict, n: int) -> dict:
    env = bench_env(setup["reference_env"], threads=os.cpu_count() or 1)
    rc, out = run_group([str(BENCH_PYTHON), "-c", REFERENCE_SCRIPT, "1", str(n)], env, setup["root"],
                        Path(setup["root"]) / "reference_throughput.log")
    line = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if rc != 0 or not line:
        raise RuntimeError(f"reference run failed ({rc}):\n{out[-3000:]}")
    data = json.loads(line[0][7:])
    its = data["iterations"]
    total = sum(a + b for a, b, _ in its)
    return {"s_per_it": total / len(its), "wait_s_per_it": sum(a for a, _, _ in its) / len(its),
            "cpu_s_per_it": sum(c for _, _, c in its) / len(its), "threads": data["threads"], "raw": its}


def autoseg_python(choice: str) -> str:
    """``venv``: AutoSeg's own environment; ``bench``: the reference's environment (AutoSegLib is pure
    Python and its dependencies are there too), so that both sides run on the very same torch build."""
    return str(BENCH_PYTHON if choice == "bench" else AUTOSEG_PYTHON)


def run_autoseg(setup: dict, n: int, variant: str) -> dict:
    out = Path(setup["root"]) / f"autoseg_out_{variant}"
    env = bench_env({"PYTHONPATH": str(REPO)}, threads=os.cpu_count() or 1)
    rc, text = run_group([autoseg_python(setup.get("autoseg_python", "venv")), "-c", AUTOSEG_SCRIPT, str(setup["work"]), str(n), variant, str(out)],
                         env, REPO, Path(setup["root"]) / f"autoseg_throughput_{variant}.log")
    line = [l for l in text.splitlines() if l.startswith("RESULT ")]
    if rc != 0 or not line:
        raise RuntimeError(f"AutoSeg run failed ({rc}):\n{text[-3000:]}")
    data = json.loads(line[0][7:])
    its = data["iterations"]
    return {"s_per_it": sum(its) / len(its), "wait_s_per_it": sum(data["waits"]) / max(len(data["waits"]), 1),
            "cpu_s_per_it": sum(data["cpu"]) / max(len(data["cpu"]), 1), "resolved": data["resolved"], "raw": its}


def augmentation_time(setup: dict, repeats: int = 5) -> float:
    """Seconds to sample + augment one training batch of 3 in one process (what a worker does per batch)."""
    script = r"""
import sys, time, json, numpy as np
from pathlib import Path
from AutoSegLib.planning.plans import Plans
from AutoSegLib.preprocessing.dataset import preprocessed_folder
from AutoSegLib.preprocessing.storage import list_preprocessed_cases
from AutoSegLib.training.sampling import augmentation_patch_size, forced_foreground, rotation_settings
from AutoSegLib.training.workers import BatchSpec, make_batch_function
work = Path(sys.argv[1]); plans = Plans.from_json(work / "plans.json"); plan = plans.configuration("3d_fullres")
folder = preprocessed_folder(work, plans, "3d_fullres")
a, d, m = rotation_settings(plan.patch_size)
spec = BatchSpec(str(folder), tuple(list_preprocessed_cases(folder)), plan.batch_size, tuple(plan.patch_size),
                 augmentation_patch_size(plan.patch_size, a, d), tuple(forced_foreground(plan.batch_size, 0.33)),
                 True, a, d, m)
np.random.seed(0); f = make_batch_function(spec); rng = np.random.default_rng(0); f(rng)
t = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter(); f(rng); t.append(time.perf_counter() - t0)
print("RESULT " + json.dumps(t))
"""
    res = subprocess.run([str(AUTOSEG_PYTHON), "-c", script, str(setup["work"]), str(repeats)],
                         env=bench_env({"PYTHONPATH": str(REPO)}), capture_output=True, text=True, cwd=REPO)
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise RuntimeError(res.stderr[-3000:])
    return statistics.median(json.loads(line[0][7:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/autoseg_bench_train"))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="auto")
    ap.add_argument("--autoseg-python", choices=("venv", "bench"), default="venv",
                    help="run AutoSeg with .venv (default) or with .bench-venv's interpreter (same torch as the reference)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    setup = prepare(args.root)
    setup["root"] = str(args.root)
    setup["autoseg_python"] = args.autoseg_python
    for name, py in (("reference", str(BENCH_PYTHON)), ("autoseg", autoseg_python(args.autoseg_python))):
        ver = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True).stdout.strip()
        print(f"{name}: torch {ver} ({py})", flush=True)
    variants = [v for v in args.variants.split(",") if v]
    results = {"reference": [], **{v: [] for v in variants}}
    for r in range(args.rounds):
        order = ["reference", *variants] if r % 2 == 0 else [*variants, "reference"]
        for side in order:
            t0 = time.time()
            res = run_reference(setup, args.iterations) if side == "reference" else run_autoseg(setup, args.iterations, side)
            results[side].append(res)
            print(f"round {r + 1} {side:10s} {res['s_per_it']:.2f} s/it (waiting for data {res['wait_s_per_it']:.3f} s/it;"
                  f" {res['cpu_s_per_it']:.1f} CPU-s per step)"
                  f"  [{time.time() - t0:.0f} s]", flush=True)
    aug = augmentation_time(setup)
    ref = statistics.median(x["s_per_it"] for x in results["reference"])
    ref_cpu = statistics.median(x["cpu_s_per_it"] for x in results["reference"])
    summary = {"reference_s_per_it": ref, "reference_cpu_s_per_step": ref_cpu, "augmentation_batch_s": aug, "cpu_count": os.cpu_count(), "variants": {},
               "autoseg_python": args.autoseg_python}
    print(f"\nreference nnUNetTrainer: {ref:.2f} s/it  ({1 / ref:.4f} it/s); {ref_cpu:.1f} CPU-s per step")
    for v in variants:
        med = statistics.median(x["s_per_it"] for x in results[v])
        wait = statistics.median(x["wait_s_per_it"] for x in results[v])
        cpu = statistics.median(x["cpu_s_per_it"] for x in results[v])
        summary["variants"][v] = {"s_per_it": med, "wait_s_per_it": wait, "speedup": ref / med, "cpu_s_per_step": cpu,
                                  "cpu_speedup": ref_cpu / cpu, "resolved": results[v][-1]["resolved"]}
        print(f"AutoSeg {v:8s}: {med:.2f} s/it  ({1 / med:.4f} it/s)  x{ref / med:.2f} vs reference (wall);"
              f" waiting for data {wait:.3f} s/it, computing {med - wait:.2f} s/it;"
              f" {cpu:.1f} CPU-s per step, x{ref_cpu / cpu:.2f} vs reference (CPU time)")
    print(f"one augmented batch (sampling + augmentation, one process): {aug:.2f} s")
    summary["raw"] = results
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
