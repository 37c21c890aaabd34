"""A trained model in memory (`Model`) and loading it from disk (`load_model`).

`load_model(path)` accepts
- an AutoSeg model folder or a training WORK_DIR (layout in DEVELOPERS.md: ``plans.json``,
  ``dataset.json``, ``trained/<configuration>/fold_<k>/checkpoint_final.pt``, optional ``inference.json``
  and ``model.json``);
- a model archive (extracted by ``AutoSegLib.models.extract.extract_model_archive`` into a cache folder);
- an nnU-Net v2 results folder (converted by ``AutoSegLib.models.nnunet.load_nnunet_results_folder``).

Weights are loaded lazily (``FoldWeights.state_dict()``) and only with ``torch.load(weights_only=True)``.
Other loaders (nnU-Net import) build a `Model` directly; ``FoldWeights.loader`` lets them convert keys.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.jsonfile import read_json_or_none
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.io.work_folder import CHECKPOINT_PREFERENCE, FOLD_NAMES, fold_checkpoint, trained_dir
from AutoSegLib.planning.plans import Plans, network_input_channels

log = logging.getLogger(__name__)



def load_autoseg_checkpoint_weights(path: Path) -> dict:
    """State dict of an AutoSeg checkpoint (``network_weights``), loaded tensors-only (models.safe_load)."""
    from AutoSegLib.models.safe_load import load_checkpoint
    try:
        ckpt = load_checkpoint(path)
    except AutoSegError:
        raise
    except Exception as exc:  # a corrupt or truncated file
        raise AutoSegError(f"{path}: cannot load the checkpoint ({type(exc).__name__}: {exc}). "
                           f"Re-export the model or re-run training for this fold.") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise AutoSegError(f"{path}: not an AutoSeg checkpoint (no 'network_weights' entry).")
    return ckpt["network_weights"]


@dataclass
class FoldWeights:
    """One fold's weights of one configuration, loaded on first use.

    Attributes
    ----------
    fold : str
        "0".."4" or "all".
    path : Path
        The checkpoint file.
    loader : callable(Path) -> dict
        Returns the network state dict (keys as in ``network/unet.py``); tensors-only loading.
    """
    fold: str
    path: Path
    loader: Callable[[Path], dict] = load_autoseg_checkpoint_weights
    _cache: Optional[dict] = field(default=None, repr=False, compare=False)

    def state_dict(self, cache: bool = False) -> dict:
        if self._cache is not None:
            return self._cache
        sd = self.loader(self.path)
        if cache:
            self._cache = sd
        return sd


@dataclass
class ConfigurationModel:
    """The trained folds of one configuration.

    Attributes
    ----------
    name : str
        Configuration name as in the plans ('2d', '3d_fullres', '3d_lowres', '3d_cascade_fullres').
    folds : dict str -> FoldWeights
        Folds present, sorted by name.
    num_input_channels, num_outputs : int
        Network input channels (image channels, + classes for a cascade stage) and outputs.
    mirror_axes : tuple of int
        Spatial axes (of the network input, 0-based, transposed order) allowed for test-time mirroring.
    trained_precision : str or None
        "float32", "bfloat16" or "float16": how the folds' training ran (from their training_config.json);
        None when unknown (an imported nnU-Net model). Precision "auto" predicts in bfloat16 on a CPU only
        for models trained that way.
    """
    name: str
    folds: Dict[str, FoldWeights]
    num_input_channels: int
    num_outputs: int
    mirror_axes: Tuple[int, ...]
    trained_precision: Optional[str] = None


@dataclass
class Model:
    """A trained model: everything inference needs.

    Attributes
    ----------
    path : Path
        Folder it came from (the extracted folder for an archive).
    plans : Plans
    dataset : dict
        dataset.json content (``channel_names``, ``labels``, ``file_ending``, ...).
    configurations : dict str -> ConfigurationModel
        Configurations with at least one trained fold.
    inference : dict or None
        Inference instructions (inference.json written by find-best), None when absent: keys
        ``configurations`` (list of names to ensemble) and ``postprocessing`` (list of steps).
    metadata : dict
        model.json content (name, version, description), possibly empty.
    source : str
        "autoseg", "work_dir", "archive" or "nnunet".
    """
    path: Path
    plans: Plans
    dataset: dict
    configurations: Dict[str, ConfigurationModel]
    inference: Optional[dict] = None
    metadata: dict = field(default_factory=dict)
    source: str = "autoseg"
    cache_weights: bool = False   # keep loaded fold weights in memory (several cases in a row)

    @property
    def channel_names(self) -> Dict[str, str]:
        return dict(self.plans.channel_names)

    @property
    def label_layout(self) -> LabelLayout:
        return self.plans.label_layout()

    @property
    def file_ending(self) -> str:
        return self.dataset.get("file_ending", self.plans.file_ending)

    def default_configurations(self) -> Tuple[str, ...]:
        """What predict runs without ``--configuration``: the inference instructions' choice, else the
        configuration the plans recommend when it was trained (the budget configuration of a budget plan),
        else the best-guess single configuration present (3d_fullres, then 2d, then the cascade, then
        any)."""
        if self.inference and self.inference.get("configurations"):
            chosen = tuple(self.inference["configurations"])
            missing = [c for c in chosen if c not in self.configurations]
            if not missing:
                return chosen
            log.warning("inference instructions name %s, which %s has no weights for; ignoring them",
                        missing, self.path)
        for name in (self.plans.recommended_configuration, "3d_fullres", "2d", "3d_cascade_fullres", "3d_lowres"):
            if name in self.configurations:
                return (name,)
        return (sorted(self.configurations)[0],)


def _read_json(path: Path, what: str) -> dict:
    from AutoSegLib.io.jsonfile import JSONFileMissing, read_json
    try:
        return read_json(path, what, expect=dict)
    except JSONFileMissing:
        raise AutoSegError(f"{path.parent}: not a model: {path.name} is missing ({what}). A model folder holds "
                           f"dataset.json, plans.json and trained/<configuration>/fold_<k>/checkpoint_final.pt.") from None


def _mirror_axes(conf, metadata: dict) -> Tuple[int, ...]:
    """Test-time mirroring axes: model.json's ``mirror_axes[<configuration>]`` when recorded (an imported
    nnU-Net model keeps its trainer's choice), else every axis of the patch."""
    recorded = (metadata.get("mirror_axes") or {}).get(conf.name) if isinstance(metadata, dict) else None
    if recorded is not None:
        return tuple(int(a) for a in recorded)
    return tuple(range(len(conf.patch_size)))


