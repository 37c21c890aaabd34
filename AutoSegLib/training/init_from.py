"""Fine-tuning start: load weights from a model folder, a work folder or one checkpoint file, and check
that they fit (same labels, same architecture) with an error naming the difference."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.jsonfile import read_json_or_none


def _find_checkpoint(path: Path, configuration: str, fold) -> Path:
    if path.is_file():
        return path
    from AutoSegLib.io.work_folder import CHECKPOINT_PREFERENCE, fold_checkpoint, trained_dir, trained_folds

    conf_dir = trained_dir(path, configuration)
    if not conf_dir.is_dir():
        raise AutoSegError(f"--init-from {path}: no trained/{configuration}/ inside. Give a model folder or work "
                           f"folder trained with configuration {configuration!r}, or a checkpoint file.")
    present = trained_folds(path, None, [configuration]).get(configuration, [])
    for name in (str(fold), "all", "0", *present):
        p = fold_checkpoint(path, configuration, name, CHECKPOINT_PREFERENCE)
        if p is not None:
            return p
    raise AutoSegError(f"--init-from {path}: no checkpoint under {conf_dir}.")


def _source_plans(path: Path) -> Tuple[Optional[Path], Optional[dict]]:
    """The plans.json of the model or work folder holding checkpoint ``path`` (None when not found or
    unreadable)."""
    for folder in (path, *path.parents[:4]):
        plans = folder / "plans.json"
        if plans.is_file():
            return plans, read_json_or_none(plans, expect=dict)
    return None, None


def _source_labels(ckpt: dict, plans: Optional[dict]) -> Optional[dict]:
    if isinstance(ckpt.get("labels"), dict):
        return ckpt["labels"]
    return plans.get("labels") if isinstance(plans, dict) else None


def _check_same_preprocessing(path: Path, plans_path, plans: Optional[dict], configuration: str, plan) -> None:
    """Weights learnt at one resolution or normalisation do not transfer to another: the voxel spacing and
    the normalisation of the source model's configuration must equal this run's."""
    if plan is None or not isinstance(plans, dict):
        return
    source = (plans.get("configurations") or {}).get(configuration)
    if not isinstance(source, dict):
        return
    for key, name in (("spacing", "voxel spacing (mm)"), ("normalization", "normalisation")):
        theirs = source.get(key)
        ours = getattr(plan, key)
        if theirs is None:
            continue
        same = (len(theirs) == len(ours) and all(abs(float(a) - float(b)) < 1e-6 for a, b in zip(theirs, ours))
                if key == "spacing" else list(theirs) == list(ours))
        if not same:
            raise AutoSegError(
                f"--init-from {path}: the model's {configuration} was planned with {name} {tuple(theirs)} "
                f"({plans_path}), this work folder's plans use {tuple(ours)}. Fine-tune with the model's plans "
                f"(copy its plans.json into the work folder and preprocess again; Slicer's fine-tuning does "
                f"this), or train from scratch.")


def _without_ignore(labels) -> dict:
    return {k: v for k, v in dict(labels).items() if k != "ignore"}


def load_initial_weights(source: "str | Path", net: torch.nn.Module, configuration: str, fold,
                         labels: dict, plan=None) -> Tuple[Path, Dict[str, object]]:
    """Load fine-tuning weights into ``net`` (in place).

    Parameters
    ----------
    source : path
        Model folder / work folder (``trained/<configuration>/fold_<k>/checkpoint_*.pt``, the same fold
        preferred) or a checkpoint file.
    net : the freshly built network of this run
    labels : this dataset's ``labels`` (dataset.json form)
    plan : ConfigurationPlan, optional
        This run's plan: the source model's spacing and normalisation must equal its own.

    Returns
    -------
    (checkpoint path, info dict)

    Raises
    ------
    AutoSegError
        Other labels, another voxel spacing or normalisation, another architecture (a parameter missing,
        extra or of another shape; the first differences are named), or an unreadable checkpoint.
    """
    from AutoSegLib.training.checkpoint import load_training_checkpoint
    path = _find_checkpoint(Path(source), configuration, fold)
    ckpt = load_training_checkpoint(path)
    plans_path, src_plans = _source_plans(path)
    src_labels = _source_labels(ckpt, src_plans)
    # the ignore label is not a network output: a model may be fine-tuned on partially annotated cases
    if src_labels is not None and _without_ignore(src_labels) != _without_ignore(labels):
        raise AutoSegError(f"--init-from {path}: the model was trained with labels {src_labels}, this dataset has "
                           f"{labels}. Fine-tuning needs the same labels.")
    _check_same_preprocessing(path, plans_path, src_plans, configuration, plan)
    weights = ckpt["network_weights"]
    own = net.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shape = [f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or extra or shape:
        parts = []
        if shape:
            parts.append(f"{len(shape)} parameter(s) of another shape (e.g. {shape[:3]})")
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} unexpected parameter(s) (e.g. {extra[:3]})")
        raise AutoSegError(f"--init-from {path}: another architecture than configuration {configuration!r} of these "
                           "plans: " + "; ".join(parts) + ". Plan with the same settings as the source model "
                           "(patch, stages, features) or train from scratch.")
    net.load_state_dict(weights, strict=True)
    return path, {"init_from": str(path), "source_epoch": ckpt.get("epoch")}
