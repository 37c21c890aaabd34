"""Issue #12 in the module: segmenting without PyTorch, the Segment panel's options (fast, ROI, save uncertainty)
as command-line options, and the pre-flight estimate (shown; memory that will not fit asks, then --force)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import fake_predict_child
from autoseg_harness import REPO
from autoseg_testing import make_model_folder
from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import dependencies
from AutoSegSlicer.segment.options import MemoryWillNotFit, PredictOptions, describe_estimate


# -- no torch to segment -----------------------------------------------------------------------------------------
def _names(requirements):
    return sorted(dependencies.parse_requirement_names(requirements))


def test_the_packages_asked_for_are_pyprojects():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(dependencies.INFERENCE_REQUIREMENTS)
    train = [r for r in project["optional-dependencies"]["train"] if not r.startswith("torch")]
    assert sorted(train) == sorted(dependencies.TRAINING_REQUIREMENTS)
    assert "torch" not in _names(dependencies.INFERENCE_REQUIREMENTS)


class _TorchLogic:
    def __init__(self):
        self.calls = []

    def torchInstalled(self):
        self.calls.append("torchInstalled")
        return False

    def installTorch(self, askConfirmation, torchVersionRequirement):
        self.calls.append("installTorch")
        return "torch"


def test_segmenting_without_torch_asks_only_for_the_inference_packages():
    present = {"numpy", "SimpleITK"}                      # what Slicer's Python has: no torch, scipy, openvino
    asked, installed, torch_logic = [], [], _TorchLogic()

    def pip(reqs):
        installed.extend(reqs)
        present.update(dependencies.required(training=True)[r] for r in reqs)

    ok = dependencies.ensure_dependencies(lambda text: asked.append(text) or True, pip, torch_logic=torch_logic,
                                          is_importable=present.__contains__, torch_version=lambda: None)
    assert ok is True and torch_logic.calls == [] and len(asked) == 1
    assert sorted(installed) == ["openvino>=2024.0", "scipy>=1.10"]
    assert "torch" not in asked[0].lower()
    # the PyTorch extension missing altogether is no error for segmenting
    assert dependencies.ensure_dependencies(lambda t: pytest.fail("nothing to ask"), pip, torch_logic=None,
                                            is_importable=present.__contains__) is True
    # training asks PyTorchUtils for torch, then for the train extra
    installed.clear()
    ok = dependencies.ensure_dependencies(lambda t: True, pip, torch_logic=torch_logic,
                                          is_importable=present.__contains__, training=True, torch_version=lambda: None)
    assert ok is True and torch_logic.calls == ["torchInstalled", "installTorch"]
    assert sorted(installed) == ["batchgenerators>=0.25", "matplotlib>=3.6", "onnx>=1.15"]
    with pytest.raises(AutoSegError, match="Training needs PyTorch"):
        dependencies.ensure_dependencies(lambda t: True, pip, torch_logic=None, is_importable=present.__contains__,
                                         training=True)


def test_apply_with_torch_absent_asks_only_for_the_inference_packages(slicer_harness, tmp_path, monkeypatch,
                                                                      make_volume):
    """The panel: Apply runs ensure_dependencies for segmenting; the test installer records what it is asked."""
    import fake_panel
    import slicer

    make_model_folder(tmp_path / "models" / "Organs", model_json={"name": "Organs", "version": "1.0"})
    panel, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path)
    try:
        present = {"numpy", "SimpleITK"}
        ensured = []
        real = dependencies.ensure_dependencies

        def with_this_python(**kw):
            return real(is_importable=present.__contains__, torch_version=lambda: None, **kw)

        def pip_ensure(requirements, requester=None):
            ensured.append(list(requirements))
            present.update(dependencies.INFERENCE_REQUIREMENTS[r] for r in requirements)

        monkeypatch.setattr(dependencies, "ensure_dependencies", with_this_python)
        monkeypatch.setitem(sys.modules, "slicer.packaging", type(sys)("packaging"))
        sys.modules["slicer.packaging"].pip_ensure = pip_ensure
        monkeypatch.delattr(slicer, "packaging", raising=False)
        monkeypatch.setitem(sys.modules, "PyTorchUtils", None)     # no PyTorch extension at all
        volume = make_volume(np.zeros((4, 6, 6), np.int16) + 100, name="ct")
        panel.refreshModels()
        panel.input_selectors[0][1].setCurrentNode(volume)
        panel.onInputChanged()
        factory = fake_predict_child.runner_factory(tmp_path / "bin")
        panel.logic.runner_factory = factory
        panel.onApply()
        assert shown["errors"] == [] and ensured == [["scipy>=1.10", "openvino>=2024.0"]]
        assert panel.job is not None and "--runtime" in factory.started[0]
        assert factory.started[0][factory.started[0].index("--runtime") + 1] == "auto"
        panel.job.wait(60)
        panel._poll()
        assert shown["errors"] == [] and panel.ui.statusLabel.text.startswith("Done")
    finally:
        if panel.job is not None:
            panel.logic.cancel(panel.job)
        panel.cleanup()


# -- the options as command-line options ---------------------------------------------------------------------------
def test_options_build_the_agreed_command_line():
    assert PredictOptions().args() == ["--device", "auto", "--runtime", "auto", "--step-size", "0.5"]
    args = PredictOptions(device="cpu", tta=False, folds=("0", "2"), step_size=0.75, fast=True,
                          roi=((-10.5, 20, 3), (14.25, 60, 40)), save_uncertainty=True, force=True).args()
    assert args == ["--device", "cpu", "--runtime", "auto", "--step-size", "0.75", "--no-tta", "--folds", "0", "2",
                    "--fast", "--roi", "-10.5", "20", "3", "14.25", "60", "40", "--save-uncertainty", "--force"]
    for bad in (((0, 0), (1, 1)), ((0, 0, 0), (1, 1, float("nan"))), "box"):
        with pytest.raises(AutoSegError, match="two corners"):
            PredictOptions(roi=bad).args()
    with pytest.raises(AutoSegError, match="empty"):
        PredictOptions(roi=((0, 0, 5), (1, 1, 5))).args()


# -- ROI: RAS -> LPS corners on an oblique volume ------------------------------------------------------------------
def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique(make_volume):
    """A 12x10x8 volume, spacing (x, y, z) = (1.5, 1.0, 2.0), rotated about all three axes (LPS direction)."""
    direction = _rotation(0.35, -0.2, 0.6)
    return make_volume(np.zeros((8, 10, 12), np.float32), spacing=(2.0, 1.0, 1.5), origin=(-20.0, 15.0, 7.0),
                       direction=direction, name="oblique"), direction


def _roi(scene, center, size, object_to_node=None):
    import slicer

    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    if object_to_node is not None:
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_node))
    else:
        roi.SetCenter(*center)
    roi.SetSize(*size)
    return roi


def _corners_lps(center, axes, size):
    """The 8 corners of a box (centre RAS, unit axes as columns, size mm) in LPS, by hand."""
    half = np.asarray(size, float) / 2
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
    ras = np.asarray(center, float)[None] + (signs * half) @ np.asarray(axes, float).T
    return ras * [-1, -1, 1]


def test_an_unrotated_roi_on_an_oblique_volume_is_passed_as_its_own_corners_in_lps(oblique, slicer_harness):
    from AutoSegSlicer.common.roi import roi_box_lps

    volume, _ = oblique
    center = (17.0, -12.0, 11.0)                     # inside the volume (RAS)
    roi = _roi(slicer_harness.scene, center, (4.0, 3.0, 5.0))
    box = roi_box_lps(roi, volume)
    corners = _corners_lps(center, np.eye(3), (4.0, 3.0, 5.0))
    for point in box:                                 # each passed point is one of the ROI's corners in LPS
        assert min(np.abs(np.asarray(point) - c).max() for c in corners) < 1e-9
    assert np.allclose(np.abs(np.subtract(box[1], box[0])), (4.0, 3.0, 5.0))   # opposite corners
    assert np.allclose(box[0], (-19.0, 10.5, 8.5)) and np.allclose(box[1], (-15.0, 13.5, 13.5))


def test_a_rotated_roi_and_transforms(oblique, slicer_harness):
    import slicer

    from AutoSegSlicer.common.roi import roi_box_lps

    volume, _ = oblique
    axes = _rotation(0.0, 0.0, 0.5)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = (17.0, -12.0, 11.0)
    roi = _roi(slicer_harness.scene, None, (4.0, 3.0, 5.0), object_to_node)
    box = roi_box_lps(roi, volume)
    corners = _corners_lps((17.0, -12.0, 11.0), axes, (4.0, 3.0, 5.0))
    assert np.allclose(box[0], corners.min(axis=0)) and np.allclose(box[1], corners.max(axis=0))  # its LPS bounds
    # the ROI under a transform moving it 3 mm right: the box moves 3 mm in L (x) the other way
    transform = slicer_harness.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[0, 3] = 3.0
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    roi.SetAndObserveTransformNodeID(transform.GetID())
    moved = roi_box_lps(roi, volume)
    assert np.allclose(np.asarray(moved) - np.asarray(box), [[-3, 0, 0], [-3, 0, 0]], atol=1e-9)
    # the volume under the same transform: ROI and volume move together, the box is the first one again
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(roi_box_lps(roi, volume), box, atol=1e-9)
    roi.SetAndObserveTransformNodeID(None)
    roi.SetCenter(500.0, 500.0, 500.0)
    with pytest.raises(AutoSegError, match="does not overlap"):
        roi_box_lps(roi, volume)
    with pytest.raises(AutoSegError, match="No ROI selected"):
        roi_box_lps(None, volume)


# -- pre-flight estimate -----------------------------------------------------------------------------------------
def test_memory_that_will_not_fit_asks_and_reruns_with_force(autoseg_logic, make_volume, tmp_path, monkeypatch):
    make_model_folder(tmp_path / "models" / "Organs")
    model = autoseg_logic.models()[0][0]
    image = np.zeros((6, 12, 14), np.int16)
    image[1:4, 2:8, 3:10] = 100
    volume = make_volume(image, name="ct")
    factory = fake_predict_child.runner_factory(tmp_path / "bin")
    autoseg_logic.runner_factory = factory
    monkeypatch.setenv("AUTOSEG_FAKE_NO_FIT", "1")
    events, questions = [], []
    with pytest.raises(MemoryWillNotFit) as declined:
        autoseg_logic.segment(model, [volume], PredictOptions(tta=False), on_event=events.append, timeout=60,
                              prompt=lambda q: questions.append(q) or False)
    assert len(factory.started) == 1 and "--force" not in factory.started[0]
    assert "8.8 GiB" in questions[0] and "Run anyway?" in questions[0]
    assert declined.value.estimate["fits"] is False
    estimate = next(e for e in events if e["event"] == "estimate")
    assert describe_estimate(estimate) == "Expected: about 0:12 min, peak memory 8.8 GiB of 3.9 GiB available " \
                                           "(will NOT fit)"
    assert autoseg_logic.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    node = autoseg_logic.segment(model, [volume], PredictOptions(tta=False), timeout=60, prompt=lambda q: True)
    assert len(factory.started) == 3 and "--force" in factory.started[2] and "--force" not in factory.started[1]
    from AutoSegSlicer.common import conversion  # the forced run's result is in the scene
    assert node.GetSegmentation().GetNumberOfSegments() == 2 and conversion.geometry_from_node(volume)
    with pytest.raises(MemoryWillNotFit):     # no prompt (scripts): the error
        autoseg_logic.segment(model, [volume], PredictOptions(tta=False), timeout=60)