def _trained_precision(folds: Dict[str, FoldWeights]) -> Optional[str]:
    """The autocast the folds trained with (``resolved.autocast`` of training_config.json beside the
    checkpoints): one answer only when every fold that records it agrees, else None."""
    found = set()
    for fw in folds.values():
        resolved = (read_json_or_none(fw.path.parent / "training_config.json", expect=dict) or {}).get("resolved")
        if not isinstance(resolved, dict):
            continue
        if "autocast" in resolved:  # a config without it records nothing (str(None) would read as float32)
            autocast = str(resolved["autocast"])
            found.add({"None": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}.get(autocast))
    return found.pop() if len(found) == 1 else None


def _scan_folds(root: Path, configuration: str, allow_non_final: bool) -> Dict[str, FoldWeights]:
    names = CHECKPOINT_PREFERENCE if allow_non_final else CHECKPOINT_PREFERENCE[:1]
    folds = {}
    for fold in FOLD_NAMES:
        path = fold_checkpoint(root, configuration, fold, names)
        if path is not None:
            folds[fold] = FoldWeights(fold, path)
    return folds


def load_model_folder(path: "str | Path", allow_non_final: bool = False) -> Model:
    """Load an AutoSeg model folder or training WORK_DIR (weights stay on disk until used).

    Parameters
    ----------
    path : str or Path
        The folder.
    allow_non_final : bool
        Use checkpoint_best/latest when a fold has no checkpoint_final (a training still running).

    Raises
    ------
    AutoSegError
        When plans.json or dataset.json is missing or unreadable, or no configuration has fold weights.
    """
    path = Path(path)
    plans_path = path / "plans.json"
    if not plans_path.is_file():
        _read_json(plans_path, "the plans written by `autoseg plan`")
    try:
        plans = Plans.from_json(plans_path)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        # a damaged or hand-edited file (a list where a number belongs, ...): a message, not a traceback
        raise AutoSegError(f"{plans_path}: malformed plans ({type(exc).__name__}: {exc}). The plans file is "
                           f"damaged; re-export or re-import the model.") from None
    from AutoSegLib.models.plans_check import check_model_plans
    check_model_plans(plans, plans_path)  # before anything below builds on the values
    dataset = _read_json(path / "dataset.json", "labels and channel names")
    metadata = _read_json(path / "model.json", "the model's name and description") if (path / "model.json").is_file() else {}
    configurations: Dict[str, ConfigurationModel] = {}
    trained = trained_dir(path)
    layout = plans.label_layout()
    for name, conf in plans.configurations.items():
        folds = _scan_folds(path, name, allow_non_final)
        if not folds:
            continue
        n_in = network_input_channels(plans, name)  # cascade: + one-hot of the previous stage's labels
        configurations[name] = ConfigurationModel(name, folds, n_in, layout.num_outputs, _mirror_axes(conf, metadata),
                                                  _trained_precision(folds))
    if not configurations:
        found = sorted(str(p.relative_to(path)) for p in trained.glob("*/fold_*/*.pt")) if trained.is_dir() else []
        hint = f" Found only: {found}." if found else ""
        raise AutoSegError(f"{path}: no trained weights: expected trained/<configuration>/fold_<k>/checkpoint_final.pt "
                           f"for one of the configurations {sorted(plans.configurations)}.{hint} Train a fold first "
                           f"(`autoseg train`), or use the checkpoints of unfinished folds "
                           f"(`autoseg predict --allow-unfinished`).")
    inference = None
    if (path / "inference.json").is_file():
        inference = _load_inference(path)
    source = "work_dir" if (path / "preprocessed").is_dir() else "autoseg"
    return Model(path, plans, dataset, configurations, inference, metadata, source)


