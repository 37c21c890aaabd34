"""Evaluate a folder of predicted label maps against a folder of reference label maps.

`evaluate_folders` pairs files by case name (file name without its ending; endings may differ between
the folders), computes `metrics.case_metrics` for every case and label (conventions in
``evaluation/metrics.py``), and writes ``summary.json``, ``per_case.csv`` and ``summary.csv`` atomically.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.evaluation.metrics import METRIC_NAMES, case_metrics
from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.io.images import SUPPORTED_ENDINGS, file_ending
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.progress import ProgressTracker, emit

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1
CONVENTIONS = ("Dice/IoU NaN when prediction and reference are both empty (left out of means); "
               "HD95/ASSD in mm, NaN when either is empty; surface = voxels with a face neighbour outside; "
               "HD95 = max of the two directed 95th percentiles; ASSD = mean of the two directed means; "
               "reference voxels with the ignore label are excluded; means are NaN-aware.")


def list_label_files(folder: Path) -> Dict[str, Path]:
    """``{case: path}`` of the image files in ``folder`` (hidden and temporary files skipped)."""
    out: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        ending = file_ending(p)
        if ending.lower() not in SUPPORTED_ENDINGS:
            continue
        case = p.name[: -len(ending)]
        if case in out:
            raise AutoSegError(f"{folder}: case {case!r} has two files ({out[case].name}, {p.name}); keep one.")
        out[case] = p
    return out


def layout_from_values(values: Sequence[int]) -> LabelLayout:
    """A label layout naming each non-zero value by itself (when no dataset.json is given)."""
    labels = {"background": 0}
    labels.update({str(int(v)): int(v) for v in sorted(set(int(v) for v in values)) if v != 0})
    return LabelLayout.from_dataset_labels(labels, source="label values found in the reference files")


def _evaluate_pair(args) -> dict:
    case, pred_path, ref_path, values, ignore, surface = args
    from AutoSegLib.io.images import read_image

    pred, pgeo = read_image(pred_path)
    ref, rgeo = read_image(ref_path)
    if pred.shape != ref.shape:
        raise AutoSegError(f"{pred_path}: size {pred.shape[::-1]} (x, y, z) differs from the reference "
                           f"{ref_path}'s {ref.shape[::-1]}. Predictions must be in the reference's grid.")
    diff = rgeo.describe_difference(pgeo)
    if diff:
        raise AutoSegError(f"{pred_path}: {diff} (compared with the reference {ref_path}). Predictions must be "
                           f"in the reference's grid.")
    metrics = case_metrics(pred, ref, rgeo.spacing, values, ignore, surface=surface)
    return {"case": case, "prediction": str(pred_path), "reference": str(ref_path),
            "spacing": list(rgeo.spacing), "metrics": metrics}


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def summarise(cases: List[dict], names: Sequence[str]) -> Tuple[dict, dict, dict]:
    """Per-label NaN-aware means (and counts of defined values), and the foreground mean over labels.

    ``cases[i]["metrics"]`` is keyed by label name. Returns (mean, n_defined, foreground_mean).
    """
    mean: Dict[str, Dict[str, float]] = {}
    count: Dict[str, Dict[str, int]] = {}
    for name in names:
        mean[name], count[name] = {}, {}
        for m in METRIC_NAMES:
            vals = np.array([c["metrics"][name][m] for c in cases], dtype=float)
            ok = np.isfinite(vals)
            mean[name][m] = float(vals[ok].mean()) if ok.any() else float("nan")
            count[name][m] = int(ok.sum())
    fg = {}
    for m in METRIC_NAMES:
        vals = np.array([mean[n][m] for n in names], dtype=float)
        ok = np.isfinite(vals)
        fg[m] = float(vals[ok].mean()) if ok.any() else float("nan")
    return mean, count, fg


def evaluate_folders(pred_dir: "str | os.PathLike", ref_dir: "str | os.PathLike",
                     label_layout: Optional[LabelLayout] = None, output_dir: "str | os.PathLike | None" = None,
                     num_workers: int = 1, surface: bool = True, progress=None) -> dict:
    """Score every prediction in ``pred_dir`` against the same case in ``ref_dir``.

    Parameters
    ----------
    pred_dir, ref_dir : path
        Folders of label maps ``<case><ending>`` (any format SimpleITK reads).
    label_layout : LabelLayout, optional
        Labels (or regions) to score and their names, ignore label; default: every non-zero value found
        in the reference files, named by its value.
    output_dir : path, optional
        Where ``summary.json``, ``per_case.csv`` and ``summary.csv`` go (nothing written when None).
    num_workers : int
        Processes reading and scoring cases in parallel (1: in this process).
    surface : bool
        Compute HD95/ASSD (False: NaN, much faster).
    progress : callable, optional

    Returns
    -------
    dict
        ``cases`` (list, metrics keyed by label name), ``mean``/``n_defined`` (per label),
        ``foreground_mean``, ``labels``, ``missing_predictions``, ``conventions``. NaN as float here
        (written as null in JSON).

    Raises
    ------
    AutoSegError
        Missing folders, a prediction without a reference, size or geometry mismatch.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, what in ((pred_dir, "predictions"), (ref_dir, "references")):
        if not d.is_dir():
            raise AutoSegError(f"{d}: folder of {what} not found.")
    preds, refs = list_label_files(pred_dir), list_label_files(ref_dir)
    if not preds:
        raise AutoSegError(f"{pred_dir}: no label files found (expected <case>.nii.gz or another image format).")
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise AutoSegError(f"{pred_dir}: no reference in {ref_dir} for {len(orphans)} prediction(s): "
                           f"{orphans[:5]}. Reference files must be named like the predictions.")
    missing = sorted(set(refs) - set(preds))
    if missing:
        log.warning("%d reference case(s) have no prediction: %s", len(missing), missing[:5])
        emit(progress, "log", level="warning",
             message=f"{len(missing)} reference case(s) in {ref_dir} have no prediction (not scored): {missing[:5]}")
    if label_layout is None:
        from AutoSegLib.io.images import read_image
        found = set()
        for case in preds:
            found.update(int(v) for v in np.unique(read_image(refs[case])[0]))
        label_layout = layout_from_values(found)
    names = list(label_layout.foreground_names)
    values = list(label_layout.foreground_values)
    jobs = [(c, preds[c], refs[c], values, label_layout.ignore_label, surface) for c in sorted(preds)]
    emit(progress, "stage", stage="evaluate", message=f"{len(jobs)} case(s), labels {names}")
    tracker = ProgressTracker(progress, "evaluate", len(jobs))
    results = []
    if num_workers > 1 and len(jobs) > 1:
        from AutoSegLib.processes import die_with_parent
        with ProcessPoolExecutor(min(num_workers, len(jobs)), initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:  # workers end with a killed parent
            for r in pool.map(_evaluate_pair, jobs):
                results.append(r)
                tracker.step(r["case"])
    else:
        for job in jobs:
            results.append(_evaluate_pair(job))
            tracker.step(job[0])
    for r in results:  # key by label name
        r["metrics"] = {n: r["metrics"][v] for n, v in zip(names, values)}
    mean, count, fg = summarise(results, names)
    summary = {"schema_version": SUMMARY_SCHEMA_VERSION,
               "labels": {n: (list(v) if isinstance(v, tuple) else v) for n, v in zip(names, values)},
               "ignore_label": label_layout.ignore_label,
               "conventions": CONVENTIONS, "cases": results, "mean": mean, "n_defined": count,
               "foreground_mean": fg, "missing_predictions": missing}
    if output_dir is not None:
        write_evaluation(summary, Path(output_dir))
    return summary


def write_evaluation(summary: dict, output_dir: Path) -> None:
    """Write ``summary.json`` (NaN as null), ``per_case.csv`` and ``summary.csv`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "summary.json", _nan_to_none(summary))
    names = list(summary["labels"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "label"] + list(METRIC_NAMES))
    for c in summary["cases"]:
        for n in names:
            w.writerow([c["case"], n] + [_fmt(c["metrics"][n][m]) for m in METRIC_NAMES])
    _write_text(output_dir / "per_case.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label", "statistic"] + list(METRIC_NAMES))
    for n in names:
        w.writerow([n, "mean"] + [_fmt(summary["mean"][n][m]) for m in METRIC_NAMES])
        w.writerow([n, "n_defined"] + [summary["n_defined"][n][m] for m in METRIC_NAMES])
    w.writerow(["foreground", "mean"] + [_fmt(summary["foreground_mean"][m]) for m in METRIC_NAMES])
    _write_text(output_dir / "summary.csv", buf.getvalue())


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "nan" if math.isnan(v) else repr(round(v, 6))


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
