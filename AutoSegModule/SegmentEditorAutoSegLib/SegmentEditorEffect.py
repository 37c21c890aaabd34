"""The Segment Editor effect "AutoSeg": Qt wiring only; what it does is AutoSegSlicer.effect.logic (tested headless).

Loaded by Slicer from this file (``qSlicerSegmentEditorScriptedEffect.setPythonSource``: the class is named
after the file), registered by AutoSeg.py when the application has started. Options: the installed model, its
input channels (the Segment Editor's source volume is the first), fast mode, the region (whole volume, a
markups ROI, or around the slice view last used), and how Apply writes the result. Preview runs the model in a
child process, polled from a QTimer so that the scene only changes on the GUI thread.
"""
import logging
import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import region as effect_region
from AutoSegSlicer.segment import widget as panel_widget
from AutoSegSlicer.effect.logic import (MODE_LABELS, MODE_SELECTED, PREVIEW_OWNER_PARAMETER, PREVIEW_REFERENCE_ROLE,
                                        EffectLogic, ScriptedEffectEditor)
from AutoSegSlicer.common.slots import guarded, restore_cursor

log = logging.getLogger(__name__)

EFFECT_NAME = "AutoSeg"
ICON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Icons",
                    "SegmentEditorAutoSeg.png")
REGION_CHOICES = (("Whole volume", effect_region.REGION_WHOLE), ("Markups ROI", effect_region.REGION_ROI),
                  ("Around the current view", effect_region.REGION_VIEW))
