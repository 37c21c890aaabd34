"""Versioned JSON caches of measurements (the training and prediction calibrations): ``{"version": V,
"entries": {key: record}}``. A cache is a convenience: unreadable, missing or of another version reads as
empty (the measurement is simply made again), and a failed write is a warning, never an error."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def read_entries(path: "str | os.PathLike", version: int) -> dict:
    """The entries of the cache file ``path`` written with ``version``; {} otherwise (a damaged file is
    logged)."""
    from AutoSegLib.io.jsonfile import JSONFileError, JSONFileMissing, read_json
    try:
        data = read_json(path)
    except JSONFileMissing:
        return {}
    except JSONFileError as exc:
        log.warning("%s; measuring again", exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != version or not isinstance(data.get("entries"), dict):
        return {}
    return dict(data["entries"])


def write_entries(path: "str | os.PathLike", version: int, entries: dict, what: str = "measurement") -> None:
    """Write the cache atomically (io.atomic); a failure is logged, not raised."""
    from AutoSegLib.io.atomic import write_json
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": version, "entries": entries})
    except OSError as exc:
        log.warning("%s: could not cache the %s (%s); it will be measured again next time", path, what, exc)
