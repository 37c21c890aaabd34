"""On-disk form of preprocessed cases, shared by preprocessing (writer) and training (reader).

``<folder>/<case>.npy``      image, float32 (C, *spatial), C-contiguous: memory-mappable for patch reads
``<folder>/<case>_seg.npy``  label, int8/int16 (1, *spatial); -1 = background outside the non-zero region
``<folder>/<case>.json``     properties (see preprocessing.case.preprocess_case); ``class_locations`` maps a
                             class key ("1", or "1,2" for a region) to a list of spatial coordinates
                             [z, y, x] in the preprocessed array; ``preprocessing_signature`` identifies
                             the settings the case was made with, ``source_stamp`` the raw files (names,
                             sizes, modification times) it was made from.

Each file is written atomically and the .json last: a case is complete exactly when its .json exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path


def case_paths(folder: "str | os.PathLike", case: str) -> Tuple[Path, Path, Path]:
    """(image .npy, label _seg.npy, properties .json) of ``case`` in ``folder``."""
    folder = Path(folder)
    return folder / f"{case}.npy", folder / f"{case}_seg.npy", folder / f"{case}.json"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` atomically: a hard link when the file system allows, else a copy."""
    import shutil

    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _jsonable_properties(properties: dict) -> dict:
    out = dict(properties)
    if "class_locations" in out:
        out["class_locations"] = {k: np.asarray(v).tolist() for k, v in out["class_locations"].items()}
    return out


def save_preprocessed_case(folder: "str | os.PathLike", case: str, data: np.ndarray, seg: Optional[np.ndarray],
                           properties: dict, same_as: Optional[Tuple[Path, Path]] = None) -> Path:
    """Write one case (arrays first, properties last). ``same_as`` = (image, label) files of an identical
    case already written elsewhere: they are hard-linked instead of written again. Returns the .json path."""
    image_path, seg_path, json_path = case_paths(folder, case)
    Path(folder).mkdir(parents=True, exist_ok=True)
    if json_path.exists():  # a re-run with --force: the case is incomplete until the new .json lands
        json_path.unlink()
    if same_as is not None:
        _link_or_copy(same_as[0], image_path)
        if seg is not None:
            _link_or_copy(same_as[1], seg_path)
    else:
        _save_npy(image_path, data.astype(np.float32, copy=False))
        if seg is not None:
            _save_npy(seg_path, seg)
    # one-shot C encoder (json.dump streams through the pure-Python one: 10x slower on class locations)
    text = json.dumps(_jsonable_properties(properties), separators=(",", ":"))
    with atomic_path(json_path) as tmp:
        tmp.write_text(text)
    return json_path


def read_case_properties(folder: "str | os.PathLike", case: str) -> Optional[dict]:
    """The case's properties, or None when it is not (completely) preprocessed."""
    json_path = case_paths(folder, case)[2]
    from AutoSegLib.io.jsonfile import read_json_or_none
    return read_json_or_none(json_path, expect=dict)


def is_case_complete(folder: "str | os.PathLike", case: str, signature: Optional[str] = None,
                     with_label: bool = True, source_stamp: Optional[str] = None) -> bool:
    """True when the case's files are all there, made with ``signature`` and from raw files with
    ``source_stamp`` (each checked when given)."""
    image_path, seg_path, _ = case_paths(folder, case)
    props = read_case_properties(folder, case)
    if props is None or not image_path.is_file() or (with_label and not seg_path.is_file()):
        return False
    if source_stamp is not None and props.get("source_stamp") != source_stamp:
        return False
    return signature is None or props.get("preprocessing_signature") == signature


def list_preprocessed_cases(folder: "str | os.PathLike") -> List[str]:
    """Case ids with a properties file in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.glob("*.json") if not p.name.startswith("."))


def load_preprocessed_case(folder: "str | os.PathLike", case: str, mmap: bool = True):
    """Read one preprocessed case.

    Parameters
    ----------
    folder : the data_identifier folder (``WORK/preprocessed/<data_identifier>``)
    case : case id
    mmap : memory-map the arrays (read-only) instead of loading them

    Returns
    -------
    data : ndarray float32 (C, *spatial)
    seg : ndarray int8/int16 (1, *spatial), or None for a case preprocessed without a label
    properties : dict; ``class_locations`` values are int64 arrays of shape (N, ndim)

    Raises
    ------
    AutoSegError when the case is missing or incomplete.
    """
    image_path, seg_path, json_path = case_paths(folder, case)
    props = read_case_properties(folder, case)
    if props is None or not image_path.is_file():
        raise AutoSegError(f"{json_path}: preprocessed case {case!r} is missing or incomplete. "
                           f"Run `autoseg preprocess` on the work folder first.")
    mode = "r" if mmap else None
    data = np.load(image_path, mmap_mode=mode, allow_pickle=False)
    seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    if "class_locations" in props:
        ndim = data.ndim - 1
        props["class_locations"] = {k: np.asarray(v, dtype=np.int64).reshape(-1, ndim)
                                    for k, v in props["class_locations"].items()}
    return data, seg, props


def remove_stale_temporaries(folder: "str | os.PathLike") -> int:
    """Delete temporary files an interrupted (killed) run left behind; returns how many. A temporary file of
    a run still going (its pid alive, `io.atomic.is_stale_temporary`) is kept: two runs may share a folder."""
    from AutoSegLib.io.atomic import is_stale_temporary
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            try:
                if is_stale_temporary(p):
                    p.unlink()
                    n += 1
            except OSError:
                pass
    return n
