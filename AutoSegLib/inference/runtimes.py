"""Which runtime runs a model's networks: ``torch``, ``openvino`` or ``onnxruntime`` (`resolve_runtime`).

Nothing here imports torch or a runtime: what is installed is looked up without importing it, and torch is
imported only to confirm a GPU that the hardware shows. The compiled runtimes' files and sessions are
`inference.compiled`.
"""
from __future__ import annotations

import importlib.util
import logging
import os

from AutoSegLib.errors import AutoSegError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
COMPILED = ("openvino", "onnxruntime")  # preference order of ``auto``
PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def torch_installed() -> bool:
    return installed("torch")


def torch_importable() -> bool:
    """Whether ``import torch`` works (imports it: only where torch is about to be used anyway)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _gpu_hardware() -> bool:
    """A cheap look for a GPU torch could use, without importing torch (~1 s and ~300 MB): an NVIDIA driver
    (Linux: /proc/driver/nvidia; elsewhere nvidia-smi on PATH) or Apple silicon (MPS)."""
    import platform
    import shutil
    if os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi"):
        return True
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _torch_accelerator(device: str) -> bool:
    """Whether ``device`` (auto/cpu/cuda/mps) means a torch GPU: an explicit cuda/mps, or auto with one present
    (torch is imported to confirm only when GPU hardware is there)."""
    if device in ("cuda", "mps"):
        return True
    if device != "auto" or not torch_installed() or not _gpu_hardware():
        return False
    try:
        import torch
    except ImportError:
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps and mps.is_available()))


def resolve_runtime(runtime: str = "auto", device: str = "auto") -> str:
    """The runtime that will run the networks: ``torch``, ``openvino`` or ``onnxruntime``.

    ``auto``: torch on CUDA/MPS (an explicit ``device`` or one found by ``auto``); on the CPU the first
    compiled runtime installed (``COMPILED`` order), else torch. An explicit compiled runtime that is not
    installed falls back to torch when torch is installed (with a warning).

    Raises
    ------
    AutoSegError
        Unknown runtime; a compiled runtime asked for a GPU device; nothing usable installed (names the
        package to install).
    """
    runtime, device = str(runtime).lower(), str(device).lower()
    if runtime not in RUNTIMES:
        raise AutoSegError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}.")
    if runtime in COMPILED and device in ("cuda", "mps"):
        raise AutoSegError(f"runtime {runtime!r} runs on the CPU only; use --runtime torch (or auto) with "
                           f"--device {device}.")
    if runtime == "auto":
        if _torch_accelerator(device):
            return "torch"
        for r in COMPILED:
            if installed(r):
                return r
        if torch_installed():
            return "torch"
        raise AutoSegError("no inference runtime is installed: install OpenVINO (`pip install openvino`), "
                           "or ONNX Runtime (`pip install onnxruntime`), or PyTorch (`pip install torch`).")
    if installed(runtime):
        return runtime
    if runtime != "torch" and torch_installed():
        log.warning("runtime %s is not installed (`pip install %s`); predicting with torch instead", runtime,
                    PACKAGES[runtime])
        return "torch"
    other = [r for r in COMPILED if r != runtime and installed(r)]
    hint = f", or choose --runtime {other[0]} (installed)" if other else ""
    raise AutoSegError(f"runtime {runtime!r} is not installed: `pip install {PACKAGES[runtime]}`{hint}.")
