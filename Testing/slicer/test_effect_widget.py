"""The effect's Qt shell (SegmentEditorAutoSegLib/SegmentEditorEffect.py) driven headless: its slots run against
the real scene, the real effect logic and the stand-in child, with

- a minimal stand-in ``qt`` (widgets that keep their properties, signals recorded),
- a stand-in of the C++ adaptor ``qSlicerSegmentEditorScriptedEffect`` whose parameters and node references live
  on the real vtkMRMLSegmentEditorNode as Slicer stores them (``<effect>.<name>`` attributes, common ones
  unprefixed), and whose ``modifySegmentByLabelmap`` is what Slicer 5.10+ runs for it (vtkSlicerSegmentEditorLogic).

What this cannot show: the layout in a real Segment Editor, PythonQt's signal delivery, the 5.8 adaptor.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import types

import numpy as np
import pytest

from autoseg_harness import MODULE_DIR
from autoseg_testing import fake_runner_factory, make_model_folder


class _Widget:
    def __init__(self, *args):
        self.enabled, self.visible, self.text, self.toolTip = True, True, args[0] if args else "", ""
        self.connections = {}

    def connect(self, signal, slot):
        self.connections[signal] = slot

    def blockSignals(self, block):
        return False

    def __getattr__(self, name):       # layout calls (setContentsMargins, addWidget, setInterval ...): no-ops
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


class _ComboBox(_Widget):
    def __init__(self):
        super().__init__()
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def clear(self):
        self.items, self.currentIndex = [], -1

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None


class _FormLayout(_Widget):
    def __init__(self, *args):
        super().__init__()
        self.rows = []

    def addRow(self, label, widget):
        self.rows.append((label, widget))

    def removeRow(self, i):
        del self.rows[i]

    def rowCount(self):
        return len(self.rows)


class _Timer(_Widget):
    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class _NodeComboBox(_Widget):
    node = None

    def setCurrentNode(self, node):
        self.node = node

    def currentNode(self):
        return self.node


def _fake_qt():
    qt = types.ModuleType("qt")
    for name in ("QFrame", "QCheckBox", "QPushButton", "QLabel", "QHBoxLayout", "QProgressBar", "QIcon"):
        setattr(qt, name, type(name, (_Widget,), {}))
    qt.QComboBox, qt.QFormLayout, qt.QTimer = _ComboBox, _FormLayout, _Timer
    qt.QApplication = types.SimpleNamespace(overrideCursor=lambda: None, restoreOverrideCursor=lambda: None)
    return qt


class ScriptedEffect:
    """qSlicerSegmentEditorScriptedEffect's calls used by the effect, storing as Slicer stores them."""

    def __init__(self, editor_node, logic):
        self.node, self.logic, self.name, self.undo_states = editor_node, logic, "", 0
        self.options = []

    def parameterSetNode(self):
        return self.node

    def _get(self, name):
        value = self.node.GetAttribute(f"{self.name}.{name}")
        return value if value is not None else self.node.GetAttribute(name)

    def parameterDefined(self, name):
        return self._get(name) is not None

    def parameter(self, name):
        return self._get(name) or ""

    def integerParameter(self, name):
        return int(self._get(name) or 0)

    def setParameter(self, name, value):
        self.node.SetAttribute(f"{self.name}.{name}", str(value))

    def setParameterDefault(self, name, value):
        if not self.parameterDefined(name):
            self.setParameter(name, value)

    def setCommonParameter(self, name, value):
        self.node.SetAttribute(name, str(value))

    def nodeReference(self, role):
        return self.node.GetNodeReference(f"{self.name}.{role}") or self.node.GetNodeReference(role)

    def setCommonNodeReference(self, role, node):
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    def addOptionsWidget(self, widget):
        self.options.append(widget)

    def addLabeledOptionsWidget(self, label, widget):
        self.options.append((label, widget))
        return _Widget(label)

    def defaultModifierLabelmap(self):
        self.logic.ResetModifierLabelmapToDefault()
        return self.logic.GetModifierLabelmap()

    def saveStateForUndo(self):
        self.undo_states += 1
        self.logic.SaveStateForUndo()

    def modifySegmentByLabelmap(self, segmentation_node, segment_id, labelmap, mode):
        self.logic.ModifySegmentByLabelmap(segmentation_node, segment_id, labelmap, mode, True, False)


