"""Install models: turn nnU-Net v2 results folders, AutoSeg archives or folders into one AutoSeg model folder.

`import_models(sources, models_dir, name)` loads every source (`models.folder.load_model`, which reads
reference results folders through `models.nnunet`), merges their configurations into one model (they
must share labels, channels and axis order), and writes ``models_dir/<name>/`` in AutoSeg's model-folder
layout (DEVELOPERS.md):

    plans.json, dataset.json, model.json, [inference.json],
    trained/<configuration>/fold_<k>/checkpoint_final.pt     tensors + plain values only
    trained/<configuration>/fold_<k>/network.onnx(.json)     the network for the CPU runtimes (inference.compiled)

The folder is assembled under a hidden temporary name in ``models_dir`` (model listings skip dot-folders),
checked by loading it back (every checkpoint through the safe loader, every state dict against the
network), then renamed into place: an interrupted import leaves no half-written model.

`install_from_work(work, models_dir, name, metadata)` installs a finished training (the Slicer module's
Train section) the same way, staged and renamed into place, but as a plain copy of the work folder's
model-folder files (its final checkpoints as trained, each fold's `FOLD_RECORDS`): no torch, no reload.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, output_folder, replace_dir, write_json
from AutoSegLib.io.jsonfile import read_json
from AutoSegLib.io.work_folder import (CHECKPOINT_FINAL, DATASET_JSON, FINGERPRINT_JSON, FOLD_RECORDS, INFERENCE_JSON,
                                       PLANS_JSON, SPLITS_JSON, fold_dir, trained_folds)
from AutoSegLib.progress import ProgressCallback, ProgressTracker, emit

log = logging.getLogger(__name__)

__all__ = ["import_models", "install_from_work", "write_model_folder", "merge_models"]

#: What `install_from_work` copies from the top of a work folder when present (dataset.json and plans.json
#: must be there).
WORK_TOP_FILES = (DATASET_JSON, PLANS_JSON, FINGERPRINT_JSON, INFERENCE_JSON, "find_best_report.json",
                  "find_best_report.md", SPLITS_JSON)
#: Top files of which a model keeps everything but ``dataset_path``: the folder the raw training data was in
#: on the machine that trained is no use to a model, and travels with it when it is exported and shared.
WITHOUT_DATASET_PATH = (DATASET_JSON, FINGERPRINT_JSON)


def without_dataset_path(record: dict, name: str = DATASET_JSON) -> dict:
    """``record``, the model's ``name`` (dataset.json or fingerprint.json), without the raw data's folder:
    dataset.json loses the key (as `import_models` writes it), fingerprint.json keeps it empty (a field of
    `fingerprint.Fingerprint`)."""
    if name == FINGERPRINT_JSON:
        return {**record, "dataset_path": ""} if "dataset_path" in record else dict(record)
    return {k: v for k, v in record.items() if k != "dataset_path"}


def _load_source(source: Path, scratch: Path):
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.models.nnunet import is_nnunet_results_folder, load_nnunet_results_folder

    if not source.exists():
        raise AutoSegError(f"{source}: not found. Pass an nnU-Net v2 results folder, an AutoSeg model folder or a "
                           f"model archive.")
    if source.is_dir() and is_nnunet_results_folder(source):
        return load_nnunet_results_folder(source, require_previous_stage=False)
    return load_model(source, cache_dir=scratch / f"archive-{uuid.uuid4().hex[:8]}")


def merge_models(models: Sequence, sources: Sequence[Path]):
    """One `Model` holding the configurations of all ``models`` (first model's plans-level values).

    Raises
    ------
    AutoSegError
        The models differ in labels, channels or axis order, or two of them bring the same configuration.
    """
    base = models[0]
    if len(models) == 1:
        _check_cascades(base, sources[0])
        return base
    plans_confs = dict(base.plans.configurations)
    confs = dict(base.configurations)
    instructions = base.inference
    for model, source in zip(models[1:], sources[1:]):
        for what, a, b in (("labels", base.plans.labels, model.plans.labels),
                           ("channels", base.plans.channel_names, model.plans.channel_names),
                           ("axis order (transpose_forward)", base.plans.transpose_forward, model.plans.transpose_forward),
                           ("regions_class_order", base.plans.regions_class_order, model.plans.regions_class_order)):
            if a != b:
                raise AutoSegError(f"{source}: its {what} {b!r} differ from {sources[0]}'s {a!r}; only models of the "
                                   f"same dataset can be combined into one model.")
        for name, conf in model.configurations.items():
            if name in confs:
                raise AutoSegError(f"{source}: configuration {name!r} is also in {sources[0]}; import them as "
                                   f"separate models (different --name).")
            confs[name] = conf
        for name, plan in model.plans.configurations.items():
            plans_confs.setdefault(name, plan)
        instructions = instructions or model.inference
    plans = replace(base.plans, configurations=plans_confs)
    merged = replace(base, plans=plans, configurations=confs, inference=instructions)
    _check_cascades(merged, sources[0])
    return merged


def _check_cascades(model, source: Path) -> None:
    for name in model.configurations:
        prev = model.plans.required_stage(name)
        if prev and prev not in model.configurations:
            raise AutoSegError(f"{source}: configuration {name!r} needs the trained {prev!r} configuration (it is "
                               f"predicted first), which none of the sources holds. Add its results folder as "
                               f"another SOURCE.")


def _sanitize(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")
    if not clean:
        raise AutoSegError(f"model name {name!r} has no usable characters; use letters, digits, '.', '_', '-'.")
    return clean


def _save_tensors(path: Path, payload: dict) -> None:
    import torch
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())


def write_model_folder(model, dest: "str | Path", progress: Optional[ProgressCallback] = None) -> Path:
    """Write ``model`` (a `models.folder.Model`) as an AutoSeg model folder at ``dest`` (must not exist).

    Checkpoints hold ``network_weights`` (contiguous CPU tensors), ``configuration``, ``plans_identifier``,
    ``num_input_channels``, ``num_outputs``, ``epoch`` (-1: imported) and ``mirror_axes``. A fold that comes
    from an AutoSeg work or model folder keeps its records (`io.work_folder.FOLD_RECORDS`: training_config.json,
    from which prediction takes the training precision, the log, the validation summary), as the Slicer
    module's install keeps them.
    """
    from AutoSegLib.models.nnunet import check_state_dict
    from AutoSegLib.planning.plans import plans_identifier

    dest = Path(dest)
    dest.mkdir(parents=True)
    model.plans.to_json(dest / "plans.json")
    write_json(dest / "dataset.json", without_dataset_path(model.dataset))
    layout = model.label_layout
    total = sum(len(c.folds) for c in model.configurations.values())
    tracker = ProgressTracker(progress, "import-model", total)
    for name, conf in model.configurations.items():
        plan = model.plans.configurations[name]
        for fold, weights in conf.folds.items():
            state = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.state_dict().items()}
            check_state_dict(state, plan.network, conf.num_input_channels, layout.num_outputs, str(weights.path))
            fdir = fold_dir(dest, name, fold)
            _save_tensors(fdir / CHECKPOINT_FINAL, {
                "network_weights": state, "configuration": name, "plans_identifier": plans_identifier(plan),
                "num_input_channels": int(conf.num_input_channels), "num_outputs": int(conf.num_outputs),
                "epoch": -1, "mirror_axes": [int(a) for a in conf.mirror_axes]})
            _copy_fold_records(Path(weights.path).parent, fdir)
            tracker.step(f"{name} fold {fold}")
    if model.inference:
        _write_inference(model.inference, dest)
    meta = dict(model.metadata or {})
    meta.setdefault("name", model.plans.dataset_name)
    meta.setdefault("version", "")
    meta.setdefault("description", "")
    meta["imported"] = {"from": model.source, "path": str(model.path),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    meta["mirror_axes"] = {n: [int(a) for a in c.mirror_axes] for n, c in model.configurations.items()}
    write_json(dest / "model.json", meta)
    return dest


def _copy_file(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` atomically (`io.atomic.atomic_path`: a failed copy raises `WriteError`)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)


def _copy_fold_records(source: Path, dest: Path) -> None:
    """Copy the `FOLD_RECORDS` present in the fold folder ``source`` to ``dest`` (atomically each)."""
    for name in FOLD_RECORDS:
        if (source / name).is_file():
            _copy_file(source / name, dest / name)


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """Yield a hidden staging path beside ``final`` (not created); when the block succeeds, rename it to
    ``final``, replacing an existing ``final`` only once the new folder is complete. Whatever happens, no
    staging folder is left behind."""

    staging = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        replace_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def install_from_work(work: "str | os.PathLike", models_dir: "str | os.PathLike", name: str,
                      metadata: Optional[dict] = None) -> Path:
    """Install the finished training in ``work`` as the model folder ``models_dir/<name>``.

    The model folder gets the work folder's `WORK_TOP_FILES` (as they are, but for the raw data's
    ``dataset_path``: `WITHOUT_DATASET_PATH`) and, for every fold with a final
    checkpoint, that checkpoint and the fold's `FOLD_RECORDS` (the records `import_models` keeps too), plus
    ``model.json``: ``metadata`` with ``"configurations"`` (``{configuration: [fold, ...]}``) added. The
    copy is assembled in a hidden folder in ``models_dir`` and renamed into place when complete.

    Parameters
    ----------
    work : path
        Work folder with dataset.json, plans.json and trained/<configuration>/fold_<k>/checkpoint_final.pt.
    models_dir : path
        Where models are installed (created if missing).
    name : str
        Folder name of the new model: a plain name (letters, digits, ``._+-``), not taken yet.
    metadata : dict, optional
        model.json's keys (name, version, description, ...).

    Returns
    -------
    Path
        The installed model folder.

    Raises
    ------
    AutoSegError
        No final checkpoint (the training did not finish), dataset.json or plans.json missing, ``name`` not a
        plain folder name or already installed.
    WriteError
        A file could not be copied (the disk is full, ...); nothing is installed and no staging folder is left.
    """
    work, models_dir = Path(work), Path(models_dir)
    folds = trained_folds(work)
    if not folds:
        raise AutoSegError(f"{work}: no trained/<configuration>/fold_<k>/{CHECKPOINT_FINAL}: the training did not "
                           f"finish, so there is no model to install. Resume the training.")
    for required in (DATASET_JSON, PLANS_JSON):
        if not (work / required).is_file():
            raise AutoSegError(f"{work / required}: missing; the work folder is incomplete, train again.")
    if _sanitize(name) != name:
        raise AutoSegError(f"model folder name {name!r}: use a plain name (letters, digits, '.', '_', '+', '-'), "
                           f"e.g. {_sanitize(name)!r}.")
    final = models_dir / name
    if final.exists():
        raise AutoSegError(f"{final}: a model of this name is already installed; choose another name.")
    with output_folder(models_dir), _staged(final) as stage:
        stage.mkdir()
        for top in WORK_TOP_FILES:
            if not (work / top).is_file():
                continue
            if top in WITHOUT_DATASET_PATH:
                write_json(stage / top, without_dataset_path(read_json(work / top, expect=dict), top))
            else:
                _copy_file(work / top, stage / top)
        for configuration, fold_names in folds.items():
            for fold in fold_names:
                source, dest = fold_dir(work, configuration, fold), fold_dir(stage, configuration, fold)
                _copy_file(source / CHECKPOINT_FINAL, dest / CHECKPOINT_FINAL)
                _copy_fold_records(source, dest)
        write_json(stage / "model.json", {**(metadata or {}), "configurations": folds})
    log.info("Installed the training in %s as %s", work, final)
    return final


def _write_inference(inference: dict, dest: Path) -> None:
    """inference.json through the post-processing package's own writer (its schema), else as given."""
    record = inference.get("_record")
    try:
        from AutoSegLib.postprocessing import save_inference_instructions
    except ImportError:
        save_inference_instructions = None
    if save_inference_instructions is None:
        write_json(dest / "inference.json", {k: v for k, v in inference.items() if not k.startswith("_")})
        return
    if record is None:
        from AutoSegLib.postprocessing import InferenceInstructions
        record = InferenceInstructions.from_dict(
            {"configurations": list(inference.get("configurations") or []),
             "postprocessing": list(inference.get("postprocessing") or [])})
    save_inference_instructions(dest, record)