MODE_CHOICES = (("One segment per model label", MODE_LABELS), ("Fill the selected segment with", MODE_SELECTED))
POLL_MS = 200


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment with an installed AutoSeg model; preview, then apply under the editor's masking settings."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME  # not translated: effects are found by name
        scriptedEffect.perSegment = False  # writes several segments at once
        scriptedEffect.requireSegments = False  # creates its own segments
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.preview_job = None
        self.last_slice_node = None
        self.channel_selectors = []
        self.models = []
        self._logic = None
        self._timer = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self):
        return qt.QIcon(ICON) if os.path.exists(ICON) else qt.QIcon()

    def helpText(self):
        return ("<html>Segment with an installed AutoSeg model.<p><ul style=\"margin: 0\">"
                "<li>Choose the <dfn>model</dfn>; its first input is the source volume, choose the others.</li>"
                "<li><dfn>Region</dfn>: the whole volume, a markups ROI, or the area visible in the slice view you "
                "used last, through the whole volume (faster on a large scan).</li>"
                "<li><dfn>Preview</dfn> runs the model in the background (Cancel stops it) and shows the result "
                "as an overlay.</li>"
                "<li><dfn>Apply</dfn> writes it into the segmentation: inside the region, each segment becomes the "
                "model's result, within the editable area and intensity range and with the overwrite setting of "
                "the masking section; outside nothing changes. A segment per model label (a segment from an "
                "earlier run with the same label value is reused), or the selected segment filled with one label. "
                "Undo reverts it.</li></ul>")

    # -- options ----------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.modelComboBox = qt.QComboBox()
        self.modelComboBox.toolTip = "Installed AutoSeg models (install them in the AutoSeg module)."
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelComboBox)
        self.inputsFrame = qt.QFrame()
        self.inputsLayout = qt.QFormLayout(self.inputsFrame)
        self.inputsLayout.setContentsMargins(0, 0, 0, 0)
        self.scriptedEffect.addOptionsWidget(self.inputsFrame)
        self.fastCheckBox = qt.QCheckBox("Fast (less accurate)")
        self.fastCheckBox.toolTip = "Fewer folds, no mirroring, a larger sliding-window step."
        self.scriptedEffect.addOptionsWidget(self.fastCheckBox)
        self.regionComboBox = qt.QComboBox()
        for text, value in REGION_CHOICES:
            self.regionComboBox.addItem(text, value)
        self.scriptedEffect.addLabeledOptionsWidget("Region:", self.regionComboBox)
        self.roiSelector = slicer.qMRMLNodeComboBox()
        self.roiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.roiSelector.noneEnabled = True
        self.roiSelector.addEnabled = False
        self.roiSelector.removeEnabled = False
        self.roiSelector.setMRMLScene(slicer.mrmlScene)
        self.roiLabel = self.scriptedEffect.addLabeledOptionsWidget("ROI:", self.roiSelector)
        self.modeComboBox = qt.QComboBox()
        for text, value in MODE_CHOICES:
            self.modeComboBox.addItem(text, value)
        self.labelComboBox = qt.QComboBox()
        self.labelComboBox.toolTip = "The model label written into the selected segment."
        modeRow = qt.QHBoxLayout()
        modeRow.addWidget(self.modeComboBox)
        modeRow.addWidget(self.labelComboBox)
        self.scriptedEffect.addLabeledOptionsWidget("Apply to:", modeRow)
        self.previewButton = qt.QPushButton("Preview")
        self.previewButton.objectName = self.__class__.__name__ + "Preview"
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.objectName = self.__class__.__name__ + "Cancel"
        self.cancelButton.toolTip = "Stop the running model, or remove the preview."
        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Write the preview into the segmentation (masking settings apply)."
        buttons = qt.QHBoxLayout()
        for button in (self.previewButton, self.cancelButton, self.applyButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)

        self.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        for widget in (self.fastCheckBox,):
            widget.connect("toggled(bool)", self.updateMRMLFromGUI)
        for widget in (self.regionComboBox, self.modeComboBox, self.labelComboBox):
            widget.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.previewButton.connect("clicked()", self.onPreview)
        self.cancelButton.connect("clicked()", self.onCancel)
        self.applyButton.connect("clicked()", self.onApply)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Fast", 0)
        self.scriptedEffect.setParameterDefault("Region", effect_region.REGION_WHOLE)
        self.scriptedEffect.setParameterDefault("ApplyMode", MODE_LABELS)
        self.scriptedEffect.setParameterDefault("LabelValue", 1)
        self.scriptedEffect.setParameterDefault("Model", "")

    def activate(self):
        self.refreshModels()

    def logic(self) -> EffectLogic:
        folder = slicer.util.settingsValue(panel_widget.SETTINGS_MODELS_FOLDER, panel_widget.default_models_folder())
        if self._logic is None or str(self._logic.logic.models_dir) != str(folder):
            self._logic = EffectLogic(panel_widget.make_logic(folder))
        return self._logic

    @guarded("Listing the models")
    def refreshModels(self):
        self.models, problems = self.logic().logic.models()
        for problem in problems:
            log.warning(problem)
        was = self.modelComboBox.blockSignals(True)
        self.modelComboBox.clear()
        for m in self.models:
            self.modelComboBox.addItem(f"{m.name} {m.version}".strip(), str(m.path))
        index = self.modelComboBox.findData(self.scriptedEffect.parameter("Model"))
        self.modelComboBox.currentIndex = max(index, 0)
        self.modelComboBox.blockSignals(was)
        if not self.models:
            self.statusLabel.text = (f"No model installed in {self.logic().logic.models_dir}: install one in the "
                                     f"AutoSeg module.")
        self.onModelChanged()

    def currentModel(self):
        index = self.modelComboBox.currentIndex
        return self.models[index] if 0 <= index < len(self.models) else None

    @guarded("Choosing the model")
    def onModelChanged(self, *_):
        model = self.currentModel()
        while self.inputsLayout.rowCount():
            self.inputsLayout.removeRow(0)
        self.channel_selectors = []
        was = self.labelComboBox.blockSignals(True)
        self.labelComboBox.clear()
        if model is not None:
            self.scriptedEffect.setParameter("Model", str(model.path))
            self.modelComboBox.toolTip = model.summary()
            source = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
            volumes = [source] + [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                                  if n is not source and not n.IsA("vtkMRMLLabelMapVolumeNode")]
            defaults = self.logic().logic.default_inputs(model, [v for v in volumes if v is not None])
            self.inputsLayout.addRow(f"{model.channel_names[0]}:", qt.QLabel("the source volume"))
            for channel, default in zip(model.channel_names[1:], defaults[1:]):
                selector = slicer.qMRMLNodeComboBox()
                selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
                selector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]  # label maps are not model inputs
                selector.noneEnabled = True
                selector.addEnabled = False
                selector.removeEnabled = False
                selector.setMRMLScene(slicer.mrmlScene)
                selector.setCurrentNode(default)
                self.inputsLayout.addRow(f"{channel}:", selector)
                self.channel_selectors.append(selector)
            for name, value in model.foreground_labels:
                self.labelComboBox.addItem(f"{name} ({value})", value)
        self.labelComboBox.blockSignals(was)
        self.updateGUIFromMRML()

    def updateGUIFromMRML(self):
        if self._timer is None:
            return
        p = self.scriptedEffect
        for box, name in ((self.regionComboBox, "Region"), (self.modeComboBox, "ApplyMode")):
            was = box.blockSignals(True)
            box.currentIndex = max(box.findData(p.parameter(name)), 0)
            box.blockSignals(was)
        was = self.labelComboBox.blockSignals(True)
        self.labelComboBox.currentIndex = max(self.labelComboBox.findData(p.integerParameter("LabelValue")), 0)
        self.labelComboBox.blockSignals(was)
        was = self.fastCheckBox.blockSignals(True)
        self.fastCheckBox.checked = p.integerParameter("Fast") != 0
        self.fastCheckBox.blockSignals(was)
        self.roiSelector.visible = self.roiLabel.visible = p.parameter("Region") == effect_region.REGION_ROI
        self.labelComboBox.enabled = p.parameter("ApplyMode") == MODE_SELECTED
        running = self.preview_job is not None and self.preview_job.running
        preview = self.previewNode()
        self.previewButton.enabled = not running and self.currentModel() is not None
        self.cancelButton.enabled = running or preview is not None
        self.applyButton.enabled = not running and preview is not None
        if preview is not None:
            label = p.integerParameter("LabelValue") if p.parameter("ApplyMode") == MODE_SELECTED else None
            EffectLogic.show_only_label(preview, label)

    def updateMRMLFromGUI(self, *_):
        p = self.scriptedEffect
        p.setParameter("Fast", 1 if self.fastCheckBox.checked else 0)
        p.setParameter("Region", self.regionComboBox.currentData or effect_region.REGION_WHOLE)
        p.setParameter("ApplyMode", self.modeComboBox.currentData or MODE_LABELS)
        if self.labelComboBox.currentData is not None:
            p.setParameter("LabelValue", int(self.labelComboBox.currentData))

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # nothing to paint: keep the normal cursor

    def sourceVolumeNodeChanged(self):
        self.onModelChanged()  # the first input is the source volume; re-guess the others

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        """Remember the slice view last used ("around the current view"); never consumes the event."""
        if viewWidget is not None and viewWidget.className() == "qMRMLSliceWidget":
            sliceWidget = viewWidget
            self.last_slice_node = sliceWidget.mrmlSliceNode()
        return False

    # -- preview ----------------------------------------------------------------------------
    def previewNode(self):
        p = self.scriptedEffect
        node = p.nodeReference(PREVIEW_REFERENCE_ROLE)
        if node is not None and p.parameterDefined(PREVIEW_OWNER_PARAMETER) and \
                p.parameter(PREVIEW_OWNER_PARAMETER) != EFFECT_NAME:
            return None  # another effect's preview (Grow from seeds, Local threshold ...)
        return node

    def removePreview(self):
        node = self.previewNode()
        if node is not None:
            self.scriptedEffect.setCommonNodeReference(PREVIEW_REFERENCE_ROLE, None)
            self.scriptedEffect.setCommonParameter(PREVIEW_OWNER_PARAMETER, "")
            self.logic().remove_preview(node)

    def currentSliceNode(self):
        if self.last_slice_node is not None and self.last_slice_node.GetScene() is not None:
            return self.last_slice_node
        layoutManager = slicer.app.layoutManager()  # a qSlicerLayoutManager
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager is not None else None
        return sliceWidget.mrmlSliceNode() if sliceWidget is not None else None

    def recover(self):
        restore_cursor()
        if self.preview_job is None or not self.preview_job.running:
            self._timer.stop()
            self.progressBar.visible = False
        self.updateGUIFromMRML()

    @guarded("AutoSeg preview")
    def onPreview(self):
        editor = self.scriptedEffect.parameterSetNode()
        segmentation, source = editor.GetSegmentationNode(), editor.GetSourceVolumeNode()
        if source is None:
            raise AutoSegError("Select the source volume in the Segment Editor first.")
        panel = slicer.modules.autoseg.widgetRepresentation().self().panel
        if not panel.ensureDependencies():
            return
        p = self.scriptedEffect
        region = p.parameter("Region")
        box = self.logic().region_box(region, source, self.roiSelector.currentNode(),
                                      self.currentSliceNode() if region == effect_region.REGION_VIEW else None)
        self.removePreview()
        volumes = [source] + [s.currentNode() for s in self.channel_selectors]
        self.preview_job = self.logic().start_preview(self.currentModel(), volumes, segmentation,
                                                      fast=p.integerParameter("Fast") != 0, box=box, polling=True)
        for note in self.preview_job.job.prepared.notes:
            log.warning(note)
        self.progressBar.value = 0
        self.progressBar.visible = True
        self.statusLabel.text = "Running the model ..."
        self._timer.start()
        self.updateGUIFromMRML()

    @guarded("Following the AutoSeg preview")
    def _poll(self):
        job = self.preview_job
        if job is None:
            self._timer.stop()
            return
        for event in job.job.runner.poll_events():
            self.onEvent(event)
        if job.running or job.job.runner.result is None:
            return
        self._timer.stop()
        self.progressBar.visible = False
        try:
            preview = self.logic().finish_preview(job)
        except AutoSegError as exc:
            self.preview_job = None
            self.statusLabel.text = "Failed; the segmentation was not changed."
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg")
            return
        self.scriptedEffect.setCommonNodeReference(PREVIEW_REFERENCE_ROLE, preview)
        self.scriptedEffect.setCommonParameter(PREVIEW_OWNER_PARAMETER, EFFECT_NAME)
        self.statusLabel.text = "Preview ready: Apply writes it, Cancel removes it."
        self.updateGUIFromMRML()

    def onEvent(self, event):
        kind = event.get("event")
        if kind == "progress":
            total = max(int(event.get("total") or 1), 1)
            self.progressBar.value = int(100 * int(event.get("current") or 0) / total)
        elif kind in ("stage", "estimate"):
            self.statusLabel.text = str(event.get("message", ""))
        elif kind == "error":
            log.error(event.get("message"))

    @guarded("AutoSeg cancel")
    def onCancel(self):
        job = self.preview_job
        if job is not None and job.running:
            self.logic().cancel(job, wait=False)
            self.statusLabel.text = "Cancelled; the segmentation was not changed."
        else:
            self.statusLabel.text = ""
        self.preview_job = None
        self._timer.stop()
        self.progressBar.visible = False
        self.removePreview()
        self.updateGUIFromMRML()

    @guarded("AutoSeg apply")
    def onApply(self):
        preview = self.previewNode()
        if preview is None:
            raise AutoSegError("Nothing to apply: run Preview first.")
        editor_node = self.scriptedEffect.parameterSetNode()
        editor = ScriptedEffectEditor(self.scriptedEffect, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        p = self.scriptedEffect
        with slicer.util.WaitCursor():
            editor.save_state_for_undo()
            edited = self.logic().apply_preview(
                preview, editor_node.GetSegmentationNode(), editor, editor.reference_geometry(),
                mode=p.parameter("ApplyMode"), selected_segment_id=editor_node.GetSelectedSegmentID(),
                label_value=p.integerParameter("LabelValue"))
        self.preview_job = None
        self.removePreview()
        self.statusLabel.text = f"Applied to {len(edited)} segment(s)."
        self.updateGUIFromMRML()
