"""Worker processes: batches arrive, are reproducible, and a crashing worker reports its own traceback."""
import json

import numpy as np
import pytest

from AutoSegLib.training.workers import BatchSpec, BatchStream, WorkerError


def _case(folder, name, shape=(12, 12, 12)):
    rng = np.random.default_rng(len(name))
    seg = (rng.random((1, *shape)) > 0.9).astype(np.int8)
    np.save(folder / f"{name}.npy", rng.normal(size=(1, *shape)).astype(np.float32))
    np.save(folder / f"{name}_seg.npy", seg)
    (folder / f"{name}.json").write_text(json.dumps({"class_locations": {"1": np.argwhere(seg[0]).tolist()}}))


def _spec(folder, cases, augment=True):
    return BatchSpec(folder=str(folder), cases=tuple(cases), batch_size=2, patch_size=(8, 8, 8),
                     sample_patch_size=(10, 10, 10) if augment else (8, 8, 8), forced=(False, True),
                     augment=augment, max_angle=0.5, dummy_2d=False, mirror_axes=(0, 1, 2))


def test_in_process_and_worker_batches_match(tmp_path):
    _case(tmp_path, "a")
    _case(tmp_path, "b")
    with BatchStream(_spec(tmp_path, ["a", "b"]), 0, seed=3) as s0:
        ref = [next(s0) for _ in range(2)]
    with BatchStream(_spec(tmp_path, ["a", "b"]), 1, seed=3) as s1:
        got = [next(s1) for _ in range(2)]
    for (d0, g0), (d1, g1) in zip(ref, got):
        assert d0.shape == (2, 1, 8, 8, 8) and g0.shape == (2, 1, 8, 8, 8)
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(g0, g1)


def test_crashed_worker_surfaces_its_traceback(tmp_path):
    _case(tmp_path, "a")
    stream = BatchStream(_spec(tmp_path, ["a", "no_such_case"], augment=False), 1, seed=0)
    with pytest.raises(WorkerError) as err:
        for _ in range(50):
            next(stream)
    msg = str(err.value)
    assert "augmentation worker 0 failed" in msg
    assert "Traceback" in msg and "no_such_case" in msg and "load_preprocessed_case" in msg
    stream.close()
