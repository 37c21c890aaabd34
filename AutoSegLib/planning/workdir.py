"""The fingerprint of a work folder: reuse WORK/fingerprint.json when it describes the dataset as it
is now, otherwise extract it again (used by `autoseg plan` and plan-and-preprocess)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from AutoSegLib.errors import AutoSegError
from AutoSegLib.progress import ProgressCallback, emit

log = logging.getLogger(__name__)


def fingerprint_for(dataset, work_dir: "str | Path", num_workers: Optional[int] = None,
                    progress: Optional[ProgressCallback] = None, force: bool = False):
    """Return the dataset's fingerprint, read from ``WORK/fingerprint.json`` when it matches ``dataset``
    (same folder, cases, channels, labels and file signature), else extracted (with verification) and
    written there.

    Parameters
    ----------
    dataset : io.datasets.Dataset
    work_dir : path
    force : bool
        Always extract.
    """
    from AutoSegLib.fingerprint.extract import extract_fingerprint
    from AutoSegLib.fingerprint.record import Fingerprint

    path = Path(work_dir) / "fingerprint.json"
    if path.is_file() and not force:
        try:
            fp = Fingerprint.from_json(path)
        except AutoSegError as exc:
            emit(progress, "log", level="warning", message=f"{exc} Extracting it again.")
            fp = None
        if fp is not None:
            stale = _stale_reason(fp, dataset)
            if not stale:
                emit(progress, "log", level="info", message=f"using the existing fingerprint {path}")
                return fp
            emit(progress, "log", level="warning", message=f"{path}: {stale}; extracting it again.")
    fp = extract_fingerprint(dataset.root, num_workers=num_workers, progress=progress)
    fp.to_json(path)
    return fp


def _stale_reason(fp, dataset) -> str:
    if fp.dataset_path != str(dataset.root):
        return f"made for {fp.dataset_path}, not {dataset.root}"
    if fp.case_ids != dataset.case_ids:
        return "the dataset's cases changed"
    if fp.channel_names != dataset.channel_names or fp.labels != dataset.raw_json.get("labels"):
        return "dataset.json's channels or labels changed"
    from AutoSegLib.io.datasets import dataset_signature
    if fp.dataset_signature != dataset_signature(dataset):
        return "files of the dataset changed since it was made"
    if not fp.has_foreground_boxes:
        return "made by an earlier AutoSeg, without the foreground boxes that budget planning reads"
    return ""