@pytest.fixture
def effect(monkeypatch, slicer_harness, autoseg_logic, make_volume):
    import slicer

    from AutoSegSlicer.effect.logic import EffectLogic

    monkeypatch.setitem(sys.modules, "qt", _fake_qt())
    for name in ("AutoSegSlicer.common.widget", "AutoSegSlicer.segment.widget_models", "AutoSegSlicer.segment.widget"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    base = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    base.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    monkeypatch.setitem(sys.modules, "SegmentEditorEffects", base)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(slicer_harness.scene)
    logic.SetMRMLApplicationLogic(slicer_harness.app_logic)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", _NodeComboBox, raising=False)
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect", types.SimpleNamespace(
        ModificationModeSet=logic.ModificationModeSet), raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text))
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext)
    panel = types.SimpleNamespace(ensureDependencies=lambda: True)
    monkeypatch.setattr(slicer.modules, "autoseg", types.SimpleNamespace(
        widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: types.SimpleNamespace(panel=panel))),
        raising=False)

    img = np.zeros((6, 12, 14), np.int16)
    img[1:4, 2:8, 3:10] = 100
    img[2:3, 4:6, 5:7] = 200
    volume = make_volume(img, name="ct")
    make_model_folder(autoseg_logic.models_dir / "Organs")
    autoseg_logic.runner_factory = fake_runner_factory("ok")
    seg = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    node.SetAndObserveSegmentationNode(seg)
    logic.SetSegmentEditorNode(node)
    logic.SetSourceVolumeNode(volume)

    spec = importlib.util.spec_from_file_location("SegmentEditorAutoSegLib_under_test",
                                                  MODULE_DIR / "SegmentEditorAutoSegLib" / "SegmentEditorEffect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scripted = ScriptedEffect(node, logic)
    effect = module.SegmentEditorEffect(scripted)
    effect_logic = EffectLogic(autoseg_logic)
    monkeypatch.setattr(effect, "logic", lambda: effect_logic)
    effect.setMRMLDefaults()
    effect.setupOptionsFrame()
    effect.activate()
    return types.SimpleNamespace(effect=effect, scripted=scripted, seg=seg, volume=volume, expected=(img > 50).astype(int) + (img > 150),
                                 errors=errors, module=module)


def _run_preview(e):
    e.effect.onPreview()
    assert not e.errors, e.errors
    deadline = time.monotonic() + 60
    while e.effect.previewNode() is None and time.monotonic() < deadline:
        e.effect._poll()
        time.sleep(0.05)
    assert e.effect.previewNode() is not None, (e.errors, e.effect.statusLabel.text)


def test_the_options_follow_the_model_and_parameters(effect):
    e = effect
    assert e.scripted.name == "AutoSeg" and e.effect.icon() is not None and "Preview" in e.effect.helpText()
    assert [t for t, _ in e.effect.modelComboBox.items] == ["Organs"]
    assert e.effect.labelComboBox.items == [("organ (1)", 1), ("lesion (2)", 2)]
    assert [label for label, _ in e.effect.inputsLayout.rows] == ["MRI:"]        # one channel: the source volume
    assert e.effect.previewButton.enabled and not e.effect.applyButton.enabled
    e.effect.regionComboBox.currentIndex = 1
    e.effect.fastCheckBox.checked = True
    e.effect.updateMRMLFromGUI()
    assert e.scripted.parameter("Region") == "roi" and e.scripted.integerParameter("Fast") == 1
    assert e.scripted.node.GetAttribute("AutoSeg.Region") == "roi"               # stored as Slicer stores it
    e.effect.updateGUIFromMRML()
    assert e.effect.roiSelector.visible and not e.effect.labelComboBox.enabled


def test_preview_apply_and_undo_state(effect):
    import slicer

    e = effect
    _run_preview(e)
    preview = e.effect.previewNode()
    assert e.scripted.parameter("SegmentationResultPreviewOwnerEffect") == "AutoSeg"
    assert e.effect.applyButton.enabled and e.effect.cancelButton.enabled
    e.effect.onApply()
    assert not e.errors, e.errors
    assert e.scripted.undo_states == 1
    assert e.effect.previewNode() is None and preview.GetScene() is None           # the preview is gone
    s = e.seg.GetSegmentation()
    organ = slicer.util.arrayFromSegmentBinaryLabelmap(e.seg, s.GetSegmentIdBySegmentName("organ"), e.volume)
    assert np.array_equal(organ.astype(bool), e.expected == 1)


def test_cancel_removes_the_preview_and_apply_without_one_says_so(effect):
    e = effect
    _run_preview(e)
    preview = e.effect.previewNode()
    e.effect.onCancel()
    assert e.effect.previewNode() is None and preview.GetScene() is None
    e.effect.onApply()
    assert e.errors == ["Nothing to apply: run Preview first."]
    assert e.seg.GetSegmentation().GetNumberOfSegments() == 0


def test_another_effects_preview_is_left_alone(effect, slicer_harness):
    e = effect
    other = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "grow from seeds preview")
    e.scripted.setCommonNodeReference("SegmentationResultPreview", other)
    e.scripted.setCommonParameter("SegmentationResultPreviewOwnerEffect", "Grow from seeds")
    assert e.effect.previewNode() is None
    e.effect.onCancel()
    assert other.GetScene() is not None


