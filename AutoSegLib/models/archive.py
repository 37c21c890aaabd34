"""Model archives: one file holding a model folder (`export_model_archive`); its safe extraction is
`models.extract`.

An archive is a zip (``.zip``, the default) or a tar (``.tar``, ``.tar.gz``/``.tgz``) of the model folder
layout (DEVELOPERS.md)::

    dataset.json  plans.json  fingerprint.json  inference.json  model.json  archive_manifest.json
    trained/<configuration>/fold_<k>/checkpoint_final.pt            weights only
    trained/<configuration>/fold_<k>/network.onnx, network.onnx.json the network for the CPU runtimes
                                                                    (inference.compiled; checked at export)
    trained/<configuration>/fold_<k>/{training_config.json, training_log.jsonl, progress.png,
                                      validation/summary.json}      training summaries (when present)

``archive_manifest.json`` lists every file with its size and SHA-256; extraction checks them.
"""
from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, check_writable, file_sha256, require_free_space, write_json
from AutoSegLib.io.jsonfile import read_json
from AutoSegLib.io.work_folder import FOLD_RECORDS, fold_dir, trained_folds
from AutoSegLib.progress import emit

log = logging.getLogger(__name__)

MANIFEST = "archive_manifest.json"
TOP_FILES = ("dataset.json", "plans.json", "fingerprint.json", "inference.json", "model.json", "splits_final.json")
ALLOWED_SUFFIXES = (".json", ".jsonl", ".pt", ".pth", ".png", ".md", ".txt", ".csv", ".onnx")
CHECKPOINT_KEYS = ("network_weights", "configuration", "plans_identifier", "num_input_channels", "num_outputs",
                   "epoch", "mirror_axes")


def _select_folds(source: Path, configurations, folds) -> Dict[str, List[str]]:
    trained = trained_folds(source, configurations=configurations)
    confs = list(configurations) if configurations else sorted(trained)
    wanted = [str(f) for f in folds] if folds else None
    out: Dict[str, List[str]] = {}
    for c in confs:
        present = trained.get(c, [])
        chosen = [f for f in present if wanted is None or f in wanted]
        if configurations and not chosen:
            raise AutoSegError(f"{source}: configuration {c!r} has no trained/{c}/fold_<k>/checkpoint_final.pt "
                               f"{'for folds ' + str(wanted) if wanted else ''}(found folds {present}). Finish its "
                               f"training first or leave it out.")
        if chosen:
            out[c] = chosen
    if not out:
        raise AutoSegError(f"{source}: no trained/<configuration>/fold_<k>/checkpoint_final.pt to export. Train at "
                           f"least one fold to the end first.")
    return out


def _slim_checkpoint(path: Path, tmp_dir: Path) -> Path:
    """The checkpoint itself if it holds only weights and identifying keys; else a re-saved copy of those."""
    import torch

    from AutoSegLib.models.safe_load import load_checkpoint

    ckpt = load_checkpoint(path)
    if "network_weights" not in ckpt:
        raise AutoSegError(f"{path}: not an AutoSeg checkpoint (no 'network_weights').")
    if set(ckpt) <= set(CHECKPOINT_KEYS):
        return path
    slim = {k: ckpt[k] for k in CHECKPOINT_KEYS if k in ckpt}
    out = tmp_dir / f"{uuid.uuid4().hex}.pt"
    torch.save(slim, out)
    return out


def _exported_network(source: Path, conf: str, fold: str, checkpoint: Path, tmp: Path, prefix: str) -> Dict[str, Path]:
    """The fold's network exported to ONNX from the archived checkpoint and checked against torch
    (``inference.compiled.export_fold``): ``{archive name: local file}``."""
    from AutoSegLib.inference.compiled import ONNX_NAME, SIDECAR_NAME, export_fold
    from AutoSegLib.models.folder import FoldWeights
    from AutoSegLib.planning.plans import network_input_channels
    from AutoSegLib.planning.plans import Plans

    try:
        plans = Plans.from_json(source / "plans.json")
    except AutoSegError as exc:  # not AutoSeg plans: no network to build (the archive cannot predict anyway)
        log.warning("%s: no ONNX network exported: %s", source, exc)
        return {}
    out_dir = tmp / "onnx" / conf / f"fold_{fold}"
    export_fold(plans.configuration(conf), network_input_channels(plans, conf), plans.label_layout().num_outputs,
                FoldWeights(fold, checkpoint), out_dir)
    return {f"{prefix}/{ONNX_NAME}": out_dir / ONNX_NAME, f"{prefix}/{SIDECAR_NAME}": out_dir / SIDECAR_NAME}


