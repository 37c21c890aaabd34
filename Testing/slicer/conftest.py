"""Fixtures for the Slicer module tests, run against slicer-core's real MRML classes (no Slicer app).

- ``slicer_harness``: a fresh scene with the module logics installed into ``slicer`` (see autoseg_harness.py);
  the test fails when VTK logged an error during it.
- ``autoseg_logic``: an `AutoSegSlicer.segment.logic.AutoSegLogic` on that scene, models folder in tmp_path,
  child processes run with this interpreter (``sys.executable``).
- ``make_volume``: factory adding a scalar volume node from an array and an LPS geometry.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: make helpers importable
from autoseg_harness import REPO, SlicerHarness, add_module_to_path  # noqa: E402,F401

add_module_to_path()


@pytest.fixture
def slicer_harness():
    h = SlicerHarness()
    try:
        yield h
        errors = list(h.vtk_errors)
    finally:
        h.close()
    if errors:
        pytest.fail("VTK logged errors:\n" + "\n".join(errors))


@pytest.fixture
def make_volume(slicer_harness):
    """make_volume(array (z, y, x), spacing (z, y, x), origin LPS, direction ITK row-major, name)."""
    from AutoSegSlicer.common.conversion import add_volume_from_array
    from AutoSegLib.io.geometry import Geometry

    def make(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, name="volume",
             labelmap=False):
        direction = tuple(np.eye(3).ravel()) if direction is None else tuple(np.asarray(direction, float).ravel())
        return add_volume_from_array(slicer_harness.scene, np.asarray(array), Geometry(spacing, origin, direction),
                                     name=name, labelmap=labelmap)

    return make


@pytest.fixture
def autoseg_logic(slicer_harness, tmp_path):
    from AutoSegSlicer.segment.logic import AutoSegLogic

    return AutoSegLogic(scene=slicer_harness.scene, segmentations_logic=slicer_harness.segmentations,
                        volumes_logic=slicer_harness.volumes, models_dir=tmp_path / "models",
                        python_executable=sys.executable, pythonpath=str(REPO), work_root=tmp_path / "work")
