"""A short measurement of what prediction costs on this machine, run in a clean child process and cached.

`measure` (called by `inference.estimate`) starts ``python -m AutoSegLib.inference.calibrate MODEL CONFIG
RUNTIME`` and reads one JSON line back. The child measures, without the parent's memory in the way:

- ``base_mib``: resident memory after importing what prediction imports (numpy, SciPy, SimpleITK, AutoSeg's
  inference modules, the runtime);
- ``session_mib``, ``session_seconds``: loading one fold's network (compiled runtime: reading, verifying and
  compiling the exported file; torch: building the network) and its first call (OpenVINO prepares a
  dynamic-shape network for the patch's shape then);
- ``import_seconds``: importing each module prediction imports on first use (`lazy_imports`);
- ``patch_seconds``: one forward pass of one window (batch 1, the configuration's patch; median of 5 after a
  warm-up), ``stitch_seconds``: what one window adds in the numpy stitcher (Gaussian weighting, float16
  accumulation), and ``activation_mib``: the peak memory it adds (Linux: the high-water mark reset through
  ``/proc/self/clear_refs``; elsewhere 4 bytes per feature-map element of `network.memory.feature_map_size`);
- ``export_seconds``, ``export_mib`` (compiled runtime, model not exported yet): importing torch and exporting
  the network, what the export on first use costs;
- ``resample_seconds_per_voxel`` (per output voxel, for spline orders 1 and 3 as ``resample_image`` does
  them) and ``voxel_seconds`` (per image voxel: reading and writing a compressed NIfTI, cropping to the non-zero region, normalising) and
  ``class_voxel_seconds`` (per class and voxel: softmax, argmax).

The network's timing depends on the network and the runtime, so its entry is keyed by machine, runtime,
threads, architecture and patch (not the weights); the per-voxel costs by machine only. The cache is
``$XDG_CACHE_HOME/autoseg/predict_calibration.json`` (``~/.cache`` when unset), next to the training
calibration of `training.calibration`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CACHE_VERSION = 3
NETWORK_KEYS = ("base_mib", "import_seconds", "session_mib", "session_seconds", "patch_seconds", "stitch_seconds",
                "activation_mib")
PIPELINE_SHAPE = (48, 96, 96)  # synthetic volume for the per-voxel costs (0.44 M voxels: ~1 s in all)


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoseg" / "predict_calibration.json"


def machine_key() -> str:
    """CPU model, the vector extensions that matter, core count (no torch import)."""
    import platform
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and ":" in line:
                have = set(line.split(":", 1)[1].split())
                flags = ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
                break
    except OSError:
        pass
    return f"{model} [{flags}] {os.cpu_count()} cores"


def network_key(model, configuration: str, runtime: str, threads: Optional[int]) -> str:
    conf = model.plans.configuration(configuration)
    cm = model.configurations[configuration]
    net = json.dumps([str(conf.network), list(conf.patch_size), cm.num_input_channels, cm.num_outputs])
    return (f"{machine_key()} | {runtime} | {threads or 'default'} threads | "
            f"{hashlib.sha256(net.encode()).hexdigest()[:16]}")


def measure(model, configuration: str, runtime: str, progress=None) -> dict:
    """The calibration for this machine, model configuration and runtime (cached; measured once in a child
    process, a few seconds)."""
    from AutoSegLib.inference.compiled import export_status, onnx_path, threads_setting
    from AutoSegLib.inference.runtimes import COMPILED
    from AutoSegLib.progress import emit

    threads = threads_setting()
    path = cache_path()
    from AutoSegLib.io.cache import read_entries, write_entries
    entries = read_entries(path, CACHE_VERSION)
    key_net, key_pipe = network_key(model, configuration, runtime, threads), f"{machine_key()} | pipeline"
    exported = runtime not in COMPILED or all(export_status(fw) == "ok"
                                              for fw in model.configurations[configuration].folds.values())
    if key_net in entries and key_pipe in entries and (exported or "export_seconds" in entries[key_net]):
        return {**entries[key_pipe], **entries[key_net]}
    emit(progress, "stage", stage="estimate",
         message=f"measuring prediction speed on this machine ({runtime}): a few seconds, once")
    spec = network_spec(model, configuration)
    import shutil
    import tempfile
    onnx, export, tmp = "", {}, tempfile.mkdtemp(prefix="autoseg-calibrate-")
    try:
        if runtime in COMPILED:  # the fold's exported network; else a random-weight one exported for the purpose
            fw = next(iter(model.configurations[configuration].folds.values()))
            if export_status(fw) == "ok":
                onnx = str(onnx_path(fw))
            else:
                export = _run_child([spec, runtime, "", f"export:{tmp}"])
                onnx = export.pop("onnx")
        result = _run_child([spec, runtime, onnx, "pipeline" if key_pipe not in entries else ""])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(export)
    net = {k: result[k] for k in NETWORK_KEYS}
    net.update({k: result[k] for k in ("export_seconds", "export_mib") if k in result})
    net["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries[key_net] = net
    if "voxel_seconds" in result:
        entries[key_pipe] = {k: result[k] for k in ("resample_seconds_per_voxel", "voxel_seconds",
                                                     "class_voxel_seconds")}
    write_entries(path, CACHE_VERSION, entries, "prediction calibration")
    return {**entries[key_pipe], **entries[key_net]}


def network_spec(model, configuration: str) -> str:
    """What the child needs to build the configuration's network, as JSON (the child loads no model)."""
    from dataclasses import asdict
    conf, cm = model.plans.configuration(configuration), model.configurations[configuration]
    return json.dumps({"network": asdict(conf.network), "patch_size": list(conf.patch_size),
                       "num_input_channels": cm.num_input_channels, "num_outputs": cm.num_outputs,
                       "trained_precision": cm.trained_precision})


