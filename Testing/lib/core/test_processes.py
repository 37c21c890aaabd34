"""Workers end with their parent: a plan-and-preprocess killed with SIGKILL leaves no worker writing."""
import os
import signal
import subprocess
import sys
import time

import pytest

_PARENT = """
import os, sys, time, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from AutoSegLib.processes import die_with_parent

def pid_then_sleep():
    return os.getpid()

if __name__ == "__main__":
    use = sys.argv[1] == "1"
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent if use else None,
                               initargs=(os.getpid(),) if use else ())
    print(pool.submit(pid_then_sleep).result(), flush=True)
    time.sleep(600)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("use", [True, False])
def test_worker_dies_with_a_killed_parent(tmp_path, use):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), "1" if use else "0"], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + (10 if use else 2)
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        # with die_with_parent the worker is gone; without it (the control) it lives on
        assert _alive(worker) is (not use)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
