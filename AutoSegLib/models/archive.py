"""Model archives: one file holding a model folder (`export_model_archive`), and its safe extraction
(`extract_model_archive`).

An archive is a zip (``.zip``, the default) or a tar (``.tar``, ``.tar.gz``/``.tgz``) of the model folder
layout (DEVELOPERS.md)::

    dataset.json  plans.json  fingerprint.json  inference.json  model.json  archive_manifest.json
    trained/<configuration>/fold_<k>/checkpoint_final.pt            weights only
    trained/<configuration>/fold_<k>/network.onnx, network.onnx.json the network for the CPU runtimes
                                                                    (inference.compiled; checked at export)
    trained/<configuration>/fold_<k>/{training_config.json, training_log.jsonl, progress.png,
                                      validation/summary.json}      training summaries (when present)

``archive_manifest.json`` lists every file with its size and SHA-256; extraction checks them.

Extraction refuses, before anything is written to the destination: entries with absolute paths, drive
letters or ``..`` components, links and special files, file types a model does not have (pickles among
them), and any checkpoint that torch's weights-only loader (``models.safe_load.load_checkpoint``) does not
accept. It extracts into a temporary folder next to the destination and renames it into place, so a
failure leaves nothing behind; an unchanged archive (same SHA-256) already extracted there is reused.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, file_sha256, write_json
from AutoSegLib.io.work_folder import FOLD_RECORDS, fold_dir, trained_folds
from AutoSegLib.progress import emit

log = logging.getLogger(__name__)

MANIFEST = "archive_manifest.json"
MARKER = ".autoseg_archive.json"
TOP_FILES = ("dataset.json", "plans.json", "fingerprint.json", "inference.json", "model.json", "splits_final.json")
ALLOWED_SUFFIXES = (".json", ".jsonl", ".pt", ".pth", ".png", ".md", ".txt", ".csv", ".onnx")
CHECKPOINT_KEYS = ("network_weights", "configuration", "plans_identifier", "num_input_channels", "num_outputs",
                   "epoch", "mirror_axes")
MAX_TOTAL_BYTES = 64 * 2 ** 30  # refuse archives claiming more than this uncompressed (zip bombs)
# Weights (float32) compress by ~1.1x, JSON/logs by ~10-30x: an archive expanding more than MAX_RATIO times
# beyond RATIO_CHECK_ABOVE bytes is a decompression bomb, not a model.
MAX_RATIO = 100
RATIO_CHECK_ABOVE = 64 * 2 ** 20
MAX_MANIFEST_BYTES = 16 * 2 ** 20


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
    dataset = json.loads((source / "dataset.json").read_text())
    model_meta = json.loads((source / "model.json").read_text()) if (source / "model.json").is_file() else {}
    model_meta.setdefault("name", dataset.get("name", source.name))
    model_meta.setdefault("version", "1")
    model_meta.setdefault("description", dataset.get("description", ""))
    model_meta.update(metadata or {})
    model_meta["autoseg_version"] = __version__
    model_meta["exported"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model_meta["configurations"] = {c: f for c, f in selected.items()}

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


def _format_of(archive: Path) -> str:
    """"zip" or "tar" (plain or compressed), from the name first and then the leading bytes. Never
    ``zipfile.is_zipfile`` alone: it searches the end of the file for a zip record, and finds the one of a
    checkpoint (torch.save writes zips) stored last in a .tar made by export-model."""
    kind = _archive_kind(archive)
    if kind is not None:
        return "zip" if kind == "zip" else "tar"
    with open(archive, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return "tar"  # tarfile.open detects plain/gz/bz2/xz itself and says so when it is none of them


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """The member name as a safe relative path, or AutoSegError."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise AutoSegError(f"{archive}: refused: entry {name!r} has an absolute path; a model archive holds only "
                           f"paths inside the model folder. The archive is damaged or malicious.")
    p = PurePosixPath(name)
    if any(part == ".." for part in p.parts):
        raise AutoSegError(f"{archive}: refused: entry {name!r} would be written outside the target folder ('..'). "
                           f"The archive is damaged or malicious.")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise AutoSegError(f"{archive}: refused: entry {name!r} has an empty path.")
    return PurePosixPath(*parts)


