"""Benchmark: one exported network's time per sliding window under OpenVINO's CPU settings (#12).

    .venv/bin/python bench/openvino_modes.py MODEL_FOLD/network.onnx 48x56x48 [windows 8] [rounds 3]

Modes, float32 inference precision, 2 threads, interleaved rounds, best round per mode: the latency hint
with dynamic shapes (what `inference.compiled` uses), the same compiled for the static patch shape, the
throughput hint with 2 streams and 2 requests in flight (AsyncInferQueue), and two windows batched
(a window and its mirror) in one request. Prints seconds per window.
"""
import sys, time, json, numpy as np, openvino as ov
path, patch = sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x"))
n = int(sys.argv[3]) if len(sys.argv) > 3 else 8
core = ov.Core()
data = open(path, "rb").read()
x = np.random.default_rng(0).standard_normal((1, 1, *patch)).astype(np.float32)
def compiled(cfg, shape=None):
    m = core.read_model(data, b"")
    if shape: m.reshape({0: shape})
    return core.compile_model(m, "CPU", cfg)
modes = {}
lat = compiled({"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2})
r = lat.create_infer_request()
def run_lat():
    for _ in range(n): r.infer({0: x})
modes["latency_dyn_2t"] = run_lat
st = compiled({"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}, [1, 1, *patch])
rs = st.create_infer_request()
def run_static():
    for _ in range(n): rs.infer({0: x})
modes["latency_static_2t"] = run_static
tp = compiled({"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2})
q = ov.AsyncInferQueue(tp, 2)
def run_tp():
    for _ in range(n): q.start_async({0: x})
    q.wait_all()
modes["throughput_2streams"] = run_tp
x2 = np.concatenate([x, x[:, :, ::-1].copy()])
def run_b2():
    for _ in range(n // 2): r.infer({0: x2})
modes["latency_dyn_batch2"] = run_b2
best = {k: 1e9 for k in modes}
for rnd in range(int(sys.argv[4]) if len(sys.argv) > 4 else 3):
    for k, f in modes.items():
        t = time.perf_counter(); f(); best[k] = min(best[k], (time.perf_counter() - t) / n)
print(json.dumps({k: round(v, 4) for k, v in best.items()}))
