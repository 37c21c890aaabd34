"""The "Train / fine-tune" section of the AutoSeg panel: Qt wiring only; the decisions are in
`logic.TrainingLogic` (tested headless against slicer-core).

Registered in `segment.widget.SECTIONS` as ``"AutoSegSlicer.train.widget:TrainingSection"``. Its widgets are in
Resources/UI/AutoSegTraining.ui (kept as ``self.form``, apart from the panel's ``ui``), added below the
panel's sections. A QTimer drives `TrainingJob.poll` so that curves and tables change on the GUI thread.
Every slot is wrapped by `slots.guarded` (a message and `recover()` whatever it raises).
``qt`` and ``slicer`` are imported inside the methods, so this file imports headless (Testing/slicer/
test_training_ui.py drives the section with stand-in widgets).
"""
from __future__ import annotations

import logging
from pathlib import Path

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import storage
from AutoSegSlicer.common.slots import guarded, restore_cursor
from AutoSegSlicer.train.logic import TrainingLogic, UnfinishedTrainingError
from AutoSegSlicer.train.options import MODES, TooFewCasesError, TrainingOptions
from AutoSegSlicer.train.partial import MODES as UNANNOTATED_MODES
from AutoSegSlicer.train.partial import add_partial_case

log = logging.getLogger(__name__)

SETTINGS_DATASET = "AutoSeg/TrainingDataset"


def resumable_names(states) -> list:
    """One line per resumable training: name, kind, steps done, work folder."""
    return [f"{s.options.model_name} ({s.kind}, {sum(st.status == 'done' for st in s.steps)}/{len(s.steps)} steps "
            f"done) - {s.work}" for s in states]


def choose_resumable(states, ask):
    """The state the user picked: ``ask(names)`` returns the chosen name, or None when the dialog was
    cancelled (then None: nothing is resumed)."""
    names = resumable_names(states)
    choice = ask(names) if names else None
    return states[names.index(choice)] if choice in names else None