def _members(archive: Path):
    """[(safe relative path, is_dir, size, opener)] of the archive; refuses unsafe entries."""
    out = []
    if _format_of(archive) == "zip":
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise AutoSegError(f"{archive}: not a model archive (not a readable zip file: {exc}).") from None
        for info in zf.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer recorded no Unix file type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise AutoSegError(f"{archive}: refused: entry {info.filename!r} is a link or special file; a "
                                   f"model archive holds only plain files.")
            rel = _check_name(archive, info.filename)
            out.append((rel, info.is_dir(), info.file_size, (lambda i=info: zf.open(i))))
        return out, zf
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise AutoSegError(f"{archive}: not a model archive (expected a .zip or .tar(.gz) file: {exc}).") from None
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()):
            raise AutoSegError(f"{archive}: refused: entry {m.name!r} is a "
                               f"{'link' if (m.issym() or m.islnk()) else 'special file'}; a model archive holds "
                               f"only plain files.")
        rel = _check_name(archive, m.name)
        out.append((rel, m.isdir(), m.size, (lambda mm=m: tf.extractfile(mm))))
    return out, tf


def extract_model_archive(archive: "str | os.PathLike", dest_dir: "str | os.PathLike") -> Path:
    """Safely extract a model archive into ``dest_dir``; returns the model folder (``dest_dir``).

    Raises
    ------
    AutoSegError
        Unsafe entries (absolute paths, '..', links, special files, unexpected file types), checksum
        mismatches, checkpoints refused by the weights-only loader, or no plans.json/dataset.json.
    """
    from AutoSegLib.models.safe_load import load_checkpoint

    archive, dest = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise AutoSegError(f"{archive}: model archive not found.")
    digest = file_sha256(archive)
    marker = dest / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("sha256") == digest:
                return dest  # this very archive is already extracted there
        except (OSError, json.JSONDecodeError):
            pass
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not marker.is_file())):
        raise AutoSegError(f"{dest}: exists and was not extracted from a model archive; refusing to replace it. "
                           f"Choose an empty or new folder.")
    members, handle = _members(archive)
    try:
        total = sum(size for _, _, size, _ in members)
        if total > MAX_TOTAL_BYTES:
            raise AutoSegError(f"{archive}: refused: it claims {total / 2 ** 30:.1f} GiB uncompressed (more than "
                               f"{MAX_TOTAL_BYTES // 2 ** 30} GiB); not a model archive.")
        ratio = total / max(archive.stat().st_size, 1)
        if total > RATIO_CHECK_ABOVE and ratio > MAX_RATIO:
            raise AutoSegError(f"{archive}: refused: {archive.stat().st_size / 2 ** 20:.1f} MiB that would expand to "
                               f"{total / 2 ** 20:.0f} MiB ({ratio:.0f}x; model weights barely compress, at most "
                               f"{MAX_RATIO}x is accepted). Not a model archive (a decompression bomb?).")
        listed = _manifest_names(archive, members)
        for rel, is_dir, _, _ in members:
            if not is_dir and not rel.name.lower().endswith(ALLOWED_SUFFIXES):
                raise AutoSegError(f"{archive}: refused: entry {str(rel)!r} is not a file type a model holds "
                                   f"(allowed: {', '.join(ALLOWED_SUFFIXES)}); pickles and code are never loaded.")
            if listed is not None and not is_dir and not _listed(rel, listed):
                raise AutoSegError(f"{archive}: refused: entry {str(rel)!r} is not listed in its {MANIFEST}; an "
                                   f"archive written by export-model holds only the files it lists.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for rel, is_dir, _, opener in members:
                target = tmp.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(tmp.resolve()):  # belt and braces after _check_name
                    raise AutoSegError(f"{archive}: refused: entry {str(rel)!r} would land outside the target folder.")
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with opener() as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 2 ** 20)
            root = _model_root(archive, tmp)
            _verify_manifest(archive, root)
            from AutoSegLib.inference.compiled import torch_importable
            # without torch (a runtime-only install) no checkpoint is ever unpickled: the ONNX networks are used
            for ckpt in sorted(list(root.rglob("*.pt")) + list(root.rglob("*.pth"))) if torch_importable() else []:
                try:
                    load_checkpoint(ckpt)  # raises CheckpointRefused (an AutoSegError) for code-executing pickles
                except AutoSegError as exc:  # name the archive and its entry, not the temporary copy
                    entry = ckpt.relative_to(root).as_posix()
                    raise type(exc)(f"{archive}: entry {entry}: " + str(exc).replace(f"{ckpt}: ", "")
                                    .replace(str(ckpt), entry)) from None
            write_json(root / MARKER, {"archive": str(archive.resolve()), "sha256": digest})
            _replace_dir(root, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        handle.close()
    return dest


def _listed(rel: PurePosixPath, listed: set) -> bool:
    """Whether the manifest lists ``rel`` (archives made by zipping the folder itself add one top folder)."""
    return str(rel) in listed or (len(rel.parts) > 1 and str(PurePosixPath(*rel.parts[1:])) in listed)


def _manifest_names(archive: Path, members) -> "Optional[set]":
    """The file names ``archive_manifest.json`` lists (read from the archive, before anything is extracted),
    plus the manifest itself; None for an archive without one (made by hand: checked entry by entry)."""
    found = [(rel, size, opener) for rel, is_dir, size, opener in members
             if not is_dir and rel.name == MANIFEST and len(rel.parts) <= 2]
    if not found:
        return None
    rel, size, opener = found[0]
    if size > MAX_MANIFEST_BYTES:
        raise AutoSegError(f"{archive}: refused: its {MANIFEST} claims {size} bytes; not a model archive.")
    try:
        with opener() as f:
            files = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))["files"]
        names = {str(k) for k in files}
    except (KeyError, TypeError, ValueError, OSError, UnicodeDecodeError):
        raise AutoSegError(f"{archive}: {MANIFEST} is unreadable; the archive is damaged.") from None
    return names | {MANIFEST}


