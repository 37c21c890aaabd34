"""Safe extraction of a model archive (`extract_model_archive`, format in `models.archive`) and the cache of
archives extracted for prediction (`prune_archive_cache`).

Extraction refuses, before anything is written to the destination: entries with absolute paths, drive
letters or ``..`` components, links and special files, file types a model does not have (pickles among
them), and any checkpoint that torch's weights-only loader (``models.safe_load.load_checkpoint``) does not
accept. It extracts into a temporary folder next to the destination and renames it into place, so a
failure leaves nothing behind; an unchanged archive (same SHA-256) already extracted there is reused.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Optional

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import file_sha256, is_stale_temporary, replace_dir, temporary_tag, write_json
from AutoSegLib.io.jsonfile import JSONFileError, parse_json, read_json, read_json_or_none
from AutoSegLib.models.archive import ALLOWED_SUFFIXES, MANIFEST, _archive_kind

log = logging.getLogger(__name__)

MARKER = ".autoseg_archive.json"
MAX_TOTAL_BYTES = 64 * 2 ** 30  # refuse archives claiming more than this uncompressed (zip bombs)
# Weights (float32) compress by ~1.1x, JSON/logs by ~10-30x: an archive expanding more than MAX_RATIO times
# beyond RATIO_CHECK_ABOVE bytes is a decompression bomb, not a model.
MAX_RATIO = 100
RATIO_CHECK_ABOVE = 64 * 2 ** 20
MAX_MANIFEST_BYTES = 16 * 2 ** 20


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
        if (read_json_or_none(marker, expect=dict) or {}).get("sha256") == digest:
            return dest  # this very archive is already extracted there
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
        tmp = dest.parent / f".{dest.name}{temporary_tag()}"  # carries our pid: a killed run's is found at once
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
            from AutoSegLib.inference.runtimes import torch_importable
            # without torch (a runtime-only install) no checkpoint is ever unpickled: the ONNX networks are used
            for ckpt in sorted(list(root.rglob("*.pt")) + list(root.rglob("*.pth"))) if torch_importable() else []:
                try:
                    load_checkpoint(ckpt)  # raises CheckpointRefused (an AutoSegError) for code-executing pickles
                except AutoSegError as exc:  # name the archive and its entry, not the temporary copy
                    entry = ckpt.relative_to(root).as_posix()
                    raise type(exc)(f"{archive}: entry {entry}: " + str(exc).replace(f"{ckpt}: ", "")
                                    .replace(str(ckpt), entry)) from None
            write_json(root / MARKER, {"archive": str(archive.resolve()), "sha256": digest})
            replace_dir(root, dest)
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
            files = parse_json(f.read(MAX_MANIFEST_BYTES + 1), f"{archive}: {MANIFEST}", expect=dict)["files"]
        names = {str(k) for k in files}
    except (KeyError, TypeError, ValueError, OSError, JSONFileError):
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
        listed = read_json(path, expect=dict)["files"]
        listed.items()
    except (KeyError, TypeError, AttributeError, JSONFileError):
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


STALE_TEMPORARY_S = 24 * 3600


def prune_archive_cache(cache_root: "str | os.PathLike", keep: "Optional[Path]" = None) -> List[Path]:
    """Remove from ``cache_root`` (``~/.cache/autoseg/models``) the extractions whose archive no longer exists
    (one that changed is extracted again over its own folder by `extract_model_archive`) and temporary
    folders of killed extractions (their process is gone, or a day old). Folders without our marker and
    ``keep`` are never touched. Returns the folders removed."""
    root = Path(cache_root)
    removed: List[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for entry in root.iterdir():
        if keep is not None and entry.resolve() == Path(keep).resolve():
            continue
        try:
            if entry.name.startswith(".") and ".tmp-" in entry.name:  # a dead extraction's, or a day old
                stale = is_stale_temporary(entry, STALE_TEMPORARY_S, now)
            elif entry.name.startswith(".") and ".old-" in entry.name:
                stale = now - entry.stat().st_mtime > STALE_TEMPORARY_S
            else:
                marker = entry / MARKER
                if not marker.is_file():
                    continue  # not ours: never touched
                source = (read_json_or_none(marker, expect=dict) or {}).get("archive")
                stale = not source or not Path(source).is_file()
        except (OSError, ValueError, AttributeError):
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
