"""Worker processes that end with their parent, and a SIGTERM that unwinds like Ctrl-C.

A worker pool's processes outlive a parent killed with SIGKILL (or SIGTERM without cleanup): they go on
reading and writing preprocessed files nobody will use, or that a re-run writes at the same time. Each
worker calls `die_with_parent` first thing (pool ``initializer``): on Linux the kernel then sends it
SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes.

Python's default SIGTERM ends a process without running ``finally`` blocks: temporary files stay and a
pool is not shut down. The CLI installs `terminate_as_interrupt`, which turns SIGTERM into `Terminated`
(a KeyboardInterrupt), so that the same cleanup runs as for Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see `terminate_as_interrupt`)."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("terminated (SIGTERM)")


def terminate_as_interrupt():
    """Make SIGTERM raise `Terminated` in the main thread; returns the previous handler (to restore with
    ``signal.signal(signal.SIGTERM, previous)``), or None when not in the main thread (nothing changed)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def die_with_parent(parent_pid: "int | None" = None) -> bool:
    """Ask the kernel to kill this process when its parent dies. Returns True when that was arranged.

    ``parent_pid``: the pid the parent had when it started the worker; when the parent is already gone
    (the worker was re-parented before this ran) the worker exits at once.
    """
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:  # a forked worker inherited the CLI's handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)          # a worker told to stop must stop
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # died before the prctl took effect
        os._exit(1)
    return True
