"""The work folder: the one owner of its layout (DEVELOPERS.md, "Work folder").

A work folder is what `autoseg plan-and-preprocess` makes for one raw dataset and what training, find-best
and export read::

    dataset.json          the raw dataset.json plus "dataset_path" (the raw dataset folder)
    fingerprint.json      plans.json      splits_final.json
    preprocessed/<data identifier>/...                       (preprocessing.dataset)
    trained/<configuration>/fold_<k>/checkpoint_{final,best,latest}.pt, training_config.json,
        training_log.jsonl, progress.png, validation/...     (training)
    inference.json        find_best_report.{json,md}        (find-best)

A model folder (models.folder reads it, models.install writes it) keeps the same ``trained/`` subtree, so
the fold paths and the fold scan below serve both. Everything that builds such a path or scans folds goes
through this module: the commands, the Slicer module and the benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.datasets import Dataset, default_work_dir
from AutoSegLib.io.jsonfile import JSONFileError, read_json

DATASET_JSON = "dataset.json"
FINGERPRINT_JSON = "fingerprint.json"
PLANS_JSON = "plans.json"
SPLITS_JSON = "splits_final.json"
INFERENCE_JSON = "inference.json"
TRAINED = "trained"
PREPROCESSED = "preprocessed"
#: Fold names in the order they are scanned ("all": trained on every case).
FOLD_NAMES = ("0", "1", "2", "3", "4", "all")
CHECKPOINT_FINAL = "checkpoint_final.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_LATEST = "checkpoint_latest.pt"
#: Checkpoints in the order a fold's weights are taken when unfinished folds are allowed.
CHECKPOINT_PREFERENCE = (CHECKPOINT_FINAL, CHECKPOINT_BEST, CHECKPOINT_LATEST)
#: What a fold folder keeps besides checkpoints (copied into model folders and archives).
FOLD_RECORDS = ("training_config.json", "training_log.jsonl", "progress.png", "validation/summary.json")


def trained_dir(root: "str | os.PathLike", configuration: Optional[str] = None) -> Path:
    """``root/trained`` or ``root/trained/<configuration>`` (root: a work folder or a model folder)."""
    path = Path(root) / TRAINED
    return path / str(configuration) if configuration is not None else path


def fold_dir(root: "str | os.PathLike", configuration: str, fold) -> Path:
    """``root/trained/<configuration>/fold_<fold>``."""
    return trained_dir(root, configuration) / f"fold_{fold}"


def fold_of(path: "str | os.PathLike") -> str:
    """The fold name of a ``fold_<k>`` folder ("fold_3" -> "3")."""
    name = Path(path).name
    if not name.startswith("fold_"):
        raise ValueError(f"{path}: not a fold folder (fold_<k>)")
    return name[len("fold_"):]


def trained_folds(root: "str | os.PathLike", checkpoints=(CHECKPOINT_FINAL,),
                  configurations=None) -> Dict[str, List[str]]:
    """``{configuration: [fold, ...]}`` of the folds under ``root/trained`` holding one of ``checkpoints``.

    Parameters
    ----------
    root : path
        Work folder or model folder.
    checkpoints : sequence of str, or None
        File names of which a fold must hold at least one; None: every ``fold_<k>`` folder counts.
    configurations : iterable of str, optional
        Only these configurations (default: every folder under ``trained/``).

    Returns
    -------
    dict
        Configurations (sorted) with at least one such fold; folds sorted by name.
    """
    out: Dict[str, List[str]] = {}
    trained = trained_dir(root)
    if not trained.is_dir():
        return out
    names = sorted(configurations) if configurations is not None else sorted(p.name for p in trained.iterdir()
                                                                                if p.is_dir())
    for conf in names:
        conf_dir = trained / conf
        if not conf_dir.is_dir():
            continue
        folds = sorted(fold_of(p) for p in conf_dir.glob("fold_*") if p.is_dir() and
                       (checkpoints is None or any((p / c).is_file() for c in checkpoints)))
        if folds:
            out[conf] = folds
    return out


def fold_checkpoint(root: "str | os.PathLike", configuration: str, fold,
                    preference=(CHECKPOINT_FINAL,)) -> Optional[Path]:
    """The first of ``preference`` present in the fold's folder, or None."""
    fdir = fold_dir(root, configuration, fold)
    for name in preference:
        if (fdir / name).is_file():
            return fdir / name
    return None


def resolve_work_dir(dataset_path: "str | os.PathLike", output: "str | os.PathLike | None" = None) -> Path:
    """The work folder for ``dataset_path``: ``output`` if given, else `default_work_dir`.

    Raises AutoSegError when it would lie inside the dataset folder (nothing is ever written there).
    """
    work = Path(output).expanduser().resolve() if output else default_work_dir(dataset_path)
    root = Path(dataset_path).expanduser().resolve()
    if work == root or root in work.parents:
        raise AutoSegError(f"{work}: the output folder is inside the dataset folder {root}; AutoSeg never writes "
                           f"there. Choose another --output, e.g. {default_work_dir(dataset_path)}.")
    check_work_dir_for(work, root)
    from AutoSegLib.io.atomic import check_writable
    check_writable(work)  # before the fingerprint's minutes of reading, not after
    return work