def _model_root(archive: Path, folder: Path) -> Path:
    if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and (subs[0] / "plans.json").is_file() and (subs[0] / "dataset.json").is_file():
        return subs[0]  # an archive made by zipping the folder itself
    raise AutoSegError(f"{archive}: not a model archive: plans.json and dataset.json are missing at its top "
                       f"level. Make archives with `autoseg export-model`.")


def _verify_manifest(archive: Path, root: Path) -> None:
    path = root / MANIFEST
    if not path.is_file():
        return
    try:
        listed = json.loads(path.read_text())["files"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise AutoSegError(f"{archive}: {MANIFEST} is unreadable; the archive is damaged.") from None
    for name, entry in listed.items():
        # a name outside the archive (absolute, '..') must not make us stat local files and tell
        rel = _check_name(archive, str(name))
        f = root.joinpath(*rel.parts)
        if not f.is_file():
            raise AutoSegError(f"{archive}: {name} is listed in {MANIFEST} but missing; the archive is incomplete.")
        if f.stat().st_size != entry.get("size") or file_sha256(f) != entry.get("sha256"):
            raise AutoSegError(f"{archive}: {name} does not match its checksum in {MANIFEST}; the archive is damaged "
                               f"or was modified.")


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``, replacing an old ``dest`` (renamed aside first, then removed)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


STALE_TEMPORARY_S = 24 * 3600


def prune_archive_cache(cache_root: "str | os.PathLike", keep: "Optional[Path]" = None) -> List[Path]:
    """Remove from ``cache_root`` (``~/.cache/autoseg/models``) the extractions whose archive no longer exists
    (one that changed is extracted again over its own folder by `extract_model_archive`) and temporary
    folders of killed extractions older than a day. Folders without our marker and ``keep`` are never
    touched. Returns the folders removed."""
    root = Path(cache_root)
    removed: List[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for entry in root.iterdir():
        if keep is not None and entry.resolve() == Path(keep).resolve():
            continue
        try:
            if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                stale = now - entry.stat().st_mtime > STALE_TEMPORARY_S
            else:
                marker = entry / MARKER
                if not marker.is_file():
                    continue  # not ours: never touched
                source = json.loads(marker.read_text()).get("archive")
                stale = not source or not Path(source).is_file()
        except (OSError, ValueError, AttributeError):
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
