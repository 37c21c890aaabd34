"""The README tutorial's pictures (Resources/Screenshots/tutorial_pictures.py) on a tiny synthetic case: the
rendering path runs once through the module's logic and the stand-in ``autoseg predict`` child, and what the
module draws must be in the picture where the data say it is: the uncertainty overlay over the voxels the child
marked uncertain (and nowhere its value is 0), the effect's preview inside the ROI only, the failed batch row.

The pictures of the real LA model are made by ``make_screenshots.py`` (slow: `test_real_pictures`)."""
from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import numpy as np
import pytest

import fake_predict_child
from autoseg_harness import REPO
from autoseg_testing import make_model_folder

sys.path.insert(0, str(REPO / "Resources" / "Screenshots"))
import slice_views  # noqa: E402
import tutorial_pictures as tp  # noqa: E402

pytestmark = pytest.mark.skipif(ctypes.util.find_library("EGL") is None,
                                reason="no libEGL: offscreen rendering of slice views needs Mesa EGL")
SPACING = (2.0, 1.0, 1.0)
SIZE = (160, 160)


def _image():
    """A block of 100 (label 1 for the stand-in child) with a core of 200 (label 2) in a 8 x 40 x 48 volume."""
    img = np.zeros((8, 40, 48), np.int16)
    img[1:7, 8:32, 10:38] = 100
    img[3:5, 15:25, 20:30] = 200
    return img


@pytest.fixture
def case(autoseg_logic, make_volume, tmp_path):
    autoseg_logic.runner_factory = fake_predict_child.runner_factory(tmp_path / "bin")
    model = autoseg_logic.require_model(make_model_folder(autoseg_logic.models_dir / "Organs",
                                                          model_json={"name": "Organs"}))
    return autoseg_logic, model, make_volume(_image(), spacing=SPACING, origin=(4.0, -7.0, 3.0), name="scan")


def _png(path):
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert rgb.shape[0] > 100 and rgb.shape[1] > 300 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
    return rgb


def test_the_uncertainty_overlay_is_drawn_where_the_uncertainty_is_high(case, slicer_harness, tmp_path):
    import slicer
    from scipy import ndimage

    logic, model, volume = case
    made = tp.uncertainty_picture(slicer_harness, logic, model, volume, tmp_path / "u.png", size=SIZE)
    _png(made.path)
    text, ras = made.entries[0]
    assert text.startswith("axial ")                                   # the stand-in lists one axial slice
    red = made.views["Axial"]
    assert slicer.util.arrayFromVTKMatrix(red.node.GetSliceToRAS())[2, 3] == pytest.approx(ras[2])   # jumped there
    unc = slicer.util.arrayFromVolume(made.nodes["uncertainty"])
    assert unc.max() == 1.0
    shown = slice_views.voxel_values_at_pixels(red, volume, unc)        # each pixel's voxel of uncertainty
    near = slice_views.voxel_values_at_pixels(red, volume, ndimage.maximum_filter(unc, size=3))
    changed = np.any(made.after["Axial"] != made.before["Axial"], axis=-1)
    # The segment outline is drawn over the overlay (the stand-in's uncertain voxels are the label's edge): where
    # it is, both pictures are alike. Its pixels: those that change when the segmentation is hidden.
    from AutoSegSlicer.segment import uncertainty
    display = made.nodes["segmentation"].GetDisplayNode()
    display.SetVisibility(False)
    overlay_only = red.render_rgb()
    uncertainty.hide_overlay()
    scan_only = red.render_rgb()
    outline = np.any(made.before["Axial"] != scan_only, axis=-1)
    high, none = (shown == 1.0) & ~outline, near == 0.0                 # NaN (outside the volume) is neither
    assert high.sum() > 50 and none.sum() > 1000 and outline.sum() > 50
    assert changed[high].all()                                          # the overlay is drawn over every such pixel
    assert not changed[none].any()                                      # and nothing where it is 0 (threshold)
    assert np.any(overlay_only != scan_only, axis=-1)[shown == 1.0].all()


