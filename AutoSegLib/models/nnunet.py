"""Run nnU-Net v2 models without nnU-Net: read a reference results folder into AutoSeg's `Model`.

A reference results folder is either one trained model
``Dataset<ID>_<Name>/<Trainer>__<Plans>__<configuration>/`` (``dataset.json``, ``plans.json``,
``fold_<k>/checkpoint_final.pth`` or ``checkpoint_best.pth``, optionally
``crossval_results_folds_<...>/postprocessing.json``), or the dataset folder above several of them (then
``inference_information.json``, written by the reference's find-best step, names the configuration(s) to
ensemble and the post-processing file; without it every model folder's configuration is offered).

What is converted: the plans (`nnunet_plans.convert_plans`), the label layout (regions included), the
checkpoints' network weights (the reference's state dict minus its duplicate aliases
``...all_modules.<i>...`` and ``decoder.encoder.*``; checked key by key and shape by shape against
AutoSeg's network), ``inference_allowed_mirroring_axes`` and the post-processing steps. Checkpoints are
loaded only through `safe_load.load_checkpoint`; ``postprocessing.pkl`` (a pickle) is never read, its
``postprocessing.json`` twin is.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.labels import cascade_label_values
from AutoSegLib.models.folder import ConfigurationModel, FoldWeights, Model
from AutoSegLib.models.nnunet_plans import convert_plans, resolve_configuration
from AutoSegLib.models.safe_load import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["load_nnunet_results_folder", "find_nnunet_model_folders", "load_nnunet_weights",
           "canonical_state_dict", "convert_postprocessing", "is_nnunet_results_folder"]

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
FOLD_RE = re.compile(r"^fold_(\d+|all)$")
PP_FUNCTION = "remove_all_but_largest_component_from_segmentation"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AutoSegError(f"{path.parent}: not an nnU-Net v2 model folder: {path.name} is missing ({what}).") from None
    except json.JSONDecodeError as exc:
        raise AutoSegError(f"{path}: not valid JSON ({exc}).") from None


def _split_identifier(name: str) -> Tuple[str, str, str]:
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise AutoSegError(f"{name}: expected a folder named <Trainer>__<Plans>__<configuration> "
                           f"(like nnUNetTrainer__nnUNetPlans__3d_fullres).")
    return parts[0], parts[1], parts[2]


def _is_model_folder(path: Path) -> bool:
    return (path / "plans.json").is_file() and any(
        FOLD_RE.match(p.name) and p.is_dir() for p in path.iterdir())


def is_nnunet_results_folder(path: "str | Path") -> bool:
    """True when ``path`` is a reference model folder or a dataset folder holding some."""
    path = Path(path)
    if not path.is_dir():
        return False
    return _is_model_folder(path) or any(_is_model_folder(p) for p in path.glob("*__*__*") if p.is_dir())


def find_nnunet_model_folders(path: "str | Path") -> List[Path]:
    """The ``<Trainer>__<Plans>__<configuration>`` folders in ``path`` (``path`` itself when it is one)."""
    path = Path(path)
    if _is_model_folder(path):
        return [path]
    found = sorted(p for p in path.glob("*__*__*") if p.is_dir() and _is_model_folder(p))
    if not found:
        raise AutoSegError(f"{path}: no nnU-Net v2 model found: expected <Trainer>__<Plans>__<configuration>/ folders "
                           f"holding plans.json, dataset.json and fold_<k>/checkpoint_final.pth (or checkpoint_best.pth).")
    return found


def canonical_state_dict(weights: dict) -> dict:
    """The reference's network state dict with the duplicate aliases dropped (keys as in network/unet.py).

    ``weights`` maps str -> tensor. Prefixes of wrapped modules (``module.``, ``_orig_mod.``) are removed.
    """
    out = {}
    for key, value in weights.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("decoder.encoder.") or ".all_modules." in key:
            continue
        out[key] = value
    return out


def load_nnunet_weights(path: Path) -> dict:
    """`FoldWeights` loader: the canonical network state dict of a reference checkpoint (safe loading)."""
    ckpt = load_checkpoint(path)
    if "network_weights" not in ckpt:
        raise AutoSegError(f"{path}: not an nnU-Net v2 checkpoint (no 'network_weights' entry).")
    return canonical_state_dict(ckpt["network_weights"])


def check_state_dict(state_dict: dict, topology, num_input_channels: int, num_outputs: int, source: str) -> None:
    """Raise AutoSegError unless ``state_dict`` fits AutoSeg's network for ``topology`` exactly (keys and
    shapes). The network is built on the meta device: no memory, no initialisation cost."""
    import torch

    from AutoSegLib.network.unet import UNet

    with torch.device("meta"):
        net = UNet(topology, num_input_channels, num_outputs, deep_supervision=True)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append("shape mismatches (e.g. " + ", ".join(f"{k}: file {found[k]} vs plans {expected[k]}"
                                                            for k in wrong[:3]) + ")")
        raise AutoSegError(f"{source}: the network weights do not match the architecture described by plans.json "
                           f"({num_input_channels} input channel(s), {num_outputs} output(s)): " + "; ".join(parts) +
                           ". The trainer probably changed the network in code (not supported), or plans.json does "
                           "not belong to this checkpoint.")


def convert_postprocessing(pp: dict, source: str = "postprocessing.json") -> List[dict]:
    """The reference's postprocessing.json as AutoSeg post-processing steps.

    Each reference step is ``remove_all_but_largest_component_from_segmentation`` with
    ``labels_or_regions``: one label, one region (a list), or a list of labels/regions merged into one mask.
    The result is a list of ``{"step": "largest_component", "labels": [...]}``: the labels (or regions, as
    lists) merged into one mask whose largest connected component is kept; voxels of the mask outside it
    become background. Because a region's mask is the union of its labels, a region is written as its label
    list.
    """
    fns = pp.get("postprocessing_fns")
    kwargs = pp.get("postprocessing_kwargs")
    if not isinstance(fns, list) or not isinstance(kwargs, list) or len(fns) != len(kwargs):
        raise AutoSegError(f"{source}: expected 'postprocessing_fns' and 'postprocessing_kwargs' lists of equal length.")
    steps = []
    for fn, kw in zip(fns, kwargs):
        if fn != PP_FUNCTION or not isinstance(kw, dict) or set(kw) - {"labels_or_regions"}:
            raise AutoSegError(f"{source}: post-processing step {fn!r} with {kw!r} is not supported (only "
                               f"{PP_FUNCTION}).")
        value = kw.get("labels_or_regions")
        labels = [value] if isinstance(value, int) else list(value)
        steps.append({"step": "largest_component", "labels": labels})
    return steps


def _local_pp_json(dataset_dir: Path, recorded: str) -> Optional[Path]:
    """Map the training machine's ``postprocessing_file`` path onto this copy of the results folder."""
    parts = Path(recorded).parts
    for start in range(len(parts)):
        if parts[start] == dataset_dir.name:
            candidate = dataset_dir.joinpath(*parts[start + 1:]).with_name("postprocessing.json")
            if candidate.is_file():
                return candidate
    for n in (3, 2):  # <model>/crossval_results_folds_x/postprocessing.pkl or ensembles/<name>/postprocessing.pkl
        candidate = dataset_dir.joinpath(*parts[-n:]).with_name("postprocessing.json") if len(parts) >= n else None
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _model_pp_json(folder: Path) -> Optional[Path]:
    found = sorted(folder.glob("crossval_results_folds_*/postprocessing.json"), key=lambda p: -len(p.parent.name))
    return found[0] if found else None


