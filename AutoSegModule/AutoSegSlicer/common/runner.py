"""Run an AutoSegLib command in a child process and stream its progress events.

The module never runs prediction or training in Slicer's own process: a child Python
(``PythonSlicer`` inside Slicer, any interpreter in tests) runs ``python -m AutoSegLib <command>
--progress-json``, which writes one JSON event per line on stdout (see ``AutoSegLib/progress.py``).
`ProcessRunner` starts it with ``subprocess.Popen`` (no Qt), reads stdout and stderr on two daemon
threads, and hands parsed events to the caller:

- from a thread, with ``on_event`` called on the reader thread (tests, scripts), or
- polled from the GUI thread with `ProcessRunner.poll_events` (the widget calls it from a QTimer, so
  scene changes happen on the main thread only).

Cancel kills the whole process tree: the child is started in a new session (its own process group on
POSIX, a new process group on Windows) and the group is killed.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]

#: Lines of child output kept for error messages.
LOG_TAIL_LINES = 40


class RunResult:
    """What a finished child process left: exit code, whether it was cancelled, its result/error events.

    Attributes
    ----------
    returncode : int or None
    cancelled : bool
    results : list of dict
        The ``result`` events, in order.
    error : str or None
        The message of the last ``error`` event, if any.
    log_tail : list of str
        The last `LOG_TAIL_LINES` lines of stdout (non-JSON) and stderr.
    """

    def __init__(self, returncode, cancelled, results, error, log_tail):
        self.returncode = returncode
        self.cancelled = cancelled
        self.results = results
        self.error = error
        self.log_tail = log_tail

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.cancelled and self.error is None

    def failure_message(self, what: str = "The AutoSeg process") -> str:
        """A message for the user: the error event (or exit code) and the log tail."""
        if self.cancelled:
            return f"{what} was cancelled."
        head = self.error or f"{what} exited with code {self.returncode}."
        if self.error and self.returncode not in (0, None):
            head = f"{what} failed (exit code {self.returncode}): {self.error}"
        tail = "\n".join(self.log_tail[-15:])
        return head + (f"\n\nLast lines of its output:\n{tail}" if tail else "")


def autoseglib_command(python_executable: str, command: str, args: Sequence[str]) -> List[str]:
    """The argument list running ``python -m AutoSegLib <command> <args> --progress-json``."""
    return [str(python_executable), "-m", "AutoSegLib", command, *[str(a) for a in args], "--progress-json"]


class ProcessRunner:
    """One child process at a time; events parsed from its stdout.

    Parameters
    ----------
    on_event : callable or None
        Called with every parsed event (dict with an ``"event"`` key). Without it, events are queued
        for `poll_events`. Non-JSON output lines arrive as ``{"event": "log", "level": "info"|"error",
        "message": line, "raw": True}``.
    on_finished : callable or None
        Called once with the `RunResult` when the child has exited and its output is read (on the
        reader thread; with polling, delivered by `poll_events`).
    env, cwd : passed to Popen. ``PYTHONPATH`` gets ``pythonpath`` prepended (the folder holding
        AutoSegLib inside an installed extension).
    """

    def __init__(self, on_event: Optional[EventCallback] = None,
                 on_finished: Optional[Callable[[RunResult], None]] = None,
                 pythonpath: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None):
        self.on_event = on_event
        self.on_finished = on_finished
        self.pythonpath = pythonpath
        self.env = env
        self.cwd = cwd
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self._tail: Deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._results: List[dict] = []
        self._error: Optional[str] = None
        self._cancelled = False
        self._result: Optional[RunResult] = None
        self._lock = threading.Lock()
        self._finished = threading.Event()

    # -- starting -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and not self._finished.is_set()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self, argv: Sequence[str]) -> None:
        """Start ``argv``; raises RuntimeError when a process is already running."""
        if self.running:
            raise RuntimeError("A process is already running; cancel it or wait for it to finish.")
        self._tail.clear()
        self._results, self._error, self._cancelled, self._result = [], None, False, None
        self._finished.clear()
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        kwargs = hidden_console_kwargs()
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills grandchildren too
        log.info("Starting: %s", " ".join(argv))
        self._proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, env=env, cwd=self.cwd, **kwargs)
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name="autoseg-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="autoseg-stderr"),
        ]
        for t in self._threads:
            t.start()
        threading.Thread(target=self._wait, daemon=True, name="autoseg-wait").start()

    # -- reading ------------------------------------------------------------------------------
    def _deliver(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a bad callback must not kill the reader (the child would block)
                log.exception("progress callback failed")
        else:
            self._queue.put(("event", event))

    def _read_stdout(self) -> None:
        for raw in iter(self._proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            event = _parse_event(line)
            if event is None:
                self._tail.append(line)
                event = {"event": "log", "level": "info", "message": line, "raw": True}
            else:
                kind = event.get("event")
                if kind == "result":
                    self._results.append(event)
                elif kind == "error":
                    self._error = str(event.get("message", "unknown error"))
                    self._tail.append(f"ERROR: {self._error}")
                elif kind == "log":
                    self._tail.append(str(event.get("message", "")))
            self._deliver(event)
        self._proc.stdout.close()

    def _read_stderr(self) -> None:
        for raw in iter(self._proc.stderr.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            self._tail.append(line)
            self._deliver({"event": "log", "level": "error", "message": line, "raw": True})
        self._proc.stderr.close()

    def _wait(self) -> None:
        code = self._proc.wait()
        for t in self._threads:
            t.join()
        with self._lock:
            self._result = RunResult(code, self._cancelled, list(self._results), self._error, list(self._tail))
        self._finished.set()
        if self.on_event is not None:  # thread mode: everything is delivered on the reader threads
            if self.on_finished is not None:
                self.on_finished(self._result)
        else:  # polling mode: the GUI thread receives it from poll_events
            self._queue.put(("finished", self._result))

    # -- GUI-thread side ----------------------------------------------------------------------
    def poll_events(self) -> List[dict]:
        """Deliver queued events (returned) and, once, the finished callback. Call from the GUI thread."""
        events = []
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return events
            if kind == "event":
                events.append(payload)
            elif self.on_finished is not None:
                self.on_finished(payload)

    def wait(self, timeout: Optional[float] = None) -> Optional[RunResult]:
        """Block until the child has exited and its output is read; returns the result (None on timeout)."""
        if self._proc is None:
            return None
        if not self._finished.wait(timeout):
            return None
        return self._result

    @property
    def result(self) -> Optional[RunResult]:
        return self._result

    # -- cancelling ---------------------------------------------------------------------------
    def cancel(self, grace_s: float = 3.0, wait: bool = True) -> None:
        """Stop the child and every process it started.

        Sends SIGTERM to the process group, then SIGKILL after ``grace_s`` seconds. With ``wait`` (default)
        returns when they are gone; without, returns at once and finishes on a daemon thread (the GUI stays
        responsive; `running` turns False and `result` appears once the child is gone).
        """
        if not self.running:
            return
        self._cancelled = True
        proc = self._proc
        _signal_tree(proc, signal.SIGTERM if sys.platform != "win32" else None)
        if not wait:
            threading.Thread(target=self._finish_cancel, args=(proc, grace_s), daemon=True,
                             name="autoseg-cancel").start()
            return
        self._finish_cancel(proc, grace_s)

    def _finish_cancel(self, proc: subprocess.Popen, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # The group may outlive the child (grandchildren): always finish with SIGKILL.
        _signal_tree(proc, signal.SIGKILL if sys.platform != "win32" else None)
        self._finished.wait(grace_s + 5)


def hidden_console_kwargs() -> dict:
    """``subprocess`` keyword arguments that keep a child's console window hidden on Windows ({} elsewhere).

    PythonSlicer and taskkill are console programs: started from the Slicer GUI they would each open a
    console window, and closing it kills the job. Hidden as Slicer's own ``slicer.util.launchConsoleProcess``
    does (STARTUPINFO with STARTF_USESHOWWINDOW and SW_HIDE, Base/Python/slicer/util.py at v5.8.0).
    """
    if sys.platform != "win32":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= 1   # STARTF_USESHOWWINDOW
    info.wShowWindow = 0  # SW_HIDE
    return {"startupinfo": info}


def _signal_tree(proc: subprocess.Popen, sig) -> None:
    if sys.platform == "win32":
        # taskkill /T kills the tree; Popen.kill alone would leave grandchildren.
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, **hidden_console_kwargs())
        return
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def _parse_event(line: str) -> Optional[dict]:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or "event" not in event:
        return None
    return event