def test_the_effect_preview_is_drawn_inside_the_roi_only(case, slicer_harness, tmp_path):
    import slicer

    from AutoSegSlicer.common import region as effect_region
    from AutoSegSlicer.correct import export

    logic, model, volume = case
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
    made = tp.effect_preview_picture(slicer_harness, logic, model, volume, tmp_path / "e.png", centre,
                                     (14.0, 14.0, 40.0), size=SIZE)
    _png(made.path)
    label, _ = export.labelmap_array(made.nodes["preview"], volume)
    box = effect_region.box_from_roi_node(made.nodes["roi"])
    inside = effect_region.region_mask(box, volume)
    img = _image()
    assert np.array_equal(label, np.where(inside, (img > 50).astype(np.int16) + (img > 150), 0))   # stand-in, cut
    red = made.views["Axial"]
    labelled = slice_views.voxel_values_at_pixels(red, volume, (label > 0).astype(float))
    changed = np.any(made.after["Axial"] != made.before["Axial"], axis=-1)
    # The ROI's outline and handles are drawn over the preview in both pictures: its pixels are those that change
    # when the ROI is hidden.
    made.nodes["roi"].GetDisplayNode().SetVisibility(False)
    roi_pixels = np.any(red.render_rgb() != made.after["Axial"], axis=-1)
    assert roi_pixels.sum() > 50
    drawn = (labelled == 1) & ~roi_pixels
    assert drawn.sum() > 50 and changed[drawn].all()
    from scipy import ndimage
    near = slice_views.voxel_values_at_pixels(red, volume, ndimage.maximum_filter((label > 0).astype(float), size=3))
    assert (near == 0).sum() > 1000 and not changed[near == 0].any()   # away from the preview: unchanged
    assert made.nodes["segmentation"].GetSegmentation().GetNumberOfSegments() == 0   # before Apply
    assert slicer.util.getNodesByClass("vtkMRMLSegmentationNode")[-1] is made.nodes["preview"]


def test_the_batch_table_picture_shows_the_table_nodes_rows(case, slicer_harness, tmp_path):
    from AutoSegLib.io.geometry import Geometry
    from AutoSegLib.io.images import write_image

    logic, model, _ = case
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("p1", "p2_broken", "p3"):
        write_image(_image(), Geometry(SPACING, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())),
                    folder / f"{name}_0000.nii.gz")
    made = tp.batch_table_picture(slicer_harness, logic, model, folder, tmp_path / "out", tmp_path / "b.png")
    rgb = _png(made.path)
    headers, rows = tp.table_cells(made.nodes["table"])
    assert headers[:2] == ["Case", "Status"] and [r[:2] for r in rows] == [["p1", "ok"], ["p2_broken", "failed"],
                                                                           ["p3", "ok"]]
    failed_tint = np.all(np.abs(rgb.astype(int) - (0xfb, 0xe3, 0xe3)) <= 2, axis=-1)
    assert failed_tint.sum() > 1000                                     # the failed row is marked
    assert tp._wrapped("x" * 100, "Error").count("\n") == 2             # long texts wrap in their column


@pytest.mark.slow
def test_real_pictures(tmp_path):
    """The README's pictures from the script's default LA model (a bench/budget_la.py run) and the shared LA
    data (about 30 s)."""
    import subprocess

    import make_screenshots  # beside tutorial_pictures (sys.path above)

    data, model = REPO.parent / "shared" / "data", Path(make_screenshots.DEFAULT_MODEL)
    if not (data / "LA2018_1p25mm").is_dir() or not model.is_dir():
        pytest.skip(f"needs {model} and {data / 'LA2018_1p25mm'}")
    run = subprocess.run([sys.executable, str(REPO / "Resources" / "Screenshots" / "make_screenshots.py"),
                          "--only", "uncertainty", "effect", "batch", "--data", str(data), "--model", str(model),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("uncertainty-overlay.png", "effect-preview.png", "batch-results.png"):
        _png(tmp_path / name)
        assert (tmp_path / name).stat().st_size < 400_000