class TrainingSection:
    """The training section; ``panel`` is the `widget.AutoSegPanel`."""

    def __init__(self, panel):
        import qt
        self.panel = panel
        self.form = None
        self.widget = None
        self.logic = None
        self.job = None
        self._verify_runner = None
        self._verify_events = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)

    # -- set-up ------------------------------------------------------------------------------
    def setup(self):
        import slicer
        self.widget = slicer.util.loadUI(self.panel.module_widget.resourcePath("UI/AutoSegTraining.ui"))
        self.panel.module_widget.layout.addWidget(self.widget)
        self.form = slicer.util.childWidgetVariables(self.widget)
        self.widget.setMRMLScene(slicer.mrmlScene)
        base = self.panel.logic
        from AutoSegSlicer.common.widget import app_local_data

        runs = slicer.util.settingsValue(storage.SETTINGS_TRAINING_FOLDER,
                                         str(storage.default_training_folder(app_local_data())))
        self.logic = TrainingLogic(slicer.mrmlScene, base.models_dir, base.python_executable,
                                   work_root=Path(runs), pythonpath=base.pythonpath)
        self.form.trainingRunsPathLineEdit.currentPath = runs
        self.form.trainingRunsPathLineEdit.connect("currentPathChanged(QString)", self.onTrainingRunsFolderChanged)
        for mode in MODES:
            self.form.modeComboBox.addItem(mode, mode)
        for dev in ("auto", "cuda", "mps", "cpu"):
            self.form.trainingDeviceComboBox.addItem(dev, dev)
        for mode, text in zip(UNANNOTATED_MODES, ("outside drawn segments", "slices without segments")):
            self.form.unannotatedModeComboBox.addItem(text, mode)
        self.form.datasetPathLineEdit.currentPath = slicer.util.settingsValue(SETTINGS_DATASET, "")
        self.form.datasetPathLineEdit.connect("currentPathChanged(QString)", self.onDatasetChanged)
        self.form.verifyButton.connect("clicked(bool)", self.onVerify)
        self.form.startTrainingButton.connect("clicked(bool)", self.onStart)
        self.form.resumeTrainingButton.connect("clicked(bool)", self.onResume)
        self.form.openLogButton.connect("clicked(bool)", self.onOpenLog)
        self.form.addPartialCaseButton.connect("clicked(bool)", self.onAddPartialCase)
        self.form.fineTuneCheckBox.connect("toggled(bool)", self.onFineTuneToggled)
        self.onDatasetChanged(self.form.datasetPathLineEdit.currentPath)
        self.refreshResumable()

    def cleanup(self):
        self._timer.stop()
        if self._verify_runner is not None:
            self._verify_runner.cancel()
        if self.job is not None and self.job.running:
            self.job.cancel()  # the child must not outlive Slicer; the run stays resumable

    def onStateChanged(self, busy: bool, segmentation):
        """The panel's state: a case can be added while a segmentation is selected and nothing runs."""
        self.form.addPartialCaseButton.enabled = segmentation is not None and not busy

    def onModelsChanged(self):
        self.logic.models_dir = Path(self.panel.logic.models_dir)
        self.onFineTuneToggled(self.form.fineTuneCheckBox.checked)

    # -- dataset -----------------------------------------------------------------------------
    def datasetPath(self) -> str:
        return str(self.form.datasetPathLineEdit.currentPath or "")

    @guarded("Choosing the dataset")
    def onDatasetChanged(self, path):
        import qt
        qt.QSettings().setValue(SETTINGS_DATASET, path)
        if not path:
            self.form.datasetSummaryLabel.text = "Choose a dataset folder."
            return
        summary = self.logic.summarize(path)
        self.form.datasetSummaryLabel.text = summary.text()
        if summary.ok and not self.form.modelNameLineEdit.text:
            self.form.modelNameLineEdit.text = summary.name

    @guarded("Changing the training runs folder")
    def onTrainingRunsFolderChanged(self, path):
        """Where resumable training runs are kept (the data folder by default, see `storage`)."""
        import qt
        if not path or self.job is not None:
            return
        qt.QSettings().setValue(storage.SETTINGS_TRAINING_FOLDER, path)
        self.logic.work_root = Path(path)
        self.refreshResumable()

    @guarded("Verifying the dataset")
    def onVerify(self):
        import slicer
        if self._verify_runner is not None:
            return
        try:
            self._verify_runner = self.logic.start_verify(self.datasetPath())
        except (AutoSegError, OSError) as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg training")
            return
        self._verify_events = []
        self.form.verifyButton.enabled = False
        self.form.trainingMessagesTextEdit.clear()
        self.message(f"Verifying {self.datasetPath()} ...")
        self._timer.start()

    def _poll_verify(self):
        runner = self._verify_runner
        self._verify_events += runner.poll_events()
        if runner.result is None:
            return
        self._verify_runner = None
        self.form.verifyButton.enabled = True
        ok, errors, warnings = self.logic.verify_messages(self._verify_events, runner.result)
        for line in errors:
            self.message(line, "error")
        for line in warnings:
            self.message(line, "warning")
        self.message("Dataset OK." if ok else "The dataset has problems (above); training would not start.")

    @guarded("Choosing fine-tuning")
    def onFineTuneToggled(self, checked):
        model = self.panel.currentModel()
        if checked and model is not None:
            self.form.modelNameLineEdit.text = model.name
            self.form.startTrainingButton.text = f"Fine-tune '{model.name}'"
        else:
            self.form.startTrainingButton.text = "Start training"

    # -- running -----------------------------------------------------------------------------
    def options(self, **changes) -> TrainingOptions:
        budget = float(self.form.budgetSpinBox.value)
        epochs = int(self.form.epochsSpinBox.value)
        values = dict(model_name=self.form.modelNameLineEdit.text.strip(),
                      mode=self.form.modeComboBox.currentData or "quick",
                      epochs=epochs or None, time_budget_minutes=budget or None,
                      device=self.form.trainingDeviceComboBox.currentData or "auto")
        values.update(changes)
        return TrainingOptions(**values)

    @guarded("Training")
    def onStart(self):
        import slicer
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.finish()
            return
        if not self.panel.ensureDependencies(training=True):
            return
        try:
            self._start(self.options())
        except UnfinishedTrainingError as exc:
            title = "AutoSeg training"
            if slicer.util.confirmYesNoDisplay(f"{exc}\n\nResume it?", windowTitle=title):
                with slicer.util.tryWithErrorDisplay("Training could not be resumed."):
                    self._follow(self.logic.resume(exc.work))
            elif slicer.util.confirmYesNoDisplay(f"Discard the unfinished training in {exc.work} (its checkpoints are "
                                                 f"deleted) and start a new one?", windowTitle=title):
                with slicer.util.tryWithErrorDisplay("Training could not start."):
                    self.logic.discard(exc.work)
                    self._start(self.options())
        except TooFewCasesError as exc:
            if slicer.util.confirmYesNoDisplay(f"{exc}\n\nTrain a single fold on all cases instead?",
                                               windowTitle="AutoSeg training"):
                with slicer.util.tryWithErrorDisplay("Training could not start."):
                    self._start(exc.suggestion)
        except AutoSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="AutoSeg training")

    def _start(self, options: TrainingOptions):
        dataset = self.datasetPath()
        if self.form.fineTuneCheckBox.checked:
            model = self.panel.currentModel()
            if model is None:
                raise AutoSegError("Fine-tuning needs a model: select one in the Segment section.")
            job = self.logic.start_finetune(model, dataset, options)
        else:
            job = self.logic.start_training(dataset, options)
        self._follow(job)

    @guarded("Resuming the training")
    def onResume(self):
        import qt
        import slicer
        states = self.logic.resumable()
        if not states:
            self.refreshResumable()
            return

        def ask(names):
            # A dialog object, not QInputDialog.getItem: getItem returns the current item on Cancel too (its
            # `ok` out-argument is what tells them apart), so Cancel would resume the first run.
            dialog = qt.QInputDialog(slicer.util.mainWindow())
            dialog.setWindowTitle("Resume training")
            dialog.setLabelText("Unfinished training:")
            dialog.setComboBoxItems(names)
            dialog.setComboBoxEditable(False)
            return dialog.textValue() if dialog.exec_() == qt.QDialog.Accepted else None

        state = choose_resumable(states, ask)
        if state is not None:
            self._follow(self.logic.resume(state.work))

    def _follow(self, job):
        import slicer
        self.job = job
        self.form.trainingMessagesTextEdit.clear()
        self.form.startTrainingButton.text = "Cancel"
        self.form.openLogButton.enabled = True
        self.form.resumeTrainingButton.enabled = False
        if job.curves is not None:
            try:
                slicer.modules.plots.logic().ShowChartInLayout(job.curves.chart)
            except AttributeError:  # no Plots module (custom Slicer builds)
                pass
        self._timer.start()

    def recover(self):
        """After a slot failed: no wait cursor; buttons match what really runs; the timer runs only if needed."""
        restore_cursor()
        running = self.job is not None and self.job.running
        self.form.verifyButton.enabled = self._verify_runner is None
        if not running:
            self.job = None
            self.form.startTrainingButton.text = "Start training"
            self.refreshResumable()
            if self._verify_runner is None:
                self._timer.stop()

    def recoverFromPoll(self):
        """Following the run failed: stop it (it stays resumable) rather than leave an unwatched child."""
        self._timer.stop()
        runner, self._verify_runner = self._verify_runner, None
        if runner is not None:
            runner.cancel()
        if self.job is not None and self.job.running:
            self.job.cancel()
        self.form.trainingStatusLabel.text = "Stopped: see the message."
        self.recover()

    @guarded("Following the training", recover="recoverFromPoll")
    def _poll(self):
        if self._verify_runner is not None:
            self._poll_verify()
        if self.job is None:
            if self._verify_runner is None:
                self._timer.stop()
            return
        running = self.job.poll()
        status = self.job.status
        self.form.trainingStatusLabel.text = status.text()
        if status.epoch is not None and status.epochs:
            self.form.trainingProgressBar.maximum = int(status.epochs)
            self.form.trainingProgressBar.value = int(status.epoch)
        while self.job.messages:
            level, text = self.job.messages.pop(0)
            self.message(text, level)
        if not running:
            self.finish()

    def finish(self):
        import slicer
        if self._verify_runner is None:
            self._timer.stop()
        job, self.job = self.job, None
        self.onFineTuneToggled(self.form.fineTuneCheckBox.checked)
        self.refreshResumable()
        if job is None:
            return
        for level, text in job.messages:
            self.message(text, level)
        if job.error:
            self.form.trainingStatusLabel.text = "Stopped: see the messages below."
            slicer.util.errorDisplay(job.error, windowTitle="AutoSeg training")
        elif job.cancelled:
            self.form.trainingStatusLabel.text = "Cancelled; press Resume to continue."
        elif job.model_path is not None:
            self.form.trainingProgressBar.value = self.form.trainingProgressBar.maximum
            self.form.trainingStatusLabel.text = f"Done: model installed in {job.model_path}."
            self.panel.refreshModels(select_path=job.model_path)
            if job.report_table is not None:
                slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(job.report_table.GetID())
                slicer.app.applicationLogic().PropagateTableSelection()

    def refreshResumable(self):
        states = self.logic.resumable()
        self.form.resumeTrainingButton.enabled = bool(states) and self.job is None
        self.form.resumeTrainingButton.toolTip = (
            "Continue an interrupted training: " + ", ".join(s.options.model_name for s in states)
            if states else "No unfinished training.")

    @guarded("Opening the training log")
    def onOpenLog(self):
        import qt
        work = self.job.state.work if self.job is not None else None
        if work is None:
            states = self.logic.resumable()
            work = states[0].work if states else None
        if work is not None and (work / "autoseg_training.log").is_file():
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(work / "autoseg_training.log")))

    def message(self, text: str, level: str = "info"):
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.form.trainingMessagesTextEdit.appendPlainText(prefix + text)

    # -- partial annotations -----------------------------------------------------------------
    @guarded("Adding the case")
    def onAddPartialCase(self):
        import slicer
        seg = self.panel.currentSegmentation()
        dataset = self.datasetPath()
        if not dataset:
            slicer.util.errorDisplay("Choose the dataset folder first.", windowTitle="AutoSeg training")
            return
        volumes = [v for v in self.panel.inputVolumes() if v is not None]
        if not volumes and seg is not None:
            volumes = [self.panel.logic.source_volume(seg)]
        model = self.panel.currentModel()
        names = list(model.channel_names) if model is not None and len(model.channel_names) == len(volumes) else None
        with slicer.util.tryWithErrorDisplay("Could not add the case.", waitCursor=True):
            case, written, labels = add_partial_case(seg, volumes, dataset,
                                                     mode=self.form.unannotatedModeComboBox.currentData,
                                                     channel_names=names)
            self.message(f"Added partially annotated case '{case}' (ignore label {labels['ignore']}): {written['label']}")
            self.onDatasetChanged(dataset)
