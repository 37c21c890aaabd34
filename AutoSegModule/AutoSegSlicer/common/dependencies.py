"""Python dependencies of the child process, installed on first use after asking; never at import time.

Segmenting needs no PyTorch (issue #12): the networks run in OpenVINO from each fold's exported
``network.onnx``. What is asked for follows pyproject.toml:

- segmenting (Apply, batch, adding a model archive): the package's base dependencies,
  `INFERENCE_REQUIREMENTS` (numpy and SimpleITK are Slicer's own and never asked for there);
- training: additionally torch, from the PyTorch extension (its PyTorchUtils logic installs the right
  build, CUDA or CPU, after asking the user), and the ``train`` extra's other packages
  (`TRAINING_REQUIREMENTS`).

Packages are installed with ``slicer.packaging.pip_ensure`` (Slicer 5.12+: asks, shows progress, offers a
restart) or, before 5.12, ``slicer.util.pip_install`` after a confirmation. Everything Slicer-specific is
passed in (``confirm``, ``pip_install``, ``torch_logic``) so the decisions are tested headless.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from AutoSegSlicer.common.runner import hidden_console_kwargs

log = logging.getLogger(__name__)

#: pip requirement -> import name: pyproject.toml's base dependencies (what segmenting needs; no torch).
INFERENCE_REQUIREMENTS = {
    "numpy>=1.24": "numpy",
    "scipy>=1.10": "scipy",
    "SimpleITK>=2.2": "SimpleITK",
    "openvino>=2024.0": "openvino",
}
#: The rest of pyproject.toml's ``train`` extra (torch itself comes from the PyTorch extension).
TRAINING_REQUIREMENTS = {
    "batchgenerators>=0.25": "batchgenerators",
    "matplotlib>=3.6": "matplotlib",
    "onnx>=1.15": "onnx",
}
#: What Apply checks (kept under its old name; tests may add to it).
REQUIREMENTS = INFERENCE_REQUIREMENTS
#: torch.amp.GradScaler("cuda") (AutoSegLib.training.trainer) exists from torch 2.3.
TORCH_MINIMUM = (2, 3)
TORCH_REQUIREMENT = ">=%d.%d" % TORCH_MINIMUM


def installed_torch_version() -> Optional[str]:
    """The installed torch's version from its metadata (nothing imported), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> Tuple[int, ...]:
    """'2.1.2+cu118' -> (2, 1, 2); unparsable parts stop the tuple."""
    out = []
    for part in str(version).split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def missing_requirements(is_importable: Callable[[str], bool] = None,
                         requirements: Optional[Dict[str, str]] = None) -> List[str]:
    """The ``requirements`` (default `REQUIREMENTS`) whose module cannot be found (without importing anything)."""
    is_importable = is_importable or (lambda name: importlib.util.find_spec(name) is not None)
    requirements = REQUIREMENTS if requirements is None else requirements
    return [req for req, module in requirements.items() if not is_importable(module)]


def required(training: bool) -> Dict[str, str]:
    """pip requirement -> import name for segmenting, or for training (segmenting's plus the train extra)."""
    return {**REQUIREMENTS, **TRAINING_REQUIREMENTS} if training else dict(REQUIREMENTS)


def ensure_dependencies(confirm: Callable[[str], bool], pip_install: Callable[[List[str]], None],
                        torch_logic=None, is_importable: Callable[[str], bool] = None,
                        pip_ensure: Optional[Callable] = None,
                        torch_version: Callable[[], Optional[str]] = installed_torch_version,
                        training: bool = False) -> bool:
    """Make sure what segmenting (or, with ``training``, training) needs is importable, asking before installing.

    Segmenting needs `INFERENCE_REQUIREMENTS` only: PyTorch is neither needed nor asked for. Training also
    needs torch (>= `TORCH_MINIMUM`) and `TRAINING_REQUIREMENTS`. An installed torch older than
    `TORCH_MINIMUM` is upgraded through PyTorchUtils (which asks); Slicer should then be restarted (its own
    process may hold the old torch), which the user is told.

    Parameters
    ----------
    confirm : callable(message) -> bool
        Asks the user (``slicer.util.confirmOkCancelDisplay`` in Slicer).
    pip_install : callable(list of requirement strings)
        ``slicer.util.pip_install`` (used when ``pip_ensure`` is None: Slicer before 5.12).
    torch_logic : PyTorchUtils.PyTorchUtilsLogic or None
        None means the PyTorch extension is missing.
    pip_ensure : callable or None
        ``slicer.packaging.pip_ensure`` on Slicer 5.12+ (it asks by itself).
    torch_version : callable() -> str or None
        The installed torch version (default: from package metadata).
    training : bool
        Also torch and the training packages (default: only what segmenting needs).

    Returns
    -------
    bool
        True when everything is available; False when the user declined (nothing was installed).

    Raises
    ------
    AutoSegError
        Training only: the PyTorch extension is not installed, or torch is too old and could not be upgraded.
    RuntimeError, subprocess.CalledProcessError
        From the installers (declined in Slicer 5.12's dialog, pip failed); the widget's slot guard shows them.
    """
    is_importable = is_importable or (lambda name: importlib.util.find_spec(name) is not None)
    requirements = required(training)
    if training and not _ensure_torch(confirm, torch_logic, is_importable, torch_version):
        return False
    missing = missing_requirements(is_importable, requirements)
    if not missing:
        return True
    if pip_ensure is not None:
        pip_ensure(missing, requester="AutoSeg")
        return not missing_requirements(is_importable, requirements)
    if not confirm("AutoSeg needs these Python packages, which are not installed yet:\n  "
                   + "\n  ".join(missing) + "\n\nInstall them now (a few minutes, needs internet)?"):
        return False
    pip_install(missing)
    return not missing_requirements(is_importable, requirements)