def import_models(sources: Sequence["str | os.PathLike"], models_dir: "str | os.PathLike", name: Optional[str] = None,
                  overwrite: bool = False, progress: Optional[ProgressCallback] = None) -> Path:
    """Install one model made of ``sources`` into ``models_dir/<name>``.

    Parameters
    ----------
    sources : sequence of path
        nnU-Net v2 results folders (``Dataset<ID>_<Name>/`` or ``<Trainer>__<Plans>__<configuration>/``),
        AutoSeg model folders / work folders, or model archives; their configurations are combined.
    models_dir : path
        Where models are installed (created if missing).
    name : str, optional
        Folder name of the new model (default: the dataset name, e.g. ``Dataset900_Synth``).
    overwrite : bool
        Replace an installed model of the same name (the old one is removed only after the new one is
        complete).

    Returns
    -------
    Path
        The installed model folder.

    Raises
    ------
    AutoSegError
        A source is missing or not a model, the sources do not fit together, or the name is taken
        (without ``overwrite``).
    """
    from AutoSegLib.models.folder import load_model_folder

    if not sources:
        raise AutoSegError("import-model: give at least one SOURCE (a results folder, model folder or archive).")
    sources = [Path(s).expanduser().resolve() for s in sources]
    models_dir = Path(models_dir).expanduser().resolve()
    with output_folder(models_dir):  # a refused import leaves no empty models folder behind
        emit(progress, "stage", stage="import-model", message=f"reading {len(sources)} source(s)")
        with tempfile.TemporaryDirectory(prefix=".import-", dir=models_dir) as scratch:
            models = [_load_source(s, Path(scratch)) for s in sources]
            model = merge_models(models, sources)
            final = models_dir / _sanitize(name or model.metadata.get("name") or model.plans.dataset_name)
            if final.exists() and not overwrite:
                raise AutoSegError(f"{final}: a model of this name is already installed. Choose another --name, or "
                                   f"pass --overwrite to replace it.")
            if name:
                model.metadata = {**(model.metadata or {}), "name": name}
            with _staged(final) as staging:
                write_model_folder(model, staging, progress)
                check = load_model_folder(staging)  # the written folder must load back completely
                missing = sorted(set(model.configurations) - set(check.configurations))
                if missing:
                    raise AutoSegError(f"{staging}: written without {missing}; nothing was installed.")
                from AutoSegLib.inference.compiled import export_model
                export_model(check, progress=progress)  # every fold's ONNX network, checked against torch
    emit(progress, "result", model=str(final), configurations=sorted(model.configurations),
         folds={c: sorted(m.folds) for c, m in model.configurations.items()})
    return final
