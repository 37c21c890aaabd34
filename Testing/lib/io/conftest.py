"""Fixtures for the io tests: a tiny valid dataset to break, and a snapshot of a folder's files."""
import os

import pytest


@pytest.fixture
def tiny_dataset(synthetic_dataset):
    """Factory: a small valid raw dataset (3 cases of about 8x10x12 voxels by default)."""
    def make(**kwargs):
        opts = dict(n_cases=3, shape=(8, 10, 12), spacing=(2.0, 1.0, 1.0), seed=1)
        opts.update(kwargs)
        return synthetic_dataset(**opts)
    return make


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file under ``folder`` (to prove nothing was written)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def folder_snapshot():
    return snapshot