# ------------------------------------------------------------------------------------------------ child side
def _network(spec: str):
    """(topology, patch size, input channels, outputs, trained precision) from `network_spec`'s JSON."""
    from AutoSegLib.io.jsonfile import parse_json
    from AutoSegLib.network.topology import NetworkTopology
    from AutoSegLib.planning.plans import record_from_dict

    d = parse_json(spec, "the calibration child's arguments", expect=dict)
    topology = record_from_dict(NetworkTopology, d["network"], "the calibration child's network")
    return topology, tuple(d["patch_size"]), int(d["num_input_channels"]), int(d["num_outputs"]), \
        d.get("trained_precision")


def lazy_imports(runtime: str) -> tuple:
    """Modules prediction imports on first use (after the estimate is printed), slowest first."""
    return ("torch" if runtime == "torch" else runtime, "scipy.interpolate", "scipy.sparse", "scipy.ndimage",
            "SimpleITK")


def _status_mib(field: str) -> Optional[float]:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Resident memory of this process (MiB)."""
    rss = _status_mib("VmRSS")
    if rss is not None:
        return rss
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> Optional[float]:
    return _status_mib("VmHWM")


def _time(fn, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` calls after a warm-up (the median, not the minimum: on a shared machine
    the estimate should say what a run takes, not what it takes at best)."""
    import statistics
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(spec: str, runtime: str, onnx: str, pipeline: bool) -> dict:
    imports = {}
    for module in lazy_imports(runtime):  # timed one by one: the estimate adds those its process still lacks
        t0 = time.perf_counter()
        __import__(module)
        imports[module] = time.perf_counter() - t0
    import numpy as np

    import AutoSegLib.inference.files  # noqa: F401
    import AutoSegLib.inference.predict  # noqa: F401
    from AutoSegLib.inference.compiled import load_session, threads_setting
    from AutoSegLib.network.memory import feature_map_size

    topology, patch_size, n_in, n_out, trained_precision = _network(spec)
    out = {"base_mib": rss_mib(), "import_seconds": imports}
    t0, mark = time.perf_counter(), out["base_mib"]
    if runtime == "torch":
        import torch

        from AutoSegLib.inference.runner import NetworkPredictor, resolve_precision
        from AutoSegLib.network.unet import build_network
        if threads_setting():
            torch.set_num_threads(threads_setting())
        dev = torch.device("cpu")
        net = build_network(topology, n_in, n_out, deep_supervision=False)
        predictor = NetworkPredictor(net, dev, resolve_precision("auto", dev, trained_precision))

        def run(x):
            with torch.inference_mode():
                return predictor(torch.from_numpy(x))
    else:
        run = load_session(onnx, runtime, threads_setting(), verify=False)
    out["session_seconds"] = time.perf_counter() - t0
    out["session_mib"] = max(rss_mib() - mark, 0.0)
    x = np.random.default_rng(0).standard_normal((1, n_in, *patch_size)).astype(np.float32)
    before = rss_mib()  # before the first run: a runtime may allocate its buffers then and keep them
    exact = _peak_reset()
    t0 = time.perf_counter()
    run(x)  # the first call at a shape: OpenVINO's dynamic-shape network prepares it then
    first = time.perf_counter() - t0
    out["patch_seconds"] = _time(lambda: run(x), 5)
    out["session_seconds"] += max(first - out["patch_seconds"], 0.0)
    peak = _peak_mib() if exact else None
    # one window through the stitcher (Gaussian weighting, float16 accumulation) costs more than the network
    from AutoSegLib.inference.sliding_window import predict_sliding_window_numpy
    as_numpy = (lambda b: run(b).numpy()) if runtime == "torch" else run
    window = _time(lambda: predict_sliding_window_numpy(x[0], as_numpy, patch_size, n_out), 3)
    out["stitch_seconds"] = max(window - out["patch_seconds"], 0.0)
    fm = feature_map_size(topology, patch_size, n_in, n_out) * 4 / 2 ** 20
    out["activation_mib"] = max(peak - before, 0.0) if peak is not None else fm
    if pipeline:
        out.update(_pipeline_costs())
    return out


