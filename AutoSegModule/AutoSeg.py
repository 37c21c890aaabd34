"""AutoSeg: self-configuring deep-learning segmentation (the nnU-Net recipe) in 3D Slicer.

This file holds only what Slicer looks for: module metadata, the widget and logic shims and the
self-test. The code lives in the AutoSegSlicer sub-package (logic tested headless against slicer-core)
and the AutoSegLib library (pure Python, run in a child process with PythonSlicer).
"""
import os
import sys
import unittest

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

# AutoSegLib is installed next to this file in the extension; in a source checkout it is one folder up.
_here = os.path.dirname(os.path.abspath(__file__))
for _p in (_here, os.path.dirname(_here)):
    if os.path.isfile(os.path.join(_p, "AutoSegLib", "__init__.py")) and _p not in sys.path:
        sys.path.append(_p)
        break


class AutoSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["AutoSeg developers"]
        self.parent.helpText = (
            "Segment loaded scans with a self-configuring U-Net model (the nnU-Net recipe), correct the result in "
            "the Segment Editor, export label maps with the model's label values, and collect corrected cases "
            "into a training set. Heavy work runs in a separate process; Apply turns into Cancel while it runs. "
            "See the <a href=\"https://github.com/autoseg/SlicerAutoSeg#readme\">project page</a> for a tutorial.")
        self.parent.acknowledgementText = (
            "AutoSeg re-implements the nnU-Net v2 recipe (Isensee et al., Nature Methods 2021) independently.")
        # The Segment Editor effect is registered once the application has started (the effect factory and the
        # Segment Editor's Python effects exist then), as Slicer's scripted-effect extension template does.
        app = getattr(slicer, "app", None)
        if app is not None:
            app.connect("startupCompleted()", registerEditorEffect)


#: The Segment Editor effect "AutoSeg": Slicer instantiates the class named after the file.
EDITOR_EFFECT_SOURCE = os.path.join(_here, "SegmentEditorAutoSegLib", "SegmentEditorEffect.py")


def registerEditorEffect():
    """Register the Segment Editor effect "AutoSeg" with Slicer's effect factory."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(EDITOR_EFFECT_SOURCE.replace("\\", "/"))
    instance.self().register()


class AutoSegWidget(ScriptedLoadableModuleWidget):
    """Shim: the panel is AutoSegSlicer.segment.widget.AutoSegPanel."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from AutoSegSlicer.segment.widget import AutoSegPanel

        self.logic = AutoSegLogic()
        self.panel = AutoSegPanel(self)
        self.panel.setup()

    def cleanup(self):
        if getattr(self, "panel", None) is not None:
            self.panel.cleanup()

    def enter(self):
        if self.panel._parameterNode is None:
            self.panel.initializeParameterNode()

    def exit(self):
        pass


class AutoSegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the module's parameter node. The work is done by AutoSegSlicer.segment.logic.AutoSegLogic,
    created by the panel with the models folder from the settings."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ScriptedLoadableModuleLogic.getParameterNode(self)


class AutoSegTest(ScriptedLoadableModuleTest):
    """Runs the same checks as the headless test suite (AutoSegSlicer.selftest) on Slicer's scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import tempfile

        from AutoSegSlicer import selftest

        for check in selftest.ALL_CHECKS:
            self.setUp()
            self.delayDisplay(f"Running {check.__name__}")
            with tempfile.TemporaryDirectory(prefix="AutoSegSelfTest-") as folder:
                check(slicer.mrmlScene, folder)
        self.delayDisplay("AutoSeg self-test passed")


if __name__ == "__main__":
    unittest.main()
