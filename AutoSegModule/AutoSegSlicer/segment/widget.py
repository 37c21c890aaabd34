"""The AutoSeg panel: Qt wiring only; every decision is in `logic.AutoSegLogic` (tested headless).

`AutoSegPanel` is created by ``AutoSeg.AutoSegWidget.setup``. It loads Resources/UI/AutoSeg.ui, fills the
model list, builds one input selector per model channel, runs the logic's child process with a QTimer
polling its events (so the scene is only touched on the GUI thread), and turns Apply into Cancel while
it runs.

More sections: a class listed in `SECTIONS` (``"module:Class"``) is constructed with the panel and gets
``setup()``, ``cleanup()`` and, when present, ``onModelsChanged()``, ``onSegmentationCreated(node)`` and
``onStateChanged(busy, segmentation)``. Its widgets live in the same .ui file (``self.panel.ui.<name>``).
"Correct and export" (correct/widget.py) is such a section. The model list and input selectors are
`widget_models.ModelsMixin`; the helpers shared with the other sections and the editor effect (settings,
folders, PythonSlicer, installing dependencies) are in `common.widget`.

Every slot is wrapped by `slots.guarded`: whatever it raises ends in a message and `recover()` (no timer
left running for nothing, Apply back to Apply, no wait cursor).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import qt
import slicer
from slicer.util import VTKObservationMixin

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import parameters
from AutoSegSlicer.common.slots import guarded, restore_cursor
from AutoSegSlicer.common.widget import (SETTINGS_MODELS_FOLDER, default_models_folder, ensure_dependencies,
                                         migrate_old_folders, module_library_path, python_executable)
from AutoSegSlicer.segment.logic import AutoSegLogic
from AutoSegSlicer.segment.options import DEVICES, MemoryWillNotFit, PredictOptions, describe_estimate
from AutoSegSlicer.segment.widget_models import ModelsMixin

log = logging.getLogger(__name__)

#: Collapsible sections beyond "Segment" ("module:Class"), set up in this order. The training panel adds
#: itself here (one line).
SECTIONS: list = ["AutoSegSlicer.correct.widget:CorrectionsSection",
                  "AutoSegSlicer.segment.widget_uncertainty:UncertaintySection",
                  "AutoSegSlicer.segment.widget_batch:BatchSection",
                  "AutoSegSlicer.train.widget:TrainingSection"]

#: A typed models folder is applied this long after the last keystroke (ctkPathLineEdit emits
#: currentPathChanged on every keystroke that leaves a valid path: CTK ctkPathLineEdit::updateHasValidInput).
PATH_EDIT_DELAY_MS = 800


def make_logic(models_folder: str) -> AutoSegLogic:
    return AutoSegLogic(scene=slicer.mrmlScene, models_dir=models_folder, python_executable=python_executable(),
                        pythonpath=module_library_path(),
                        work_root=Path(slicer.app.temporaryPath) / "AutoSeg")


class AutoSegPanel(ModelsMixin, VTKObservationMixin):
    """Everything the AutoSeg module panel does; ``module_widget`` is the ScriptedLoadableModuleWidget."""

    def __init__(self, module_widget):
        VTKObservationMixin.__init__(self)
        self.module_widget = module_widget
        self.ui = None
        self.logic = None
        self.job = None
        self.models = []
        self.input_selectors = []
        self.sections = []
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._selectors_key = None  # (model path, channels) the input selectors were built for
        self._add_model_runner = None
        self.lastUncertainty = None   # uncertainty.CaseUncertainty of the last segmentation (Where to correct)
        # Asks a yes/no question (the memory will not fit: run anyway?); replaceable for tests.
        self.prompt = lambda text: slicer.util.confirmYesNoDisplay(text, windowTitle="AutoSeg")
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll)

    # -- set-up ------------------------------------------------------------------------------
    def setup(self):
        ui_widget = slicer.util.loadUI(self.module_widget.resourcePath("UI/AutoSeg.ui"))
        self.module_widget.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)

        moved = migrate_old_folders()
        for line in moved:
            self.log(line)
        folder = slicer.util.settingsValue(SETTINGS_MODELS_FOLDER, default_models_folder())
        self.ui.modelsFolderPathLineEdit.currentPath = folder
        self.logic = make_logic(folder)

        self._applied_models_folder = folder
        self._folder_timer = qt.QTimer()
        self._folder_timer.setSingleShot(True)
        self._folder_timer.setInterval(PATH_EDIT_DELAY_MS)
        self._folder_timer.connect("timeout()", self.applyModelsFolder)

        for dev in DEVICES:
            self.ui.deviceComboBox.addItem(dev, dev)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        # One dialog per way of adding a model (a folder, an archive): one Cancel leaves.
        self._add_model_menu = qt.QMenu(self.ui.addModelButton)
        self._add_model_menu.addAction("From a model folder or nnU-Net results folder...").connect(
            "triggered()", self.onAddModelFolder)
        self._add_model_menu.addAction("From an archive (.zip, .tar.gz, .autoseg)...").connect(
            "triggered()", self.onAddModelArchive)
        self.ui.addModelButton.setMenu(self._add_model_menu)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onDetectDevices)
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderEdited)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for spec in SECTIONS:
            module_name, class_name = spec.split(":")
            section = getattr(importlib.import_module(module_name), class_name)(self)
            section.setup()
            self.sections.append(section)
        # Sections are stacked from the top; the stretch keeps them there (no spacer inside AutoSeg.ui,
        # which would open a gap between the Segment sections and the ones added below it).
        self.module_widget.layout.addStretch(1)

        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):
        self._timer.stop()
        self._folder_timer.stop()
        if self.job is not None and self.job.running:
            self.logic.cancel(self.job)
        for section in self.sections:
            section.cleanup()
        self.removeObservers()
        self._unbindParameterNode()

    # -- parameter node ----------------------------------------------------------------------
    def initializeParameterNode(self):
        wrapper = parameters.parameter_node_class()
        self._unbindParameterNode()
        self._parameterNode = wrapper(self.module_widget.logic.getParameterNode())
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._selectors_key = None  # the stored inputs of this parameter node apply: rebuild the selectors
        self.onModelChanged()

    def _mrmlParameterNode(self):
        """The vtkMRMLScriptedModuleNode behind the wrapper (None after the scene was closed)."""
        return self._parameterNode.parameterNode if self._parameterNode is not None else None

    def _unbindParameterNode(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None

    @guarded("Closing the scene")
    def onSceneStartClose(self, caller, event):
        """The scene is about to be cleared: a running segmentation would finish into removed nodes, so it is
        cancelled (the child is killed, its temporary files removed); an installing model goes on."""
        if self.job is not None:
            job, self.job = self.job, None
            if self._add_model_runner is None:
                self._timer.stop()
            self.logic.cancel(job, wait=False)
            self.setBusy(False)
            self.ui.statusLabel.text = "Cancelled: the scene was closed."
        self._unbindParameterNode()
        self._parameterNode = None

    @guarded("Closing the scene")
    def onSceneEndClose(self, caller, event):
        self._selectors_key = None  # the input selectors pointed at removed volumes: choose again
        if self.module_widget.parent.isEntered:
            self.initializeParameterNode()
        else:
            self.onModelChanged()

    # -- running -----------------------------------------------------------------------------
    def inputVolumes(self):
        return [selector.currentNode() for _, selector in self.input_selectors]

    def options(self, with_roi: bool = True) -> PredictOptions:
        p = self._parameterNode
        try:
            folds = parameters.parse_folds(p.folds)
        except ValueError as exc:
            raise AutoSegError(str(exc)) from None
        device = self.ui.deviceComboBox.currentData or "auto"
        roi = None
        if with_roi and p.roi is not None and self.inputVolumes() and self.inputVolumes()[0] is not None:
            from AutoSegSlicer.common.roi import roi_box_lps

            roi = roi_box_lps(p.roi, self.inputVolumes()[0])
        return PredictOptions(device=device, tta=p.useTTA, folds=folds, step_size=p.stepSize, show_3d=p.show3D,
                              fast=p.fast, roi=roi, save_uncertainty=p.saveUncertainty)

    @guarded("Segmentation")
    def onApply(self):
        if self._add_model_runner is not None and self._add_model_runner.running:
            self._add_model_runner.cancel(wait=False)  # _poll reports it and restores the buttons
            return
        if self.job is not None and self.job.running:
            self.onCancel()
            return
        if self._parameterNode is None:
            raise AutoSegError("The scene is being closed; try again once it is loaded.")
        target = self._parameterNode.outputSegmentation
        if target is not None and not slicer.util.confirmOkCancelDisplay(
                f"Replace all segments of '{target.GetName()}' with the new result?"):
            return
        if not self.ensureDependencies():
            return
        self.ui.logTextEdit.clear()
        try:
            self.job = self.logic.start_segmentation(self.currentModel(), self.inputVolumes(), self.options(),
                                                     target_segmentation=target, polling=True)
        except AutoSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg")
            return
        for note in self.job.prepared.notes:
            self.log(note, "warning")
        self.setBusy(True)
        self._timer.start()

    def onCancel(self):
        """Cancel without blocking the GUI: the child gets SIGTERM now and SIGKILL later on a thread."""
        self.log("Cancelling ...")
        self.logic.cancel(self.job, wait=False)
        self._timer.stop()
        self.job = None
        self.setBusy(False)
        self.ui.statusLabel.text = "Cancelled; the scene was not changed."

    def recover(self):
        """After a slot failed: no wait cursor, Apply/Cancel matching what really runs, timer only if needed."""
        restore_cursor()
        running = (self.job is not None and self.job.running) or (
            self._add_model_runner is not None and self._add_model_runner.running)
        if not running:
            self._timer.stop()
        self.setBusy(running)

    def recoverFromPoll(self):
        """Polling failed: what it polled cannot be followed any more, so it is stopped (never left orphaned)."""
        self._timer.stop()
        job, self.job = self.job, None
        runner, self._add_model_runner = self._add_model_runner, None
        if job is not None:
            self.logic.cancel(job, wait=False)
        if runner is not None:
            runner.cancel(wait=False)
        self.ui.statusLabel.text = "Failed; the scene was not changed."
        self.recover()

    @guarded("Following the running job", recover="recoverFromPoll")
    def _poll(self):
        runner = self._add_model_runner
        if runner is not None:
            for event in runner.poll_events():
                self.onEvent(event)
            if not runner.running and runner.result is not None:
                self._timer.stop()
                self._add_model_runner = None
                self.setBusy(False)
                result = runner.result
                if result.ok:
                    self.log("Model installed.")
                    self.refreshModels()
                else:
                    slicer.util.errorDisplay(result.failure_message("Installing the model"), windowTitle="AutoSeg")
            return
        if self.job is None:
            self._timer.stop()
            return
        for event in self.logic.poll_events(self.job):
            self.onEvent(event)
        if self.job.running or self.job.runner.result is None:
            return
        self._timer.stop()
        job, self.job = self.job, None
        self.setBusy(False)
        try:
            node = self.logic.finish_segmentation(job)
        except MemoryWillNotFit as exc:
            self.ui.statusLabel.text = "Not started: the memory will not fit."
            if self.prompt(exc.question()):
                self.log("Running anyway (--force).", "warning")
                self.job = self.logic.restart_forced(job, polling=True)
                self.setBusy(True)
                self._timer.start()
            return
        except AutoSegError as exc:
            self.ui.statusLabel.text = "Failed; the scene was not changed."
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg")
            return
        if self._parameterNode is not None:
            self._parameterNode.outputSegmentation = node
        slicer.util.setSliceViewerLayers(background=job.volumes[0], fit=True)
        self.ui.statusLabel.text = f"Done: '{node.GetName()}'."
        self.lastUncertainty = job.uncertainty
        for section in self.sections:
            if hasattr(section, "onSegmentationCreated"):
                section.onSegmentationCreated(node)

    def onEvent(self, event: dict):
        kind = event.get("event")
        if kind == "progress":
            total = max(int(event.get("total") or 1), 1)
            self.ui.progressBar.maximum = 100
            self.ui.progressBar.value = int(100 * int(event.get("current") or 0) / total)
            eta = event.get("eta_s")
            eta_text = f", {int(eta // 60)}:{int(eta % 60):02d} left" if isinstance(eta, (int, float)) else ""
            self.ui.statusLabel.text = f"{event.get('stage', '')}: {self.ui.progressBar.value}%{eta_text}"
        elif kind == "stage":
            self.ui.statusLabel.text = f"{event.get('stage')}: {event.get('message', '')}"
            self.log(f"== {event.get('stage')}: {event.get('message', '')}")
        elif kind == "log":
            self.log(str(event.get("message", "")), event.get("level", "info"))
        elif kind == "error":
            self.log(f"ERROR: {event.get('message')}", "error")
        elif kind == "result":
            self.log("Result: " + ", ".join(f"{k}={v}" for k, v in event.items() if k != "event"))
        elif kind == "estimate":
            self.ui.statusLabel.text = describe_estimate(event)
            self.log(describe_estimate(event), "info" if event.get("fits", True) else "warning")

    def setBusy(self, busy: bool):
        """Apply becomes Cancel while a segmentation or a model installation runs."""
        self.ui.applyButton.text = "Cancel" if busy else "Apply"
        self.ui.progressBar.value = 0
        for w in (self.ui.modelComboBox, self.ui.addModelButton):
            w.enabled = not busy
        if busy:
            self.ui.applyButton.enabled = True
        self._updateButtons()

    def log(self, message: str, level: str = "info"):
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.ui.logTextEdit.appendPlainText(prefix + message)
        getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(message)

    @guarded("Updating the panel")
    def _updateButtons(self, *_):
        if self.ui is None:
            return
        segmenting = self.job is not None and self.job.running
        installing = self._add_model_runner is not None and self._add_model_runner.running
        busy = segmenting or installing  # either can be cancelled with the Apply button, model or not
        has_inputs = bool(self.input_selectors) and all(s.currentNode() for _, s in self.input_selectors)
        self.ui.applyButton.enabled = busy or (self.currentModel() is not None and has_inputs)
        self.ui.applyButton.toolTip = ("Cancel the running segmentation" if segmenting else
                                       "Cancel installing the model" if installing else "Segment the input volume(s)")
        for section in self.sections:
            if hasattr(section, "onStateChanged"):
                section.onStateChanged(busy, self.currentSegmentation())

    def currentSegmentation(self):
        return self.ui.outputSegmentationSelector.currentNode()

    # -- dependencies ------------------------------------------------------------------------
    def ensureDependencies(self, training: bool = False) -> bool:
        """True when what segmenting needs (with ``training``: also torch and the training packages) is there,
        installed after asking (`common.widget.ensure_dependencies`)."""
        return ensure_dependencies(training)
