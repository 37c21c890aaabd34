"""The "Correct and export" section of the AutoSeg panel: Segment Editor, label export, training-set case.

A section in the sense of `widget.SECTIONS`: constructed with the panel, its buttons are in AutoSeg.ui.
The decisions are in `corrections.CorrectionLogic` (tested headless).
"""
from __future__ import annotations

import os
from pathlib import Path

import qt
import slicer

from AutoSegSlicer.common.slots import guarded, restore_cursor


class CorrectionsSection:
    def __init__(self, panel):
        self.panel = panel
        self.ui = panel.ui

    def setup(self):
        self.ui.correctButton.connect("clicked(bool)", self.onCorrect)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)

    def cleanup(self):
        pass

    def recover(self):
        """After a slot failed: no wait cursor, the buttons as the panel's state says."""
        restore_cursor()
        self.panel._updateButtons()

    def onStateChanged(self, busy: bool, segmentation):
        for w in (self.ui.correctButton, self.ui.exportButton, self.ui.addToTrainingSetButton):
            w.enabled = segmentation is not None and not busy

    @guarded("Opening the Segment Editor")
    def onCorrect(self):
        seg = self.panel.currentSegmentation()
        volume = self.panel.logic.source_volume(seg) if seg else None
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(seg)
        editor.setSourceVolumeNode(volume)

    @guarded("Exporting the labels")
    def onExport(self):
        seg = self.panel.currentSegmentation()
        volume = self.panel.logic.source_volume(seg) if seg else None
        start = str(Path(volume.GetStorageNode().GetFileName()).parent) if volume and volume.GetStorageNode() \
            and volume.GetStorageNode().GetFileName() else ""
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export labels", start,
                                              "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd)")
        if not path:
            return
        overwrite = False
        if os.path.exists(path):
            # Qt's dialog asks too on most platforms; the logic never overwrites without this flag.
            overwrite = slicer.util.confirmOkCancelDisplay(f"{path} exists. Overwrite it?")
            if not overwrite:
                return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            assignment = self.panel.logic.export_labels(seg, path, overwrite=overwrite)
            for w in assignment.warnings:
                self.panel.log(w, "warning")
            self.panel.log(f"Exported {path} (values: "
                           + ", ".join(f"{n}={v}" for n, v in zip(assignment.names, assignment.values)) + ")")
            if assignment.warnings:
                slicer.util.warningDisplay("\n".join(assignment.warnings), windowTitle="AutoSeg export")

    @guarded("Adding the case to the training set")
    def onAddToTrainingSet(self):
        seg = self.panel.currentSegmentation()
        folder = str(self.panel._parameterNode.datasetFolder or "")
        if not folder or folder == ".":
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Dataset folder (raw layout)")
            if not folder:
                return
            self.panel._parameterNode.datasetFolder = Path(folder)
        volumes = [v for v in self.panel.inputVolumes() if v is not None] or [self.panel.logic.source_volume(seg)]
        with slicer.util.tryWithErrorDisplay("Could not add the case.", waitCursor=True):
            case, written, assignment = self.panel.logic.add_to_training_set(
                seg, volumes, folder, case_name=self.panel._parameterNode.caseName or None)
            for w in assignment.warnings:
                self.panel.log(w, "warning")
            self.panel.log(f"Added case '{case}' to {folder}: {written['label']}")
            self.panel._parameterNode.caseName = ""