def _load_inference(path: Path) -> Optional[dict]:
    """inference.json as a plain dict (``configurations``, ``postprocessing``, optional ``folds``), validated
    by ``postprocessing.load_inference_instructions``."""
    from AutoSegLib.postprocessing import load_inference_instructions
    record = load_inference_instructions(path)
    if record is None:
        return None
    d = record.to_dict()
    d["_record"] = record
    return d


def default_archive_cache(archive: Path) -> Path:
    """Where an archive is extracted by default: ``~/.cache/autoseg/models/<archive name>`` (extraction
    is skipped when the same archive, by checksum, is already there)."""
    return Path.home() / ".cache" / "autoseg" / "models" / archive.name.replace(".", "_")


def load_model(path: "str | Path", allow_non_final: bool = False, cache_dir: "str | Path | None" = None) -> Model:
    """Load a model from an AutoSeg model folder, a training WORK_DIR, a model archive or an nnU-Net v2
    results folder.

    Parameters
    ----------
    path : str or Path
    allow_non_final : bool
        For a WORK_DIR whose folds have no checkpoint_final yet: use best/latest.
    cache_dir : str or Path, optional
        Where an archive is extracted (default: ``default_archive_cache(path)``).

    Raises
    ------
    AutoSegError
        Path missing, unknown kind of model, or a model with missing pieces (the message says which).
    """
    from AutoSegLib.models.plans_check import check_model_plans
    model = _load_model(path, allow_non_final, cache_dir)
    check_model_plans(model.plans, Path(path) / "plans.json" if Path(path).is_dir() else path)  # nnU-Net too
    return model


def _load_model(path: "str | Path", allow_non_final: bool = False, cache_dir: "str | Path | None" = None) -> Model:
    path = Path(path).expanduser()
    if not path.exists():
        raise AutoSegError(f"{path}: model not found. Pass a model folder, a training work folder, a model "
                           f"archive or an nnU-Net v2 results folder.")
    if path.is_file():
        from AutoSegLib.models.extract import extract_model_archive
        dest = Path(cache_dir) if cache_dir else default_archive_cache(path)
        folder = extract_model_archive(path, dest)
        if not cache_dir:  # the shared cache: drop extractions of archives that are gone
            from AutoSegLib.models.extract import prune_archive_cache
            prune_archive_cache(dest.parent, keep=dest)
        model = load_model_folder(folder or dest, allow_non_final)
        model.source = "archive"
        return model
    if (path / "plans.json").is_file() and trained_dir(path).is_dir():
        return load_model_folder(path, allow_non_final)
    if any(path.glob("*__*__*/plans.json")) or any(path.glob("fold_*/checkpoint_*.pth")):
        from AutoSegLib.models.nnunet import load_nnunet_results_folder  # helper h4's module
        return load_nnunet_results_folder(path)
    return load_model_folder(path, allow_non_final)  # raises, naming the missing piece