def _with_previous_stages(folders: List[Path], candidates: List[Path]) -> List[Path]:
    """``folders`` plus, recursively, the model folders of their cascades' previous stages (when present)."""
    out = list(folders)
    i = 0
    while i < len(out):
        trainer, plans_id, conf = _split_identifier(out[i].name)
        plans = _read_json(out[i] / "plans.json", "the plans of the trained model")
        prev = resolve_configuration(plans, conf, str(out[i] / "plans.json")).get("previous_stage")
        if prev:
            match = [f for f in candidates if f.name == f"{trainer}__{plans_id}__{prev}"] or \
                    [f for f in candidates if _split_identifier(f.name)[2] == prev]
            if match and match[0] not in out:
                out.append(match[0])
        i += 1
    return out


def _scan_folds(folder: Path, folds: "List[str] | None") -> Dict[str, FoldWeights]:
    out: Dict[str, FoldWeights] = {}
    for fdir in sorted(p for p in folder.iterdir() if p.is_dir() and FOLD_RE.match(p.name)):
        fold = FOLD_RE.match(fdir.name).group(1)
        if folds is not None and fold not in folds:
            continue
        for name in CHECKPOINT_NAMES:
            if (fdir / name).is_file():
                if name != CHECKPOINT_NAMES[0]:
                    log.warning("%s: no checkpoint_final.pth, using %s", fdir, name)
                out[fold] = FoldWeights(fold, fdir / name, loader=load_nnunet_weights)
                break
    return out


