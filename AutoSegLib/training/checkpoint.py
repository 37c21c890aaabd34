"""Training checkpoints (format in DEVELOPERS.md): atomic writes, tensors-and-plain-values only.

``checkpoint_latest.pt`` (every epoch) and ``checkpoint_best.pt`` (best EMA pseudo-Dice) hold everything
to resume: network weights, optimizer state, grad-scaler state and ``loop_state`` (epoch, log, EMA, best
EMA, RNG states as uint8 tensors, elapsed time). ``checkpoint_final.pt`` holds the weights and the
identifying keys only. A file is written under a temporary name, flushed to disk and renamed, so a kill at
any moment leaves either the previous or the new complete file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def save_checkpoint(path: "str | os.PathLike", payload: Dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_training_checkpoint(path: "str | os.PathLike") -> Dict[str, Any]:
    """Load a checkpoint tensors-only (through ``models.safe_load.load_checkpoint``).

    Raises
    ------
    AutoSegError
        Missing, truncated, foreign or non-AutoSeg file (the message names it and how to proceed).
    """
    from AutoSegLib.models.safe_load import load_checkpoint
    path = Path(path)
    ckpt = load_checkpoint(path)
    missing = [k for k in ("network_weights", "configuration", "epoch") if k not in ckpt]
    if missing:
        raise AutoSegError(f"{path}: not an AutoSeg training checkpoint (missing {missing}). "
                           f"Start without --resume, or point --init-from at an AutoSeg model.")
    return ckpt


# What a fold can be resumed from, newest first: latest is written after every epoch, best only when the EMA
# pseudo-Dice improved (so at most as new as latest). checkpoint_final.pt holds no optimizer or loop state.
RESUMABLE = ("checkpoint_latest.pt", "checkpoint_best.pt")


def load_resume_checkpoint(fold_dir: "str | os.PathLike", progress=None) -> "tuple[Optional[Path], Optional[dict]]":
    """The newest loadable checkpoint of ``fold_dir`` to resume from, as the reference does.

    A kill during the first checkpoint write leaves checkpoint_best.pt without checkpoint_latest.pt (or a
    truncated latest): training continues from best rather than refusing. Unloadable files are reported
    as warnings (through ``progress``) and will be replaced by the resumed training.

    Returns
    -------
    (path, checkpoint) or (None, None) when none is loadable: the caller starts anew (with a warning).
    """
    from AutoSegLib.progress import emit
    fold_dir = Path(fold_dir)
    for name in RESUMABLE:
        path = fold_dir / name
        if not path.is_file():
            continue
        try:
            ckpt = load_training_checkpoint(path)
        except AutoSegError as exc:
            log.warning("%s", exc)
            emit(progress, "log", level="warning", message=f"cannot resume from it: {exc}")
            continue
        if name != RESUMABLE[0]:
            message = (f"resuming from {path} (epoch {ckpt.get('epoch')}): {RESUMABLE[0]} is missing or unreadable "
                       f"(a run stopped while writing it?)")
            log.warning(message)
            emit(progress, "log", level="warning", message=message)
        return path, ckpt
    return None, None


def rng_state() -> Dict[str, Any]:
    """RNG states of torch (CPU and CUDA) as uint8 tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except Exception:  # another GPU count: not worth failing a resume over
            log.warning("could not restore the CUDA RNG states (different GPUs?)")


def cleanup_temporaries(folder: Path) -> None:
    """Remove temporary checkpoint files a killed run left behind."""
    for p in Path(folder).glob(".checkpoint_*.tmp-*"):
        try:
            p.unlink()
        except OSError:
            pass
