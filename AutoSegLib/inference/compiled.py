"""Compiled CPU inference: each fold's network exported to ONNX and run by OpenVINO or ONNX Runtime.

Why: a runtime built for CPU inference is both a lighter install than PyTorch and faster on the CPU
(``bench/runtime_patch.py``: one LA 3d_fullres patch). With a runtime installed and the networks exported,
prediction never imports torch.

Files, beside each fold's checkpoint (``trained/<configuration>/fold_<k>/``)::

    network.onnx        the network (opset 17; dynamic batch and spatial axes; float32; no external data)
    network.onnx.json   {format, sha256 of network.onnx, checkpoint (size, sha256), input_channels,
                         outputs, patch_size, check: {runtime, max_abs_diff, tolerance, scale}}

Both are written by ``export_fold`` (torch needed), when a model is exported (``export-model``), installed
or imported (``import-model``), or on first compiled use of a folder without them. Export checks the file
against torch on a random input of the configuration's patch size (seed 0): the largest absolute logit
difference must stay within ``EXPORT_TOLERANCE`` times ``max(1, max |torch logit|)``; a larger one
refuses the export. Loading never unpickles anything (ONNX is a protobuf); the recorded SHA-256 is
checked first, so a damaged file is a clear error rather than a runtime crash.

Runtimes (`inference.runtimes` chooses one): ``openvino`` (float32 inference precision forced: on CPUs with
AVX512_BF16/AMX its default is bfloat16, off by ~1e-2 in probability), ``onnxruntime`` (CPU provider),
``torch``; ``auto`` takes the compiled one that is installed (OpenVINO first: the faster on every CPU
measured) on the CPU, torch on CUDA/MPS.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from AutoSegLib.io.atomic import file_sha256
from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.runtimes import COMPILED, PACKAGES, installed, torch_importable
from AutoSegLib.progress import ProgressCallback, emit

log = logging.getLogger(__name__)

ONNX_NAME = "network.onnx"
SIDECAR_NAME = "network.onnx.json"
OPSET = 17
EXPORT_TOLERANCE = 1e-3  # max |runtime - torch| logit, relative to max(1, max |torch logit|)
FORMAT = 1


# ---------------------------------------------------------------------------------------------------- files

def onnx_path(fold_weights) -> Path:
    """Where the exported network of a ``models.folder.FoldWeights`` lives (beside its checkpoint)."""
    return Path(fold_weights.path).parent / ONNX_NAME


def _read_sidecar(path: Path) -> Optional[dict]:
    side = path.parent / SIDECAR_NAME
    from AutoSegLib.io.jsonfile import read_json_or_none
    d = read_json_or_none(side)
    return d if isinstance(d, dict) and d.get("format") == FORMAT else None


def _checkpoint_matches(record: dict, checkpoint: Path) -> bool:
    """Whether the checkpoint is the one the export was made from (size first; SHA-256 only when the
    modification time differs from the one recorded: extraction from an archive changes it)."""
    ck = record.get("checkpoint") or {}
    try:
        st = checkpoint.stat()
    except OSError:
        return True  # no checkpoint (a torch-free install of exported networks only): nothing to compare
    if st.st_size != ck.get("size"):
        return False
    if st.st_mtime_ns == ck.get("mtime_ns"):
        return True
    return file_sha256(checkpoint) == ck.get("sha256")


def export_status(fold_weights) -> str:
    """``ok``, ``missing`` (no network.onnx or no record) or ``stale`` (the checkpoint changed since)."""
    path = onnx_path(fold_weights)
    record = _read_sidecar(path)
    if not path.is_file() or record is None:
        return "missing"
    return "ok" if _checkpoint_matches(record, Path(fold_weights.path)) else "stale"


# ---------------------------------------------------------------------------------------------------- export

def export_onnx(network, num_input_channels: int, ndim: int, path: "str | Path") -> Path:
    """Export an eval-mode network (deep supervision off) to ONNX: input ``input`` (B, C, *spatial) float32,
    output ``logits`` (B, K, *spatial); batch and spatial axes dynamic. Written atomically."""
    import warnings

    import torch

    from AutoSegLib.io.atomic import atomic_path

    network.deep_supervision = False
    network.eval()
    spatial = tuple(16 * (i + 2) for i in range(ndim))  # any valid size: the axes are dynamic
    x = torch.zeros((1, num_input_channels, *spatial))
    axes = {0: "batch", **{i + 2: f"s{i}" for i in range(ndim)}}
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript exporter is deprecated but needs no extra package (the dynamo one needs onnxscript);
        # instance norm always normalises by the input's statistics, which is what "train=True" exports
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(network, (x,), str(tmp), dynamo=False, input_names=["input"], output_names=["logits"],
                              opset_version=OPSET, dynamic_axes={"input": axes, "logits": axes},
                              do_constant_folding=True)
    return path


def _check_export(network, path: Path, num_input_channels: int, patch_size: Sequence[int]) -> dict:
    """Run the exported file with the installed runtimes and compare with torch; AutoSegError when off."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, num_input_channels, *patch_size)).astype(np.float32)
    with torch.inference_mode():
        ref = network(torch.from_numpy(x)).float().numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    checks = {}
    for runtime in COMPILED:
        if not installed(runtime):
            continue
        y = load_session(path, runtime, verify=False)(x)
        diff = float(np.abs(y - ref).max())
        checks[runtime] = {"max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE * scale, "scale": scale}
        if not diff <= EXPORT_TOLERANCE * scale:
            raise AutoSegError(f"{path}: the exported network differs from torch by {diff:.3g} in logits under "
                               f"{runtime} (allowed {EXPORT_TOLERANCE * scale:.3g}); not using it.")
    if not checks:
        log.warning("%s: no compiled runtime installed to check the export against torch", path)
    return checks


def export_fold(plan, num_input_channels: int, num_outputs: int, fold_weights, dest_dir: "str | Path | None" = None
                ) -> Path:
    """Export one fold's network to ``dest_dir/network.onnx`` (default: beside its checkpoint), check it
    against torch, and write its record. Returns the ONNX path.

    Parameters
    ----------
    plan : planning.plans.ConfigurationPlan
    num_input_channels, num_outputs : int
    fold_weights : models.folder.FoldWeights
    dest_dir : path, optional

    Raises
    ------
    AutoSegError
        torch missing, or the export disagrees with torch (see ``EXPORT_TOLERANCE``).
    """
    if not torch_importable() or not installed("onnx"):
        raise AutoSegError(f"{fold_weights.path}: exporting a network needs PyTorch and the onnx package "
                           f"(`pip install 'autoseg[train]'`, or `pip install torch onnx`).")
    from AutoSegLib.network.unet import build_network

    dest = Path(dest_dir) if dest_dir is not None else Path(fold_weights.path).parent
    dest.mkdir(parents=True, exist_ok=True)
    net = build_network(plan.network, num_input_channels, num_outputs, deep_supervision=False, initialize=False)
    net.load_state_dict(fold_weights.state_dict(), strict=True)
    net.eval()
    path = export_onnx(net, num_input_channels, len(plan.patch_size), dest / ONNX_NAME)
    try:
        checks = _check_export(net, path, num_input_channels, plan.patch_size)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    ck = Path(fold_weights.path)
    st = ck.stat()
    record = {"format": FORMAT, "sha256": file_sha256(path), "opset": OPSET,
              "checkpoint": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(ck)},
              "input_channels": int(num_input_channels), "outputs": int(num_outputs),
              "patch_size": [int(p) for p in plan.patch_size], "check": checks,
              "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from AutoSegLib.io.atomic import write_json
    write_json(dest / SIDECAR_NAME, record)
    return path


def export_model(model, configurations: Optional[Sequence[str]] = None, folds: Optional[Sequence[str]] = None,
                 only_missing: bool = True, progress: Optional[ProgressCallback] = None) -> List[Path]:
    """Export every (selected) fold of ``model`` (a ``models.folder.Model``) beside its checkpoint.

    ``only_missing``: skip folds whose export is present and matches their checkpoint. Returns the ONNX
    files written."""
    written = []
    for name, cm in model.configurations.items():
        if configurations and name not in configurations:
            continue
        plan = model.plans.configuration(name)
        for fold, fw in cm.folds.items():
            if folds and fold not in [str(f) for f in folds]:
                continue
            if only_missing and export_status(fw) == "ok":
                continue
            emit(progress, "log", level="info", message=f"exporting {name} fold {fold} to ONNX for the CPU runtimes")
            t0 = time.perf_counter()
            written.append(export_fold(plan, cm.num_input_channels, cm.num_outputs, fw))
            log.info("exported %s fold %s in %.1f s", name, fold, time.perf_counter() - t0)
    return written


def ensure_exported(model, configuration: str, folds: Sequence[str], progress: Optional[ProgressCallback] = None
                    ) -> Dict[str, Path]:
    """The exported network of each fold, exporting missing or stale ones first (with a message).

    Raises
    ------
    AutoSegError
        A fold lacks its export and it cannot be made: torch is not installed, or the folder is read-only.
    """
    cm = model.configurations[configuration]
    out = {}
    for fold in folds:
        fw = cm.folds[fold]
        status = export_status(fw)
        path = onnx_path(fw)
        if status != "ok":
            why = "has no exported network" if status == "missing" else "was exported from another checkpoint"
            if not torch_importable():
                raise AutoSegError(f"{path.parent}: {configuration} fold {fold} {why} ({ONNX_NAME}), and making one "
                                   f"needs PyTorch. Install torch once (`pip install torch`) or predict with a model "
                                   f"exported by `autoseg export-model` / `autoseg import-model`.")
            if not os.access(path.parent, os.W_OK):
                raise AutoSegError(f"{path.parent}: {configuration} fold {fold} {why} ({ONNX_NAME}) and the folder is "
                                   f"read-only. Re-install the model with `autoseg import-model` into a writable "
                                   f"folder, or use --runtime torch.")
            emit(progress, "log", level="info",
                 message=f"{configuration} fold {fold} {why}: exporting it now (once; about a second per fold)")
            export_fold(model.plans.configuration(configuration), cm.num_input_channels, cm.num_outputs, fw)
        out[fold] = path
    return out


# ---------------------------------------------------------------------------------------------------- running

def _verify_file(path: Path) -> None:
    record = _read_sidecar(path)
    if not path.is_file():
        raise AutoSegError(f"{path}: exported network not found.")
    if record is None:
        raise AutoSegError(f"{path.parent / SIDECAR_NAME}: missing or unreadable record of the exported network; "
                           f"re-export the model (`autoseg export-model`, or delete {ONNX_NAME} to re-export on use).")
    if file_sha256(path) != record.get("sha256"):
        raise AutoSegError(f"{path}: the exported network is damaged (its SHA-256 does not match "
                           f"{SIDECAR_NAME}). Delete it to re-export from the checkpoint, or re-install the model.")


def load_session(path: "str | Path", runtime: str, threads: Optional[int] = None, verify: bool = True
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``batch (B, C, *spatial) float32 -> logits (B, K, *spatial) float32`` for an ONNX file.

    ``threads``: intra-op threads (default: the
    runtime's). The file is read into memory and handed over as bytes, so that it cannot name external
    data files to read.

    Raises
    ------
    AutoSegError
        Damaged file (checksum, or the runtime cannot parse it), or runtime not installed.
    """
    path = Path(path)
    if verify:
        _verify_file(path)
    if not installed(runtime):
        raise AutoSegError(f"runtime {runtime!r} is not installed: `pip install {PACKAGES.get(runtime, runtime)}`.")
    data = path.read_bytes()
    try:
        if runtime == "onnxruntime":
            return _ort_session(data, threads)
        if runtime == "openvino":
            return _ov_session(data, threads)
    except AutoSegError:
        raise
    except Exception as exc:  # protobuf parse errors, graph errors: the file is not what it should be
        raise AutoSegError(f"{path}: {runtime} cannot load the exported network ({type(exc).__name__}: "
                           f"{str(exc)[:300]}). Delete it to re-export from the checkpoint.") from None
    raise AutoSegError(f"unknown compiled runtime {runtime!r}; choose one of {COMPILED}.")


def _ort_session(data: bytes, threads: Optional[int]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
    return run


def _ov_session(data: bytes, threads: Optional[int]):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(data, b"")  # ONNX bytes; empty weights: everything is inside the file
    # f32: OpenVINO's CPU default is bfloat16 where the CPU has it (AVX512_BF16/AMX), ~1e-1 off in logits.
    # Dynamic shapes: compiling for the patch's static shape measured no faster (bench/runtime_patch.py).
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    request = core.compile_model(model, "CPU", cfg).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[0].copy()  # buffer is reused
    return run


def threads_setting() -> Optional[int]:
    """Intra-op threads for the compiled runtimes: ``AUTOSEG_THREADS`` when set, else the runtime's default."""
    v = os.environ.get("AUTOSEG_THREADS")
    return int(v) if v and v.isdigit() and int(v) > 0 else None


def _session(model, path: Path, runtime: str):
    """The fold's loaded network; kept on the model when it caches weights (several cases in a row: each
    network is read, verified and compiled once)."""
    if not getattr(model, "cache_weights", False):
        return load_session(path, runtime, threads_setting())
    cache = model.__dict__.setdefault("_compiled_sessions", {})
    key = (str(path), runtime)
    if key not in cache:
        cache[key] = load_session(path, runtime, threads_setting())
    return cache[key]


def predict_logits_compiled(model, configuration: str, data: np.ndarray, fold_names: Sequence[str], runtime: str,
                            tta: bool = True, step_size: float = 0.5, batch_size: int = 1,
                            progress: Optional[ProgressCallback] = None, statistics=None) -> np.ndarray:
    """``runner.predict_logits`` with a compiled runtime: fold-averaged stitched logits, numpy float16
    (K, *spatial); the same windows, weights, mirroring and float16 accumulation as the torch path."""
    from AutoSegLib.inference.sliding_window import count_windows, predict_sliding_window_numpy

    cm = model.configurations[configuration]
    conf = model.plans.configuration(configuration)
    paths = ensure_exported(model, configuration, fold_names, progress)
    mirror = tuple(cm.mirror_axes) if tta else ()
    data = np.ascontiguousarray(data, dtype=np.float32)
    total = None
    for i, fold in enumerate(fold_names):
        predictor = _session(model, paths[fold], runtime)
        log.info("predicting %s fold %s with %s: %d windows, mirror axes %s", configuration, fold, runtime,
                 count_windows(tuple(data.shape[1:]), conf.patch_size, step_size), mirror)
        stage = f"predict {configuration} fold {fold} ({i + 1}/{len(fold_names)})"
        logits = predict_sliding_window_numpy(data, predictor, conf.patch_size, cm.num_outputs, step_size,
                                              mirror_axes=mirror, batch_size=batch_size, progress=progress, stage=stage,
                                              statistics=statistics)
        del predictor
        if total is None:
            total = logits
        else:
            total += logits  # float16 sum, as the torch path
        del logits
    if len(fold_names) > 1:
        total /= np.float16(len(fold_names))
    return total