def _ensure_torch(confirm, torch_logic, is_importable, torch_version) -> bool:
    """torch >= `TORCH_MINIMUM` through PyTorchUtils (training only); False when the user declined."""
    from AutoSegLib.errors import AutoSegError

    if not is_importable("torch"):
        if torch_logic is None:
            raise AutoSegError("Training needs PyTorch: install the 'PyTorch' extension from the Extensions Manager "
                               "(it is declared as a dependency of AutoSeg), restart Slicer and try again.")
        if not torch_logic.torchInstalled():
            torch = torch_logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                return False
    found = torch_version()
    if found is not None and version_tuple(found) < TORCH_MINIMUM:
        advice = (f"AutoSeg needs PyTorch {TORCH_REQUIREMENT} (GPU training uses torch.amp.GradScaler), but "
                  f"{found} is installed.")
        if torch_logic is None:
            raise AutoSegError(advice + " Install the 'PyTorch' extension (Extensions Manager) to upgrade it, or "
                               "upgrade torch in Slicer's Python, then restart Slicer.")
        if not confirm(advice + " Upgrade it now with PyTorch Utils (a few minutes, needs internet)? Restart "
                       "Slicer afterwards."):
            return False
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
        found = torch_version()
        if found is None or version_tuple(found) < TORCH_MINIMUM:
            raise AutoSegError(f"Upgrading PyTorch did not work: {found or 'no torch'} is installed, "
                               f"{TORCH_REQUIREMENT} is needed. Use the PyTorch Utils module to install it.")
    return True


_DEVICE_PROBE = (
    "import json\n"
    "out = []\n"
    "try:\n"
    "    import torch\n"
    "    if torch.cuda.is_available():\n"
    "        out += [['cuda', 'CUDA: ' + torch.cuda.get_device_name(i)] for i in range(torch.cuda.device_count())][:1]\n"
    "    mps = getattr(torch.backends, 'mps', None)\n"
    "    if mps is not None and mps.is_available():\n"
    "        out.append(['mps', 'MPS (Apple GPU)'])\n"
    "    out.append(['cpu', 'CPU (%d threads)' % torch.get_num_threads()])\n"
    "except Exception as exc:\n"
    "    out.append(['error', repr(exc)])\n"
    "print(json.dumps(out))\n"
)


def list_devices(python_executable: str, timeout: float = 120.0) -> Tuple[List[Tuple[str, str]], str]:
    """Devices torch finds in the child's Python: ``([(id, label), ...], problem)``.

    Always starts with ``("auto", ...)``; ``problem`` is '' or why nothing could be listed (no torch).
    Runs a short child process (importing torch takes seconds), so the widget calls it on request.
    """
    devices = [("auto", "auto (best found)")]
    try:
        proc = subprocess.run([python_executable, "-c", _DEVICE_PROBE], capture_output=True, text=True,
                              timeout=timeout, **hidden_console_kwargs())
        found = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else []
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return devices + [("cpu", "CPU")], f"Could not list devices: {exc}"
    problem = ""
    for dev, label in found:
        if dev == "error":
            problem = f"PyTorch is not usable in {python_executable}: {label}"
        else:
            devices.append((dev, label))
    if len(devices) == 1:
        devices.append(("cpu", "CPU"))
    devices[0] = ("auto", f"auto ({devices[1][1]})")
    return devices, problem


def parse_requirement_names(requirements: Sequence[str]) -> List[str]:
    """Distribution names of requirement strings ('scipy>=1.10' -> 'scipy')."""
    import re

    return [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements]
