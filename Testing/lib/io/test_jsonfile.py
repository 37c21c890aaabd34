"""io.jsonfile: the one JSON reader names the file and the cause, and bounds size and nesting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.jsonfile import JSONFileError, JSONFileMissing, parse_json, read_json, read_json_or_none

REPO = Path(__file__).resolve().parents[3]


def test_reads_utf8_whatever_the_locale(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes('{"name": "Schädel", "n": [1, 2]}'.encode("utf-8"))
    assert read_json(p, expect=dict) == {"name": "Schädel", "n": [1, 2]}
    p.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')  # a byte-order mark, as some Windows editors write
    assert read_json(p) == {"a": 1}


@pytest.mark.parametrize("content, words", [
    (b'{"a": 1,}', ["not valid JSON for a dataset.json", "line 1 column 9", "Fix it."]),
    (b'{"a": "\xff"}', ["not UTF-8 text (byte 7)"]),
    (b"[1, 2]", ["expected an object at the top level for a dataset.json, found a list"]),
    (b"[" * 65 + b"]" * 65, ["nested more than 64 levels deep"]),
    (b"[" * 200000 + b"]" * 200000, ["nested more than 64 levels deep"]),  # beyond the parser's recursion
])
def test_malformed_files_name_the_file_and_the_cause(tmp_path, content, words):
    p = tmp_path / "dataset.json"
    p.write_bytes(content)
    with pytest.raises(JSONFileError) as err:
        read_json(p, "a dataset.json", hint="Fix it.", expect=dict)
    assert str(err.value).startswith(f"{p}: ")
    for w in words:
        assert w in str(err.value)
    assert read_json_or_none(p, expect=dict) is None


def test_depth_bound_is_exact(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[" * 64 + "]" * 64)
    assert read_json(p) == json.loads("[" * 64 + "]" * 64)  # 64 levels: allowed
    p.write_text('{"a": ' * 65 + "1" + "}" * 65)
    with pytest.raises(JSONFileError, match="nested more than 64 levels"):
        read_json(p)


def test_size_bound_is_checked_before_reading(tmp_path):
    p = tmp_path / "big.json"
    p.write_text(json.dumps(list(range(1000))))
    with pytest.raises(JSONFileError, match=r"big.json: 0 MiB, too large to be plans \(at most 0 MiB\)"):
        read_json(p, "plans", max_bytes=1000)
    assert len(read_json(p, max_bytes=10000)) == 1000


def test_missing_folder_and_unreadable(tmp_path):
    with pytest.raises(JSONFileMissing, match=r"plans.json: not found\. Run plan\."):
        read_json(tmp_path / "plans.json", hint="Run plan.")
    with pytest.raises(FileNotFoundError):  # optional files: callers may treat it as absent
        read_json(tmp_path / "plans.json")
    with pytest.raises(JSONFileError, match="custom words"):
        read_json(tmp_path / "plans.json", missing="custom words")
    with pytest.raises(JSONFileError, match="is a folder, not a JSON file"):
        read_json(tmp_path)
    assert read_json_or_none(tmp_path / "nothing.json") is None
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        p = tmp_path / "locked.json"
        p.write_text("{}")
        p.chmod(0)
        with pytest.raises(JSONFileError, match="locked.json: cannot be read: .*permission denied"):
            read_json(p)
    assert issubclass(JSONFileError, AutoSegError)


def test_parse_json_names_the_source():
    with pytest.raises(JSONFileError, match=r"^m.zip: archive_manifest.json: not valid JSON"):
        parse_json(b"{", "m.zip: archive_manifest.json")
    assert parse_json('{"files": {}}', "x", expect=dict) == {"files": {}}


def test_no_other_json_reader_in_the_library():
    """Every JSON file AutoSegLib reads goes through io.jsonfile: no json.load/json.loads elsewhere (the
    review counted four private readers and 20 hand-written JSONDecodeError handlers)."""
    found = subprocess.run(["grep", "-rnE", r"json\.loads?\(|JSONDecodeError", "AutoSegLib", "--include=*.py"],
                           cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    allowed = ("AutoSegLib/io/jsonfile.py", "AutoSegLib/postprocessing/instructions.py:")  # the latter: a
    # json.loads(json.dumps(...)) round trip of an in-memory record, no file
    stray = [line for line in found if not line.startswith(allowed)]
    assert stray == [], "\n".join(stray)


def test_deep_plans_in_a_model_through_the_cli(tmp_path):
    """A model whose plans.json nests 100000 levels: exit 2 naming plans.json, no RecursionError traceback."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "plans.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000)
    (model / "dataset.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "AutoSegLib", "import-model", str(model), "--models-dir",
                          str(tmp_path / "models")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert f"{model / 'plans.json'}: nested more than 64 levels deep" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "models").exists()
