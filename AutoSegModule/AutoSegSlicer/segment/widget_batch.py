"""The "Batch" section: segment every loaded volume, a folder of images or DICOM series with the chosen model in
one child process, with overall progress and Cancel; the results table; a selected row loads its case.

A section in the sense of `widget.SECTIONS`; the decisions are in `batch`, `batch_table` and `dicom_batch`
(tested headless). The model and the options (device, TTA, folds, fast, save uncertainty) are the Segment
panel's; an ROI is not used for a batch (it belongs to one volume).
"""
from __future__ import annotations

import dataclasses

import qt
import slicer

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.segment import batch, batch_table
from AutoSegSlicer.segment.options import MemoryWillNotFit, describe_estimate
from AutoSegSlicer.common.slots import guarded, restore_cursor

SOURCES = (("All loaded volumes", "volumes"), ("A folder of images", "folder"),
           ("DICOM series (DICOM database)", "dicom"))
SETTINGS_OUTPUT = "AutoSeg/BatchOutputFolder"


class BatchSection:
    def __init__(self, panel):
        self.panel = panel
        self.ui = panel.ui
        self.logic = None
        self.job = None
        self.table = None
        self.series = []        # [(uid, text)] in the DICOM list's order
        self._request = None    # what the last start was given (to rerun with --force)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)

    def setup(self):
        self.logic = batch.BatchLogic(self.panel.logic)
        for text, key in SOURCES:
            self.ui.batchSourceComboBox.addItem(text, key)
        self.ui.batchSourceComboBox.connect("currentIndexChanged(int)", self.onSourceChanged)
        self.ui.batchRunButton.connect("clicked(bool)", self.onRun)
        self.ui.batchTableView.connect("selectionChanged()", self.onRowSelected)
        self.ui.batchOutputPathLineEdit.currentPath = str(qt.QSettings().value(SETTINGS_OUTPUT, "") or "")
        self.onSourceChanged()

    def cleanup(self):
        self._timer.stop()
        if self.job is not None and self.job.running:
            self.logic.cancel(self.job, wait=False)

    def recover(self):
        restore_cursor()
        if self.job is not None and not self.job.running:
            self.job = None
        if self.job is None:
            self._timer.stop()
        self._setBusy(self.job is not None)

    def recoverFromPoll(self):
        self._timer.stop()
        job, self.job = self.job, None
        if job is not None:
            self.logic.cancel(job, wait=False)
        self.ui.batchStatusLabel.text = "Failed; the label maps written so far are in the output folder."
        self.recover()

    def _setBusy(self, busy: bool):
        self.ui.batchRunButton.text = "Cancel" if busy else "Segment all"
        for w in (self.ui.batchSourceComboBox, self.ui.batchInputPathLineEdit, self.ui.batchOutputPathLineEdit,
                  self.ui.batchDicomListWidget):
            w.enabled = not busy
        if not busy:
            self.ui.batchProgressBar.value = 0

    @guarded("Choosing what to segment")
    def onSourceChanged(self, *_):
        source = self.ui.batchSourceComboBox.currentData
        self.ui.batchInputLabel.visible = self.ui.batchInputPathLineEdit.visible = source == "folder"
        self.ui.batchDicomListWidget.visible = source == "dicom"
        if source == "dicom":
            self.listDicomSeries()

    @guarded("Listing the DICOM series")
    def listDicomSeries(self):
        from AutoSegSlicer.segment import dicom_batch

        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise AutoSegError("The DICOM database is not open: import the DICOM files in the DICOM module first.")
        self.series = dicom_batch.list_series(database)
        self.ui.batchDicomListWidget.clear()
        for _, text in self.series:
            self.ui.batchDicomListWidget.addItem(text)

    def _cases(self, model):
        source = self.ui.batchSourceComboBox.currentData
        if source == "volumes":
            return batch.cases_from_volumes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"), model), None
        if source == "folder":
            folder = str(self.ui.batchInputPathLineEdit.currentPath or "")
            if not folder:
                raise AutoSegError("Choose the folder of images to segment.")
            return batch.cases_from_folder(folder, model), folder
        from AutoSegSlicer.segment import dicom_batch

        if not self.series:
            self.listDicomSeries()
            raise AutoSegError("Select the DICOM series to segment in the list, then click 'Segment all' again.")
        rows = sorted({self.ui.batchDicomListWidget.row(item) for item in self.ui.batchDicomListWidget.selectedItems()})
        return dicom_batch.cases_from_dicom(slicer.dicomDatabase, [self.series[r][0] for r in rows], model), None

    @guarded("Batch segmentation")
    def onRun(self):
        if self.job is not None and self.job.running:
            self.logic.cancel(self.job, wait=False)
            self._timer.stop()
            self.job = None
            self._setBusy(False)
            self.ui.batchStatusLabel.text = "Cancelled; the label maps written so far are in the output folder."
            return
        model = self.panel.currentModel()
        if model is None:
            raise AutoSegError("Choose a model in the Segment section first.")
        output = str(self.ui.batchOutputPathLineEdit.currentPath or "")
        if not output:
            raise AutoSegError("Choose an output folder for the label maps.")
        options = self.panel.options(with_roi=False)
        with slicer.util.WaitCursor():
            cases, folder = self._cases(model)
        if not self.panel.ensureDependencies():
            return
        qt.QSettings().setValue(SETTINGS_OUTPUT, output)
        self._request = (model, cases, output, options, folder)
        self._start(*self._request)

    def _start(self, model, cases, output, options, folder):
        with slicer.util.WaitCursor():
            self.job = self.logic.start(model, cases, output, options, input_folder=folder, polling=True)
        self.panel.log(f"Batch: {len(cases)} case(s) with '{model.name}' into {output}")
        self.ui.batchStatusLabel.text = f"0 of {len(cases)} cases done"
        self._setBusy(True)
        self._timer.start()

    @guarded("Following the batch segmentation", recover="recoverFromPoll")
    def _poll(self):
        if self.job is None:
            self._timer.stop()
            return
        total = len(self.job.cases)
        for event in self.logic.poll_events(self.job):
            kind = event.get("event")
            if kind == "case":
                line = f"{event.get('case')}: {event.get('status')}"
                self.panel.log(line + (f" ({event.get('error')})" if event.get("error") else ""),
                               "info" if event.get("status") != "failed" else "warning")
                self.ui.batchStatusLabel.text = f"{len(self.job.rows)} of {total} cases done; last: {line}"
            elif kind == "estimate":
                self.ui.batchStatusLabel.text = describe_estimate(event)
        self.ui.batchProgressBar.value = int(100 * self.job.progress())
        if self.job.running or self.job.runner.result is None:
            return
        self._timer.stop()
        job, self.job = self.job, None
        self._setBusy(False)
        try:
            self.table = self.logic.finish(job, table_node=self.table if _in_scene(self.table) else None)
        except MemoryWillNotFit as exc:
            if self.panel.prompt(exc.question()):
                model, cases, output, options, folder = self._request
                self._start(model, cases, output, dataclasses.replace(options, force=True), folder)
            return
        rows = batch_table.table_rows(self.table)
        failed = sum(r.get("status") == "failed" for r in rows)
        self.ui.batchTableView.setMRMLTableNode(self.table)
        self.ui.batchStatusLabel.text = (f"Done: {len(rows) - failed} segmented, {failed} failed (see the Error "
                                         f"column). Select a row to load the case.")

    @guarded("Loading the case")
    def onRowSelected(self):
        if self.table is None:
            return
        indexes = self.ui.batchTableView.selectionModel().selectedIndexes()
        if not indexes:
            return
        case = str(indexes[0].sibling(indexes[0].row(), 0).data())
        with slicer.util.WaitCursor():
            loaded = batch_table.load_case(slicer.mrmlScene, self.table, case)
        slicer.util.setSliceViewerLayers(background=loaded.volume, fit=True)
        self.panel.ui.outputSegmentationSelector.setCurrentNode(loaded.segmentation)
        for section in self.panel.sections:
            if hasattr(section, "showCase"):
                section.showCase(loaded.uncertainty, loaded.volume)


def _in_scene(node) -> bool:
    return node is not None and node.GetScene() is not None
