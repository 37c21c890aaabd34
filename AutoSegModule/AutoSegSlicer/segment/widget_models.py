"""The Segment section's model choice (Qt wiring): the models folder, the model list, adding a model, one
input selector per model channel, and the device list.

`ModelsMixin` is a base class of `widget.AutoSegPanel` (it uses the panel's ``ui``, ``logic``, ``log``,
``setBusy``, ``_timer``, ``_parameterNode`` and ``sections``); what it decides is in the Qt-free
`logic.AutoSegLogic` (``models``, ``default_inputs``, ``start_add_model``) and `common.parameters`.
"""
from __future__ import annotations

from pathlib import Path

import qt
import slicer

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import dependencies, parameters
from AutoSegSlicer.common.slots import guarded
from AutoSegSlicer.common.widget import SETTINGS_MODELS_FOLDER


class ModelsMixin:
    """The model list and the input selectors of `widget.AutoSegPanel`."""

    def refreshModels(self, select_path=None):
        self.models, problems = self.logic.models()
        combo = self.ui.modelComboBox
        previous = select_path or combo.currentData
        combo.blockSignals(True)
        combo.clear()
        for m in self.models:
            combo.addItem(f"{m.name} {m.version}".strip(), str(m.path))
            combo.setItemData(combo.count - 1, m.summary(), qt.Qt.ToolTipRole)
        combo.blockSignals(False)
        if previous:
            index = combo.findData(str(previous))
            if index >= 0:
                combo.setCurrentIndex(index)
        for p in problems:
            self.log(p, "warning")
        if not self.models:
            self.ui.modelInfoLabel.text = (f"No model installed in {self.logic.models_dir}. "
                                           f"Use 'Add model...' to install one.")
        self.onModelChanged()
        for section in self.sections:
            if hasattr(section, "onModelsChanged"):
                section.onModelsChanged()

    def currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self.models[index] if 0 <= index < len(self.models) else None

    @guarded("Choosing the model")
    def onModelChanged(self, *_):
        """Show the model's inputs. The selectors are rebuilt only when the model (or its channels) changed,
        so a refresh of the model list keeps what the user chose; new selectors start from the inputs stored
        on the parameter node, then from `AutoSegLogic.default_inputs`."""
        model = self.currentModel()
        key = (str(model.path), tuple(model.channel_names)) if model is not None else None
        if model is not None:
            self.ui.modelInfoLabel.text = model.summary()
        if key is not None and key == self._selectors_key and self.input_selectors:
            self._updateButtons()
            return
        self._selectors_key = key
        layout = self.ui.inputsFormLayout
        for label, selector in self.input_selectors:
            layout.removeWidget(label)
            layout.removeWidget(selector)
            label.deleteLater()
            selector.deleteLater()
        self.input_selectors = []
        if model is None:
            self._updateButtons()
            return
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")
                   and not v.GetAttribute("AutoSeg.Uncertainty")]   # label maps, uncertainty: never inputs
        defaults = parameters.initial_inputs(self._mrmlParameterNode(), len(model.channel_names),
                                             self.logic.default_inputs(model, volumes))
        for channel, default in zip(model.channel_names, defaults):
            label = qt.QLabel(f"{channel}:")
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]  # label maps are not model inputs
            selector.selectNodeUponCreation = False
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.noneEnabled = True
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip(f"Volume for the model input '{channel}'")
            selector.setCurrentNode(default)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
            layout.addRow(label, selector)
            self.input_selectors.append((label, selector))
        self.onInputChanged()

    @guarded("Choosing an input volume")
    def onInputChanged(self, *_):
        """Remember the chosen inputs on the parameter node (saved with the scene), then update the buttons."""
        parameters.store_inputs(self._mrmlParameterNode(), self.inputVolumes())
        self._updateButtons()

    @guarded("Changing the models folder")
    def onModelsFolderEdited(self, path):
        """Typing or browsing: the folder is applied once the path has stayed the same for a moment."""
        self._folder_timer.start()

    @guarded("Changing the models folder")
    def applyModelsFolder(self):
        path = str(self.ui.modelsFolderPathLineEdit.currentPath or "")
        if not path or path == self._applied_models_folder:
            return
        self._applied_models_folder = path
        qt.QSettings().setValue(SETTINGS_MODELS_FOLDER, path)
        self.logic.models_dir = Path(path)
        self.refreshModels()

    @guarded("Adding the model")
    def onAddModelFolder(self):
        source = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     "Model folder or nnU-Net results folder")
        if source:
            self.addModel(source)

    @guarded("Adding the model")
    def onAddModelArchive(self):
        source = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Model archive", "",
                                                "Model archives (*.zip *.tar.gz *.tgz *.autoseg)")
        if source:
            self.addModel(source)

    def addModel(self, source):
        if not self.ensureDependencies():
            return
        self.log(f"Installing model from {source} ...")
        try:
            self._add_model_runner = self.logic.start_add_model(source, on_event=None, on_finished=None)
        except AutoSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg")
            return
        self.setBusy(True)
        self._timer.start()

    @guarded("Listing the devices")
    def onDetectDevices(self):
        with slicer.util.WaitCursor():
            devices, problem = dependencies.list_devices(self.logic.python_executable)
        current = self.ui.deviceComboBox.currentData
        self.ui.deviceComboBox.clear()
        for dev, label in devices:
            self.ui.deviceComboBox.addItem(label, dev)
        index = self.ui.deviceComboBox.findData(current)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        if problem:
            self.log(problem, "warning")
