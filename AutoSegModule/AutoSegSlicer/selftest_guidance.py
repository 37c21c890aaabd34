"""Self-test checks of the panel's ROI, results table and slice jump (run by the module's self-test inside Slicer,
where the real slice views and markups exist, and headless by Testing/slicer/test_selftest.py)."""
from __future__ import annotations

import numpy as np


def check_roi_table_and_jump(scene, folder) -> None:
    """An unrotated ROI on an oblique volume is passed as its own opposite corners in LPS; a results table row
    per case; a jump puts the point on every slice view's plane."""
    import slicer

    from AutoSegLib.io.geometry import Geometry
    from AutoSegSlicer.segment import batch_table, uncertainty
    from AutoSegSlicer.common import conversion, models
    from AutoSegSlicer import selftest
    from AutoSegSlicer.common.roi import roi_box_lps

    c, s = np.cos(0.5), np.sin(0.5)
    direction = np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    geo = Geometry((2.0, 1.0, 1.5), (-20.0, 15.0, 7.0), tuple(direction.ravel()))
    volume = conversion.add_volume_from_array(scene, np.zeros((8, 10, 12), np.float32), geo, "AutoSegSelfTestROI")
    center = (conversion.node_ijk_to_ras(volume) @ [5.5, 4.5, 3.5, 1.0])[:3]   # the volume's middle, RAS
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "AutoSegSelfTestROI")
    roi.SetCenter(*center)
    roi.SetSize(4.0, 3.0, 5.0)
    low, high = roi_box_lps(roi, volume)
    r, a, z = center
    assert np.allclose(low, (-r - 2.0, -a - 1.5, z - 2.5)) and np.allclose(high, (-r + 2.0, -a + 1.5, z + 2.5)), \
        (low, high, center)

    model = models.read_model_info(selftest.make_model_folder(f"{folder}/models/SelfTestTable"))
    rows = [{"case": "a", "status": "ok", "seconds": 2.0, "volumes_ml": {"organ": 1.25, "lesion": 0.5},
             "mean_uncertainty": 0.1, "warnings": [], "error": None},
            {"case": "b", "status": "failed", "seconds": 0.1, "volumes_ml": {}, "error": "bad file", "warnings": []}]
    table = batch_table.results_table(scene, model, rows, folder)
    assert table.GetNumberOfRows() == 2 and table.GetCellText(1, 1) == "failed"
    assert table.GetCellText(1, 7) == "bad file"
    assert float(table.GetCellText(0, 3)) == 1.25

    slices = [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
              for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]
    if not slices:  # headless: the application's three views
        for orientation in ("Axial", "Sagittal", "Coronal"):
            node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
            node.SetLayoutName(orientation)
            getattr(node, f"SetOrientationTo{orientation}")()
            slices.append(node)
    point = np.array(uncertainty.slice_entries({"uncertain_slices": [
        {"axis": "axial", "index": 3, "position_lps": [4.0, -7.5, 12.25]}]})[0][1])
    assert np.allclose(point, [-4.0, 7.5, 12.25])
    uncertainty.jump_to(scene, point)
    for node in slices:
        m = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())
        assert abs(float(m[:3, 2] @ (point - m[:3, 3]))) < 1e-6, f"{node.GetName()} does not pass through {point}"
    for node in (volume, roi, table):
        scene.RemoveNode(node)
