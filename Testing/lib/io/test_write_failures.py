"""A write that fails or comes out short (full disk, file-size limit, read-only folder) never replaces the
previous file, and says so naming the file and the cause.

A full disk is simulated with RLIMIT_FSIZE in a child process: SimpleITK's NIfTI writer then returns
normally with a truncated file, exactly as on a full disk. With `free_bytes` reporting 0 the message must
say "disk is full"."""
import os

import numpy as np
import pytest

from AutoSegLib.errors import WriteError
from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import read_image, write_image

LIMIT = 20000  # bytes: the previous small file fits, the new large one does not

_WRITE_BIG_IMAGE = """
import sys, numpy as np
import AutoSegLib.io.atomic as atomic
from AutoSegLib.errors import WriteError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image
if {full}:
    atomic.free_bytes = lambda folder: 0   # the file system reports no room left, as a full disk does
big = (np.random.default_rng(0).random((40, 64, 64)) * 5).astype(np.uint8)
try:
    write_image(big, Geometry.identity((1.0, 1.0, 1.0)), {path!r})
except WriteError as exc:
    print("WRITE-ERROR", exc)
    sys.exit(3)
print("RETURNED")
"""


def _small_previous(path):
    write_image(np.ones((4, 5, 6), np.uint8), Geometry.identity((1.0, 1.0, 1.0)), path)
    return path.read_bytes()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("full", [False, True])
def test_truncated_image_write_is_refused_and_previous_file_kept(tmp_path, file_size_limited, ending, full):
    target = tmp_path / f"case{ending}"
    before = _small_previous(target)
    res = file_size_limited(_WRITE_BIG_IMAGE.format(full=full, path=str(target)), LIMIT, tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"WRITE-ERROR {target}: could not be written" in res.stdout
    assert ("the disk is full" in res.stdout) == full, res.stdout
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left behind
    assert read_image(target)[0].shape == (4, 5, 6)


_WRITE_OTHERS = """
import sys, numpy as np, torch
import AutoSegLib.io.atomic as atomic
from AutoSegLib.errors import WriteError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.preprocessing.storage import _save_npy
from AutoSegLib.training.checkpoint import save_checkpoint
atomic.free_bytes = lambda folder: 0
writers = {{
    "a.json": lambda p: write_json(p, {{"values": list(range(20000))}}),
    "a.npy": lambda p: _save_npy(p, np.zeros(20000)),
    "a.pt": lambda p: save_checkpoint(p, {{"network_weights": {{"w": torch.zeros(20000)}}}}),
}}
for name, write in writers.items():
    try:
        write("{folder}/" + name)
        print("RETURNED", name)
    except WriteError as exc:
        print("WRITE-ERROR", exc)
"""


def test_json_npy_and_checkpoint_writes_report_a_full_disk(tmp_path, file_size_limited):
    prev = {"a.json": b"{}\n", "a.npy": b"old", "a.pt": b"old"}
    for name, data in prev.items():
        (tmp_path / name).write_bytes(data)
    res = file_size_limited(_WRITE_OTHERS.format(folder=str(tmp_path)), LIMIT, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("WRITE-ERROR", "RETURNED"))]
    assert len(lines) == 3, res.stdout
    # json: Python's own writes get EFBIG from the limit and say so; numpy's short write and torch's
    # "enforce fail at inline_container.cc" carry no cause: with no free space left they mean a full disk
    causes = {"a.json": "the file is larger than the file system", "a.npy": "the disk is full",
              "a.pt": "the disk is full"}
    for name, data in prev.items():
        assert any(ln.startswith(f"WRITE-ERROR {tmp_path / name}: could not be written: {causes[name]}")
                   for ln in lines), (name, res.stdout)
        assert (tmp_path / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(prev)


def test_writer_leaving_no_file_is_an_error(tmp_path):
    with pytest.raises(WriteError, match="left no file"):
        with atomic_path(tmp_path / "x.bin"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(WriteError, match=r"out/x.json: could not be written: the folder .* cannot be created"):
        write_json(tmp_path / "out" / "x.json", {})


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"ro/x.json: could not be written: permission denied"):
            write_json(folder / "x.json", {})
    finally:
        folder.chmod(0o700)


def test_bugs_inside_the_block_pass_through(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"x")
            1 / 0
    assert list(tmp_path.iterdir()) == []
