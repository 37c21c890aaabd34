"""Where AutoSeg keeps the user's data: installed models and resumable training runs.

Both live in one per-user data folder, ``<local application data>/AutoSeg`` (Qt's AppLocalDataLocation:
``%LOCALAPPDATA%\\NA-MIC\\Slicer`` on Windows, ``~/.local/share/NA-MIC/Slicer`` on Linux,
``~/Library/Application Support/NA-MIC/Slicer`` on macOS): not the settings folder (a roaming profile on
Windows copies gigabytes of checkpoints at every log-in) and not Slicer's temporary folder (OS cleaners
delete it, and with it training runs that were meant to be resumed). The folders are shown and can be
changed in the panel (saved in the settings).

`migrate` moves what earlier versions left in the old places; nothing is overwritten or deleted.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import List

log = logging.getLogger(__name__)

SETTINGS_TRAINING_FOLDER = "AutoSeg/TrainingRunsFolder"
#: Set once the old default folders were moved (value: the data folder they went to).
SETTINGS_MIGRATED = "AutoSeg/MigratedToDataFolder"


def data_folder(app_local_data: str) -> Path:
    """``<app_local_data>/AutoSeg``: the default home of models and training runs."""
    return Path(app_local_data) / "AutoSeg"


def default_models_folder(app_local_data: str) -> Path:
    return data_folder(app_local_data) / "models"


def default_training_folder(app_local_data: str) -> Path:
    return data_folder(app_local_data) / "training"


def legacy_models_folder(settings_file: str) -> Path:
    """Where models went before: next to Slicer's settings file."""
    return Path(settings_file).parent / "AutoSeg" / "models"


def legacy_training_folder(temporary_path: str) -> Path:
    """Where training runs went before: Slicer's temporary folder."""
    return Path(temporary_path) / "AutoSeg" / "training"


def migrate(old, new) -> List[str]:
    """Move every entry of ``old`` into ``new`` (created) unless ``new`` has one of that name.

    Returns one message per entry moved or left behind (a name taken in ``new``). Entries whose move
    fails stay where they were (a message says why). ``old`` is removed only when it ends up empty.
    Hidden entries (``.installing-*`` leftovers of an interrupted install) are left alone.
    """
    old, new = Path(old), Path(new)
    if not old.is_dir() or old.resolve() == new.resolve():
        return []
    messages = []
    new.mkdir(parents=True, exist_ok=True)
    for entry in sorted(old.iterdir()):
        if entry.name.startswith("."):
            continue
        target = new / entry.name
        if target.exists():
            messages.append(f"Not moved (a folder of that name is already in {new}): {entry}")
            continue
        try:
            _move(entry, target)
        except OSError as exc:
            messages.append(f"Could not move {entry} to {new}: {exc}")
            continue
        messages.append(f"Moved {entry} to {target}")
    try:
        old.rmdir()
    except OSError:
        pass  # not empty: what stays is named above
    return messages


def _move(entry: Path, target: Path) -> None:
    """Rename (same disk); else copy to a hidden name beside ``target``, rename it into place, then delete the
    source, so that ``target`` is never a half copy and the source is kept until the copy is complete."""
    try:
        os.rename(entry, target)
        return
    except OSError:
        pass
    partial = target.parent / f".moving-{uuid.uuid4().hex[:8]}-{entry.name}"
    try:
        if entry.is_dir():
            shutil.copytree(entry, partial)
        else:
            shutil.copy2(entry, partial)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
        raise
    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
