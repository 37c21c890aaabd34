"""Issue #15 class 12 for predict: killed with SIGKILL while writing a label map, it leaves a hidden temporary
file; the next run removes it at once (its name carries the dead writer's pid) and writes the label map.
With SIGTERM the run itself removes it (the CLI unwinds like Ctrl-C, exit 143).

A test-only ``sitecustomize`` on the child's PYTHONPATH holds the child in its first complete-write check
(``io.atomic._fsync``), so that the kill lands while the temporary file exists, every time."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image

REPO = Path(__file__).resolve().parents[3]

_HOLD = """
import os
if os.environ.get("AUTOSEG_TEST_HOLD_AT"):
    import time
    from pathlib import Path
    import AutoSegLib.io.atomic as atomic
    _fsync = atomic._fsync

    def _held(path):
        _fsync(path)
        if str(path).endswith(".nii.gz"):
            Path(os.environ["AUTOSEG_TEST_HOLD_AT"]).write_text(str(path))
            time.sleep(60)

    atomic._fsync = _held
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_predict_leaves_nothing_after_the_next_run(tiny_model, tmp_path, sig):
    model = tiny_model().path
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_image(np.random.default_rng(0).random((10, 20, 20)).astype(np.float32), Geometry.identity((2.0, 1.0, 1.0)),
                inp / "a_0000.nii.gz")
    hooks, marker = tmp_path / "hooks", tmp_path / "holding"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_HOLD)
    env = {**os.environ, "AUTOSEG_TEST_HOLD_AT": str(marker),
           "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "AutoSegLib", "predict", "-m", str(model), "-i", str(inp), "-o",
                              str(out), "--no-tta"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), child.stderr.read() if child.poll() is not None else "never reached the write"
        tmp = Path(marker.read_text())
        assert tmp.exists() and f".tmp-{child.pid}-" in tmp.name
        child.send_signal(sig)
        rc = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    if sig == signal.SIGTERM:  # the run removed its own temporary file, and the output folder it had made
        assert rc == 143 and not out.exists()
    else:  # nothing could clean up
        assert rc == -signal.SIGKILL and sorted(p.name for p in out.iterdir()) == [tmp.name]
    # the next run, at once: the dead writer's temporary goes, the label map comes
    assert main(["predict", "-m", str(model), "-i", str(inp), "-o", str(out), "--no-tta"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != "predict_summary.json") == ["a.nii.gz"]
