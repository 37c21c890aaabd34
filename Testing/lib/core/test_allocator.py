"""The allocator tuning: large blocks come from the reusable heap instead of fresh mmaps (glibc only)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning")

# Counts the blocks glibc currently serves with mmap while a 200 MB numpy array is alive.
PROBE = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    from AutoSegLib.allocator import keep_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    applied = keep_freed_memory()
    assert keep_freed_memory() == applied  # once per process
    before = libc.mallinfo2().hblks
    a = np.ones(50_000_000, dtype=np.float32)
    print(applied, libc.mallinfo2().hblks - before)
""")


def _probe(env_value=None):
    env = dict(os.environ)
    env.pop("AUTOSEG_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["AUTOSEG_KEEP_FREED_MEMORY"] = env_value
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    except subprocess.CalledProcessError as exc:
        if "mallinfo2" in exc.stderr:
            pytest.skip("C library without mallinfo2 (not glibc >= 2.33)")
        raise
    applied, new_mmapped = out.stdout.split()
    return applied == "True", int(new_mmapped)


def test_large_blocks_come_from_the_heap_once_tuned():
    applied, new_mmapped = _probe()
    assert applied
    assert new_mmapped == 0


def test_opt_out_keeps_glibc_defaults():
    applied, new_mmapped = _probe("0")
    assert not applied
    assert new_mmapped == 1  # glibc maps a 200 MB block on its own
