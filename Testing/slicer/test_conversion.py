"""Volume node <-> model input with exact geometry (oblique, anisotropic, left-handed files)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib.io.geometry import Geometry
from AutoSegSlicer.common import conversion


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


CASES = {
    "axial": (np.eye(3), (1.0, 1.0, 1.0)),
    "anisotropic": (np.eye(3), (0.7, 1.3, 4.0)),                                   # spacing x, y, z
    "oblique": (_rotation(0.2, -0.35, 0.6), (0.9, 0.9, 3.0)),
    "left-handed": (_rotation(0.0, 0.0, 0.3) @ np.diag([1, 1, -1]), (0.8, 1.1, 2.5)),  # det < 0 (FSL-like)
    "left-handed-x": (np.diag([-1, 1, 1]), (1.0, 2.0, 3.0)),
}


def _write(tmp_path, name, direction, spacing_xyz, ending, rng):
    array = rng.integers(-1000, 1000, (6, 7, 9)).astype(np.int16)   # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((12.5, -30.25, 7.0))
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    path = tmp_path / f"{name}{ending}"
    sitk.WriteImage(image, str(path))
    return path, sitk.ReadImage(str(path))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("case", list(CASES))
def test_node_array_and_geometry_describe_the_file_voxel_for_voxel(slicer_harness, tmp_path, rng, case, ending):
    direction, spacing = CASES[case]
    path, image = _write(tmp_path, case.replace("-", "_"), direction, spacing, ending, rng)
    node = slicer_harness.load_volume(path)        # loaded the way Slicer loads it (storage node)
    array, geometry = conversion.array_from_node(node)
    file_array = sitk.GetArrayFromImage(image)
    # Every node voxel's physical point, mapped through the file's own geometry (SimpleITK), must land
    # exactly on a file voxel holding the same value.
    k, j, i = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    points = geometry.index_to_physical_matrix() @ idx
    file_m = Geometry.from_sitk(image).index_to_physical_matrix()
    file_idx = np.linalg.solve(file_m, points)[:3]
    assert np.allclose(file_idx, np.round(file_idx), atol=1e-3)
    fi = np.round(file_idx).astype(int)
    assert np.array_equal(array.ravel(), file_array[fi[2], fi[1], fi[0]])
    # ... and SimpleITK agrees on a few points independently of our matrix code.
    for n in (0, 17, array.size - 1):
        p = tuple(points[:3, n])
        assert image.GetPixel(image.TransformPhysicalPointToIndex(p)) == array.ravel()[n]
    if np.linalg.det(direction) < 0 and ending == ".nii.gz":
        # trap 3: Slicer reversed an axis; array_in_file_grid restores the file's voxel order exactly
        assert not np.array_equal(array, file_array)
    back, back_geo = conversion.array_in_file_grid(array, node)
    assert np.array_equal(back, file_array)
    assert back_geo.is_close(Geometry.from_sitk(image))


def test_ijk_to_ras_matches_hand_computed_matrix():
    geo = Geometry(spacing=(3.0, 2.0, 1.0), origin=(1.0, 2.0, 3.0), direction=tuple(np.eye(3).ravel()))
    expected = np.array([[-1, 0, 0, -1], [0, -2, 0, -2], [0, 0, 3, 3], [0, 0, 0, 1]], float)
    assert np.allclose(conversion.ijk_to_ras_from_geometry(geo), expected)
    assert conversion.geometry_from_ijk_to_ras(expected) == geo


@pytest.mark.parametrize("case", list(CASES))
def test_array_to_node_round_trip_is_exact(make_volume, rng, case):
    direction, spacing = CASES[case]
    geo = Geometry(tuple(reversed(spacing)), (3.5, -2.25, 100.0), tuple(np.asarray(direction, float).ravel()))
    array = rng.normal(0, 100, (5, 6, 7)).astype(np.float32)
    node = make_volume(array, geo.spacing, geo.origin, geo.direction)
    back, back_geo = conversion.array_from_node(node)
    assert np.array_equal(back, array)
    assert np.allclose(back_geo.spacing, geo.spacing, atol=1e-12)
    assert np.allclose(back_geo.origin, geo.origin, atol=1e-12)
    assert np.allclose(back_geo.direction, geo.direction, atol=1e-12)


def test_prepare_case_writes_inputs_on_the_first_grid_and_notes_resampling(autoseg_logic, make_volume, tmp_path, rng):
    from autoseg_testing import make_model_folder

    model = autoseg_logic.require_model(make_model_folder(tmp_path / "models" / "Two", channel_names=("T1", "T2")))
    first_geo = Geometry((3.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(_rotation(0, 0, 0.4).ravel()))
    a = rng.normal(0, 1, (6, 10, 12)).astype(np.float32)
    v1 = make_volume(a, first_geo.spacing, first_geo.origin, first_geo.direction, name="t1")
    # second input: same physical space, twice the in-plane spacing -> resampled onto the first grid
    b = np.arange(6 * 5 * 6, dtype=np.float32).reshape(6, 5, 6)
    v2 = make_volume(b, (3.0, 2.0, 2.0), first_geo.origin, first_geo.direction, name="t2")
    prepared = autoseg_logic.prepare_case(model, [v1, v2], tmp_path / "case")
    files = sorted(p.name for p in prepared.input_dir.iterdir())
    assert files == ["case_0000.nii.gz", "case_0001.nii.gz"]
    i0 = sitk.ReadImage(str(prepared.input_dir / files[0]))
    i1 = sitk.ReadImage(str(prepared.input_dir / files[1]))
    assert np.array_equal(sitk.GetArrayFromImage(i0), a)
    assert Geometry.from_sitk(i0).is_close(first_geo) and Geometry.from_sitk(i1).is_close(first_geo)
    assert sitk.GetArrayFromImage(i1).shape == a.shape
    # voxel (z, 2y, 2x) of the fine grid is voxel (z, y, x) of the coarse one: no interpolation there
    assert np.allclose(sitk.GetArrayFromImage(i1)[:, ::2, ::2], b[:, :5, :6])
    assert len(prepared.notes) == 1 and "t2" in prepared.notes[0] and "resampled" in prepared.notes[0]
