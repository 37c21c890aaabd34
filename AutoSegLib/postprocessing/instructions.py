"""Inference instructions (``inference.json`` in a model or work folder) and applying post-processing.

``inference.json`` (written by find-best, read by predict)::

    {
      "schema_version": 1,
      "configurations": ["3d_fullres"],                 # one, or several averaged as an ensemble
      "folds": {"3d_fullres": ["0", "1", "2", "3", "4"]},  # folds per configuration (absent: all present)
      "postprocessing": [                               # applied in order to the final label map
        {"step": "largest_component", "labels": "foreground"},
        {"step": "largest_component", "labels": [1]}
      ],
      "cv_scores": {...},                               # mean foreground Dice of the candidates (free form)
      "notes": ["..."]
    }

A ``largest_component`` step merges its ``labels`` into one mask and keeps only the mask's largest
connected component (full connectivity); removed voxels become background (0). ``labels`` is
``"foreground"`` (every non-background label value, ignore excluded) or a list of label values and/or
regions (lists of label values, whose mask is the union of their values).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.postprocessing.components import remove_all_but_largest_component

SCHEMA_VERSION = 1
FILE_NAME = "inference.json"
STEP_NAMES = ("largest_component",)
_KEYS = ("schema_version", "configurations", "folds", "postprocessing", "cv_scores", "notes")


@dataclass(frozen=True)
class InferenceInstructions:
    """How a model predicts: configurations to ensemble, their folds, post-processing steps.

    Attributes
    ----------
    configurations : tuple of str
        Configuration names; several are averaged (softmax/sigmoid probabilities) as an ensemble.
    postprocessing : tuple of dict
        Ordered steps, e.g. ``{"step": "largest_component", "labels": "foreground"}``.
    folds : dict str -> tuple of str, or None
        Folds per configuration ("0".."4", "all"); None (or a configuration missing) means all present.
    cv_scores : dict
        The cross-validation scores behind the choice (free form, for reports).
    notes : tuple of str
        Warnings or remarks recorded by find-best (e.g. folds missing).
    """
    configurations: Tuple[str, ...]
    postprocessing: Tuple[dict, ...] = ()
    folds: Optional[Dict[str, Tuple[str, ...]]] = None
    cv_scores: Dict[str, Any] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def steps(self) -> Tuple[dict, ...]:
        return self.postprocessing

    def to_dict(self) -> dict:
        d: Dict[str, Any] = {"schema_version": self.schema_version, "configurations": list(self.configurations)}
        if self.folds is not None:
            d["folds"] = {c: list(f) for c, f in self.folds.items()}
        d["postprocessing"] = [dict(s) for s in self.postprocessing]
        d["cv_scores"] = self.cv_scores
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = FILE_NAME) -> "InferenceInstructions":
        if not isinstance(d, dict):
            raise AutoSegError(f"{source}: expected a JSON object with 'configurations' and 'postprocessing', "
                               f"found {type(d).__name__}.")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise AutoSegError(f"{source}: unknown keys {unknown}; expected only {list(_KEYS)}. The file was "
                               f"written by a newer AutoSeg or edited by hand: re-run `autoseg find-best`.")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise AutoSegError(f"{source}: schema_version {version!r} is not supported (this AutoSeg reads "
                               f"{SCHEMA_VERSION}). Update AutoSeg or re-run `autoseg find-best`.")
        confs = d.get("configurations")
        if (not isinstance(confs, list) or not confs or not all(isinstance(c, str) and c for c in confs)):
            raise AutoSegError(f"{source}: 'configurations' must be a non-empty list of configuration names "
                               f"like [\"3d_fullres\"]; found {confs!r}.")
        folds = d.get("folds")
        if folds is not None:
            if not isinstance(folds, dict) or not all(isinstance(v, list) for v in folds.values()):
                raise AutoSegError(f"{source}: 'folds' must map configuration names to lists of folds like "
                                   f"{{\"3d_fullres\": [\"0\", \"1\"]}}; found {folds!r}.")
            folds = {str(c): tuple(str(f) for f in v) for c, v in folds.items()}
        steps = tuple(validate_step(s, f"{source}: postprocessing[{i}]")
                      for i, s in enumerate(d.get("postprocessing") or []))
        scores = d.get("cv_scores") or {}
        notes = d.get("notes") or []
        return cls(tuple(confs), steps, folds, dict(scores), tuple(str(n) for n in notes), SCHEMA_VERSION)


def validate_step(step: Any, where: str = "post-processing step") -> dict:
    """Check one post-processing step; returns it as a plain dict (labels as lists)."""
    if not isinstance(step, dict) or step.get("step") not in STEP_NAMES:
        raise AutoSegError(f"{where}: expected {{\"step\": one of {list(STEP_NAMES)}, \"labels\": ...}}, "
                           f"found {step!r}.")
    if set(step) - {"step", "labels"}:
        raise AutoSegError(f"{where}: unknown keys {sorted(set(step) - {'step', 'labels'})} in {step!r}.")
    labels = step.get("labels", "foreground")
    if labels == "foreground":
        return {"step": step["step"], "labels": "foreground"}

    def ok(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if isinstance(labels, (int, np.integer)) and ok(labels):
        labels = [labels]
    if (not isinstance(labels, (list, tuple)) or not labels
            or not all(ok(v) or (isinstance(v, (list, tuple)) and v and all(ok(x) for x in v)) for v in labels)):
        raise AutoSegError(f"{where}: 'labels' must be \"foreground\" or a list of label values and/or regions "
                           f"(lists of label values), like [1] or [[1, 2]]; found {labels!r}.")
    return {"step": step["step"],
            "labels": [int(v) if ok(v) else [int(x) for x in v] for v in labels]}


def foreground_label_values(label_layout) -> List[int]:
    """Every integer label value that is not background or ignore (what "foreground" merges)."""
    return [v for v in label_layout.all_label_values if v != 0 and v != label_layout.ignore_label]


def apply_postprocessing(label_map: np.ndarray, steps: Sequence[dict], label_layout=None) -> np.ndarray:
    """Apply post-processing steps in order to a label map.

    Parameters
    ----------
    label_map : ndarray of int, shape (z, y, x) or (y, x)
        Final label map (label values, regions already resolved).
    steps : sequence of dict
        Steps as in ``inference.json``; an empty sequence returns the input unchanged.
    label_layout : io.labels.LabelLayout, optional
        Resolves ``"foreground"``; without it, "foreground" means every non-zero value present.

    Returns
    -------
    ndarray, same shape and dtype (a new array; the input is not modified)
    """
    label_map = np.asarray(label_map)
    if not steps:
        return label_map
    result = np.array(label_map, copy=True)
    for i, raw in enumerate(steps):
        step = validate_step(raw, f"post-processing step {i}")
        labels = step["labels"]
        if labels == "foreground":
            if label_layout is not None:
                labels = foreground_label_values(label_layout)
            else:
                labels = [int(v) for v in np.unique(result) if v != 0]
            if not labels:
                continue
        remove_all_but_largest_component(result, labels, background=0, out=result)
    return result


def save_inference_instructions(folder: "str | os.PathLike", instructions: InferenceInstructions) -> Path:
    """Write ``folder/inference.json`` atomically; returns its path."""
    # round trip through the validator so that nothing unreadable is ever written
    InferenceInstructions.from_dict(json.loads(json.dumps(instructions.to_dict())), "inference instructions")
    return write_json(Path(folder) / FILE_NAME, instructions.to_dict())


def load_inference_instructions(folder: "str | os.PathLike") -> Optional[InferenceInstructions]:
    """Read ``folder/inference.json`` (``folder`` may also be the file itself); None when absent.

    Raises
    ------
    AutoSegError
        The file is not valid JSON or does not follow the schema (the message names the problem).
    """
    path = Path(folder)
    if path.is_dir() or not path.name.endswith(".json"):
        path = path / FILE_NAME
    if not path.is_file():
        return None
    from AutoSegLib.io.jsonfile import read_json
    data = read_json(path, "inference instructions", hint="Re-run `autoseg find-best` to rewrite it.")
    return InferenceInstructions.from_dict(data, str(path))
