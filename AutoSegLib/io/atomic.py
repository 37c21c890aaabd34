"""Atomic file writing: write to a temporary name in the target folder, check it is complete, rename.

A reader never sees a half-written file, and an interrupted or failed write leaves the previous file (if
any) untouched. Every file AutoSegLib writes goes through `atomic_path` or `write_json`.

"Complete" is checked, not assumed: some writers return normally after a short write (SimpleITK's NIfTI
writer on a full disk writes a truncated .nii/.nii.gz, which it later reads back as a plausible, wrong
image). So before the rename the temporary file is flushed to disk (``fsync``: delayed allocation errors
surface there), and a writer may pass ``verify`` to read it back. Any failure becomes a `WriteError` that
names the final path and the cause ("the disk is full" when the file system has no room left).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from AutoSegLib.errors import WriteError, os_error_cause, os_error_message

# Suffixes kept at the end of the temporary name so that writers that pick the format by extension
# (SimpleITK, numpy) still do the right thing.
_MULTI_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")

# Below this many free bytes a file system counts as full: a writer that stopped short (and said nothing
# or something cryptic) stopped because the disk ran out.
FULL_BELOW_BYTES = 1 << 20

# Error texts by which writers that do not raise OSError report a failed write: torch.save ("enforce fail at
# inline_container.cc ... file write failed"), SimpleITK/ITK image writers.
_WRITE_FAILURE_TEXTS = ("inline_container", "file write failed", "ImageFileWriter", "cannot be written",
                        "Error writing", "Could not write", "No space left")


class IncompleteWrite(Exception):
    """Raised by a ``verify`` callback: the temporary file is not what was meant to be written."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _MULTI_SUFFIXES:
        if name.endswith(s):
            return path.name[-len(s):]
    return path.suffix


def free_bytes(folder: "str | os.PathLike") -> Optional[int]:
    """Bytes available to this user on the file system of ``folder`` (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def write_failure(path: Path, exc: BaseException) -> Optional[WriteError]:
    """The `WriteError` for ``exc`` raised while writing ``path``, or None when ``exc`` is not a write failure
    (a bug, or an AutoSegError with its own message: those pass through unchanged)."""
    if isinstance(exc, WriteError):
        return exc
    free = free_bytes(path.parent if path.parent.exists() else Path.cwd())
    full = free is not None and free < FULL_BELOW_BYTES
    if isinstance(exc, OSError) and exc.errno is None:  # numpy: "10000 requested and 2484 written"
        exc = IncompleteWrite(str(exc))
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            cause = "the disk is full" if exc.errno != errno.EDQUOT else "the disk quota is exceeded"
        elif exc.filename is None or ".tmp-" in str(exc.filename):  # about our file: name the final path only
            cause = os_error_cause(exc)
        else:  # about another path (a source file the block read, say): name it
            cause = os_error_message(exc).rstrip(".")
    elif isinstance(exc, IncompleteWrite) or (
            isinstance(exc, RuntimeError) and (full or any(t in str(exc) for t in _WRITE_FAILURE_TEXTS))):
        detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        cause = "the disk is full" if full else f"the file came out incomplete or unreadable ({detail})"
    else:
        return None
    if cause.startswith("the disk is full") and free is not None:
        cause += f" ({_human(free)} free there)"
    return WriteError(f"{path}: could not be written: {cause}. Nothing was replaced: a previous {path.name}, "
                      f"if any, is unchanged. Free some space (or fix the cause) and run again.")


def _make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``; a file standing where the folder (or one of its parents)
    should be is reported as such (mkdir says only "File exists")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(blocker)) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike", verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, check it and rename it to ``path``.

    Parameters
    ----------
    path : path
        The final file. Its folder is created.
    verify : callable(Path), optional
        Called with the temporary file after it was flushed to disk; raises `IncompleteWrite` (or OSError)
        when the file is not what was meant to be written (read back and compared, size checked, ...).

    Raises
    ------
    WriteError
        The folder could not be created, the block's writer failed with an OS error (or a torch/SimpleITK
        write error), the block left no file, the flush to disk or ``verify`` failed, or the rename failed.
        The message names ``path`` and the cause. ``path`` is left as it was; the temporary file is removed.
        Other exceptions from the block (bugs, AutoSegErrors) pass through unchanged, with the same cleanup.
    """
    path = Path(path)
    try:
        _make_folder(path.parent)
    except OSError as exc:
        raise WriteError(f"{path}: could not be written: the folder {path.parent} cannot be created: "
                         f"{os_error_message(exc, path.parent)}") from None
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}{temporary_tag()}{suffix}")
    try:
        try:
            yield tmp
            if not tmp.is_file():
                raise IncompleteWrite("the writer left no file")
            _fsync(tmp)
            if verify is not None:
                verify(tmp)
            os.replace(tmp, path)
        except Exception as exc:
            failure = write_failure(path, exc)
            if failure is None:
                raise
            raise failure from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _missing_folders(folder: Path) -> list:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing, p = [], Path(folder)
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


