"""Shared fixtures. Unit tests make their own small synthetic volumes; real data only in slow tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUTOSEG_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory):
    """Device calibrations (training.calibration) go to a per-session cache, not the user's ~/.cache:
    measured once per test session, shared by child processes through XDG_CACHE_HOME."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture
def shared_dir() -> Path:
    """../shared (real data, reference outputs); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    return SHARED


@pytest.fixture
def synthetic_dataset(tmp_path):
    """Factory: synthetic_dataset(**kwargs) -> path of a new raw dataset (see io.synthetic)."""
    from AutoSegLib.io.synthetic import make_synthetic_dataset

    def make(name="Synth", **kwargs):
        return make_synthetic_dataset(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_with_file_size_limit(code: str, limit_bytes: int, cwd: Path, timeout: float = 300):
    """Run ``code`` in a child Python whose writes stop at ``limit_bytes`` per file (RLIMIT_FSIZE, SIGXFSZ
    ignored): a write past the limit comes back short or as EFBIG, as on a disk that filled up mid-file.
    Returns the CompletedProcess (text output)."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=limit, timeout=timeout)


@pytest.fixture
def file_size_limited():
    """``file_size_limited(code, limit_bytes, cwd)``: see `run_with_file_size_limit`."""
    if not hasattr(os, "fork"):
        pytest.skip("needs POSIX resource limits")
    return run_with_file_size_limit
