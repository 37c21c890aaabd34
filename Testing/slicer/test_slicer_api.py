"""The module against the API of every supported Slicer release (slicer_api/slicer_api.json, built from
Slicer's and CTK's sources by slicer_api/extract_slicer_api.py; its ``tags`` are the supported releases).

slicer-core is one Slicer version; these tests cover the others: each MRML/VTK method, slicer.util function
(with its keywords), qMRML/CTK signal and property the module's sources use must exist in each release."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autoseg_harness import MODULE_DIR, REPO

sys.path.insert(0, str(Path(__file__).resolve().parent / "slicer_api"))
import api_uses  # noqa: E402

FIXTURE = api_uses.load_fixture()
UI_DIR = MODULE_DIR / "Resources" / "UI"

#: UpperCamel calls whose receiver is not a Slicer object though the AST cannot tell.
NOT_SLICER = {"GetPixelID",       # SimpleITK Image returned by conversion.sitk_image
              "HasMetaDataKey"}   # SimpleITK ImageFileReader (dicom_batch)


def _check_source(tmp_path, source: str, tag: str) -> list:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    return api_uses.check(api_uses.uses([path], tmp_path), FIXTURE, tag)


@pytest.mark.parametrize("tag", FIXTURE["tags"])
def test_the_module_uses_only_api_that_each_supported_slicer_has(tag):
    found = api_uses.uses(sorted(MODULE_DIR.rglob("*.py")), UI_DIR)
    found.methods = [(w, m) for w, m in found.methods if m not in NOT_SLICER]
    assert len(found.util_calls) > 20 and len(found.signals) > 20 and len(found.class_methods) > 40
    assert {m for _, m, _ in found.pytorchutils} >= {"torchInstalled", "installTorch"}
    assert api_uses.check(found, FIXTURE, tag) == []


def test_the_check_rejects_what_an_older_slicer_lacks(tmp_path):
    # Issue #13 item 1: vtkSegment.SetTerminology exists from 5.10 only.
    item1 = "import slicer\nsegment = slicer.vtkSegment()\nsegment.SetTerminology('x')\n"
    assert _check_source(tmp_path, item1, "v5.8.0") == ["snippet.py:3: vtkSegment.SetTerminology does not exist "
                                                       "in Slicer v5.8.0"]
    assert _check_source(tmp_path, item1, "v5.10.0") == []
    wrong = ("import slicer\n"
             "slicer.util.errorDisplay('x', windowTitle='t')\n"            # fine everywhere
             "slicer.util.pip_install(['a'], blocking=True)\n"             # keyword 5.12 only (slicer.packaging)
             "slicer.util.notAFunction()\n"
             "selector = slicer.qMRMLNodeComboBox()\n"
             "selector.hideChildNodeTypes = []\n"                          # fine
             "selector.notAProperty = 1\n"
             "selector.connect('currentNodeChanged(vtkMRMLNode*)', print)\n"
             "selector.connect('nodeChosen(vtkMRMLNode*)', print)\n"
             "node.NotAMethodAnywhere()\n"
             "torch_logic.installTorch(askConfirmation=True, torchVersion='>=2.3')\n")
    assert [line.split(": ", 1)[1] for line in _check_source(tmp_path, wrong, "v5.8.0")] == [
        "slicer.util.pip_install() has no keyword 'blocking' in Slicer v5.8.0",
        "slicer.util.notAFunction does not exist in Slicer v5.8.0",
        "no class has a method NotAMethodAnywhere in Slicer v5.8.0",
        "qMRMLNodeComboBox has no signal nodeChosen(vtkMRMLNode*) in Slicer v5.8.0",
        "PyTorchUtilsLogic.installTorch() has no keyword 'torchVersion'",
        "qMRMLNodeComboBox has no property notAProperty in Slicer v5.8.0"]


def test_the_supported_releases_are_stated_where_users_and_pip_read_them():
    pythons = sorted(tuple(int(x) for x in r["python"].split(".")[:2]) for r in FIXTURE["releases"].values())
    oldest = "%d.%d" % pythons[0]
    assert f'requires-python = ">={oldest}"' in (REPO / "pyproject.toml").read_text()
    readme = (REPO / "README.md").read_text()
    for tag in FIXTURE["tags"]:
        assert f"Slicer {tag[1:].rsplit('.', 1)[0]}" in readme, tag
    assert f"Python {oldest}" in readme


EFFECT_FILE = MODULE_DIR / "SegmentEditorAutoSegLib" / "SegmentEditorEffect.py"
#: The hooks a scripted Segment Editor effect must define to work (options, parameters, icon, help, cloning).
REQUIRED_HOOKS = {"clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults", "updateGUIFromMRML",
                  "updateMRMLFromGUI"}


def _effect_class():
    import ast

    tree = ast.parse(EFFECT_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)} - {"__init__"}
    referenced = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id == "self"}
    referenced |= {n.value for n in ast.walk(cls) if isinstance(n, ast.Constant)}   # @guarded(..., recover="x")
    if "guarded(" in EFFECT_FILE.read_text():
        referenced.add("recover")                                                    # guarded's default
    return methods, referenced


@pytest.mark.parametrize("tag", FIXTURE["tags"])
def test_the_effect_defines_only_hooks_each_supported_slicer_calls(tag):
    """A hook with a wrong name is never called (no error anywhere): every method of the effect class that its own
    code never uses is for Slicer, so it must be a hook of qSlicerSegmentEditorScriptedEffect in that release."""
    hooks = set(FIXTURE["releases"][tag]["effect_hooks"])
    assert {"setupOptionsFrame", "processInteractionEvents"} <= hooks
    methods, referenced = _effect_class()
    assert REQUIRED_HOOKS <= methods
    assert (methods - referenced) | REQUIRED_HOOKS <= hooks, sorted(((methods - referenced) | REQUIRED_HOOKS) - hooks)
    assert "cleanup" not in methods or tag != "v5.8.0"   # a 5.10+ hook: on 5.8 it would silently never run


def test_the_effect_calls_on_the_scripted_effect_adaptor_are_checked(tmp_path):
    found = api_uses.uses(sorted(MODULE_DIR.rglob("*.py")), UI_DIR)
    on_adaptor = {m for _, c, m in found.class_methods if c == "qSlicerSegmentEditorScriptedEffect"}
    assert {"modifySegmentByLabelmap", "saveStateForUndo", "defaultModifierLabelmap", "addLabeledOptionsWidget",
            "parameterSetNode", "setCommonNodeReference", "nodeReference", "setParameterDefault",
            "integerParameter", "setPythonSource"} <= on_adaptor
    assert ("SegmentEditorEffect.py:14", "SegmentEditorEffects", "AbstractScriptedSegmentEditorEffect") in \
        found.python_imports
    wrong = ("import qSlicerSegmentationsEditorEffectsPythonQt as effects\n"
             "from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect, NotAnEffect\n"
             "class E:\n"
             "    def f(self, viewWidget):\n"
             "        self.scriptedEffect.modifySegmentByLabelMap(None, '', None, 0)\n"
             "        self.scriptedEffect.perSegmnt = False\n"
             "        instance = effects.qSlicerSegmentEditorScriptedEffect(None)\n"
             "        instance.setPythonSourceFile('x.py')\n"
             "        instance.setPythonSource('x.py')\n"
             "        sliceWidget = viewWidget\n"
             "        sliceWidget.sliceNodeX()\n")
    assert [line.split(": ", 1)[1] for line in _check_source(tmp_path, wrong, "v5.8.0")] == [
        "qSlicerSegmentEditorScriptedEffect.modifySegmentByLabelMap does not exist in Slicer v5.8.0",
        "qSlicerSegmentEditorScriptedEffect.setPythonSourceFile does not exist in Slicer v5.8.0",
        "qMRMLSliceWidget.sliceNodeX does not exist in Slicer v5.8.0",
        "SegmentEditorEffects.NotAnEffect does not exist in Slicer v5.8.0",
        "qSlicerSegmentEditorScriptedEffect has no property perSegmnt in Slicer v5.8.0"]
