"""Fingerprint: sampling identical to the reference's draws, pooled statistics, crop box, a hand-made
dataset with known numbers, and the JSON record."""
import json

import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegLib.fingerprint import Fingerprint, extract_fingerprint
from AutoSegLib.fingerprint.extract import nonzero_bbox, pooled_statistics, sample_foreground_counts
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image


def test_draw_counts_equal_randomstate_choice(rng):
    """Counts from our chunked index draws == histogram of RandomState(1234).choice, channel after channel."""
    values = rng.normal(size=(2, 3001)).astype(np.float32)
    n = 50_000
    rs_ref = np.random.RandomState(1234)
    rs_ours = np.random.RandomState(1234)
    for c in range(2):
        drawn = rs_ref.choice(values[c], n, replace=True)
        counts = sample_foreground_counts(values[c], n, rs_ours)
        assert counts.sum() == n and counts.dtype == np.int32
        np.testing.assert_array_equal(np.sort(drawn), np.sort(np.repeat(values[c], counts)))


def test_chunked_draws_are_the_same_stream(monkeypatch, rng):
    import AutoSegLib.fingerprint.extract as ex
    values = rng.normal(size=777)
    whole = sample_foreground_counts(values, 10_000, np.random.RandomState(1234))
    monkeypatch.setattr(ex, "_CHUNK", 999)
    np.testing.assert_array_equal(ex.sample_foreground_counts(values, 10_000, np.random.RandomState(1234)), whole)