def _read_model_folder(folder: Path, folds) -> Tuple[dict, dict, str, Dict[str, FoldWeights], Tuple[int, ...], dict, dict]:
    trainer, plans_id, configuration = _split_identifier(folder.name)
    plans = _read_json(folder / "plans.json", "the plans of the trained model")
    dataset = _read_json(folder / "dataset.json", "labels and channel names")
    fold_weights = _scan_folds(folder, folds)
    if not fold_weights:
        raise AutoSegError(f"{folder}: no fold weights: expected fold_<k>/checkpoint_final.pth (or checkpoint_best.pth)"
                           + (f" for folds {list(folds)}" if folds is not None else "") + ".")
    first = next(iter(fold_weights.values())).path
    ckpt = load_checkpoint(first, mmap=True)  # tensors are memory-mapped: cheap even for large models
    trained_conf = (ckpt.get("init_args") or {}).get("configuration", configuration)
    if trained_conf != configuration:
        raise AutoSegError(f"{first}: the checkpoint was trained as configuration {trained_conf!r} but sits in a "
                           f"folder named for {configuration!r}.")
    axes = ckpt.get("inference_allowed_mirroring_axes")
    mirror_axes = tuple(int(a) for a in axes) if axes is not None else ()
    info = {"trainer": str(ckpt.get("trainer_name", trainer)), "plans_identifier": plans_id,
            "configuration": configuration, "folder": str(folder)}
    if "network_weights" not in ckpt:
        raise AutoSegError(f"{first}: not an nnU-Net v2 checkpoint (no 'network_weights' entry).")
    return plans, dataset, configuration, fold_weights, mirror_axes, info, canonical_state_dict(ckpt["network_weights"])


