"""Cross-validation splits: WORK/splits_final.json, created once (5 folds, fixed seed) and then respected.

The split shuffles the sorted case ids with a fixed seed and cuts them into 5 near-equal validation
folds; fold ``k`` trains on the other four. A ``splits_final.json`` that already exists (possibly edited
by the user, possibly with another number of folds) is used as it is, after checking it against the
case list. Fold "all" trains on every case and validates on none (pseudo-Dice on training patches).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.jsonfile import read_json

SPLIT_SEED = 12345
N_FOLDS = 5


def make_splits(cases: Sequence[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> List[Dict[str, List[str]]]:
    """Deterministic k-fold split of ``cases`` (sorted first, then shuffled with ``seed``).

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, ``n_folds`` entries, each list sorted.
    """
    cases = sorted(cases)
    if len(cases) < 2:
        raise AutoSegError(f"cross-validation needs at least 2 training cases; found {len(cases)}. "
                           f"Train with fold 'all' instead.")
    n_folds = min(n_folds, len(cases))
    perm = np.random.default_rng(seed).permutation(len(cases))
    splits = []
    for part in np.array_split(perm, n_folds):
        val = sorted(cases[i] for i in part)
        train = sorted(set(cases) - set(val))
        splits.append({"train": train, "val": val})
    return splits


def load_or_create_splits(work_dir: "str | Path", cases: Sequence[str]) -> List[Dict[str, List[str]]]:
    """Read ``work_dir/splits_final.json`` (validated against ``cases``) or create and save it."""
    path = Path(work_dir) / "splits_final.json"
    if not path.is_file():
        splits = make_splits(cases)
        write_json(path, splits)
        return splits
    splits = read_json(path, "splits", hint="Fix it or delete it to get a fresh 5-fold split.")
    known = set(cases)
    problems = []
    if not isinstance(splits, list) or not splits:
        raise AutoSegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} entries, found "
                           f"{type(splits).__name__}. Fix it or delete it to get a fresh split.")
    for k, s in enumerate(splits):
        if not isinstance(s, dict) or not isinstance(s.get("train"), list) or not isinstance(s.get("val"), list):
            problems.append(f"fold {k}: expected {{\"train\": [...], \"val\": [...]}}")
            continue
        unknown = sorted((set(s["train"]) | set(s["val"])) - known)
        if unknown:
            problems.append(f"fold {k}: cases not in the preprocessed data: {unknown[:10]}")
        overlap = sorted(set(s["train"]) & set(s["val"]))
        if overlap:
            problems.append(f"fold {k}: cases both in train and val: {overlap[:10]}")
        if not s["train"]:
            problems.append(f"fold {k}: no training cases")
    if problems:
        raise AutoSegError(f"{path}: the split does not fit the preprocessed cases:\n  - " + "\n  - ".join(problems)
                           + "\nFix the file or delete it to get a fresh 5-fold split.")
    return splits


def fold_cases(work_dir: "str | Path", cases: Sequence[str], fold: Union[int, str]) -> Tuple[List[str], List[str]]:
    """``(train cases, validation cases)`` of ``fold`` (0-based int, or "all": every case, no validation)."""
    if str(fold) == "all":
        return sorted(cases), []
    splits = load_or_create_splits(work_dir, cases)
    k = parse_fold(fold, len(splits))
    return list(splits[k]["train"]), list(splits[k]["val"])


def parse_fold(fold: Union[int, str], n_folds: int = N_FOLDS) -> Union[int, str]:
    """Validate a fold argument: 0..n_folds-1 or "all"."""
    if str(fold) == "all":
        return "all"
    try:
        k = int(fold)
    except (TypeError, ValueError):
        k = -1
    if not 0 <= k < n_folds:
        raise AutoSegError(f"unknown fold {fold!r}: expected 0..{n_folds - 1} or 'all'.")
    return k
