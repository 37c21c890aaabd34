"""The effect's region (AutoSegSlicer.common.region) on slicer-core: ``--roi`` corners in the image file's LPS
coordinates and the voxels kept, for "around the current view" (slice view geometry) and a markups ROI on an
oblique volume. Expected values are worked out by hand (or from AutoSegLib's own index-to-LPS matrix, which
does not go through Slicer), not with the code under test."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegSlicer.common import region as effect_region


def _slice_node(scene, center_ras, dims=(100, 50), fov=(10.0, 5.0), rotate_deg=0.0):
    """An axial slice view showing ``fov`` mm (``dims`` pixels) centred at ``center_ras``, optionally rotated
    in-plane about the S axis."""
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetLayoutName("Red")
    node.SetOrientationToAxial()
    node.SetDimensions(dims[0], dims[1], 1)
    node.SetFieldOfView(fov[0], fov[1], 1.0)
    m = node.GetSliceToRAS()
    c, s = np.cos(np.radians(rotate_deg)), np.sin(np.radians(rotate_deg))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[m.GetElement(r, k) for k in range(3)] for r in range(3)])
    for r in range(3):
        for k in range(3):
            m.SetElement(r, k, rot[r, k])
        m.SetElement(r, 3, center_ras[r])
    node.UpdateMatrices()
    return node


def test_around_the_view_is_the_visible_rectangle_through_the_whole_volume(make_volume, slicer_harness):
    # LPS grid: x = i (0..19), y = j (0..9), z = 2k (0..8); voxel corners reach z -1..9
    volume = make_volume(np.zeros((5, 10, 20), np.int16), spacing=(2.0, 1.0, 1.0))
    view = _slice_node(slicer_harness.scene, center_ras=(-5.0, -3.0, 4.0))
    box = effect_region.box_from_slice_view(view, volume)
    # 10 x 5 mm centred at LPS (5, 3): x 0..10, y 0.5..5.5; the depth: the volume's whole S extent
    lo, hi = effect_region.roi_lps_corners(box, volume)
    assert np.allclose(lo, (0.0, 0.5, -1.0)) and np.allclose(hi, (10.0, 5.5, 9.0))
    expected = np.zeros((5, 10, 20), bool)
    expected[:, 1:6, 0:11] = True
    assert np.array_equal(effect_region.region_mask(box, volume), expected)


def test_around_a_rotated_view(make_volume, slicer_harness):
    volume = make_volume(np.zeros((3, 30, 30), np.int16), origin=(-15.0, -15.0, 0.0))
    view = _slice_node(slicer_harness.scene, center_ras=(0.0, 0.0, 1.0), dims=(80, 80), fov=(8.0, 8.0), rotate_deg=45)
    box = effect_region.box_from_slice_view(view, volume)
    lo, hi = effect_region.roi_lps_corners(box, volume)
    h = 4.0 * np.sqrt(2.0)                       # a square of half side 4 turned 45 degrees: half extent 4 * sqrt 2
    assert np.allclose(lo, (-h, -h, -0.5)) and np.allclose(hi, (h, h, 2.5))
    x, y = np.meshgrid(np.arange(30) - 15.0, np.arange(30) - 15.0)          # (j, i) -> LPS y, x
    diamond = (np.abs(x + y) <= 4 * np.sqrt(2) + 1e-6) & (np.abs(x - y) <= 4 * np.sqrt(2) + 1e-6)
    assert np.array_equal(effect_region.region_mask(box, volume), np.broadcast_to(diamond, (3, 30, 30)))


OBLIQUE = np.array([[np.cos(0.5), -np.sin(0.5), 0.0], [np.sin(0.5), np.cos(0.5), 0.0], [0.0, 0.0, 1.0]])


def _centres_lps(shape, geo):
    """(z, y, x, 3) LPS voxel centres from AutoSegLib's geometry (ITK's convention, no Slicer involved)."""
    m = geo.index_to_physical_matrix()
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return (ijk @ m.T)[..., :3]


@pytest.mark.parametrize("parent_shift", [None, (4.0, -2.0, 1.0)])
def test_a_markups_roi_on_an_oblique_volume_becomes_lps_corners_and_its_voxels(make_volume, slicer_harness,
                                                                               parent_shift):
    import slicer

    shape = (8, 16, 18)
    geo = Geometry((1.5, 0.9, 1.1), (3.0, -4.0, 2.0), tuple(OBLIQUE.ravel()))
    volume = make_volume(np.zeros(shape, np.int16), geo.spacing, geo.origin, geo.direction)
    roi = slicer_harness.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(-8.0, -3.0, 7.0)               # RAS
    roi.SetRadiusXYZ(4.0, 5.0, 3.0)
    lps_lo, lps_hi = np.array([4.0, -2.0, 4.0]), np.array([12.0, 8.0, 10.0])    # (-R, -A, S) -+ radius
    if parent_shift is not None:                 # the ROI under a translation: the box moves with it
        t = slicer_harness.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
            [[1, 0, 0, parent_shift[0]], [0, 1, 0, parent_shift[1]], [0, 0, 1, parent_shift[2]], [0, 0, 0, 1.0]])))
        roi.SetAndObserveTransformNodeID(t.GetID())
        shift_lps = np.array(parent_shift) * (-1, -1, 1)
        lps_lo, lps_hi = lps_lo + shift_lps, lps_hi + shift_lps
    box = effect_region.box_from_roi_node(roi)
    lo, hi = effect_region.roi_lps_corners(box, volume)
    assert np.allclose(lo, lps_lo) and np.allclose(hi, lps_hi)
    p = _centres_lps(shape, geo)
    expected = np.all((p >= lps_lo - 1e-6) & (p <= lps_hi + 1e-6), axis=-1)
    assert 20 < expected.sum() < expected.size / 2                # a real, partial region
    assert np.array_equal(effect_region.region_mask(box, volume), expected)


def test_a_rotated_roi_keeps_only_voxels_inside_it_and_sends_its_bounding_box(make_volume, slicer_harness):
    import slicer

    volume = make_volume(np.zeros((4, 24, 24), np.int16), origin=(-12.0, -12.0, 0.0))
    roi = slicer_harness.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetRadiusXYZ(5.0, 2.0, 10.0)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(
        np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 1.0], [0, 0, 0, 1]])))
    box = effect_region.box_from_roi_node(roi)
    lo, hi = effect_region.roi_lps_corners(box, volume)
    h = (5.0 + 2.0) / np.sqrt(2.0)               # corners of a 10 x 4 box turned 45 degrees
    assert np.allclose(lo, (-h, -h, -9.0)) and np.allclose(hi, (h, h, 11.0))
    # inside: |u| <= 5 along (1, 1)/sqrt2 and |v| <= 2 along (-1, 1)/sqrt2 in RAS; RAS = (-x, -y) of LPS
    x, y = np.meshgrid(np.arange(24) - 12.0, np.arange(24) - 12.0)
    r, a = -x, -y
    inside = (np.abs(r + a) / np.sqrt(2) <= 5 + 1e-6) & (np.abs(a - r) / np.sqrt(2) <= 2 + 1e-6)
    assert np.array_equal(effect_region.region_mask(box, volume), np.broadcast_to(inside, (4, 24, 24)))


def test_a_region_outside_the_volume_and_missing_inputs_are_clear_errors(make_volume, slicer_harness, autoseg_logic):
    from AutoSegSlicer.effect.logic import EffectLogic

    volume = make_volume(np.zeros((4, 8, 8), np.int16), name="ct")
    roi = slicer_harness.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far")
    roi.SetCenter(500.0, 0.0, 0.0)
    roi.SetRadiusXYZ(5.0, 5.0, 5.0)
    with pytest.raises(AutoSegError, match=r"does not overlap volume 'ct'"):
        effect_region.roi_lps_corners(effect_region.box_from_roi_node(roi), volume)
    effect = EffectLogic(autoseg_logic)
    assert effect.region_box(effect_region.REGION_WHOLE, volume) is None
    with pytest.raises(AutoSegError, match="needs an ROI"):
        effect.region_box(effect_region.REGION_ROI, volume)
    with pytest.raises(AutoSegError, match="needs a slice view"):
        effect.region_box(effect_region.REGION_VIEW, volume)
    hidden = _slice_node(slicer_harness.scene, (0.0, 0.0, 0.0), dims=(0, 0))
    with pytest.raises(AutoSegError, match="is not shown"):
        effect_region.box_from_slice_view(hidden, volume)


def test_box_corners_and_contains_agree():
    box = effect_region.OrientedBox((1.0, 2.0, 3.0), tuple(map(tuple, np.eye(3))), (1.0, 2.0, 3.0))
    corners = box.corners()
    assert sorted(map(tuple, corners)) == sorted(itertools.product((0.0, 2.0), (0.0, 4.0), (0.0, 6.0)))
    assert box.contains(corners).all() and not box.contains(corners * 1.01 + 0.01).all()


@pytest.mark.parametrize("seed", range(4))
def test_grid_mask_equals_testing_every_voxel_centre(seed):
    """The sliced, range-limited mask against the definition (each centre through OrientedBox.contains)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m = np.eye(4)
    m[:3, :3] = r @ np.diag(rng.uniform(0.5, 1.5, 3))
    m[:3, 3] = rng.uniform(-3, 3, 3)
    dims = (13, 11, 9)
    centre = (m @ [*(rng.uniform(0.3, 0.7, 3) * dims), 1.0])[:3]
    box = effect_region.OrientedBox(tuple(centre), tuple(map(tuple, q)), tuple(rng.uniform(1.5, 4, 3)))
    k, j, i = np.meshgrid(*[np.arange(n) for n in dims[::-1]], indexing="ij")
    centres = (np.stack([i, j, k, np.ones_like(i)], -1).reshape(-1, 4) @ m.T)[:, :3]
    expected = box.contains(centres).reshape(dims[::-1])
    assert expected.any() and not expected.all()
    assert np.array_equal(effect_region.grid_mask(box, dims, m), expected)
