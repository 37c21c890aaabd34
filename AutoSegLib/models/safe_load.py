"""The one checkpoint loader of AutoSegLib: torch's weights-only unpickler plus an explicit allow-list.

Every ``.pt`` / ``.pth`` file AutoSegLib reads goes through `load_checkpoint`; nothing ever calls
``torch.load`` with full pickle. AutoSeg's own checkpoints hold only tensors and plain Python values
(see DEVELOPERS.md) and load with torch's default weights-only rules. nnU-Net v2 checkpoints
(``checkpoint_final.pth``, written by nnunetv2 2.x) additionally hold, next to the weights:

- numpy float scalars (the training log's ``mean_fg_dice``, ``ema_fg_dice``, losses, ``_best_ema``),
  pickled as ``numpy._core.multiarray.scalar(numpy.dtype('f4'), b'...')`` (numpy >= 2) or
  ``numpy.core.multiarray.scalar`` (files written under numpy 1.x), whose dtype object is rebuilt
  through ``numpy.dtype`` and then given its state (``numpy.dtypes.Float32DType``);
- a ``torch.device`` (``init_args["device"]``) and ``collections.OrderedDict`` (state dicts), both
  already allowed by torch's weights-only rules.

These were found by listing the pickle opcodes of the reference's files (``pickletools`` on
``data.pkl``), not by unpickling them. Exactly those extra globals are allowed (float32 and float64
scalars only). Any other global is refused *before* anything is unpickled, with an `AutoSegError` naming
the file and the global; torch's weights-only unpickler is the second gate, and the loaded object is
then walked to check that it holds nothing but tensors and plain values.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List

from AutoSegLib.errors import AutoSegError

log = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "allowed_extra_globals", "CheckpointRefused"]


class CheckpointRefused(AutoSegError):
    """A checkpoint holds something other than tensors and the allowed plain values; nothing in it ran."""


def allowed_extra_globals() -> List[Any]:
    """The globals allowed on top of torch's weights-only defaults.

    Returns
    -------
    list
        Entries for ``torch.serialization.safe_globals``: callables, or ``(callable, "module.name")``
        pairs where the file may name the same object by an older module path.
    """
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtype_classes = [type(np.dtype(np.float32)), type(np.dtype(np.float64))]
    return [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),      # the same function, as numpy 1.x pickles name it
        np.dtype,
        *dtype_classes,                                # numpy.dtypes.Float32DType / Float64DType (BUILD)
    ]


def _allowed_names() -> set:
    names = set()
    for entry in allowed_extra_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__name__}")
    return names


def _unsafe_globals(path: Path) -> List[str]:
    """Globals of a zip checkpoint that torch's defaults do not allow (read from the opcodes only)."""
    import torch

    if not zipfile.is_zipfile(path):
        return []  # legacy (non-zip) format: the weights-only unpickler below is the gate
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # a damaged archive: let torch.load report it below
        log.debug("could not list the globals of %s: %s", path, exc)
        return []


def _refused(path: Path, what: str) -> CheckpointRefused:
    return CheckpointRefused(
        f"{path}: refused to load this checkpoint: it holds {what}, which is neither a tensor nor one of the "
        f"plain values a model file needs. Nothing in the file was run. Checkpoints are loaded with torch's "
        f"weights-only loader only; if you trust the file, re-save its network weights (a state dict of "
        f"tensors) with torch.save and load that instead.")


_PLAIN = (str, int, float, bool, type(None), bytes)


def _check_plain(obj: Any, path: Path, where: str = "checkpoint", depth: int = 0) -> None:
    """Raise CheckpointRefused unless ``obj`` holds only tensors, plain values, numpy float scalars and
    torch devices (in dicts, lists and tuples)."""
    import numpy as np
    import torch

    if depth > 64:
        raise _refused(path, f"a structure nested more than 64 levels deep at {where}")
    if isinstance(obj, (torch.Tensor, torch.device, torch.dtype) + _PLAIN):
        return
    if isinstance(obj, (np.float32, np.float64)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, _PLAIN):
                raise _refused(path, f"a key of type {type(k).__name__} at {where}")
            _check_plain(v, path, f"{where}[{k!r}]", depth + 1)
        return
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_plain(v, path, f"{where}[{i}]", depth + 1)
        return
    raise _refused(path, f"an object of type {type(obj).__module__}.{type(obj).__qualname__} at {where}")


def load_checkpoint(path: "str | os.PathLike", map_location: "str | None" = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """Load a torch checkpoint safely (weights-only plus the allow-list of `allowed_extra_globals`).

    Parameters
    ----------
    path : str or PathLike
        A ``torch.save`` file: AutoSeg's ``checkpoint_*.pt`` or nnU-Net v2's ``checkpoint_*.pth``.
    map_location : str or None
        Passed to ``torch.load`` (default ``"cpu"``).
    mmap : bool
        Memory-map the tensors instead of reading them (zip format; ignored for the legacy format).

    Returns
    -------
    dict
        The checkpoint's top-level dict. Tensors keep their dtypes; numpy float scalars stay numpy
        scalars (``np.float32`` / ``np.float64``).

    Raises
    ------
    AutoSegError
        The file is missing, not a torch checkpoint, or truncated.
    CheckpointRefused
        (an AutoSegError) The file holds any other global (a class, a function such as ``os.system``):
        nothing in it is executed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise AutoSegError(f"{path}: checkpoint file not found.")
    allowed = _allowed_names()
    refused = [g for g in _unsafe_globals(path) if g not in allowed]
    if refused:
        raise _refused(path, "the global" + ("s " if len(refused) > 1 else " ") + ", ".join(repr(g) for g in refused))
    try:
        with torch.serialization.safe_globals(allowed_extra_globals()):
            obj = torch.load(str(path), map_location=map_location, weights_only=True,
                             mmap=(mmap and zipfile.is_zipfile(path)) or None)  # legacy format: no mmap
    except pickle.UnpicklingError as exc:
        message = str(exc)
        match = re.search(r"GLOBAL ([\w.]+)", message)
        if match:
            raise _refused(path, f"the global {match.group(1).rstrip('.')!r}") from None
        if "WeightsUnpickler error" in message or "Weights only load failed" in message:
            lines = [ln.strip() for ln in message.split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()]
            detail = next((ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the doc"))),
                          "unsupported content")[:300]
            raise _refused(path, f"content torch's weights-only loader refuses ({detail})") from None
        raise AutoSegError(f"{path}: not a readable torch checkpoint ({message.strip()[:300]}). "
                           f"Expected a file written by torch.save.") from None
    except Exception as exc:  # any other failure to parse the bytes: a damaged or foreign file
        raise AutoSegError(f"{path}: not a readable torch checkpoint (truncated or another format: "
                           f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}). "
                           f"Expected a file written by torch.save.") from None
    if not isinstance(obj, dict):
        raise AutoSegError(f"{path}: expected a checkpoint dict (network weights and settings), found a "
                           f"{type(obj).__name__}.")
    _check_plain(obj, path)
    return obj
