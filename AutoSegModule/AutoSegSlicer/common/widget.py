"""The Qt side shared by every section of the panel and by the Segment Editor effect: Slicer's settings and
data folders, the Python that runs AutoSegLib, and installing missing packages with dialogs.

Nothing here builds a widget of its own; these helpers need the application (``qt``, ``slicer.app``), so they
are kept out of the Qt-free modules (`storage`, `dependencies` hold the decisions, tested headless).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import qt
import slicer

from AutoSegSlicer.common import dependencies, storage

SETTINGS_MODELS_FOLDER = "AutoSeg/ModelsFolder"


def module_library_path() -> str:
    """The folder holding AutoSegLib: next to the module in an installed extension, one up in a checkout."""
    here = Path(__file__).resolve().parents[2]  # the module folder (AutoSegSlicer/common/ is two down)
    for candidate in (here, here.parent):
        if (candidate / "AutoSegLib" / "__init__.py").is_file():
            return str(candidate)
    return str(here)


def app_local_data() -> str:
    """Qt's per-user, non-roaming application data folder (see `storage`)."""
    return qt.QStandardPaths.writableLocation(qt.QStandardPaths.AppLocalDataLocation)


def default_models_folder() -> str:
    return str(storage.default_models_folder(app_local_data()))


def migrate_old_folders() -> list:
    """Once: move models and training runs from where earlier versions kept them (next to the settings file,
    in the temporary folder) into the data folder, unless the user chose other folders. Returns messages."""
    settings = qt.QSettings()
    if settings.contains(storage.SETTINGS_MIGRATED):
        return []
    local = app_local_data()
    messages = []
    old_models = storage.legacy_models_folder(slicer.app.slicerUserSettingsFilePath)
    chosen = settings.value(SETTINGS_MODELS_FOLDER) if settings.contains(SETTINGS_MODELS_FOLDER) else None
    if chosen is None or Path(str(chosen)) == old_models:
        messages += storage.migrate(old_models, storage.default_models_folder(local))
        if chosen is not None:
            settings.setValue(SETTINGS_MODELS_FOLDER, str(storage.default_models_folder(local)))
    if not settings.contains(storage.SETTINGS_TRAINING_FOLDER):
        messages += storage.migrate(storage.legacy_training_folder(slicer.app.temporaryPath),
                                    storage.default_training_folder(local))
    settings.setValue(storage.SETTINGS_MIGRATED, str(storage.data_folder(local)))
    return messages


def python_executable() -> str:
    """Slicer's own Python launcher (runs the child processes)."""
    # Not found: keep the name; starting a run then fails with a clear AutoSegError (segment.logic.start_segmentation).
    return shutil.which("PythonSlicer") or "PythonSlicer"


def ensure_dependencies(training: bool = False) -> bool:
    """True when what segmenting needs (with ``training``: also torch and the training packages) is there,
    installed after asking. Installer failures (declined, offline, pip errors) propagate to the calling
    slot, whose guard shows them."""
    try:
        import PyTorchUtils
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    except ImportError:
        torch_logic = None
    try:
        # A submodule that `import slicer` does not import (Slicer 5.12+; absent before).
        from slicer import packaging
    except ImportError:
        packaging = None

    def pip_install(requirements):
        with slicer.util.WaitCursor():  # only around the install: the questions are asked with a normal cursor
            slicer.util.pip_install(requirements)

    return dependencies.ensure_dependencies(
        confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="AutoSeg"),
        pip_install=pip_install, torch_logic=torch_logic,
        pip_ensure=getattr(packaging, "pip_ensure", None), training=training)

