"""Resampling: hand-computed cases, invariants, and equality with the reference implementation."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from AutoSegLib.planning.plans import ResamplingSettings
from AutoSegLib.preprocessing.resampling import (compute_new_shape, resample_image, resample_label,
                                                 separate_axis)

REPO = Path(__file__).resolve().parents[3]
BENCH_PYTHON = REPO / ".bench-venv" / "bin" / "python"


def test_compute_new_shape_by_hand():
    assert compute_new_shape((10, 20, 30), (2.0, 1.0, 1.0), (1.0, 1.0, 2.0)) == (20, 20, 15)
    # 7 * 1.5 / 2 = 5.25 -> 5 ; 3 * 0.5 = 1.5 -> 2 (half to even) ; 5 * 0.5 = 2.5 -> 2
    assert compute_new_shape((7, 3, 5), (1.5, 1.0, 1.0), (2.0, 2.0, 2.0)) == (5, 2, 2)


def test_separate_axis_rule():
    s = ResamplingSettings()
    assert separate_axis((1.0, 1.0, 1.0), (1.5, 1.5, 1.5), s) is None
    assert separate_axis((4.0, 1.0, 1.0), (1.0, 1.0, 1.0), s) == 0           # current spacing anisotropic
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 3.5, 1.0), s) == 1           # else the new spacing
    assert separate_axis((3.0, 1.0, 1.0), (1.0, 1.0, 1.0), s) is None        # ratio 3 is not > 3
    assert separate_axis((4.0, 4.0, 1.0), (1.0, 1.0, 1.0), s) is None        # two coarse axes
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), ResamplingSettings(force_separate_z=True)) is None
    assert separate_axis((2.0, 1.0, 1.0), (1.0, 1.0, 1.0), ResamplingSettings(force_separate_z=True)) == 0
    assert separate_axis((9.0, 1.0, 1.0), (1.0, 1.0, 1.0), ResamplingSettings(force_separate_z=False)) is None


def test_identity_returns_same_values(rng):
    data = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample_image(data, (1.0, 2.0, 3.0), (5, 6, 7))
    assert out.dtype == np.float32 and np.array_equal(out, data)
    seg = rng.integers(0, 3, size=(1, 5, 6, 7)).astype(np.int8)
    assert np.array_equal(resample_label(seg, (1.0, 2.0, 3.0), (5, 6, 7)), seg)


def test_linear_ramp_upsampled_by_two_order1():
    n = 8
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32), (1, 3, 4, n)).copy()
    out = resample_image(ramp, (1.0, 1.0, 1.0), (3, 4, 2 * n), ResamplingSettings(order_data=1))
    # output voxel o samples input coordinate (o + 0.5) / 2 - 0.5, clamped to the edge voxels
    expected = np.clip(np.arange(2 * n) / 2.0 - 0.25, 0, n - 1)
    assert np.allclose(out[0, 1, 2], expected, atol=1e-6)
    assert np.allclose(out, out[:, :1, :1], atol=1e-6)  # unchanged along the other axes


def test_cubic_spline_reproduces_a_ramp_away_from_the_edges():
    n = 40
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32), (1, 2, 2, n)).copy()
    out = resample_image(ramp, (1.0, 1.0, 1.0), (2, 2, 3 * n))  # order 3
    coords = (np.arange(3 * n) + 0.5) / 3.0 - 0.5
    interior = (coords > 10) & (coords < n - 11)
    assert np.abs(out[0, 0, 0][interior] - coords[interior]).max() < 1e-4
    assert out.min() >= 0 and out.max() <= n - 1  # clipped to the input range


def test_cubic_overshoot_is_clipped(rng):
    step = np.zeros((1, 4, 10, 10), np.float32)
    step[:, :, :, 5:] = 1.0
    out = resample_image(step, (1.0, 1.0, 1.0), (4, 23, 23))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, 0, -1] == 1.0


def test_separate_z_uses_nearest_slices_on_the_coarse_axis():
    # 4 slices at 5 mm, each a constant value; in-plane 1 mm -> 10 slices: only the original slice values
    values = np.array([3.0, -1.0, 7.0, 2.0], np.float32)
    data = np.broadcast_to(values[:, None, None], (4, 6, 6))[None].copy()
    out = resample_image(data, (5.0, 1.0, 1.0), (10, 9, 9))   # order 3 in plane, order_z 0
    src = np.clip(np.floor((np.arange(10) + 0.5) * 0.4 - 0.5 + 0.5).astype(int), 0, 3)
    assert np.array_equal(out[0, :, 4, 4], values[src])
    assert np.allclose(out[0], values[src][:, None, None], atol=1e-6)
    # the same data resampled jointly (isotropic spacing) interpolates between slices
    joint = resample_image(data, (1.0, 1.0, 1.0), (10, 9, 9))
    assert not set(np.round(joint[0, :, 4, 4], 4)) <= set(values.tolist())


def test_labels_stay_within_classes_and_keep_dtype(rng):
    seg = rng.choice(np.array([0, 2, 5], np.int16), size=(1, 9, 11, 10))
    for shape, spacing in [((13, 7, 15), (1.0, 1.0, 1.0)), ((20, 20, 20), (4.0, 1.0, 1.0))]:
        out = resample_label(seg, spacing, shape)
        assert out.dtype == np.int16 and out.shape == (1,) + shape
        assert set(np.unique(out)) <= {0, 2, 5}
    out3 = resample_label(seg[0], (1.0, 1.0, 1.0), (5, 5, 5))
    assert out3.shape == (5, 5, 5)


def test_label_upsampling_by_hand():
    # 1D-like: labels [0, 1] upsampled x2 with linear indicators: coordinates -0.25, 0.25, 0.75, 1.25
    # scores for 1: 0, 0.25, 0.75, 1 -> [0, 0, 1, 1]
    seg = np.array([0, 1], np.int8).reshape(1, 1, 1, 2)
    out = resample_label(seg, (1.0, 1.0, 1.0), (1, 1, 4))
    assert out.ravel().tolist() == [0, 0, 1, 1]
    # an exact tie (0.5 / 0.5) goes to the nearest-neighbour label: [0,1,0] -> 2 samples at 0.25, 1.75 ...
    seg = np.array([2, 0, 0, 2], np.int8).reshape(1, 1, 1, 4)
    out = resample_label(seg, (1.0, 1.0, 1.0), (1, 1, 2))  # samples at 0.5 and 2.5: ties 2/0 and 0/2
    assert out.ravel().tolist() == [0, 2]  # nearest index floor(c + 0.5): 1 -> 0, 3 -> 2


_REFERENCE_SCRIPT = r"""
import json, sys
import numpy as np
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
folder = sys.argv[1]
cases = json.load(open(folder + '/cases.json'))
for i, c in enumerate(cases):
    x = np.load(f'{folder}/in_{i}.npy')
    out = resample_data_or_seg_to_shape(x, c['new_shape'], c['spacing'], c['new_spacing'], c['is_seg'],
                                        c['order'], 0, None)
    np.save(f'{folder}/out_{i}.npy', out)
