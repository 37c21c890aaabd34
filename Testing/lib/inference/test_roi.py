"""Prediction inside a region of interest (`inference.roi`): the box in physical (LPS) coordinates, the
context margin, the label map on the full input grid, and the errors."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.inference.roi import physical_extent, roi_to_box
from AutoSegLib.io.geometry import Geometry

RUNTIME = "auto"  # the compiled runtime where installed (faster), else torch


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _blobs(shape, seed=0) -> np.ndarray:
    """Smooth structure (two bright ellipsoids and a gradient) plus noise: something a network answers to."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = 60 * ((z / 0.6) ** 2 + ((y - 0.2) / 0.4) ** 2 + ((x + 0.1) / 0.5) ** 2 < 1)
    img = img + 40 * (((z + 0.3) / 0.3) ** 2 + ((y + 0.4) / 0.3) ** 2 + ((x - 0.4) / 0.3) ** 2 < 1) + 20 * x + 100
    return (img + rng.normal(0, 5, shape)).astype(np.float32)[None]


def _index_to_lps(geo: Geometry, zyx) -> np.ndarray:
    m = geo.index_to_physical_matrix()
    return (m @ np.array([*reversed([float(v) for v in zyx]), 1.0]))[:3]


def _brute_force_inside(img, lo, hi) -> np.ndarray:
    """Voxels (array order) whose centre, by SimpleITK, lies in the physical box [lo, hi]."""
    size = img.GetSize()
    out = np.zeros(size[::-1], bool)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    for k in range(size[2]):
        for j in range(size[1]):
            for i in range(size[0]):
                p = np.array(img.TransformIndexToPhysicalPoint((i, j, k)))
                out[k, j, i] = np.all(p >= lo - 1e-6) and np.all(p <= hi + 1e-6)
    return out


def test_box_and_mask_of_a_rotated_image_match_sitk():
    from AutoSegLib.inference.roi import roi_mask
    rot = _rotation(30, 20)
    geo = Geometry((2.0, 1.0, 1.5), (-40.0, 12.0, 7.0), tuple(rot.ravel()))
    shape = (14, 24, 20)
    img = sitk.Image(20, 24, 14, sitk.sitkUInt8)
    geo.apply_to_sitk(img)
    lo = np.array(img.TransformIndexToPhysicalPoint((5, 7, 3)))
    hi = np.array(img.TransformIndexToPhysicalPoint((15, 20, 10)))
    expected = _brute_force_inside(img, lo, hi)
    box = roi_to_box((hi, lo), shape, geo)  # corners in either order
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in box)] = roi_mask((lo, hi), shape, geo, box)
    assert expected.sum() > 50 and np.array_equal(mask, expected)
    # identity direction: the box of two voxel centres is exactly their span
    eye = Geometry((2.0, 1.0, 1.5), (-40.0, 12.0, 7.0), tuple(np.eye(3).ravel()))
    img2 = sitk.Image(20, 24, 14, sitk.sitkUInt8)
    eye.apply_to_sitk(img2)
    box2 = roi_to_box((img2.TransformIndexToPhysicalPoint((5, 7, 3)), img2.TransformIndexToPhysicalPoint((15, 20, 10))),
                      shape, eye)
    assert box2 == ((3, 11), (7, 21), (5, 16))
    ext_lo, ext_hi = physical_extent(shape, geo)
    corners = [img.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 19) for j in (0, 23) for k in (0, 13)]
    assert np.allclose(ext_lo, np.min(corners, 0)) and np.allclose(ext_hi, np.max(corners, 0))


def test_roi_outside_the_image_names_the_image_and_its_extent():
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(AutoSegError, match=r"scan\.nii\.gz: the ROI .* outside the image, whose voxel centres span "
                                           r"\(0\.0, 0\.0, 0\.0\) to \(39\.0, 49\.0, 58\.0\)"):
        roi_to_box(((100, 100, 100), (150, 150, 150)), (30, 50, 40), geo, source="scan.nii.gz")
    with pytest.raises(AutoSegError, match="two corners"):
        roi_to_box(((1, 2), (3, 4)), (30, 50, 40), geo)


