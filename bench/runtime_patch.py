"""One patch of the LA 3d_fullres U-Net: torch float32 vs ONNX Runtime vs OpenVINO, side by side.

    PYTHONPATH=$PWD .venv/bin/python bench/runtime_patch.py [--repeats 6] [--rounds 2] [--threads 2]
        [--isa native,AVX2] [--json out.json]

The network is built from the reference's plans for LA2018_1p25mm (``../shared/reference/LA2018_1p25mm``,
3d_fullres: patch 48x80x96, 5 stages, 32..320 features), He-initialised with a fixed seed, exported once
to ONNX (the same file AutoSeg stores in a model folder, ``inference.compiled.export_onnx``). Each variant
then runs in its own child process (so that the ISA limit and the thread pools apply to it alone), in
alternating order over ``--rounds``; every child times ``--repeats`` calls after one warm-up call on the
same random input and writes its logits; the parent reports the minimum and median seconds per patch and
the largest absolute logit difference to torch float32 of the same ISA.

Variants: ``torch`` (float32, the default CPU path of ``NetworkPredictor``), ``ort`` (ONNX Runtime CPU
provider, all graph optimisations), ``ov_f32`` (OpenVINO CPU, ``INFERENCE_PRECISION_HINT=f32``, dynamic shape),
``ov_f32_static`` (the same compiled for the patch's shape: what AutoSeg does), ``ov_default`` (OpenVINO's default precision: bfloat16 on CPUs with AVX512_BF16/AMX).

ISA: ``native`` runs with whatever the CPU has; ``AVX2`` limits oneDNN (torch, and OpenVINO's oneDNN-based
CPU plugin) with ``ONEDNN_MAX_CPU_ISA=AVX2`` to emulate an AVX2 laptop. ONNX Runtime's own kernels (MLAS)
do not read that variable, so its AVX2 row is the native one, labelled as such. OpenVINO's bfloat16 default
cannot compile the transposed convolutions under the AVX2 limit (a failed row).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUTOSEG_SHARED", REPO.parent / "shared"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
VARIANTS = ("torch", "ort", "ov_f32", "ov_f32_static", "ov_default")

def child_source() -> str:
    """The child's code: one variant, one ISA (set by the parent's environment)."""
    return r"""
import json, sys, time, numpy as np
variant, onnx_path, weights_path, plans_path, x_path, out_path, threads, repeats = sys.argv[1:9]
threads, repeats = int(threads), int(repeats)
x = np.load(x_path)
if variant == "torch":
    import torch
    torch.set_num_threads(threads)
    from AutoSegLib.network.unet import build_network
    from AutoSegLib.planning.plans import Plans
    conf = Plans.from_json(plans_path).configuration("3d_fullres")
    net = build_network(conf.network, 1, 2, deep_supervision=False, initialize=False).eval()
    net.load_state_dict(torch.load(weights_path, weights_only=True))
    xt = torch.from_numpy(x)
    def call():
        with torch.inference_mode():
            return net(xt).numpy()
elif variant == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    def call():
        return sess.run(None, {name: x})[0]
else:
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if variant in ("ov_f32", "ov_f32_static"):
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    t0 = time.perf_counter()
    model = core.read_model(onnx_path)
    if variant == "ov_f32_static":
        model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    compiled = core.compile_model(model, "CPU", cfg)
    compile_s = time.perf_counter() - t0
    req = compiled.create_infer_request()
    def call():
        return req.infer({0: x})[0].copy()
t0 = time.perf_counter()
y = call()
first = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    y = call()
    times.append(time.perf_counter() - t0)