@contextlib.contextmanager
def output_folder(folder: "str | os.PathLike") -> Iterator[Path]:
    """Create ``folder`` (and parents) for a command's outputs; when the block fails, remove again the
    folders it created that are still empty, so a refused run leaves nothing behind. Raises `WriteError`
    when the folder cannot be created (a file where a folder is expected, read-only, ...)."""
    folder = Path(folder)
    created = _missing_folders(folder)
    try:
        _make_folder(folder)
    except OSError as exc:
        raise WriteError(f"{folder}: cannot write there: {os_error_message(exc, folder)}") from None
    try:
        yield folder
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise


STALE_TEMPORARY_S = 300  # an atomic write's temporary file not modified for this long belongs to a dead writer

# ".tmp-<pid>-<8 hex>": the writing process's id, so that a later run can tell a dead writer's leftovers
# (kill -9: no cleanup runs) from a live writer's file at once; ".tmp-<8 hex>": the older names
_TMP_RE = re.compile(r"\.tmp-(?:(\d+)-)?[0-9a-f]{8}")


def replace_dir(new: "str | os.PathLike", dest: "str | os.PathLike") -> None:
    """Move the finished folder ``new`` to ``dest`` (same file system), replacing an old ``dest``: the old
    one is renamed aside first and removed after, so ``dest`` is never a half-written mix of both."""
    new, dest = Path(new), Path(dest)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temporary_tag() -> str:
    """The tag of a temporary name written by this process: '.tmp-<pid>-<8 random hex digits>'."""
    return f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child not yet reaped counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's) or cannot tell: treat as alive
    try:  # a zombie (exited, not yet reaped) writes nothing more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def is_stale_temporary(tmp: Path, older_than_s: float = STALE_TEMPORARY_S, now: Optional[float] = None) -> bool:
    """True when ``tmp`` is a temporary file of a writer that is gone: its name carries the id of a process
    that no longer runs on this machine, or it was not modified for ``older_than_s`` seconds (older names
    without a pid; a pid reused by an unrelated process). A live writer's file being written is not stale."""
    import time
    if ".tmp-" not in tmp.name:
        return False
    m = _TMP_RE.search(tmp.name)
    if m is not None and m.group(1) is not None and not pid_alive(int(m.group(1))):
        return True
    try:
        return (now if now is not None else time.time()) - tmp.stat().st_mtime > older_than_s
    except OSError:
        return False


def remove_stale_temporaries(paths, older_than_s: float = STALE_TEMPORARY_S) -> list:
    """Remove temporary files that `atomic_path` left for ``paths`` (a writer killed with SIGKILL cannot
    clean up) when their writer is gone (`is_stale_temporary`). Returns the files removed."""
    import time
    removed = []
    now = time.time()
    for path in map(Path, paths):
        suffix = _suffix(path)
        stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
        if not path.parent.is_dir():
            continue
        for tmp in path.parent.glob(f".{glob.escape(stem)}.tmp-*{glob.escape(suffix)}"):
            name = tmp.name[len(stem) + 1: len(tmp.name) - len(suffix) if suffix else None]
            if not _TMP_RE.fullmatch(name):
                continue  # another file that happens to start alike
            try:
                if is_stale_temporary(tmp, older_than_s, now):
                    tmp.unlink()
                    removed.append(tmp)
            except OSError:
                pass
    return removed


def require_free_space(folder: "str | os.PathLike", needed_bytes: float, what: str) -> None:
    """Refuse, before long work starts, when the file system of ``folder`` (or of its nearest existing
    parent) has less than ``needed_bytes`` free. ``what`` says what needs the room ("the preprocessed data").
    Nothing happens when the free space cannot be asked. Raises `WriteError` naming the folder, the room
    needed and the room free."""
    p = Path(folder)
    while not p.exists() and p.parent != p:
        p = p.parent
    free = free_bytes(p)
    if free is not None and needed_bytes > free:
        raise WriteError(f"{folder}: not enough free space for {what}: about {_human(int(needed_bytes))} needed, "
                         f"{_human(free)} free there. Free some space or choose another folder; nothing was "
                         f"started.")


def check_writable(folder: "str | os.PathLike") -> Path:
    """Write and remove a small file in ``folder`` (creating it for the test, and removing again what was
    created): a read-only or full file system, or a file where a folder is expected, is found before long
    work starts rather than at its end. Raises `WriteError` naming ``folder`` and the cause."""
    folder = Path(folder)
    created = _missing_folders(folder)
    probe = folder / f".autoseg-write-test-{uuid.uuid4().hex[:8]}"
    try:
        with atomic_path(probe) as tmp:
            tmp.write_bytes(b"autoseg write test\n")
    except WriteError as exc:
        raise WriteError(f"{folder}: cannot write there: {str(exc).split('could not be written: ', 1)[-1]}") from None
    finally:
        if probe.exists():
            probe.unlink()
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
    return folder


def write_json(path: "str | os.PathLike", data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns the path. Raises `WriteError` as `atomic_path`."""
    path = Path(path)
    text = json.dumps(data, indent=indent, sort_keys=False) + "\n"
    with atomic_path(path, verify=lambda tmp: _check_size(tmp, len(text.encode()))) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return path


def _check_size(tmp: Path, expected: int) -> None:
    size = tmp.stat().st_size
    if size != expected:
        raise IncompleteWrite(f"{size} of {expected} bytes on disk")


def file_sha256(path: "str | os.PathLike") -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks: how archives and exported networks record
    what they hold."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2 ** 20), b""):
            h.update(chunk)
    return h.hexdigest()
