"""The child-process runner: events parsed from stdout, log tail, failure message, cancel kills the tree."""
from __future__ import annotations

import sys
import textwrap
import time

import pytest

from AutoSegSlicer.common.runner import ProcessRunner, autoseglib_command
from AutoSegLib.io.atomic import pid_alive

EMITTER = textwrap.dedent("""
    import json, sys, time
    def ev(**k): print(json.dumps(k), flush=True)
    ev(event="stage", stage="predict", message="start")
    for i in range(1, 4):
        ev(event="progress", stage="predict", current=i, total=3, eta_s=3 - i, message="")
    print("plain text line", flush=True)
    print("warning on stderr", file=sys.stderr, flush=True)
    ev(event="result", output="x.nii.gz")
""")


def _run(argv, **kw):
    events = []
    r = ProcessRunner(on_event=events.append, **kw)
    r.start(argv)
    res = r.wait(60)
    assert res is not None, "child did not finish"
    return events, res


def test_events_are_streamed_in_order_and_result_collected():
    events, res = _run([sys.executable, "-c", EMITTER])
    kinds = [e["event"] for e in events if not e.get("raw")]
    assert kinds == ["stage", "progress", "progress", "progress", "result"]
    assert [e["current"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    raw = {e["message"]: e["level"] for e in events if e.get("raw")}
    assert raw == {"plain text line": "info", "warning on stderr": "error"}
    assert res.ok and res.returncode == 0 and res.results == [{"event": "result", "output": "x.nii.gz"}]


def test_polling_mode_delivers_events_and_finish_on_the_calling_thread():
    finished = []
    r = ProcessRunner(on_finished=finished.append)
    r.start([sys.executable, "-c", EMITTER])
    assert r.wait(60) is not None
    events = r.poll_events()
    assert len([e for e in events if e["event"] == "progress"]) == 3
    assert len(finished) == 1 and finished[0].ok


def test_failure_carries_error_event_exit_code_and_log_tail():
    script = ("import json,sys\nprint('loading model', flush=True)\n"
              "print(json.dumps({'event':'error','message':'model folder /x has no plans.json'}), flush=True)\n"
              "print('Traceback: boom', file=sys.stderr)\nsys.exit(2)")
    _, res = _run([sys.executable, "-c", script])
    assert not res.ok and res.returncode == 2 and res.error == "model folder /x has no plans.json"
    msg = res.failure_message("Segmentation")
    assert "exit code 2" in msg and "no plans.json" in msg and "loading model" in msg and "Traceback: boom" in msg



@pytest.mark.skipif(sys.platform == "win32", reason="uses /proc and POSIX process groups")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import json, subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(g.pid))
        print(json.dumps({{"event": "stage", "stage": "predict", "message": "sleeping"}}), flush=True)
        time.sleep(120)
    """)
    events = []
    r = ProcessRunner(on_event=events.append)
    r.start([sys.executable, "-c", script])
    t0 = time.monotonic()
    while not (pidfile.exists() and pidfile.read_text() and events) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    grandchild, child = int(pidfile.read_text()), r.pid
    assert pid_alive(grandchild) and pid_alive(child)
    r.cancel()
    res = r.result
    assert res is not None and res.cancelled and not res.ok
    t0 = time.monotonic()
    while (pid_alive(grandchild) or pid_alive(child)) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert not pid_alive(child) and not pid_alive(grandchild)
    assert "cancelled" in res.failure_message()


def test_autoseglib_command_line():
    argv = autoseglib_command("/py", "predict", ["-m", "M", "-i", "I", "-o", "O"])
    assert argv == ["/py", "-m", "AutoSegLib", "predict", "-m", "M", "-i", "I", "-o", "O", "--progress-json"]


def test_second_start_while_running_is_refused():
    r = ProcessRunner(on_event=lambda e: None)
    r.start([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="already running"):
            r.start([sys.executable, "-c", "pass"])
    finally:
        r.cancel()
    assert not r.running
