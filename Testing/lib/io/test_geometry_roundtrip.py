"""io.images: geometry written and read back exactly (oblique, anisotropic, left-handed), arrays too."""
import numpy as np
import pytest

from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import read_case, read_image, write_image


def _rotation(angles):
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRIES = {
    "oblique": Geometry((2.0, 0.9, 0.7), (-12.5, 40.25, 3.0), tuple(_rotation((0.3, -0.2, 0.5)).ravel())),
    "anisotropic": Geometry((5.5, 0.4, 0.45), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel())),
    # a reflection: determinant -1 (e.g. a flipped axis written by some scanners/tools)
    "left_handed": Geometry((1.5, 1.0, 1.25), (10.0, -20.0, 30.0),
                            tuple((_rotation((0.1, 0.2, -0.3)) @ np.diag([1.0, -1.0, 1.0])).ravel())),
}


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".nii.gz"])
@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_geometry_round_trip(tmp_path, rng, kind, ending):
    geo = GEOMETRIES[kind]
    if kind == "left_handed":
        assert np.linalg.det(geo.direction_matrix) == pytest.approx(-1.0)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    path = write_image(arr, geo, tmp_path / f"img{ending}")
    back, geo_back = read_image(path)
    np.testing.assert_array_equal(back, arr)
    assert back.shape == (5, 6, 7)  # (z, y, x): no axis swapped
    if ending == ".nii.gz":
        # NIfTI stores the header in float32: equal up to float32 rounding
        np.testing.assert_allclose(geo_back.spacing, geo.spacing, rtol=1e-6)
        np.testing.assert_allclose(geo_back.origin, geo.origin, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(geo_back.direction, geo.direction, atol=1e-6)
        assert geo.is_close(geo_back)
    elif ending == ".nrrd":
        # NRRD stores direction x spacing as "space directions" vectors: equal to the last bit or two
        np.testing.assert_allclose(geo_back.spacing, geo.spacing, rtol=1e-14)
        np.testing.assert_array_equal(geo_back.origin, geo.origin)
        np.testing.assert_allclose(geo_back.direction, geo.direction, rtol=0, atol=1e-14)
    else:
        assert geo_back == geo  # MetaImage keeps every double exactly


def test_physical_position_of_a_voxel_survives(tmp_path):
    """The index->physical mapping (what matters for overlays) is the same after the round trip."""
    geo = GEOMETRIES["left_handed"]
    path = write_image(np.zeros((4, 5, 6), np.uint8), geo, tmp_path / "l.nrrd")
    _, back = read_image(path)
    idx = np.array([5, 4, 3, 1.0])  # (i, j, k) = (x, y, z) index, homogeneous
    np.testing.assert_allclose(back.index_to_physical_matrix() @ idx, geo.index_to_physical_matrix() @ idx)
    # hand check: origin + direction @ (spacing_xyz * index)
    expected = np.array(geo.origin) + geo.direction_matrix @ (np.array(geo.spacing_xyz) * idx[:3])
    np.testing.assert_allclose(back.index_to_physical_matrix()[:3] @ idx, expected)


def test_2d_image_round_trip(tmp_path, rng):
    geo = Geometry((0.5, 0.25), (3.0, -4.0), (0.0, 1.0, 1.0, 0.0))  # swapped axes: det -1
    arr = rng.integers(0, 255, size=(9, 11)).astype(np.uint8)
    back, geo_back = read_image(write_image(arr, geo, tmp_path / "x.mha"))
    np.testing.assert_array_equal(back, arr)
    assert geo_back == geo and geo_back.is_2d


def test_labels_int64_stored_compactly_and_exactly(tmp_path):
    lab = np.array([[[0, 1], [2, 3]]], dtype=np.int64)
    back, _ = read_image(write_image(lab, Geometry.identity((1.0, 1.0, 1.0)), tmp_path / "l.nii.gz"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, lab)


def test_read_case_stacks_channels_and_rejects_other_grids(tmp_path, rng):
    geo = GEOMETRIES["oblique"]
    a, b = (rng.normal(size=(3, 4, 5)).astype(np.float32) for _ in range(2))
    pa, pb = write_image(a, geo, tmp_path / "c_0000.nrrd"), write_image(b, geo, tmp_path / "c_0001.nrrd")
    stacked, g = read_case([pa, pb])
    assert stacked.shape == (2, 3, 4, 5) and stacked.dtype == np.float32 and g.is_close(geo, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stacked, np.stack([a, b]))
    other = Geometry((2.0, 0.9, 0.8), geo.origin, geo.direction)
    pc = write_image(b, other, tmp_path / "c_0002.nrrd")
    from AutoSegLib.errors import AutoSegError
    with pytest.raises(AutoSegError, match="c_0002.nrrd.*spacing"):
        read_case([pa, pc])
