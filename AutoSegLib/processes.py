"""Worker processes that end with their parent.

A worker pool's processes outlive a parent killed with SIGKILL (or SIGTERM without cleanup): they go on
reading and writing preprocessed files nobody will use, or that a re-run writes at the same time. Each
worker calls `die_with_parent` first thing (pool ``initializer``): on Linux the kernel then sends it
SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes.
"""
from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: "int | None" = None) -> bool:
    """Ask the kernel to kill this process when its parent dies. Returns True when that was arranged.

    ``parent_pid``: the pid the parent had when it started the worker; when the parent is already gone
    (the worker was re-parented before this ran) the worker exits at once.
    """
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
