"""Issue #15 class 12: a plan-and-preprocess killed with SIGTERM or SIGKILL leaves no worker running, and the
next run removes the temporary files the killed workers left (their names carry the writer's pid).

The child runs the real CLI; a ``sitecustomize`` (test-only, on its PYTHONPATH, so spawned workers load it
too) holds each worker inside its first atomic write for a minute, so that the kill lands while workers
are writing, every time."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.atomic import pid_alive

REPO = Path(__file__).resolve().parents[3]

_SLOW_WRITES = """
import os
if os.environ.get("AUTOSEG_TEST_HOLD_WRITES"):
    import time
    from pathlib import Path
    import numpy as np
    import AutoSegLib.preprocessing.storage as storage
    from AutoSegLib.io.atomic import atomic_path

    def _held_save(path, array):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            Path(os.environ["AUTOSEG_TEST_HOLD_WRITES"], str(os.getpid())).write_text(str(tmp))
            time.sleep(60)

    storage._save_npy = _held_save
"""



def _temporaries(folder):
    return sorted(p for p in Path(folder).rglob("*") if ".tmp-" in p.name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_plan_and_preprocess_leaves_no_worker_and_next_run_cleans(synthetic_dataset, tmp_path, sig):
    ds = synthetic_dataset(n_cases=4, shape=(8, 12, 12))
    work = tmp_path / "work"
    hooks, held = tmp_path / "hooks", tmp_path / "held"
    hooks.mkdir()
    held.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_WRITES)
    env = {**os.environ, "AUTOSEG_TEST_HOLD_WRITES": str(held),
           "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-m", "AutoSegLib", "plan-and-preprocess", str(ds), "-o", str(work),
                               "--workers", "2", "-c", "3d_fullres"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = [int(p.name) for p in held.iterdir()]
        assert len(workers) == 2, parent.stderr.read() if parent.poll() is not None else "workers never wrote"
        assert all(pid_alive(w) for w in workers) and parent.pid not in workers
        parent.send_signal(sig)
        rc = parent.wait(timeout=60)
        assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), parent.stderr.read()
        deadline = time.time() + 10
        while any(pid_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(pid_alive(w) for w in workers)  # no worker goes on writing
        left = _temporaries(work)
        assert left and all(any(f".tmp-{w}-" in p.name for w in workers) for p in left)  # what the kill left
    finally:
        for w in workers:
            if pid_alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
    # the next run (at once: no waiting for the temporaries to age) completes and leaves no temporary
    assert main(["plan-and-preprocess", str(ds), "-o", str(work), "--workers", "1", "-c", "3d_fullres"]) == 0
    assert _temporaries(work) == []
    assert len(list(work.rglob("*_seg.npy"))) == 4


def test_temporary_names_carry_the_pid_and_dead_writers_are_recognised(tmp_path):
    from AutoSegLib.io.atomic import is_stale_temporary, remove_stale_temporaries, temporary_tag
    tag = temporary_tag()
    assert tag.startswith(f".tmp-{os.getpid()}-")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    target = tmp_path / "a.nii.gz"
    mine = tmp_path / f".a{tag}.nii.gz"
    gone = tmp_path / f".a.tmp-{dead}-0123abcd.nii.gz"
    old_style = tmp_path / ".a.tmp-89abcdef.nii.gz"   # no pid: the age rule alone
    unrelated = tmp_path / ".a.tmp-notes.nii.gz"      # not one of our names: never touched
    for p in (mine, gone, old_style, unrelated):
        p.write_bytes(b"half")
    assert not is_stale_temporary(mine) and is_stale_temporary(gone) and not is_stale_temporary(old_style)
    assert remove_stale_temporaries([target]) == [gone]
    os.utime(old_style, (0, 0))
    os.utime(mine, (0, 0))  # old, but this process is alive: kept (a reused pid is the age rule's job)
    assert is_stale_temporary(mine) and remove_stale_temporaries([target], older_than_s=10 ** 12) == []
    assert sorted(remove_stale_temporaries([target])) == sorted([mine, old_style])
    assert unrelated.exists()