def load_nnunet_results_folder(path: "str | Path", configurations: "List[str] | None" = None,
                               folds: "List[str] | None" = None, check_weights: bool = True,
                               require_previous_stage: bool = True) -> Model:
    """Read an nnU-Net v2 results folder as an AutoSeg `Model` (weights stay on disk until used).

    Parameters
    ----------
    path : str or Path
        A ``<Trainer>__<Plans>__<configuration>`` folder, or a ``Dataset<ID>_<Name>`` folder holding some.
    configurations : list of str, optional
        Keep only these configurations (default: all found; with ``inference_information.json``, its choice).
    folds : list of str, optional
        Keep only these folds ("0".."4", "all").
    check_weights : bool
        Compare the first fold's weights with the network described by the plans (keys and shapes).
    require_previous_stage : bool
        Refuse a cascade stage whose previous stage is not found (False: the caller combines models and
        checks later, as `models.install.import_models` does).

    Returns
    -------
    Model
        ``source`` "nnunet"; ``inference`` holds ``configurations`` and ``postprocessing`` steps when the
        reference's files say so; ``metadata["nnunet"]`` lists trainer/plans per configuration.

    Raises
    ------
    AutoSegError
        Missing files, unsupported architecture/normalisation/resampling/post-processing (named), weights
        that do not fit the plans, or unsafe checkpoint content.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AutoSegError(f"{path}: not a folder. Pass an nnU-Net v2 results folder "
                           f"(Dataset<ID>_<Name>/ or one of its <Trainer>__<Plans>__<configuration>/ folders).")
    folders = all_folders = find_nnunet_model_folders(path)
    single = len(folders) == 1 and folders[0] == path
    dataset_dir = path.parent if single else path
    info_file = dataset_dir / "inference_information.json"
    chosen: Optional[List[str]] = None
    pp_json: Optional[Path] = None
    if info_file.is_file():
        info = _read_json(info_file, "the reference's find-best result")
        best = info.get("best_model_or_ensemble") or {}
        selected = best.get("selected_model_or_models") or []
        ids = {f"{m.get('trainer')}__{m.get('plans_identifier')}__{m.get('configuration')}" for m in selected}
        if not single:
            picked = [f for f in folders if f.name in ids]
            if picked and configurations is None:
                folders, chosen = picked, [_split_identifier(f.name)[2] for f in picked]
        if best.get("postprocessing_file") and (not single or folders[0].name in ids):
            pp_json = _local_pp_json(dataset_dir, best["postprocessing_file"])
    if configurations is not None:
        folders = [f for f in folders if _split_identifier(f.name)[2] in configurations]
        if not folders:
            raise AutoSegError(f"{path}: none of the configurations {list(configurations)} is trained here.")
    if single:  # a cascade stage passed alone: its previous stage is usually a sibling folder
        all_folders = [folders[0]] + [f for f in sorted(dataset_dir.glob("*__*__*")) if f != folders[0] and
                                      f.is_dir() and _is_model_folder(f)]
    folders = _with_previous_stages(folders, all_folders)
    if pp_json is None and len(folders) == 1:
        pp_json = _model_pp_json(folders[0])

    read = [_read_model_folder(f, folds) for f in folders]
    by_conf: Dict[str, Path] = {}
    for (_, _, conf, *_), folder in zip(read, folders):
        if conf in by_conf:
            raise AutoSegError(f"{path}: configuration {conf!r} is trained twice ({by_conf[conf].name} and {folder.name}); "
                               f"pass the one folder you want.")
        by_conf[conf] = folder
    base_plans, base_dataset = read[0][0], read[0][1]
    for plans, dataset, conf, *_ in read[1:]:
        for key in ("transpose_forward", "foreground_intensity_properties_per_channel"):
            if plans.get(key) != base_plans.get(key):
                raise AutoSegError(f"{by_conf[conf]}: plans.json {key} differs from {folders[0].name}'s; these "
                                   f"models were not planned on the same data and cannot form one model.")
        if dataset.get("labels") != base_dataset.get("labels") or dataset.get("channel_names") != base_dataset.get("channel_names"):
            raise AutoSegError(f"{by_conf[conf]}: dataset.json labels/channels differ from {folders[0].name}'s.")
    merged = dict(base_plans)
    merged["configurations"] = {}
    for plans, *_ in read:
        merged["configurations"].update(plans.get("configurations") or {})
    wanted = [r[2] for r in read]
    converted = convert_plans(merged, base_dataset, wanted, source=folders[0] / "plans.json")
    layout = converted.label_layout()

    confs: Dict[str, ConfigurationModel] = {}
    for plans, dataset, conf, fold_weights, mirror_axes, info, weights in read:
        plan = converted.configurations[conf]
        n_in = converted.num_channels + (len(cascade_label_values(layout)) if plan.previous_stage else 0)
        if require_previous_stage and plan.previous_stage and plan.previous_stage not in by_conf:
            raise AutoSegError(f"{by_conf[conf]}: cascade stage {conf!r} needs the predictions of "
                               f"{plan.previous_stage!r}, whose trained model is not in {path}. Pass the dataset "
                               f"folder holding both.")
        if check_weights:
            check_state_dict(weights, plan.network, n_in, layout.num_outputs, str(next(iter(fold_weights.values())).path))
        confs[conf] = ConfigurationModel(conf, fold_weights, n_in, layout.num_outputs, mirror_axes)

    inference = None
    steps = convert_postprocessing(_read_json(pp_json, "post-processing"), str(pp_json)) if pp_json else []
    if chosen or steps:
        inference = {"configurations": chosen or [r[2] for r in read][:1], "postprocessing": steps}
    for folder in folders:
        if (folder / "crossval_results_folds_0_1_2_3_4" / "postprocessing.pkl").is_file() and pp_json is None:
            log.warning("%s: postprocessing.pkl found without its postprocessing.json twin; post-processing is "
                        "not applied (pickle files are never loaded).", folder)
    metadata = {"name": converted.dataset_name,
                "description": "nnU-Net v2 model imported by AutoSeg: " + ", ".join(f.name for f in folders),
                "nnunet": {r[2]: r[5] for r in read}}
    return Model(path=path, plans=converted, dataset=dict(base_dataset), configurations=confs,
                 inference=inference, metadata=metadata, source="nnunet")
