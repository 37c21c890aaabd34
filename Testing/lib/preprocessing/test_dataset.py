"""preprocess_dataset: files, skip/force, settings changes, interruption, sharing, parallel workers."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

import AutoSegLib.preprocessing.storage as storage
from AutoSegLib.preprocessing.dataset import preprocess_dataset
from AutoSegLib.preprocessing.storage import case_paths, load_preprocessed_case

CASES = ["case_000", "case_001", "case_002", "case_003"]


@pytest.fixture
def small_dataset(synthetic_dataset):
    return synthetic_dataset(n_cases=4, shape=(10, 16, 16), spacing=(2.0, 1.0, 1.0), seed=1)


def _snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(folder.iterdir())}


def _assert_no_partial_case(folder):
    assert not list(folder.glob(".*tmp*")), "temporary files left behind"
    for case in CASES:
        image, seg, props = case_paths(folder, case)
        if props.exists():
            assert image.exists() and seg.exists()


def test_writes_skips_forces(small_dataset, plans_factory, tmp_path):
    plans = plans_factory(spacing3d=(2.0, 1.5, 1.5), spacing2d=(1.5, 1.5))
    events = []
    work = tmp_path / "work"
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1, progress=events.append)
    assert (r["processed"], r["skipped"]) == (4, 0)
    folder = work / "preprocessed" / "Plans_3d_fullres"
    data, seg, props = load_preprocessed_case(folder, "case_001")
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and seg.dtype == np.int8
    assert data.shape[1:] == seg.shape[1:] == tuple(props["shape_after_resampling"])
    assert props["case"] == "case_001" and props["class_locations"]["1"].shape[1] == 3
    assert [e["current"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    before = _snapshot(folder)
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    assert (r["processed"], r["skipped"]) == (0, 4) and _snapshot(folder) == before
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1, force=True)
    assert r["processed"] == 4
    # other settings for the same folder: every case is redone
    plans2 = replace(plans, configurations={**plans.configurations, "3d_fullres": replace(
        plans.configurations["3d_fullres"], spacing=(2.0, 1.0, 1.0))})
    r = preprocess_dataset(small_dataset, plans2, ["3d_fullres"], work, num_workers=1)
    assert r["processed"] == 4
    assert load_preprocessed_case(folder, "case_001")[0].shape[1:] == tuple(
        props["shape_after_cropping_and_before_resampling"])


def test_interrupted_run_leaves_no_partial_case(small_dataset, plans_factory, tmp_path, monkeypatch):
    plans = plans_factory(spacing3d=(2.0, 1.0, 1.0))
    work = tmp_path / "work"
    folder = work / "preprocessed" / "Plans_3d_fullres"
    real_save = storage._save_npy
    calls = []

    def failing_save(path, array):
        calls.append(path.name)
        if path.name == "case_002_seg.npy":
            with storage.atomic_path(path) as tmp:
                tmp.write_bytes(b"half a file")
                raise KeyboardInterrupt   # the user pressed Ctrl-C while the label was being written
        real_save(path, array)

    monkeypatch.setattr(storage, "_save_npy", failing_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    _assert_no_partial_case(folder)
    assert not case_paths(folder, "case_002")[2].exists()
    monkeypatch.setattr(storage, "_save_npy", real_save)
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    assert (r["processed"], r["skipped"]) == (2, 2)
    _assert_no_partial_case(folder)
    assert all(case_paths(folder, c)[2].exists() for c in CASES)


def test_identical_configurations_share_files_and_parallel_equals_serial(synthetic_dataset, plans_factory, tmp_path):
    dataset = synthetic_dataset(n_cases=3, shape=(8, 12, 12), spacing=(1.0, 1.0, 1.0), seed=2)
    plans = plans_factory(spacing3d=(1.0, 1.0, 1.0), spacing2d=(1.0, 1.0))
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    preprocess_dataset(dataset, plans, None, serial, num_workers=1)
    r = preprocess_dataset(dataset, plans, None, parallel, num_workers=2)
    assert r["processed"] == 3
    for case in ("case_000", "case_002"):
        a = case_paths(parallel / "preprocessed" / "Plans_3d_fullres", case)[0]
        b = case_paths(parallel / "preprocessed" / "Plans_2d", case)[0]
        assert os.stat(a).st_ino == os.stat(b).st_ino          # computed once, hard-linked
        d1, s1, p1 = load_preprocessed_case(serial / "preprocessed" / "Plans_2d", case, mmap=False)
        d2, s2, p2 = load_preprocessed_case(parallel / "preprocessed" / "Plans_2d", case, mmap=False)
        assert np.array_equal(d1, d2) and np.array_equal(s1, s2)
        assert p2["configuration"] == "2d" and p1["preprocessing_signature"] == p2["preprocessing_signature"]


def test_unknown_configuration_is_a_user_error(small_dataset, plans_factory, tmp_path):
    from AutoSegLib.errors import AutoSegError
    with pytest.raises(AutoSegError, match="Did you mean '3d_fullres'"):
        preprocess_dataset(small_dataset, plans_factory(), ["3dfullres"], tmp_path / "w", num_workers=1)
    assert not (tmp_path / "w").exists()


def test_killed_worker_is_reported_and_leaves_no_partial_case(small_dataset, plans_factory, tmp_path):
    import multiprocessing
    import signal

    from AutoSegLib.errors import AutoSegError

    plans = plans_factory(spacing3d=(2.0, 1.0, 1.0))
    work = tmp_path / "work"
    folder = work / "preprocessed" / "Plans_3d_fullres"

    def kill_workers(event):   # out of memory / kill -9 while the other cases are in flight
        if event["event"] == "progress":
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(AutoSegError, match="worker process died"):
        preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=2, progress=kill_workers)
    _assert_no_partial_case_after_kill(folder)
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    assert r["processed"] >= 1 and r["processed"] + r["skipped"] == 4
    _assert_no_partial_case(folder)                # temporaries of killed writers are gone too
    assert all(case_paths(folder, c)[2].exists() for c in CASES)


def _assert_no_partial_case_after_kill(folder):
    for case in CASES:
        image, seg, props = case_paths(folder, case)
        if props.exists():
            assert image.exists() and seg.exists()


def test_default_worker_count_respects_memory(small_dataset, plans_factory, tmp_path, monkeypatch):
    import json

    from AutoSegLib.preprocessing import dataset as dataset_module

    plans = plans_factory(spacing3d=(2.0, 0.5, 0.5))   # 4x more voxels after resampling
    work = tmp_path / "work"
    work.mkdir()
    case = {"spacing": [2.0, 1.0, 1.0], "shape_before_crop": [100, 200, 200], "shape_after_crop": [100, 200, 200]}
    (work / "fingerprint.json").write_text(json.dumps({"cases": [case]}))
    per_case = 32 * 4 * 100 * 200 * 200 + 200 * 2 ** 20        # bytes per channel-voxel x resampled voxels
    monkeypatch.setattr(dataset_module, "available_memory", lambda: int(2.5 * per_case / 0.8))
    assert dataset_module._workers_fitting_in_memory(work, plans, ["3d_fullres"]) == 2
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 10)
    assert dataset_module._workers_fitting_in_memory(work, plans, ["3d_fullres"]) == 1
    monkeypatch.setattr(dataset_module, "default_num_workers", lambda: 2)
    events = []
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, progress=events.append)
    assert r["processed"] == 4
    assert any("1 worker(s) instead of 2" in e.get("message", "") for e in events if e["event"] == "log")


def test_edited_raw_case_is_redone(small_dataset, plans_factory, tmp_path):
    from AutoSegLib.io.images import read_image, write_image

    plans = plans_factory(spacing3d=(2.0, 1.0, 1.0))
    work = tmp_path / "work"
    preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    label_path = small_dataset / "labelsTr" / "case_002.nii.gz"
    label, geometry = read_image(label_path)
    label[label == 2] = 1                                   # a correction saved over the case's label
    write_image(label, geometry, label_path)
    r = preprocess_dataset(small_dataset, plans, ["3d_fullres"], work, num_workers=1)
    assert (r["processed"], r["skipped"]) == (1, 3)
    _, seg, _ = load_preprocessed_case(work / "preprocessed" / "Plans_3d_fullres", "case_002")
    assert 2 not in np.unique(seg)