def _export_child(spec: str, folder: str) -> dict:
    """Export the configuration's network with random weights into ``folder`` and check it, as the export on
    first use does (torch import, export, check with every installed runtime): its time and memory."""
    from AutoSegLib.inference.compiled import _check_export, export_onnx
    topology, patch_size, n_in, n_out, _ = _network(spec)
    t0, m0 = time.perf_counter(), rss_mib()
    from AutoSegLib.network.unet import build_network  # imports torch
    net = build_network(topology, n_in, n_out, deep_supervision=False)
    path = export_onnx(net, n_in, len(patch_size), Path(folder) / "network.onnx")
    _check_export(net, path, n_in, patch_size)
    return {"export_seconds": time.perf_counter() - t0, "export_mib": max(rss_mib() - m0, 0.0), "onnx": str(path)}


def _pipeline_costs() -> dict:
    import tempfile

    import numpy as np

    from AutoSegLib.inference.export import logits_to_probabilities
    from AutoSegLib.io.geometry import Geometry
    from AutoSegLib.io.images import read_case, write_image
    from AutoSegLib.io.labels import LabelLayout
    from AutoSegLib.planning.plans import ResamplingSettings
    from AutoSegLib.preprocessing.cropping import crop_to_nonzero
    from AutoSegLib.preprocessing.normalization import normalize_image
    from AutoSegLib.preprocessing.resampling import resample_image

    shape = PIPELINE_SHAPE
    n = float(np.prod(shape))
    rng = np.random.default_rng(0)
    z = np.linspace(0, 1, shape[0])[:, None, None]
    img = (200 * z + rng.normal(0, 10, shape)).astype(np.int16)
    geo = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "img_0000.nii.gz"
        write_image(img, geo, src)
        labels = (img > 100).astype(np.uint8)

        def io_cycle():
            arr, g = read_case([src], check=True)
            crop_to_nonzero(arr)
            normalize_image(arr[0], "zscore")
            write_image(labels, g, Path(tmp) / "seg.nii.gz")
        out["voxel_seconds"] = _time(io_cycle, 2) / n
    layout = LabelLayout.from_dataset_labels({"background": 0, "a": 1, "b": 2})
    logits = rng.standard_normal((3, *shape)).astype(np.float16)
    out["class_voxel_seconds"] = _time(lambda: logits_to_probabilities(logits, layout, False), 2) / (3 * n)
    data = rng.standard_normal((1, *shape))
    per = {}
    for order in (1, 3):
        settings = ResamplingSettings(order, 1, order, 0, 3.0, None)
        new = tuple(int(s * 1.25) for s in shape)
        per[str(order)] = _time(lambda: resample_image(data, (1.0, 1.0, 1.0), new, settings), 1) / float(np.prod(new))
    out["resample_seconds_per_voxel"] = per
    return out


def _run_child(args) -> dict:
    cmd = [sys.executable, "-m", "AutoSegLib.inference.calibrate", *args]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring prediction speed failed: {done.stderr.strip()[-500:]}")
    from AutoSegLib.io.jsonfile import parse_json
    return parse_json(lines[-1], "the calibration child's output", expect=dict)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, runtime, onnx, pipeline = (argv + [""] * 4)[:4]
    logging.basicConfig(level=logging.WARNING)
    if pipeline.startswith("export:"):
        print(json.dumps(_export_child(spec, pipeline[len("export:"):])))
        return 0
    print(json.dumps(_child(spec, runtime, onnx, pipeline == "pipeline")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
