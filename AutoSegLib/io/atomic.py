"""Atomic file writing: write to a temporary name in the target folder, rename when complete.

A reader never sees a half-written file, and an interrupted write leaves the previous file (if any)
untouched. Every file AutoSegLib writes goes through `atomic_path` or `write_json`.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

# Suffixes kept at the end of the temporary name so that writers that pick the format by extension
# (SimpleITK, numpy) still do the right thing.
_MULTI_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _MULTI_SUFFIXES:
        if name.endswith(s):
            return path.name[-len(s):]
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: "str | os.PathLike", data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    return path
