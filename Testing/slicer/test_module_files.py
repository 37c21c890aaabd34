"""The Slicer-only files (AutoSeg.py, segment/widget.py) import and declare what Slicer needs, with Qt and the
scripted-module base classes stubbed (they exist only inside Slicer). This catches wrong imports and
undefined module-level names; behaviour is tested through the logic."""
from __future__ import annotations

import importlib.util
import sys
import types
from unittest import mock

from autoseg_harness import MODULE_DIR


def _stub_slicer_app_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock(name="qt"))
    monkeypatch.setitem(sys.modules, "ctk", mock.MagicMock(name="ctk"))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (Base,), {}))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)


def test_module_file_declares_metadata_widget_logic_and_self_test(monkeypatch):
    _stub_slicer_app_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location("AutoSeg_under_test", MODULE_DIR / "AutoSeg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parent = types.SimpleNamespace()
    module.AutoSeg(parent)
    assert parent.title == "AutoSeg" and parent.categories == ["Segmentation"]
    assert "Segmentations" in parent.dependencies and parent.helpText
    for cls in ("AutoSegWidget", "AutoSegLogic", "AutoSegTest"):
        assert hasattr(module, cls), cls
    assert hasattr(module.AutoSegTest, "runTest")


def test_widget_module_imports_and_builds_its_panel_object(monkeypatch):
    _stub_slicer_app_modules(monkeypatch)
    for name in ("AutoSegSlicer.common.widget", "AutoSegSlicer.segment.widget_models", "AutoSegSlicer.segment.widget"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    widget = importlib.import_module("AutoSegSlicer.segment.widget")
    panel = widget.AutoSegPanel(module_widget=mock.MagicMock())
    assert panel.job is None and panel.sections == []
    # every registered section resolves to a class with the section interface
    for spec in widget.SECTIONS:
        module_name, class_name = spec.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        assert callable(getattr(cls, "setup")) and callable(getattr(cls, "cleanup")), spec
    assert "AutoSegSlicer.correct.widget:CorrectionsSection" in widget.SECTIONS
    assert widget.module_library_path() == str(MODULE_DIR.parent)   # checkout layout: AutoSegLib one up