def test_roi_prediction_agrees_with_whole_volume_inside_zero_outside(tiny_model):
    model = tiny_model(spacing=(2.0, 1.0, 1.0))  # patch (8, 16, 16) voxels = 16 mm on every axis
    rot = _rotation(25, -15)
    geo = Geometry((2.0, 1.0, 1.0), (-30.0, 20.0, 5.0), tuple(rot.ravel()))
    shape = (24, 56, 56)
    images = _blobs(shape)
    whole, _ = predict_arrays(model, images, geo, tta=False, runtime=RUNTIME)
    centre = _index_to_lps(geo, [(s - 1) / 2 for s in shape])
    lo, hi = centre - 16.0, centre + 16.0  # a 32 mm cube, axis-aligned in LPS: oblique in the array
    messages = []
    labels, probs = predict_arrays(model, images, geo, tta=False, runtime=RUNTIME, roi=(lo, hi),
                                   return_probabilities=True, progress=messages.append)
    assert labels.shape == whole.shape and labels.dtype == whole.dtype  # the full input grid
    sitk_img = sitk.Image(*shape[::-1], sitk.sitkUInt8)
    geo.apply_to_sitk(sitk_img)
    inside = _brute_force_inside(sitk_img, lo, hi)
    assert not labels[~inside].any()  # zero outside the ROI
    assert np.all(probs[0][~inside] == 1.0) and not probs[1:, ~inside].any()
    # away from the ROI's border by half a patch (8 mm): erode the ROI by a 8 mm ball in voxels (4 in z, 8 in y, x)
    from scipy.ndimage import binary_erosion
    zz, yy, xx = np.ogrid[-4:5, -8:9, -8:9]
    core = binary_erosion(inside, (zz / 4.0) ** 2 + (yy / 8.0) ** 2 + (xx / 8.0) ** 2 <= 1)
    assert core.sum() > 1000
    values = [v for v in np.unique(whole[core]) if v]
    assert values, "the whole-volume prediction has no foreground in the core: the test says nothing"
    for v in values:
        a, b = whole[core] == v, labels[core] == v
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99, v
    assert any("ROI: predicting" in str(m.get("message")) for m in messages)


def test_roi_smaller_than_the_patch_is_enlarged_with_a_message(tiny_model):
    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    images = _blobs((30, 40, 40))
    messages = []
    labels, _ = predict_arrays(model, images, geo, tta=False, runtime=RUNTIME,
                               roi=((10, 10, 20), (14, 13, 24)), progress=messages.append)  # x y z mm
    warned = [m["message"] for m in messages if m.get("event") == "log" and "enlarged" in str(m.get("message"))]
    assert warned and "smaller than the network's patch" in warned[0]
    # the label map keeps only the ROI: x 10..14, y 10..13, z 20..24 mm = columns 10-14, rows 10-13, slices 10-12
    outside = np.ones(labels.shape, bool)
    outside[10:13, 10:14, 10:15] = False
    assert not labels[outside].any()


def test_roi_in_predict_files_writes_the_input_grid(tiny_model, tmp_path):
    from AutoSegLib.inference.files import predict_files

    model = tiny_model(spacing=(2.0, 1.0, 1.0))
    rot = _rotation(-40, 10)
    img = sitk.GetImageFromArray(_blobs((24, 40, 36))[0])
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin((3.0, -5.0, 11.0))
    img.SetDirection(tuple(rot.ravel()))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(img, str(tmp_path / "in" / "c_0000.nii.gz"))
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint((17.5, 19.5, 11.5)))
    lo, hi = tuple(centre - 12), tuple(centre + 12)
    (out,) = predict_files(model, tmp_path / "in", tmp_path / "out", tta=False, runtime=RUNTIME, roi=(lo, hi),
                           estimate=False, save_uncertainty=True)
    seg = sitk.ReadImage(str(out))
    assert seg.GetSize() == img.GetSize()
    assert np.allclose(seg.GetSpacing(), img.GetSpacing()) and np.allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(seg.GetDirection(), img.GetDirection(), atol=1e-5)
    arr = sitk.GetArrayFromImage(seg)
    inside = _brute_force_inside(img, np.array(lo), np.array(hi))
    assert inside.sum() > 500 and not arr[~inside].any()
    # the uncertainty map too: the input grid, zero outside the ROI, the entropy of the probabilities inside
    unc = sitk.ReadImage(str(tmp_path / "out" / "c_uncertainty.nii.gz"))
    assert unc.GetSize() == img.GetSize() and np.allclose(unc.GetDirection(), img.GetDirection(), atol=1e-5)
    u = sitk.GetArrayFromImage(unc)
    assert not u[~inside].any() and u[inside].max() > 0 and u.max() <= 1.0
