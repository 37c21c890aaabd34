"""AutoSegLib and the Slicer module run on the oldest supported Slicer's Python (slicer_api.json: Slicer 5.8
ships Python 3.9). Grammar is checked with this interpreter; the standard library (imports, attributes,
keyword arguments, builtins) with that Python itself, found via $AUTOSEG_OLDEST_PYTHON, PATH or pyenv."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg_harness import REPO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import python_compat  # noqa: E402

FIXTURE = json.loads((HERE / "slicer_api" / "slicer_api.json").read_text())
OLDEST = min(tuple(int(x) for x in r["python"].split(".")[:2]) for r in FIXTURE["releases"].values())


def sources() -> list:
    files = sorted(str(p) for root in ("AutoSegLib", "AutoSegModule") for p in (REPO / root).rglob("*.py"))
    assert len(files) > 80
    return files


def oldest_python():
    name = "python%d.%d" % OLDEST
    candidates = [os.environ.get("AUTOSEG_OLDEST_PYTHON"), shutil.which(name)]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{OLDEST[0]}.{OLDEST[1]}.*/bin/{name}")))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            out = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
            if out.stdout.strip() == str(OLDEST):
                return c
    return None


def test_sources_parse_with_the_oldest_supported_grammar():
    assert python_compat.grammar(sources(), OLDEST) == []


def test_the_grammar_check_rejects_newer_syntax(tmp_path):
    bad = tmp_path / "new.py"
    bad.write_text("match x:\n    case 1:\n        pass\n")
    assert len(python_compat.grammar([str(bad)], (3, 9))) == 1
    assert python_compat.grammar([str(bad)], (3, 10)) == []


def _run_oldest(files):
    python = oldest_python()
    if python is None:
        pytest.skip("no Python %d.%d found (set AUTOSEG_OLDEST_PYTHON); the grammar test still ran" % OLDEST)
    stdlib = json.dumps(sorted(sys.stdlib_module_names))
    proc = subprocess.run([python, str(HERE / "python_compat.py"), "stdlib", stdlib, *files], capture_output=True,
                          text=True, cwd=str(HERE))
    return proc


def test_sources_use_only_the_oldest_supported_standard_library():
    proc = _run_oldest(sources())
    assert proc.stdout == "" and proc.returncode == 0, proc.stdout + proc.stderr


def test_the_standard_library_check_rejects_newer_apis(tmp_path):
    bad = tmp_path / "newer.py"
    bad.write_text("import itertools\nimport dataclasses\nfrom typing import TypeAlias\n"
                   "pairs = itertools.pairwise([1, 2])\n"
                   "@dataclasses.dataclass(slots=True)\nclass A:\n    x: int = 0\n"
                   "list(zip([1], [2], strict=True))\n"
                   "def f(a: int | None): return anext(a)\n")
    proc = _run_oldest([str(bad)])
    lines = [ln.split(":", 2)[1] for ln in proc.stdout.splitlines()]
    assert proc.returncode == 1 and sorted(lines, key=int) == ["3", "4", "5", "8", "9", "9"], proc.stdout