def export_model_archive(source: "str | os.PathLike", archive_path: "str | os.PathLike",
                         configurations: Optional[Sequence[str]] = None, folds: Optional[Sequence] = None,
                         metadata: Optional[dict] = None, progress=None) -> Path:
    """Write a model folder or training work folder as one archive file.

    Parameters
    ----------
    source : path
        Model folder or training WORK_DIR (plans.json, dataset.json, trained/...).
    archive_path : path
        ``.zip`` (default when the name has no known ending: ``.zip`` is appended), ``.tar``, ``.tar.gz``
        or ``.tgz``. Written atomically.
    configurations, folds : optional
        Restrict what is exported (default: every configuration's folds with a ``checkpoint_final.pt``).
    metadata : dict, optional
        Overrides for model.json (``name``, ``version``, ``description``).
    progress : callable, optional

    Returns
    -------
    Path of the archive.

    Raises
    ------
    AutoSegError
        Missing plans/dataset.json or weights; inference.json naming configurations left out; a checkpoint
        that is not weights-only loadable.
    """
    from AutoSegLib import __version__

    source = Path(source)
    for name in ("plans.json", "dataset.json"):
        if not (source / name).is_file():
            raise AutoSegError(f"{source}: not a model or work folder: {name} is missing.")
    selected = _select_folds(source, configurations, folds)
    plans = read_json(source / "plans.json", "a model's plans.json", expect=dict)
    fine = ((plans.get("budget") or {}).get("fine") or {})
    for name in selected:
        conf = (plans.get("configurations") or {}).get(name) or {}
        needed = conf.get("previous_stage") or (fine.get("located_by") if fine.get("configuration") == name else None)
        if needed and needed not in selected:
            raise AutoSegError(f"{source}: {name!r} is predicted after {needed!r} and needs its weights, which would "
                               f"not be exported. Export both (--configurations {needed} {name}).")
    inference = source / "inference.json"
    if inference.is_file():
        from AutoSegLib.postprocessing.instructions import load_inference_instructions
        ins = load_inference_instructions(source)
        missing = [c for c in ins.configurations if c not in selected]
        if missing:
            raise AutoSegError(f"{inference}: the model's inference instructions use {list(ins.configurations)}, "
                               f"but {missing} would not be exported. Export them too, or re-run `autoseg "
                               f"find-best` with --configurations {' '.join(selected)}.")
    archive_path = Path(archive_path)
    kind = _archive_kind(archive_path)
    if kind is None:
        archive_path = archive_path.with_name(archive_path.name + ".zip")
        kind = "zip"
    dataset = read_json(source / "dataset.json", "a model's dataset.json", expect=dict)
    model_meta = (read_json(source / "model.json", "a model.json", expect=dict)
                  if (source / "model.json").is_file() else {})
    model_meta.setdefault("name", dataset.get("name", source.name))
    model_meta.setdefault("version", "1")
    model_meta.setdefault("description", dataset.get("description", ""))
    model_meta.update(metadata or {})
    model_meta["autoseg_version"] = __version__
    model_meta["exported"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model_meta["configurations"] = {c: f for c, f in selected.items()}

    # a read-only or full place is found before the checkpoints are converted, not after: the slim copies,
    # the exported networks and the archive take about three times the checkpoints' size
    check_writable(archive_path.parent)
    require_free_space(archive_path.parent, 3 * sum(
        (fold_dir(source, c, f) / "checkpoint_final.pt").stat().st_size
        for c, fl in selected.items() for f in fl), f"the archive {archive_path.name}")
    with tempfile.TemporaryDirectory(prefix=".autoseg-export-", dir=archive_path.parent if archive_path.parent.exists()
                                     else None) as tmp:
        tmp = Path(tmp)
        files: Dict[str, Path] = {}  # archive name -> local file
        for name in TOP_FILES:
            if name != "model.json" and (source / name).is_file():
                files[name] = source / name
        write_json(tmp / "model.json", model_meta)
        files["model.json"] = tmp / "model.json"
        total = sum(len(f) for f in selected.values())
        done = 0
        for conf, fold_list in selected.items():
            for fold in fold_list:
                fdir = fold_dir(source, conf, fold)
                prefix = fdir.relative_to(source).as_posix()
                files[f"{prefix}/checkpoint_final.pt"] = _slim_checkpoint(fdir / "checkpoint_final.pt", tmp)
                files.update(_exported_network(source, conf, fold, files[f"{prefix}/checkpoint_final.pt"], tmp, prefix))
                for extra in FOLD_RECORDS:
                    if (fdir / extra).is_file():
                        files[f"{prefix}/{extra}"] = fdir / extra
                done += 1
                emit(progress, "progress", stage="export", current=done, total=total, eta_s=None,
                     message=f"{conf} fold {fold}")
        manifest = {"format": 1, "files": {n: {"size": p.stat().st_size, "sha256": file_sha256(p)}
                                            for n, p in sorted(files.items())}}
        write_json(tmp / MANIFEST, manifest)
        files[MANIFEST] = tmp / MANIFEST
        with atomic_path(archive_path) as out:
            if kind == "zip":
                with zipfile.ZipFile(out, "w") as zf:
                    for name, path in sorted(files.items()):
                        method = zipfile.ZIP_STORED if name.endswith((".pt", ".png", ".onnx")) else zipfile.ZIP_DEFLATED
                        zf.write(path, name, compress_type=method)
            else:
                with tarfile.open(out, "w:gz" if kind == "tar.gz" else "w") as tf:
                    for name, path in sorted(files.items()):
                        tf.add(path, arcname=name, recursive=False)
    emit(progress, "result", archive=str(archive_path), configurations=selected)
    return archive_path


def _archive_kind(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    return None
