"""Model selection ("find-best"): the best configuration or pairwise ensemble, then its post-processing.

From the cross-validation probabilities the folds wrote
(``trained/<configuration>/fold_<k>/validation/<case>.npz``, key ``probabilities``, float32
(K, *raw spatial)) and the raw reference labels (``dataset_path``/labelsTr in WORK_DIR/dataset.json):

1. score every configuration and every pairwise ensemble (probabilities averaged) by mean foreground Dice
   over the cross-validation cases (per label: NaN-aware mean over cases; then the mean over labels);
2. pick the best (ties: fewer members, then name order);
3. decide post-processing on the chosen candidate's predictions, as the reference's
   ``determine_postprocessing``: keep only the largest component of all foreground merged, kept when the
   mean foreground Dice rises and no label's mean Dice falls; then (with more than one label/region), for
   each label/region in dataset.json order, keep only its largest component, kept when that label's mean
   Dice rises (each step evaluated on the output of the steps kept before it);
4. write ``inference.json`` and ``find_best_report.json`` / ``.md``.

Every candidate is scored on the same cases (those all compared configurations predicted). Label maps are
kept in memory cropped to the bounding box of prediction and reference foreground, which leaves Dice and
the connected components unchanged (outside it both are background).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.evaluation.metrics import dice_per_label
from AutoSegLib.io.jsonfile import read_json, read_json_or_none
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.io.work_folder import raw_label_of, recorded_file_ending
from AutoSegLib.postprocessing.components import remove_all_but_largest_component
from AutoSegLib.postprocessing.instructions import (InferenceInstructions, foreground_label_values,
                                                    save_inference_instructions)
from AutoSegLib.postprocessing.report import write_report
from AutoSegLib.progress import ProgressTracker, emit

log = logging.getLogger(__name__)

CV_FOLDS = ("0", "1", "2", "3", "4")


def probabilities_to_label_map(probs: np.ndarray, layout: LabelLayout) -> np.ndarray:
    """(K, *spatial) probabilities -> (*spatial) label values (int16).

    Softmax outputs: argmax over channels (first maximum on ties), channel i -> ``layout.softmax_values[i]``
    (the i-th smallest label value, as training encodes targets).
    Region (sigmoid) outputs: each region with probability > 0.5 painted with its
    ``regions_class_order`` value, later regions on top.
    """
    if layout.has_regions:
        seg = np.zeros(probs.shape[1:], np.int16)
        for i, value in enumerate(layout.regions_class_order):
            seg[probs[i] > 0.5] = int(value)
        return seg
    values = np.array(layout.softmax_values, np.int16)
    if probs.shape[0] != len(values):
        raise AutoSegError(f"probabilities have {probs.shape[0]} channels; the labels {layout.names} need "
                           f"{len(values)}.")
    return values[np.argmax(probs, axis=0)]


@dataclass
class TrainedConfiguration:
    """Cross-validation outputs found for one configuration: ``cases`` maps case id -> npz path."""
    name: str
    folds: Tuple[str, ...]
    cases: Dict[str, Path]
    missing_folds: Tuple[str, ...] = ()


def discover_cv_results(work_dir: Path, configurations: Optional[Sequence[str]] = None,
                        folds: Optional[Sequence[str]] = None, notes: Optional[List[str]] = None
                        ) -> Dict[str, TrainedConfiguration]:
    """Find each configuration's folds with a finished validation (``validation/summary.json``).

    A configuration with some of the requested folds missing is used with the folds present (a note is
    added); one with none is left out (named in the notes) unless it was asked for explicitly (error).
    """
    notes = notes if notes is not None else []
    from AutoSegLib.io.work_folder import fold_dir, trained_dir
    wanted_folds = tuple(str(f) for f in (folds or CV_FOLDS))
    trained = trained_dir(work_dir)
    names = list(configurations) if configurations else sorted(p.name for p in trained.glob("*") if p.is_dir())
    found: Dict[str, TrainedConfiguration] = {}
    for name in names:
        present, cases = [], {}
        for fold in wanted_folds:
            vdir = fold_dir(work_dir, name, fold) / "validation"
            if not (vdir / "summary.json").is_file():
                continue
            present.append(fold)
            for npz in sorted(vdir.glob("*.npz")):
                case = npz.name[:-4]
                if case in cases:
                    raise AutoSegError(f"{npz}: case {case!r} is also a validation case of another fold "
                                       f"({cases[case].parent.parent.name}); the folds must not overlap.")
                cases[case] = npz
        missing = tuple(f for f in wanted_folds if f not in present)
        if not present or not cases:
            msg = (f"{name}: no finished cross-validation (expected trained/{name}/fold_<k>/validation/"
                   f"summary.json and <case>.npz for folds {list(wanted_folds)})")
            if configurations:
                raise AutoSegError(f"{work_dir}: {msg}. Train the folds first (`autoseg train`), with the final "
                                   f"validation enabled.")
            notes.append(msg + "; left out")
            continue
        if missing:
            notes.append(f"{name}: folds {list(missing)} have no finished validation; scored on folds "
                         f"{present} only ({len(cases)} cases)")
        found[name] = TrainedConfiguration(name, tuple(present), cases, missing)
    if not found:
        raise AutoSegError(f"{work_dir}: no configuration has finished cross-validation folds (looked for "
                           f"trained/<configuration>/fold_<k>/validation/summary.json). Train folds 0-4 first.")
    return found


def _reference_path(work_dir: Path, dataset: dict, case: str, npz: Path) -> Path:
    found = raw_label_of(dataset, case)
    if found is not None:
        return found
    try:  # the fold's validation summary names the reference it used
        ref = read_json_or_none(npz.parent / "summary.json")["cases"][case]["reference"]
        if ref and Path(ref).is_file():
            return Path(ref)
    except (OSError, KeyError, TypeError):
        pass
    raise AutoSegError(f"{work_dir / 'dataset.json'}: the reference label of case {case!r} was not found "
                       f"(expected {dataset.get('dataset_path')}/labelsTr/{case}{recorded_file_ending(dataset)}). "
                       f"Set \"dataset_path\" to the raw dataset folder.")


def _load_probabilities(npz: Path) -> np.ndarray:
    try:
        with np.load(npz, allow_pickle=False) as f:
            return np.asarray(f["probabilities"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise AutoSegError(f"{npz}: cannot read the cross-validation probabilities ({exc}); re-run that fold's "
                           f"validation.") from None


def _crop(pred: np.ndarray, ref: np.ndarray, layout: LabelLayout) -> Tuple[np.ndarray, np.ndarray]:
    fg = (pred != 0) | ((ref != 0) & (ref != (layout.ignore_label if layout.ignore_label is not None else 0)))
    if not fg.any():
        return pred[tuple(slice(0, 1) for _ in pred.shape)], ref[tuple(slice(0, 1) for _ in ref.shape)]
    box = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        hit = np.flatnonzero(fg.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return pred[tuple(box)].copy(), ref[tuple(box)].copy()


def _mean_scores(per_case: List[Dict], keys: Sequence) -> Tuple[Dict, float]:
    """NaN-aware mean Dice per label over cases, and their mean (the foreground mean)."""
    means = {}
    for k in keys:
        vals = [c[k] for c in per_case if not math.isnan(c[k])]
        means[k] = float(np.mean(vals)) if vals else float("nan")
    defined = [v for v in means.values() if not math.isnan(v)]
    return means, (float(np.mean(defined)) if defined else float("nan"))


@dataclass
class SelectionResult:
    """What find-best decided (also written as inference.json and the report)."""
    instructions: InferenceInstructions
    candidate_scores: Dict[str, float]
    candidate_label_scores: Dict[str, Dict[str, float]]
    chosen: str
    postprocessing_log: List[dict]
    dice_before: float
    dice_after: float
    cases: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def determine_postprocessing(preds: List[np.ndarray], refs: List[np.ndarray], layout: LabelLayout
                             ) -> Tuple[List[dict], List[dict], float, float]:
    """Decide post-processing steps on cross-validation label maps (the reference's rule; module doc).

    Parameters
    ----------
    preds, refs : lists of int ndarrays (same shapes pairwise)
        Predicted and reference label maps of the cross-validation cases.
    layout : LabelLayout

    Returns
    -------
    steps : list of dict
        Steps kept, in order (``inference.json`` format).
    decisions : list of dict
        Every step tried: ``step``, ``kept`` and the Dice before/after.
    dice_before, dice_after : float
        Mean foreground Dice without and with the kept steps.
    """
    values = list(layout.foreground_values)
    ignore = layout.ignore_label

    def score(maps):
        per_case = [dice_per_label(p, r, values, ignore) for p, r in zip(maps, refs)]
        return _mean_scores(per_case, values)

    def key(v):
        return list(v) if isinstance(v, tuple) else v

    base_means, base_fg = score(preds)
    dice_before = base_fg
    steps, decisions = [], []
    fg_labels = foreground_label_values(layout)
    candidate = [remove_all_but_largest_component(p, fg_labels) for p in preds]
    means, fg = score(candidate)
    worse = [layout.foreground_names[i] for i, v in enumerate(values)
             if not math.isnan(base_means[v]) and means[v] < base_means[v]]
    kept = fg > base_fg and not worse
    decisions.append({"step": {"step": "largest_component", "labels": "foreground"}, "kept": kept,
                      "foreground_dice_before": base_fg, "foreground_dice_after": fg,
                      "labels_worse": worse})
    if kept:
        steps.append({"step": "largest_component", "labels": "foreground"})
        preds, base_means, base_fg = candidate, means, fg
    if len(values) > 1:
        for name, v in zip(layout.foreground_names, values):
            candidate = [remove_all_but_largest_component(p, [key(v)]) for p in preds]
            means, fg = score(candidate)
            kept = bool(means[v] > base_means[v])
            step = {"step": "largest_component", "labels": [key(v)]}
            decisions.append({"step": step, "label": name, "kept": kept, "label_dice_before": base_means[v],
                              "label_dice_after": means[v]})
            if kept:
                steps.append(step)
                preds, base_means, base_fg = candidate, means, fg
    return steps, decisions, dice_before, base_fg


def find_best(work_dir: "str | Path", configurations: Optional[Sequence[str]] = None,
              folds: Optional[Sequence] = None, allow_ensembles: bool = True, write: bool = True,
              progress=None) -> SelectionResult:
    """Choose the best configuration / pairwise ensemble and its post-processing; write inference.json.

    Parameters
    ----------
    work_dir : path
        Training work folder (dataset.json with ``dataset_path``, plans.json, trained/...).
    configurations : sequence of str, optional
        Configurations to compare (default: every one with finished cross-validation folds).
    folds : sequence, optional
        Folds to use (default 0-4; whatever subset exists is used, with a note).
    allow_ensembles : bool
        Also score pairwise ensembles.
    write : bool
        Write ``inference.json``, ``find_best_report.json`` and ``find_best_report.md`` into ``work_dir``.
    progress : callable, optional

    Returns
    -------
    SelectionResult

    Raises
    ------
    AutoSegError
        No finished folds, missing reference labels, probabilities not matching the reference grid.
    """
    from AutoSegLib.io.images import read_image
    from AutoSegLib.planning.plans import Plans

    work_dir = Path(work_dir)
    dataset = read_json(work_dir / "dataset.json", "a work folder's dataset.json", expect=dict,
                        hint=f"Is {work_dir} a training work folder?")
    if (work_dir / "plans.json").is_file():
        layout = Plans.from_json(work_dir / "plans.json").label_layout()
    else:
        layout = LabelLayout.from_dataset_labels(dataset.get("labels"), dataset.get("regions_class_order"),
                                                 str(work_dir / "dataset.json"))
    notes: List[str] = []
    found = discover_cv_results(work_dir, configurations, folds, notes)
    names = sorted(found)
    common = sorted(set.intersection(*(set(t.cases) for t in found.values())))
    for t in found.values():
        extra = set(t.cases) - set(common)
        if extra:
            notes.append(f"{t.name}: {len(extra)} case(s) not predicted by every compared configuration are "
                         f"left out of the comparison: {sorted(extra)[:5]}")
    if not common:
        raise AutoSegError(f"{work_dir}: the configurations {names} share no cross-validation case; train the "
                           f"same folds for each, or compare one configuration at a time (--configurations).")
    candidates: List[Tuple[str, ...]] = [(n,) for n in names]
    if allow_ensembles:
        candidates += list(itertools.combinations(names, 2))
    emit(progress, "stage", stage="find-best",
         message=f"{len(candidates)} candidate(s) on {len(common)} cross-validation case(s)")
    for n in notes:
        log.warning(n)
        emit(progress, "log", level="warning", message=n)
    values = list(layout.foreground_values)
    per_case_scores: Dict[Tuple[str, ...], List[Dict]] = {c: [] for c in candidates}
    maps: Dict[Tuple[str, ...], List[np.ndarray]] = {c: [] for c in candidates}
    refs: Dict[Tuple[str, ...], List[np.ndarray]] = {c: [] for c in candidates}
    tracker = ProgressTracker(progress, "find-best", len(common))
    for case in common:
        ref_path = _reference_path(work_dir, dataset, case, found[names[0]].cases[case])
        ref = np.asarray(read_image(ref_path)[0])
        probs = {}
        for n in names:
            p = _load_probabilities(found[n].cases[case])
            if p.shape[1:] != ref.shape:
                raise AutoSegError(f"{found[n].cases[case]}: probabilities of spatial shape {p.shape[1:]} do not "
                                   f"match the reference {ref_path} of shape {ref.shape}; re-run that fold's "
                                   f"validation with this version of AutoSeg.")
            probs[n] = p
        for cand in candidates:
            avg = probs[cand[0]] if len(cand) == 1 else sum(probs[n] for n in cand) / len(cand)
            pred = probabilities_to_label_map(avg, layout)
            per_case_scores[cand].append(dice_per_label(pred, ref, values, layout.ignore_label))
            p_crop, r_crop = _crop(pred, ref, layout)
            maps[cand].append(p_crop)
            refs[cand].append(r_crop)
        del probs
        tracker.step(case)

    def label(c):
        return "+".join(c)

    scores, label_scores = {}, {}
    for cand in candidates:
        means, fg = _mean_scores(per_case_scores[cand], values)
        scores[label(cand)] = fg
        label_scores[label(cand)] = {n: means[v] for n, v in zip(layout.foreground_names, values)}
    ranked = sorted(candidates, key=lambda c: (-(scores[label(c)] if not math.isnan(scores[label(c)]) else -1),
                                               len(c), label(c)))
    best = ranked[0]
    steps, decisions, before, after = determine_postprocessing(maps[best], refs[best], layout)
    fold_map = {n: found[n].folds for n in best}
    instructions = InferenceInstructions(
        configurations=tuple(best), postprocessing=tuple(steps), folds=fold_map,
        cv_scores={"metric": "mean foreground Dice over cross-validation cases", "candidates": scores,
                   "chosen": label(best), "chosen_without_postprocessing": before,
                   "chosen_with_postprocessing": after, "num_cases": len(common)},
        notes=tuple(notes))
    result = SelectionResult(instructions, scores, label_scores, label(best), decisions, before, after,
                             list(common), notes)
    if write:
        save_inference_instructions(work_dir, instructions)
        write_report(work_dir, result, layout, found)
    emit(progress, "result", chosen=label(best), cv_dice=before, cv_dice_postprocessed=after,
         postprocessing=steps, inference_json=str(work_dir / "inference.json"))
    return result
