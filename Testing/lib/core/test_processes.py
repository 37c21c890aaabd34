"""Workers end with their parent: a plan-and-preprocess killed with SIGKILL leaves no worker writing."""
import os
import signal
import subprocess
import sys
import time

import pytest

from AutoSegLib.io.atomic import pid_alive

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



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("use", [True, False])
def test_worker_dies_with_a_killed_parent(tmp_path, use):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), "1" if use else "0"], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        assert pid_alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + (10 if use else 2)
        while pid_alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        # with die_with_parent the worker is gone; without it (the control) it lives on
        assert pid_alive(worker) is (not use)
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGKILL)
