"""Installed models: what the model picker lists, and the command that installs one.

A model folder (DEVELOPERS.md) holds ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
``plans.json``, ``trained/<configuration>/fold_<k>/checkpoint_final.pt`` and optionally ``model.json``
(``name``, ``version``, ``description``, and for the Slicer module ``terminology``: label name -> Slicer
terminology entry string, ``colors``: label name -> [r, g, b] in 0-1). Only JSON is read here (no torch),
so the panel fills instantly and works before PyTorch is installed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.jsonfile import JSONFileMissing, read_json
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.io.work_folder import trained_dir, trained_folds

log = logging.getLogger(__name__)

MODEL_ARCHIVE_ENDINGS = (".zip", ".tar.gz", ".tgz", ".autoseg")


@dataclass(frozen=True)
class ModelInfo:
    """What the Slicer module needs to know about one installed model.

    Attributes
    ----------
    path : Path
    name, version, description : str
    channel_names : tuple of str
        One per input channel, in channel order.
    labels : tuple of (str, int)
        ``(name, value)`` in dataset.json order, background included.
    file_ending : str
    configurations : tuple of str
        Trained configurations (sub-folders of ``trained/``).
    folds : tuple of str
        Fold folder suffixes found for the first configuration ("0".."4" or "all").
    image_ndim : int
        2 for a model of 2-D images, 3 otherwise.
    terminology, colors : dict
        Optional per-label terminology entry strings and colours (from model.json).
    """
    path: Path
    name: str
    version: str
    description: str
    channel_names: Tuple[str, ...]
    labels: Tuple[Tuple[str, int], ...]
    file_ending: str
    configurations: Tuple[str, ...]
    folds: Tuple[str, ...]
    image_ndim: int = 3
    terminology: Dict[str, str] = field(default_factory=dict)
    colors: Dict[str, Tuple[float, float, float]] = field(default_factory=dict)

    @property
    def foreground_labels(self) -> Tuple[Tuple[str, int], ...]:
        return tuple((n, v) for n, v in self.labels if v != 0)

    def summary(self) -> str:
        """One line for the picker's tooltip: inputs and labels."""
        labels = ", ".join(f"{n} ({v})" for n, v in self.foreground_labels)
        return f"{self.name} {self.version}".strip() + f" - inputs: {', '.join(self.channel_names)}; labels: {labels}"


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return read_json(path, hint="Reinstall the model.", expect=dict)
    except JSONFileMissing:
        raise AutoSegError(f"{folder} is not an AutoSeg model folder: {path.name} is missing. Expected "
                           f"dataset.json, plans.json and trained/<configuration>/fold_<k>/checkpoint_final.pt; "
                           f"use 'Add model...' to install a model archive or an nnU-Net results folder.") from None


def read_model_info(path) -> ModelInfo:
    """Read a model folder's description.

    Raises
    ------
    AutoSegError
        The folder is missing, is not a model folder (no dataset.json / plans.json / trained weights) or its
        dataset.json lacks channel names or labels.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AutoSegError(f"{folder}: model folder not found.")
    dataset = _read_json(folder / "dataset.json", folder)
    plans = _read_json(folder / "plans.json", folder)
    meta = _read_json(folder / "model.json", folder) if (folder / "model.json").is_file() else {}

    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise AutoSegError(f"{folder / 'dataset.json'}: 'channel_names' must map channel numbers to names, like "
                           f"{{\"0\": \"CT\"}}; found {channels!r}.")
    try:
        channel_names = tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))
    except ValueError:
        raise AutoSegError(f"{folder / 'dataset.json'}: channel_names keys must be numbers; found {list(channels)}.") from None
    layout = LabelLayout.from_dataset_labels(dataset.get("labels"), dataset.get("regions_class_order"),
                                             source=str(folder / "dataset.json"))
    labels = []
    for name, value in zip(layout.names, layout.values):
        if isinstance(value, tuple):  # a region paints the value given by regions_class_order
            continue
        labels.append((name, int(value)))
    if layout.has_regions:
        rco = list(layout.regions_class_order or ())
        regions = [(n, v) for n, v in zip(layout.names, layout.values) if v != 0]
        labels = [("background", 0)] + [(n, int(rco[i])) for i, (n, _) in enumerate(regions) if i < len(rco)]

    trained = trained_dir(folder)
    configurations = tuple(sorted(p.name for p in trained.iterdir() if p.is_dir())) if trained.is_dir() else ()
    with_final = trained_folds(folder)
    folds: Tuple[str, ...] = tuple(next(iter(with_final.values()), ()))
    if not folds:
        raise AutoSegError(f"{folder} is not a usable model: no trained/<configuration>/fold_<k>/checkpoint_final.pt "
                           f"found. Install a trained model with 'Add model...'.")
    configs_plan = plans.get("configurations", {})
    image_ndim = 3
    if configurations and isinstance(configs_plan, dict):
        dims = {len(configs_plan.get(c, {}).get("patch_size", ())) for c in configurations}
        # Only a dataset of 2-D images has nothing but 2-D configurations *and* 2-D spacings.
        spacing = plans.get("original_median_spacing_after_transp") or plans.get("median_spacing")
        if dims == {2} and isinstance(spacing, list) and len(spacing) == 2:
            image_ndim = 2
    colors = {}
    for k, v in (meta.get("colors") or {}).items():
        if isinstance(v, (list, tuple)) and len(v) == 3:
            colors[str(k)] = tuple(float(c) for c in v)
    return ModelInfo(
        path=folder, name=str(meta.get("name") or dataset.get("name") or folder.name),
        version=str(meta.get("version", "")), description=str(meta.get("description", "")),
        channel_names=channel_names, labels=tuple(labels), file_ending=str(dataset.get("file_ending", ".nii.gz")),
        configurations=configurations, folds=folds, image_ndim=image_ndim,
        terminology={str(k): str(v) for k, v in (meta.get("terminology") or {}).items()}, colors=colors)


def list_models(models_dir) -> Tuple[List[ModelInfo], List[str]]:
    """Models installed in ``models_dir`` (sub-folders), sorted by name, and one problem line per
    sub-folder that is not a usable model. A missing folder lists nothing."""
    models_dir = Path(models_dir)
    models, problems = [], []
    if not models_dir.is_dir():
        return models, problems
    for sub in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            models.append(read_model_info(sub))
        except AutoSegError as exc:
            problems.append(str(exc))
    models.sort(key=lambda m: (m.name.lower(), m.version))
    return models, problems


def find_model(models: List[ModelInfo], path) -> Optional[ModelInfo]:
    for m in models:
        if Path(m.path) == Path(path):
            return m
    return None


def import_model_args(source, models_dir) -> List[str]:
    """Arguments of ``autoseg import-model`` installing ``source`` (folder or archive) into ``models_dir``."""
    source = Path(source)
    if not source.exists():
        raise AutoSegError(f"{source}: not found. Choose a model folder, a model archive "
                           f"({', '.join(MODEL_ARCHIVE_ENDINGS)}) or an nnU-Net v2 results folder.")
    return [str(source), "--models-dir", str(models_dir)]
