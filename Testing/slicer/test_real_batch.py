"""The panel's command lines against the real ``autoseg predict`` (a real child process, the reference's tiny trained
model): a batch of three cases with one broken file, and the Segment options (fast, ROI, uncertainty). Options
another helper is adding at the same time are checked in ``predict --help`` first; a test skips cleanly, naming
the option, while it is missing."""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys

import numpy as np
import pytest

from autoseg_harness import REPO
from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.segment import batch, batch_table
from AutoSegSlicer.segment.options import PredictOptions

REF = REPO.parent / "shared" / "reference" / "nnunet_models"
MODEL_SRC = REF / "Dataset900_Synth" / "nnUNetTrainerCPUBench__nnUNetPlans__3d_fullres"
INPUTS = REF / "inputs"

pytestmark = pytest.mark.skipif(not MODEL_SRC.is_dir() or not (INPUTS / "test_000_0000.nii.gz").is_file(),
                                reason=f"reference model not found in {REF}")


@functools.lru_cache(maxsize=None)
def predict_help() -> str:
    return subprocess.run([sys.executable, "-m", "AutoSegLib", "predict", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120).stdout


def need(*options):
    missing = [o for o in options if o not in predict_help()]
    if missing:
        pytest.skip(f"autoseg predict has no {', '.join(missing)} yet (helper 'infer'/'uncert' adds it)")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from AutoSegSlicer.segment.logic import AutoSegLogic

    folder = tmp_path_factory.mktemp("models")
    AutoSegLogic(scene=None, models_dir=folder, python_executable=sys.executable,
                 pythonpath=str(REPO)).add_model(MODEL_SRC, timeout=300)
    return folder


def test_a_real_batch_with_a_broken_case_fills_the_table(request, autoseg_logic, slicer_harness, tmp_path):
    need("--continue-on-error")
    autoseg_logic.models_dir = request.getfixturevalue("models_dir")   # installed only when the test runs
    (model,), _ = autoseg_logic.models()
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("test_000", "test_001"):
        shutil.copy(INPUTS / f"{name}_0000.nii.gz", scans / f"{name}_0000.nii.gz")
    data = (INPUTS / "test_002_0000.nii.gz").read_bytes()
    (scans / "test_002_0000.nii.gz").write_bytes(data[: len(data) // 3])      # truncated
    logic = batch.BatchLogic(autoseg_logic)
    job = logic.start(model, batch.cases_from_folder(scans, model), tmp_path / "out",
                      PredictOptions(tta=False, device="cpu"), input_folder=scans)
    result = job.wait(600)
    assert result is not None and result.returncode == 2
    table = logic.finish(job, result)
    status = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
    assert status == {"test_000": "ok", "test_001": "ok", "test_002": "failed"}
    failed = [r for r in batch_table.table_rows(table) if r["status"] == "failed"][0]
    assert "test_002_0000.nii.gz" in failed["error"]
    loaded = batch_table.load_case(slicer_harness.scene, table, "test_001", loader=slicer_harness.load_volume)
    from AutoSegSlicer.correct import export
    ours, _ = export.labelmap_array(loaded.segmentation, loaded.volume)
    import SimpleITK as sitk
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "test_001.nii.gz")))
    from AutoSegSlicer.common import conversion
    ours, _ = conversion.array_in_file_grid(ours, loaded.volume)
    assert np.array_equal(ours, written)
    # the table's volumes are the label map's own voxel counts
    spacing = sitk.ReadImage(str(tmp_path / "out" / "test_001.nii.gz")).GetSpacing()
    row = [r for r in range(3) if table.GetCellText(r, 0) == "test_001"][0]
    organ = float(table.GetCellText(row, 3))
    assert organ == pytest.approx((written == 1).sum() * np.prod(spacing) / 1000, rel=1e-3)


def _roi_around_the_middle(scene, volume):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    roi.SetCenter(*[(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)])
    roi.SetSize(*[(bounds[2 * i + 1] - bounds[2 * i]) / 2 for i in range(3)])
    return roi


def test_fast_and_roi_run_in_the_real_child_and_the_label_map_is_empty_outside(request, autoseg_logic,
                                                                               slicer_harness):
    need("--fast", "--roi", "--force")
    autoseg_logic.models_dir = request.getfixturevalue("models_dir")
    (model,), _ = autoseg_logic.models()
    volume = slicer_harness.load_volume(INPUTS / "test_000_0000.nii.gz")
    roi = _roi_around_the_middle(slicer_harness.scene, volume)
    from AutoSegSlicer.correct import export
    from AutoSegSlicer.common.roi import roi_box_lps

    box = roi_box_lps(roi, volume)
    events = []
    try:
        seg = autoseg_logic.segment(model, [volume], PredictOptions(device="cpu", fast=True, roi=box),
                                    on_event=events.append, timeout=600, prompt=lambda q: True)
    except AutoSegError as exc:
        raise AssertionError(f"the real child refused the panel's command line: {exc}") from None
    assert any(e["event"] == "estimate" for e in events)
    label, _ = export.labelmap_array(seg, volume)
    # voxels whose centre lies outside the box (axis-aligned in LPS) are 0; inside, the organ is found
    import slicer
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
    k, j, i = np.indices(label.shape)
    ras = np.tensordot(ijk_to_ras[:3, :3], np.stack([i, j, k]).astype(float), axes=1) + ijk_to_ras[:3, 3, None, None, None]
    lps = ras * np.array([-1.0, -1.0, 1.0])[:, None, None, None]
    lo, hi = np.minimum(*box), np.maximum(*box)
    inside = np.all((lps >= lo[:, None, None, None] - 1e-6) & (lps <= hi[:, None, None, None] + 1e-6), axis=0)
    assert (~inside).any() and not label[~inside].any() and label[inside].any()


def _ijk_to_ras(volume):
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return m


def test_save_uncertainty_runs_in_the_real_child_and_becomes_a_volume(request, autoseg_logic, slicer_harness):
    need("--save-uncertainty")
    autoseg_logic.models_dir = request.getfixturevalue("models_dir")
    (model,), _ = autoseg_logic.models()
    volume = slicer_harness.load_volume(INPUTS / "test_000_0000.nii.gz")
    seg = autoseg_logic.segment(model, [volume], PredictOptions(device="cpu", tta=True, save_uncertainty=True),
                                timeout=600)
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    found = autoseg_logic.last_job.uncertainty
    assert found is not None and found.volume is not None and found.row.get("case") == "case"
    import slicer
    values = slicer.util.arrayFromVolume(found.volume)
    assert values.shape == slicer.util.arrayFromVolume(volume).shape and 0 <= values.min() and values.max() <= 1
    assert values.max() > 0
    from AutoSegSlicer.segment import uncertainty
    entries = uncertainty.slice_entries(found.row)
    assert entries and all(len(ras) == 3 for _, ras in entries)