def test_pooled_statistics_equal_the_expanded_samples(rng):
    values = [rng.normal(size=50).round(1), rng.normal(3, 2, size=80).round(1)]  # rounded: many ties
    counts = [rng.integers(0, 7, size=50), rng.integers(0, 3, size=80)]
    expanded = np.concatenate([np.repeat(v, c) for v, c in zip(values, counts)])
    s = pooled_statistics(values, counts)
    for key, q in (("percentile_00_5", 0.5), ("median", 50), ("percentile_99_5", 99.5)):
        assert s[key] == pytest.approx(np.percentile(expanded, q), abs=1e-12), key
    assert s["mean"] == pytest.approx(expanded.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(expanded.std(), rel=1e-12)
    assert (s["min"], s["max"]) == (expanded.min(), expanded.max())


def test_pooled_statistics_by_hand():
    # multiset {1, 1, 1, 5}: mean 2, population std sqrt(3), median 1, p99.5 = 1 + (5 - 1) * 0.985
    s = pooled_statistics([np.array([1.0, 5.0])], [np.array([3, 1])])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(np.sqrt(3.0)) and s["median"] == 1.0
    assert s["percentile_99_5"] == pytest.approx(1 + 4 * (0.995 * 3 - 2))
    assert pooled_statistics([np.zeros(0)], [np.zeros(0, int)])["mean"] is None


def test_nonzero_bbox_is_the_union_over_channels_and_ignores_holes():
    img = np.zeros((2, 6, 7, 8), np.float32)
    img[0, 1:3, 2:4, 3:5] = 1.0
    img[1, 2:5, 1:2, 6:7] = -2.0  # negative values count as non-zero
    assert nonzero_bbox(img) == ((1, 5), (1, 4), (3, 7))
    ring = np.zeros((1, 5, 9, 9))
    ring[0, 1:4, 2:7, 2:7] = 1
    ring[0, 2, 3:6, 3:6] = 0  # a hole
    filled = binary_fill_holes(ring[0] != 0)
    ax = [np.flatnonzero(filled.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    assert nonzero_bbox(ring) == tuple((int(a[0]), int(a[-1]) + 1) for a in ax)
    assert nonzero_bbox(np.zeros((1, 3, 4))) == ((0, 3), (0, 4))


def _hand_dataset(root, cases, channel_names=("MRI",), labels=None):
    """cases: {id: (list of channel arrays, label array, spacing)}; written as .nii.gz."""
    for cid, (chans, lab, spacing) in cases.items():
        geo = Geometry(spacing, (0.0,) * 3, tuple(np.eye(3).ravel()))
        for c, a in enumerate(chans):
            write_image(a.astype(np.float32), geo, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        write_image(lab.astype(np.uint8), geo, root / "labelsTr" / f"{cid}.nii.gz")
    write_json(root / "dataset.json", {"channel_names": {str(i): n for i, n in enumerate(channel_names)},
                                       "labels": labels or {"background": 0, "fg": 1}, "numTraining": len(cases),
                                       "file_ending": ".nii.gz", "name": "Hand"})
    return root


def test_hand_made_dataset(tmp_path):
    # case a: 10x12x14 zeros with a 4x6x8 non-zero block (value 7, foreground 2x2x2 of value 9)
    a = np.zeros((10, 12, 14))
    a[2:6, 3:9, 4:12] = 7.0
    lab_a = np.zeros_like(a)
    lab_a[3:5, 4:6, 5:7] = 1
    a[lab_a > 0] = 9.0
    # case b: everything non-zero, foreground value 3 (1000 voxels)
    b = np.ones((5, 20, 20))
    lab_b = np.zeros_like(b)
    lab_b[0:5, 0:10, 0:20] = 1
    b[lab_b > 0] = 3.0
    ds = _hand_dataset(tmp_path / "Hand", {"a": ([a], lab_a, (2.0, 1.0, 0.5)), "b": ([b], lab_b, (3.0, 1.0, 1.0))})
    fp = extract_fingerprint(ds, num_workers=1, foreground_samples=2e4)
    ca, cb = fp.cases
    assert (ca.case_id, ca.shape_before_crop, ca.shape_after_crop) == ("a", (10, 12, 14), (4, 6, 8))
    assert ca.bbox == ((2, 6), (3, 9), (4, 12)) and ca.foreground_voxels == 8
    # the label's foreground box, in the whole array's coordinates, and its size in millimetres
    assert ca.foreground_bbox == ((3, 5), (4, 6), (5, 7)) and cb.foreground_bbox == ((0, 5), (0, 10), (0, 20))
    assert fp.has_foreground_boxes
    assert fp.foreground_extents_mm().tolist() == [[4.0, 2.0, 1.0], [15.0, 10.0, 20.0]]
    assert ca.relative_size_after_cropping == pytest.approx(4 * 6 * 8 / (10 * 12 * 14))
    assert cb.shape_after_crop == (5, 20, 20) and cb.relative_size_after_cropping == 1.0
    assert ca.spacing == (2.0, 1.0, 0.5) and cb.spacing == (3.0, 1.0, 1.0)
    assert fp.median_relative_size_after_cropping == pytest.approx((1.0 + 4 * 6 * 8 / 1680) / 2)
    assert fp.foreground_samples_per_case == 10_000
    # equal samples from each case: half 9s, half 3s
    s = fp.intensity_properties["0"]
    assert s["mean"] == pytest.approx(6.0) and s["std"] == pytest.approx(3.0)
    assert (s["min"], s["max"], s["percentile_00_5"], s["percentile_99_5"]) == (3.0, 9.0, 3.0, 9.0)
    assert s["median"] == pytest.approx(6.0)  # between the two halves: (3 + 9) / 2
    assert fp.median_spacing == (2.5, 1.0, 0.75) and fp.ndim == 3


def test_round_trip_and_bad_records(tmp_path, tiny_fp):
    p = tiny_fp.to_json(tmp_path / "fingerprint.json")
    assert Fingerprint.from_json(p) == tiny_fp
    d = json.loads(p.read_text())
    d["surprise"] = 1
    with pytest.raises(AutoSegError, match="unknown keys.*surprise"):
        Fingerprint.from_dict(d)
    d.pop("surprise")
    d["schema_version"] = 99
    with pytest.raises(AutoSegError, match="schema version 99"):
        Fingerprint.from_dict(d)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AutoSegError, match="not valid JSON"):
        Fingerprint.from_json(tmp_path / "bad.json")
    with pytest.raises(AutoSegError, match="not found"):
        Fingerprint.from_json(tmp_path / "none.json")


@pytest.fixture
def tiny_fp(synthetic_dataset):
    ds = synthetic_dataset(n_cases=2, shape=(8, 10, 12), n_channels=2, seed=3)
    return extract_fingerprint(ds, num_workers=1, foreground_samples=1e4)


def test_multi_channel_statistics_per_channel(tiny_fp):
    assert set(tiny_fp.intensity_properties) == {"0", "1"}
    # the synthetic generator gives the two channels different foreground contrasts
    assert tiny_fp.intensity_properties["0"]["mean"] != tiny_fp.intensity_properties["1"]["mean"]
    assert tiny_fp.class_names == ("background", "organ", "lesion")


def test_verification_runs_during_extraction(tmp_path):
    a = np.ones((4, 5, 6))
    lab = np.zeros_like(a)
    lab[0, 0, 0] = 5  # not declared
    ds = _hand_dataset(tmp_path / "Bad", {"a": ([a], lab, (1.0, 1.0, 1.0))})
    with pytest.raises(DatasetError, match=r"a\.nii\.gz.*\[5\]"):
        extract_fingerprint(ds, num_workers=1, foreground_samples=100)
    fp = extract_fingerprint(ds, num_workers=1, foreground_samples=100, verify=False)
    assert fp.cases[0].foreground_voxels == 1 and fp.cases[0].foreground_bbox == ((0, 1), (0, 1), (0, 1))