"""


def test_equal_to_reference_resampling(tmp_path, rng):
    if not BENCH_PYTHON.exists():
        pytest.skip("no .bench-venv with the reference implementation")
    probe = subprocess.run([str(BENCH_PYTHON), "-c", "import nnunetv2"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("nnunetv2 is not installed in .bench-venv")
    cases = [((14, 20, 18), (1.0, 1.0, 1.0), (21, 13, 30)),
             ((8, 20, 18), (4.0, 1.0, 1.0), (30, 15, 22)),
             ((20, 7, 18), (1.0, 4.5, 1.0), (16, 30, 25)),
             ((20, 18, 8), (0.7, 0.7, 0.7), (20, 18, 30)),   # anisotropic only in the new spacing
             ((16, 20, 18), (1.0, 1.0, 1.0), (8, 10, 9))]
    meta, ours = [], []
    for shape, spacing, new_shape in cases:
        new_spacing = [s * n / m for s, n, m in zip(spacing, shape, new_shape)]
        img = rng.normal(size=(2,) + shape).astype(np.float32)
        coarse = rng.integers(0, 4, size=tuple(max(2, k // 4) for k in shape))
        seg = np.kron(coarse, np.ones((4, 4, 4)))[:shape[0], :shape[1], :shape[2]]
        seg = np.pad(seg, [(0, s - k) for s, k in zip(shape, seg.shape)], mode="edge")[None].astype(np.float32)
        for order in (3, 1):
            meta.append(dict(new_shape=list(new_shape), spacing=list(spacing), new_spacing=new_spacing,
                             is_seg=False, order=order))
            ours.append(resample_image(img, spacing, new_shape, ResamplingSettings(order_data=order),
                                       new_spacing=new_spacing))
            np.save(tmp_path / f"in_{len(meta) - 1}.npy", img)
        sparse = np.zeros_like(seg)               # small objects: the per-label bounding-box path
        sparse[0, 2:5, 3:9, 4:7] = 1
        sparse[0, -4:-1, -6:-2, 1:3] = 2
        sparse[0, 3, 5, 5] = 3
        for s in (seg, sparse):
            meta.append(dict(new_shape=list(new_shape), spacing=list(spacing), new_spacing=new_spacing,
                             is_seg=True, order=1))
            ours.append(resample_label(s, spacing, new_shape, new_spacing=new_spacing))
            np.save(tmp_path / f"in_{len(meta) - 1}.npy", s)
    (tmp_path / "cases.json").write_text(json.dumps(meta))
    env = dict(os.environ, nnUNet_raw=str(tmp_path), nnUNet_preprocessed=str(tmp_path),
               nnUNet_results=str(tmp_path), OMP_NUM_THREADS="1")
    run = subprocess.run([str(BENCH_PYTHON), "-c", _REFERENCE_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for i, (m, mine) in enumerate(zip(meta, ours)):
        ref = np.load(tmp_path / f"out_{i}.npy")
        assert ref.shape == mine.shape, m
        if m["is_seg"]:
            assert (ref != mine).mean() < 1e-3, m   # exact ties may be decided by float rounding
            assert (ref != mine).sum() <= 2, m
        else:
            assert np.abs(ref - mine).max() < 1e-4, m


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
def test_every_spline_order_equals_a_3d_zoom(rng, order):
    """The separable operators against scipy's own 3D spline zoom (align_corners=False, edge mode)."""
    from scipy import ndimage

    data = rng.normal(size=(1, 9, 12, 10)).astype(np.float32)
    new_shape = (14, 7, 17)
    out = resample_image(data, (1.0, 1.0, 1.0), new_shape, ResamplingSettings(order_data=order))
    zoom = ndimage.zoom(data[0].astype(np.float64), [n / s for n, s in zip(new_shape, data.shape[1:])],
                        order=order, mode="nearest", grid_mode=True)
    expected = np.clip(zoom, data.min(), data.max())
    assert expected.shape == new_shape
    assert np.abs(out[0] - expected).max() < 1e-5
