"""The one JSON reader of AutoSegLib: every JSON file a user or another program may have touched.

`read_json` reads a file as UTF-8 (not the locale's encoding), refuses files over a size bound before
reading them and documents nested deeper than a bound (a real dataset.json, plans or model file is a few
levels deep; thousands of nested brackets are a damaged or hostile file, and Python's parser would stop
with a RecursionError), and turns every failure into a `JSONFileError` naming the file and the cause:
missing, unreadable (permission, a folder), not UTF-8, not JSON (line and column), too large, too deep,
or not the kind of value expected (an object where a list came).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from AutoSegLib.errors import AutoSegError, os_error_message

MAX_BYTES = 256 * 2 ** 20  # a fingerprint of thousands of cases is a few MB; 256 MiB is no description file
MAX_DEPTH = 64  # our deepest files (plans, budget plans) nest about 8 levels


class JSONFileError(AutoSegError):
    """A JSON file is missing, unreadable or malformed; the message names the file and the cause."""


class JSONFileMissing(JSONFileError, FileNotFoundError):
    """The JSON file does not exist (also a FileNotFoundError, for callers that treat it as optional)."""


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists/objects deeper than ``limit`` (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return True
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_json(path: "str | os.PathLike", what: str = "", hint: str = "", missing: Optional[str] = None,
              expect: Optional[type] = None, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read the JSON file ``path``.

    Parameters
    ----------
    path : path
        The file.
    what : str, optional
        What the file is, for the messages ("a dataset.json", "plans"): "<path>: not valid JSON for <what>".
    hint : str, optional
        How to fix a malformed file, appended to the message ("Re-run `autoseg plan`.").
    missing : str, optional
        The message (after "<path>: ") when the file does not exist; default "not found" + ``hint``.
    expect : type, optional
        ``dict`` or ``list``: the top-level value must be of this type.
    max_bytes, max_depth : int
        Bounds on the file's size and on the nesting of its lists and objects.

    Returns
    -------
    The parsed value (dict, list, str, number, bool or None).

    Raises
    ------
    JSONFileMissing
        The file does not exist (a `JSONFileError` and a FileNotFoundError).
    JSONFileError
        The file cannot be read (permission, a folder, an I/O error), is larger than ``max_bytes``, is not
        UTF-8, is not valid JSON, nests deeper than ``max_depth``, or its top-level value is not ``expect``.
        The message names the file and the cause.
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    about = f" for {what}" if what else ""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise JSONFileError(f"{path}: is a folder, not a JSON file{about}.{tail}")
        if size > max_bytes:
            kind = what or "a JSON file AutoSeg reads"
            raise JSONFileError(f"{path}: {size / 2 ** 20:.0f} MiB, too large to be {kind} (at most "
                                f"{max_bytes / 2 ** 20:.0f} MiB); the file is damaged or not the one meant.{tail}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JSONFileMissing(f"{path}: {missing if missing is not None else 'not found.' + tail}") from None
    except OSError as exc:
        raise JSONFileError(f"{path}: cannot be read: {os_error_message(exc, path)}{tail}") from None
    return parse_json(raw, path, what, hint, expect, max_depth)


def parse_json(data: "bytes | str", source: "str | os.PathLike", what: str = "", hint: str = "",
               expect: Optional[type] = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 bytes or text) read from ``source`` (a file, or "<archive>: <entry>"), with the
    checks and messages of `read_json` (raises `JSONFileError` naming ``source``)."""
    tail = f" {hint}" if hint else ""
    about = f" for {what}" if what else ""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JSONFileError(f"{source}: not UTF-8 text (byte {exc.start}){about}; JSON files are UTF-8."
                                f"{tail}") from None
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise JSONFileError(f"{source}: not valid JSON{about}: {exc.msg} at line {exc.lineno} column {exc.colno}."
                            f"{tail}") from None
    except RecursionError:
        value, deep = None, True
    else:
        deep = _depth_exceeds(value, max_depth)
    if deep:
        raise JSONFileError(f"{source}: nested more than {max_depth} levels deep, which no{' ' + what if what else ''}"
                            f" file is; the file is damaged.{tail}")
    if expect is not None and not isinstance(value, expect):
        raise JSONFileError(f"{source}: expected {_kind(expect())} at the top level{about}, found {_kind(value)}."
                            f"{tail}")
    return value


def read_json_or_none(path: "str | os.PathLike", expect: Optional[type] = None) -> Any:
    """`read_json` for optional files and caches that the caller can do without: None when the file is
    missing, unreadable or malformed (the caller falls back to recomputing or to defaults)."""
    try:
        return read_json(path, expect=expect)
    except JSONFileError:
        return None