def test_a_missing_source_volume_is_a_clear_message(effect):
    e = effect
    e.scripted.node.SetAndObserveSourceVolumeNode(None)
    e.effect.onPreview()
    assert e.errors == ["Select the source volume in the Segment Editor first."]
    assert e.effect.preview_job is None


def test_around_the_view_uses_the_slice_view_last_interacted_with(effect, slicer_harness):
    import slicer

    from AutoSegSlicer.effect import logic as effect_logic
    from AutoSegSlicer.common import region as effect_region

    e = effect
    view = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    view.SetLayoutName("Yellow")
    view.SetOrientationToAxial()
    view.SetDimensions(40, 40, 1)
    view.SetFieldOfView(4.0, 4.0, 1.0)
    m = view.GetSliceToRAS()
    m.SetElement(0, 3, -6.0)     # centre at LPS x = 6, y = 4
    m.SetElement(1, 3, -4.0)
    view.UpdateMatrices()
    slice_widget = types.SimpleNamespace(className=lambda: "qMRMLSliceWidget", mrmlSliceNode=lambda: view)
    assert e.effect.processInteractionEvents(None, 0, slice_widget) is False    # never swallows the event
    e.effect.regionComboBox.currentIndex = 2
    e.effect.updateMRMLFromGUI()
    _run_preview(e)
    preview = e.effect.previewNode()
    box = effect_region.box_from_text(preview.GetAttribute(effect_logic.REGION_ATTRIBUTE))
    lo, hi = effect_region.roi_lps_corners(box, e.volume)
    assert np.allclose(lo, (4.0, 2.0, -0.5)) and np.allclose(hi, (8.0, 6.0, 5.5))
    e.effect.onApply()
    s = e.seg.GetSegmentation()
    organ = slicer.util.arrayFromSegmentBinaryLabelmap(e.seg, s.GetSegmentIdBySegmentName("organ"), e.volume)
    inside = np.zeros(organ.shape, bool)
    inside[:, 2:7, 4:9] = True                      # voxel centres x 4..8, y 2..6 (spacing 1, origin 0)
    assert np.array_equal(organ.astype(bool), (e.expected == 1) & inside)


def test_the_module_registers_the_effect_at_startup(monkeypatch):
    import slicer

    from test_module_files import _stub_slicer_app_modules

    _stub_slicer_app_modules(monkeypatch)
    connected, created = [], []

    class Adaptor:
        def __init__(self, parent):
            created.append(self)
            self.registered = False

        def setPythonSource(self, path):
            self.source = path

        def self(self):
            return types.SimpleNamespace(register=lambda: setattr(self, "registered", True))

    monkeypatch.setitem(sys.modules, "qSlicerSegmentationsEditorEffectsPythonQt",
                        types.SimpleNamespace(qSlicerSegmentEditorScriptedEffect=Adaptor))
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda sig, slot: connected.append((sig, slot))),
                        raising=False)
    spec = importlib.util.spec_from_file_location("AutoSeg_register_test", MODULE_DIR / "AutoSeg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.AutoSeg(types.SimpleNamespace())
    assert connected == [("startupCompleted()", module.registerEditorEffect)]
    connected[0][1]()
    (adaptor,) = created
    assert adaptor.registered and adaptor.source.endswith("SegmentEditorAutoSegLib/SegmentEditorEffect.py")
    from pathlib import Path

    # Slicer instantiates the class named after the file (qSlicerSegmentEditorScriptedEffect::setPythonSource)
    assert "class SegmentEditorEffect(" in Path(adaptor.source).read_text()


def test_a_two_channel_model_gets_the_source_volume_first_and_a_volume_for_the_second(effect, make_volume,
                                                                                      autoseg_logic):
    e = effect
    make_model_folder(autoseg_logic.models_dir / "Two", channel_names=("T1", "T2"))
    make_volume(np.zeros((6, 12, 14), np.int16), name="T2 labels", labelmap=True)   # never an input
    t2 = make_volume(np.zeros((6, 12, 14), np.int16), name="patient t2")
    e.effect.refreshModels()
    e.effect.modelComboBox.currentIndex = [t for t, _ in e.effect.modelComboBox.items].index("Two")
    e.effect.onModelChanged()
    assert [label for label, _ in e.effect.inputsLayout.rows] == ["T1:", "T2:"]
    (selector,) = e.effect.channel_selectors
    assert selector.currentNode() is t2 and selector.hideChildNodeTypes == ["vtkMRMLLabelMapVolumeNode"]
    e.effect.onPreview()
    assert not e.errors, e.errors
    inputs = sorted(p.name for p in e.effect.preview_job.job.prepared.input_dir.iterdir())
    assert inputs == ["case_0000.nii.gz", "case_0001.nii.gz"]
    e.effect.onCancel()
    assert e.effect.preview_job is None and e.effect.previewNode() is None
