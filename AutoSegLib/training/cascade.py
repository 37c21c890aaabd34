"""Cascade training: the previous stage's predictions, stored on the next stage's grid.

A cascade stage (a configuration with ``previous_stage``, e.g. '3d_cascade_fullres' after '3d_lowres')
gets the previous stage's label map as extra one-hot input channels. For training, every case needs a
prediction it was *not* trained on: a fold of the previous stage writes them for its validation cases at
the end of its training (`validation.validate_fold`), so the five folds together cover every case.

Layout (DEVELOPERS.md, "Work folder")::

    preprocessed/<data_identifier of the next stage>/predicted_<previous stage>/<case>.npy
        label map, int8/int16 (1, *spatial) on the next stage's preprocessed grid: what
        `preprocessing.case.preprocess_case` makes of the raw-grid prediction when given it as ``label``
        (the inference path does the same), -1 outside the non-zero region
    preprocessed/<data_identifier of the next stage>/predicted_<previous stage>/<case>.json
        {"case", "previous_stage", "fold", "plans_identifier" (of the previous stage's plan),
         "preprocessing_signature" (of the next stage), "shape"}; written last: a prediction is complete
        exactly when its .json exists

The folder lives with the data of the grid it is on, so configurations sharing that data (and the
previous stage) share the predictions; ``preprocess --force`` with other settings makes them stale, which
`check_previous_stage` detects by the signature.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.io.jsonfile import read_json_or_none

log = logging.getLogger(__name__)

NUM_FOLDS = 5


def next_stages(plans, configuration: str) -> List[str]:
    """Configurations whose ``previous_stage`` is ``configuration`` (sorted)."""
    return sorted(n for n, c in plans.configurations.items() if c.previous_stage == configuration)


def previous_stage_folder(work_dir: "str | Path", plans, configuration: str) -> Path:
    """Where cascade stage ``configuration`` finds its previous stage's predictions (see module docstring).

    Raises
    ------
    AutoSegError
        ``configuration`` is not a cascade stage.
    """
    from AutoSegLib.preprocessing.dataset import preprocessed_folder

    prev = plans.configuration(configuration).previous_stage
    if not prev:
        raise AutoSegError(f"configuration {configuration!r} is not a cascade stage (plans.json gives it no "
                           f"previous_stage); it has no previous-stage predictions.")
    return preprocessed_folder(work_dir, plans, configuration) / f"predicted_{prev}"


def save_next_stage_predictions(work_dir: "str | Path", plans, configuration: str, case: str, labels: np.ndarray,
                                image: np.ndarray, geometry, fold, plans_identifier: str) -> List[Path]:
    """Write ``case``'s prediction by ``configuration`` onto the grid of each of its next stages.

    Parameters
    ----------
    work_dir : path
        The work folder (``preprocessed/`` lives there).
    plans : Plans
    configuration : str
        The stage that predicted (e.g. '3d_lowres').
    case : str
    labels : ndarray int (*raw spatial)
        The predicted label map in the raw case's grid (as `inference.export.export_logits` returns it).
    image : ndarray (C, *raw spatial)
        The raw case's image: cropping to its non-zero region is part of the grid.
    geometry : Geometry
        The raw case's geometry.
    fold : int or str
        The fold that predicted (recorded).
    plans_identifier : str
        Of ``configuration``'s plan (recorded).

    Returns
    -------
    list of Path
        The ``.npy`` files written (none when no configuration follows this one).

    Notes
    -----
    `preprocess_case` preprocesses the image along with the label (and the image is dropped): one
    preprocessing of the case per next stage, the price of one code path with inference.
    """
    from AutoSegLib.preprocessing.case import preprocess_case
    from AutoSegLib.preprocessing.dataset import preprocessing_signature

    written = []
    for nxt in next_stages(plans, configuration):
        _, seg, _ = preprocess_case(image, geometry, plans, nxt, label=np.asarray(labels)[None].astype(np.int16),
                                    sample_locations=False)
        folder = previous_stage_folder(work_dir, plans, nxt)
        npy = folder / f"{case}.npy"
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(seg), allow_pickle=False)
        write_json(folder / f"{case}.json", {
            "case": case, "previous_stage": configuration, "fold": str(fold), "plans_identifier": plans_identifier,
            "preprocessing_signature": preprocessing_signature(plans, nxt), "shape": list(seg.shape)})
        written.append(npy)
    return written


def load_previous_stage(folder: "str | Path", case: str, shape: Optional[Sequence[int]] = None,
                        mmap: bool = True) -> np.ndarray:
    """The previous stage's label map of ``case`` (int, (1, *spatial)), memory-mapped by default.

    Raises
    ------
    AutoSegError
        The file is missing, or its spatial shape differs from ``shape`` (the case's preprocessed shape).
    """
    path = Path(folder) / f"{case}.npy"
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise AutoSegError(f"{path}: the previous stage's prediction for case {case!r} is missing. "
                           f"{_how_to_make(Path(folder).parents[2], Path(folder).name[len('predicted_'):], None)}"
                           ) from None
    if shape is not None and tuple(arr.shape[1:]) != tuple(shape):
        raise AutoSegError(f"{path}: previous-stage prediction of shape {tuple(arr.shape[1:])}, but the case's "
                           f"preprocessed data has shape {tuple(shape)}; it was made for other preprocessed data. "
                           f"{_how_to_make(Path(folder).parents[2], Path(folder).name[len('predicted_'):], None)}")
    return arr


def check_previous_stage(work_dir: "str | Path", plans, configuration: str, cases: Sequence[str]) -> Path:
    """Check that every case of a cascade stage's training has a current previous-stage prediction.

    Parameters
    ----------
    work_dir : path
    plans : Plans
    configuration : str
        The cascade stage.
    cases : sequence of str
        The cases the fold uses (training and validation).

    Returns
    -------
    Path
        The predictions' folder (`previous_stage_folder`).

    Raises
    ------
    AutoSegError
        Naming the cases without a prediction, or with one made for other preprocessing (signature or
        shape differ) or by a previous stage planned otherwise, and the ``autoseg train`` runs of the
        previous stage that write them.
    """
    from AutoSegLib.preprocessing.dataset import preprocessed_folder, preprocessing_signature
    from AutoSegLib.planning.plans import plans_identifier

    work_dir = Path(work_dir)
    folder = previous_stage_folder(work_dir, plans, configuration)
    data_folder = preprocessed_folder(work_dir, plans, configuration)
    want = preprocessing_signature(plans, configuration)
    prev = plans.configuration(configuration).previous_stage
    prev_plans = plans_identifier(plans.configuration(prev))
    missing, stale = [], []
    for case in cases:
        record = _read_record(folder / f"{case}.json")
        if record is None or not (folder / f"{case}.npy").is_file():
            missing.append(case)
        elif (record.get("preprocessing_signature") != want or record.get("plans_identifier") != prev_plans
              or not _same_shape(folder, data_folder, case)):
            stale.append(case)
    if missing:
        raise AutoSegError(
            f"{folder}: {len(missing)} of {len(cases)} cases of {configuration!r} have no prediction of the previous "
            f"stage {prev!r} ({_names(missing)}). A cascade stage trains on the predictions {prev!r} makes for each "
            f"case while it is held out: every {prev} fold writes them for its validation cases when its training "
            f"ends. {_how_to_make(work_dir, prev, missing)}")
    if stale:
        raise AutoSegError(
            f"{folder}: the {prev!r} predictions of {len(stale)} case(s) ({_names(stale)}) were made for other "
            f"preprocessed data of {configuration!r} or by a {prev!r} with other plans (preprocessing signature, "
            f"shape or plans differ). "
            f"{_how_to_make(work_dir, prev, stale)}")
    return folder


def _read_record(path: Path) -> Optional[dict]:
    return read_json_or_none(path, expect=dict)


def _same_shape(folder: Path, data_folder: Path, case: str) -> bool:
    """The prediction's spatial shape equals the preprocessed case's (array headers only)."""
    try:
        pred = np.load(folder / f"{case}.npy", mmap_mode="r", allow_pickle=False)
        data = np.load(data_folder / f"{case}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return tuple(pred.shape[1:]) == tuple(data.shape[1:])


def _names(cases: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(cases[:n])
    return shown + (f", ... ({len(cases) - n} more)" if len(cases) > n else "")


def folds_validating(work_dir: Path, cases: Optional[Sequence[str]]) -> List[str]:
    """The folds of splits_final.json whose validation set holds any of ``cases`` (all five when the
    splits are absent, unreadable or leave a case out, or when ``cases`` is None)."""
    every = [str(k) for k in range(NUM_FOLDS)]
    if cases is None:
        return every
    splits = read_json_or_none(Path(work_dir) / "splits_final.json", expect=list)
    if splits is None or not all(isinstance(s, dict) for s in splits):
        return every
    wanted = set(cases)
    folds = [str(k) for k, s in enumerate(splits) if wanted & set(s.get("val", []))]
    covered = set().union(*(set(s.get("val", [])) for s in splits)) if splits else set()
    return folds if folds and wanted <= covered else every


def _how_to_make(work_dir: Path, previous: str, cases: Optional[Sequence[str]]) -> str:
    folds = folds_validating(work_dir, cases)
    runs = "; ".join(f"`autoseg train {work_dir} {previous} {k}`" for k in folds)
    return (f"Train {previous!r} fold(s) {', '.join(folds)} with their final validation (not --no-validation): "
            f"{runs}. A fold already trained without it writes them with the same command plus --resume.")


__all__ = ["next_stages", "previous_stage_folder", "save_next_stage_predictions", "load_previous_stage",
           "check_previous_stage", "folds_validating"]