# What a work folder holds (DEVELOPERS.md); a folder with only these (and no dataset.json yet: a run killed
# before its first dataset.json) is taken as an unfinished work folder.
# The Slicer module's training job keeps its state and log there too (AutoSegSlicer.train.pipeline).
WORK_ENTRIES = ("dataset.json", "fingerprint.json", "plans.json", "splits_final.json", "preprocessed", "trained",
                "inference.json", "find_best_report.json", "find_best_report.md",
                "autoseg_training.json", "autoseg_training.log")


def check_work_dir_for(work: Path, root: Path) -> None:
    """Refuse ``work`` as the work folder of the raw dataset ``root`` unless it is new, empty, or already a
    work folder of that same dataset (its dataset.json records ``root`` as "dataset_path").

    Raises
    ------
    AutoSegError
        ``work`` is a file, a raw dataset (dataset.json without "dataset_path"), the work folder of another
        dataset, or a folder holding other things: writing there would replace the user's files.
    """
    if not work.exists():
        return
    if not work.is_dir():
        raise AutoSegError(f"{work}: exists and is not a folder; give a new or empty folder as --output.")
    meta = work / "dataset.json"
    if meta.is_file():
        try:
            recorded = read_json(meta, "a work folder's dataset.json", expect=dict).get("dataset_path")
        except JSONFileError as exc:
            raise AutoSegError(f"{exc} {work} is not a work folder AutoSeg made. Give a new or empty folder as "
                               f"--output.") from None
        if not recorded:
            raise AutoSegError(f"{work}: is a raw dataset folder (its dataset.json names no \"dataset_path\"), not a "
                               f"work folder; writing there would replace its dataset.json. Give a new or empty "
                               f"folder as --output, e.g. {default_work_dir(root)}.")
        if Path(recorded).expanduser().resolve() != root:
            raise AutoSegError(f"{work}: is the work folder of another dataset ({recorded}), not of {root}. Give a "
                               f"new or empty folder as --output, e.g. {default_work_dir(root)}; if the dataset was "
                               f"moved there, delete {meta} to adopt the folder.")
        return
    others = sorted(p.name for p in work.iterdir() if p.name not in WORK_ENTRIES and not p.name.startswith("."))
    if others:
        raise AutoSegError(f"{work}: is neither empty nor an AutoSeg work folder (it holds {others[:5]}"
                           f"{' ...' if len(others) > 5 else ''}). Give a new or empty folder as --output.")


def write_work_dataset_json(dataset: Dataset, work_dir: "str | os.PathLike") -> Path:
    """Write ``WORK/dataset.json``: the raw dataset.json plus "dataset_path" (absolute), atomically."""
    from AutoSegLib.io.atomic import write_json
    data = dict(dataset.raw_json)
    data["dataset_path"] = str(dataset.root)
    return write_json(Path(work_dir) / "dataset.json", data)


def dataset_path_of(work_dir: "str | os.PathLike") -> str:
    """The raw dataset folder recorded in ``WORK/dataset.json`` ("dataset_path", see
    `write_work_dataset_json`). Raises AutoSegError naming the file when it is missing or unreadable."""
    path = Path(work_dir) / "dataset.json"
    data = read_json(path, "a work folder's dataset.json", hint="Re-run `autoseg plan`.", expect=dict,
                     missing=f"not found. {Path(work_dir)} is not a planned work folder; run "
                             f"`autoseg plan DATASET --output {work_dir}` first.")
    if not data.get("dataset_path"):
        raise AutoSegError(f"{path}: no \"dataset_path\" entry (the raw dataset folder). Re-run `autoseg plan "
                           f"DATASET --output {work_dir}`.")
    return data["dataset_path"]


def raw_label_of(record: Optional[dict], case: str) -> Optional[Path]:
    """The raw reference label of ``case`` that a work folder's dataset.json ``record`` leads to:
    ``<dataset_path>/labelsTr/<case><file_ending>`` when the record names the raw folder and the file is there,
    else None (the caller decides whether that is an error)."""
    root = (record or {}).get("dataset_path")
    if not root:
        return None
    path = Path(root) / "labelsTr" / f"{case}{recorded_file_ending(record)}"
    return path if path.is_file() else None


def recorded_file_ending(record: Optional[dict], default: str = ".nii.gz") -> str:
    """The raw dataset's file ending in a work folder's dataset.json ``record`` (``default`` when it has none)."""
    return (record or {}).get("file_ending") or default
