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
    """Device calibrations (planning.calibration) go to a per-session cache, not the user's ~/.cache:
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