np.save(out_path, np.asarray(y, dtype=np.float32))
extra = {}
if variant.startswith("ov"):
    extra["precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    extra["compile_s"] = compile_s
print("RESULT " + json.dumps({"times": times, "first_s": first, **extra}))
"""


def prepare(tmp: Path) -> dict:
    """Plans (AutoSeg format), He-initialised weights, their ONNX export and one random input."""
    import numpy as np
    import torch

    from AutoSegLib.inference.compiled import export_onnx
    from AutoSegLib.models.nnunet_plans import convert_plans
    from AutoSegLib.network.unet import build_network

    ref = SHARED / "reference" / "LA2018_1p25mm" / "nnUNetPlans.json"
    dataset = SHARED / "data" / "LA2018_1p25mm" / "dataset.json"
    plans = convert_plans(json.loads(ref.read_text()), json.loads(dataset.read_text()), ["3d_fullres"], ref)
    plans_path = tmp / "plans.json"
    plans.to_json(plans_path)
    conf = plans.configuration("3d_fullres")
    torch.manual_seed(0)
    net = build_network(conf.network, 1, 2, deep_supervision=False).eval()
    weights = tmp / "weights.pt"
    torch.save(net.state_dict(), weights)
    onnx_path = tmp / "net.onnx"
    export_onnx(net, 1, len(conf.patch_size), onnx_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, *conf.patch_size)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    return {"onnx": str(onnx_path), "weights": str(weights), "plans": str(plans_path), "x": str(tmp / "x.npy"),
            "patch": list(conf.patch_size)}


def run_child(setup: dict, variant: str, isa: str, tmp: Path, threads: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = tmp / f"y_{variant}_{isa}.npy"
    res = subprocess.run([sys.executable, "-c", child_source(), variant, setup["onnx"], setup["weights"],
                          setup["plans"], setup["x"], str(out), str(threads), str(repeats)],
                         env=env, capture_output=True, text=True)
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if res.returncode or not line:
        err = [l for l in res.stderr.splitlines() if l.strip()]
        print(f"{variant} ({isa}) failed: {err[-1] if err else res.returncode}", flush=True)
        return {"failed": (err[-1] if err else str(res.returncode))[:200]}
    return dict(json.loads(line[0][7:]), out=str(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default="native,AVX2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import numpy as np

    isas = [i for i in args.isa.split(",") if i]
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="autoseg-runtime-patch-") as tmp:
        tmp = Path(tmp)
        setup = prepare(tmp)
        print(f"patch {setup['patch']}, {args.threads} threads, {args.repeats} timed calls per child, "
              f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}", flush=True)
        results = {(v, i): [] for v in variants for i in isas}
        diffs = {}
        for r in range(args.rounds):
            order = [(v, i) for i in isas for v in variants]
            if r % 2:
                order.reverse()
            for v, i in order:
                res = run_child(setup, v, i, tmp, args.threads, args.repeats)
                if "failed" in res:
                    continue
                results[(v, i)].append(res)
                print(f"round {r + 1} {v:10s} {i:6s} min {min(res['times']):.3f} s "
                      f"(first call {res['first_s']:.2f} s{', ' + res.get('precision', '') if 'precision' in res else ''})",
                      flush=True)
        results = {k: v for k, v in results.items() if v}
        for v, i in results:
            ref = np.load(results[("torch", i)][-1]["out"]) if ("torch", i) in results else None
            y = np.load(results[(v, i)][-1]["out"])
            diffs[(v, i)] = float(np.abs(y - ref).max()) if ref is not None else float("nan")
        rows = []
        print("\n| ISA | runtime | precision | min s/patch | median s/patch | vs torch (min) | max abs logit diff to torch |")
        print("|---|---|---|---|---|---|---|")
        for i in isas:
            t_torch = min(t for res in results.get(("torch", i), []) for t in res["times"]) if ("torch", i) in results else None
            for v in variants:
                if (v, i) not in results:
                    print(f"| {i} | {v} | | failed | | | |")
                    continue
                times = [t for res in results[(v, i)] for t in res["times"]]
                prec = results[(v, i)][-1].get("precision", "f32")
                isa_label = i if not (v == "ort" and i != "native") else f"{i} (MLAS: native)"
                ratio = f"{min(times) / t_torch:.2f}" if t_torch else ""
                print(f"| {isa_label} | {v} | {prec} | {min(times):.3f} | {statistics.median(times):.3f} | {ratio} | "
                      f"{diffs[(v, i)]:.2e} |")
                rows.append({"isa": i, "variant": v, "precision": prec, "times": times, "max_abs_diff": diffs[(v, i)]})
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
