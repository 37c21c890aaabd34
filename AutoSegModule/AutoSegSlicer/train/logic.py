"""Train and fine-tune from Slicer: the logic behind the Training panel.

`TrainingLogic` takes its collaborators (scene, models folder, the Python running AutoSegLib, a runner
factory, a work root), so it runs headless against slicer-core and in Slicer alike::

    logic = TrainingLogic(scene, models_dir, python_executable, work_root=...)
    summary = logic.summarize(dataset)                         # instant, for the panel
    job = logic.start_training(dataset, TrainingOptions("Liver", mode="quick"))
    while job.poll(): ...                                      # widget: from a QTimer; scripts: job.wait()
    job.model_path, job.report_table                           # installed model, cross-validation table

    job = logic.start_finetune(model, corrected_dataset, TrainingOptions("Liver"))   # a new version
    logic.resumable(); logic.resume(work)                      # after Cancel, a crash or closing Slicer

Checks made before anything starts: the dataset's structure (training does not start when it is broken;
the messages are shown), enough cases for the folds (`TooFewCasesError` offers a single fold), and for
fine-tuning the same labels and channel count as the model. The child's ``autoseg verify`` reads every
file as the run's first step.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, List, Optional

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.jsonfile import read_json
from AutoSegLib.io.work_folder import CHECKPOINT_LATEST, trained_folds
from AutoSegSlicer.common import models
from AutoSegSlicer.common.runner import ProcessRunner, autoseglib_command
from AutoSegSlicer.train.install import cv_report_table, install_model
from AutoSegSlicer.train.job import TrainingJob
from AutoSegSlicer.train.options import (DatasetSummary, TrainingOptions, check_finetune_compatible,
                                            resolve_folds, summarize_dataset)
from AutoSegSlicer.train.pipeline import (STATE_FILE, TrainingState, expand_train_steps, finetune_state,
                                             find_resumable, new_model_state, process_running)
from AutoSegSlicer.train.progress import TrainingCurves

log = logging.getLogger(__name__)


class UnfinishedTrainingError(AutoSegError):
    """A run with the same model name was interrupted after training had started; ``work`` is its folder
    (resume it with `TrainingLogic.resume` or delete it with `TrainingLogic.discard`)."""

    def __init__(self, message: str, work: Path):
        super().__init__(message)
        self.work = Path(work)


class TrainingLogic:
    """Start, follow, cancel and resume trainings; install their models.

    Parameters
    ----------
    scene : vtkMRMLScene or None
        Where the curves and report tables go (None: no nodes, e.g. a script).
    models_dir : path
        The module's models folder; finished models are installed there.
    python_executable : str
        Interpreter running ``-m AutoSegLib`` (``PythonSlicer`` in Slicer).
    pythonpath : str, optional
        Folder holding AutoSegLib, for the child's PYTHONPATH.
    work_root : path
        Parent of the runs' work folders (one sub-folder per model name).
    runner_factory : callable
        ``runner_factory(on_event=..., on_finished=..., pythonpath=...)`` -> `ProcessRunner`-like.
    """

    def __init__(self, scene, models_dir, python_executable: str, work_root, pythonpath: Optional[str] = None,
                 runner_factory: Callable = ProcessRunner):
        self.scene = scene
        self.models_dir = Path(models_dir)
        self.python_executable = str(python_executable)
        self.pythonpath = pythonpath
        self.work_root = Path(work_root)
        self.runner_factory = runner_factory

    # -- before starting ---------------------------------------------------------------------
    @staticmethod
    def summarize(dataset) -> DatasetSummary:
        """Cases, labels and channels of a dataset folder, with structural problems (no image read)."""
        return summarize_dataset(dataset)

    def start_verify(self, dataset):
        """Start ``autoseg verify DATASET`` in a child process; returns the runner (events queued for
        ``runner.poll_events``; pass them and ``runner.result`` to `verify_messages`)."""
        runner = self.runner_factory(on_event=None, pythonpath=self.pythonpath)
        runner.start(autoseglib_command(self.python_executable, "verify", [str(dataset)]))
        return runner

    @staticmethod
    def verify_messages(events: List[dict], result):
        """``(ok, errors, warnings)`` of a finished verify child: ``errors`` is its error message split in
        lines (one problem each), ``warnings`` its warning log events."""
        warnings = [str(e.get("message")) for e in events if e.get("event") == "log" and e.get("level") == "warning"]
        errors = [] if result.ok else [ln for ln in (result.error or result.failure_message("verify")).splitlines()
                                       if ln.strip()]
        return result.ok, errors, warnings

    def verify(self, dataset, timeout: Optional[float] = None):
        """Blocking `start_verify`: returns ``(ok, errors, warnings)``."""
        runner = self.start_verify(dataset)
        result = runner.wait(timeout)
        if result is None:
            runner.cancel()
            raise AutoSegError(f"Verifying {dataset} did not finish within {timeout} s.")
        return self.verify_messages(runner.poll_events(), result)

    def work_dir(self, options: TrainingOptions) -> Path:
        from AutoSegSlicer.train.install import folder_name

        return self.work_root / folder_name(options.model_name)

    def _checked_summary(self, dataset) -> DatasetSummary:
        summary = summarize_dataset(dataset)
        if not summary.ok:
            raise DatasetError(f"{summary.path}: the dataset cannot be used for training; training was not "
                               f"started. Fix these problems first:", summary.errors)
        return summary

    def _fresh_work(self, options: TrainingOptions) -> Path:
        work = self.work_dir(options)
        state = None
        if (work / STATE_FILE).is_file():
            try:
                state = TrainingState.load(work)
            except AutoSegError:
                state = None  # unreadable: nothing to resume
        trained = bool(trained_folds(work, (CHECKPOINT_LATEST,)))
        if state is not None and not state.finished and trained:
            raise UnfinishedTrainingError(f"An unfinished training named '{options.model_name}' exists in {work}. "
                                          f"Resume it, discard it, or choose another model name.", work)
        if work.exists():
            # finished (its model is installed), unreadable, or stopped before any training: nothing to keep
            shutil.rmtree(work)
        return work

    # -- starting ----------------------------------------------------------------------------
    def plan_training(self, dataset, options: TrainingOptions) -> TrainingState:
        """The steps of training a new model, after the checks (nothing is started or written).

        Raises
        ------
        DatasetError
            The dataset's structure is broken (every problem listed).
        TooFewCasesError
            Folds 0-4 asked for with fewer than 5 cases (its ``suggestion`` trains fold 'all').
        """
        summary = self._checked_summary(dataset)
        folds = resolve_folds(options, summary.num_cases)
        return new_model_state(summary.path, self.work_dir(options), options, list(folds))

    def plan_finetune(self, model, dataset, options: TrainingOptions) -> TrainingState:
        """The steps of fine-tuning ``model`` (ModelInfo or folder) on ``dataset``.

        Raises
        ------
        AutoSegError
            Different label set or channel count, broken dataset, too few cases for the folds.
        """
        model = model if isinstance(model, models.ModelInfo) else models.read_model_info(model)
        summary = self._checked_summary(dataset)
        check_finetune_compatible(model, summary)
        if options.folds is None:
            wanted = tuple(f for f in model.folds) if options.mode == "full" else None
            if wanted is None or (summary.num_cases < 5 and any(f != "all" for f in wanted)):
                wanted = ("0",) if summary.num_cases >= 5 and "0" in model.folds else ("all",)
            options = TrainingOptions(**{**options.to_dict(), "folds": wanted})
        folds = resolve_folds(options, summary.num_cases)
        return finetune_state(summary.path, self.work_dir(options), options, list(folds), model)

    def start_training(self, dataset, options: TrainingOptions, on_event=None) -> TrainingJob:
        """Check, then start training a new model; returns the running `TrainingJob` (drive it with poll)."""
        state = self.plan_training(dataset, options)
        self._fresh_work(options)
        return self._start(state, on_event)

    def start_finetune(self, model, dataset, options: TrainingOptions, on_event=None) -> TrainingJob:
        """Check, then start fine-tuning ``model``; the result is installed as a new version (the old one
        is kept)."""
        state = self.plan_finetune(model, dataset, options)
        self._fresh_work(options)
        return self._start(state, on_event)

    def _start(self, state: TrainingState, on_event) -> TrainingJob:
        state.work.mkdir(parents=True, exist_ok=True)
        state.save()
        summary = summarize_dataset(state.dataset)
        names = summary.output_names
        curves = TrainingCurves(self.scene, state.options.model_name, names) if self.scene is not None else None
        return TrainingJob(self, state, curves, on_event, names).start()

    # -- resuming ----------------------------------------------------------------------------
    def resumable(self) -> List[TrainingState]:
        """Unfinished runs in the work root (newest first): offer them when the module opens."""
        return find_resumable(self.work_root)

    def resume(self, work, on_event=None) -> TrainingJob:
        """Continue an unfinished run from its state file: finished steps are skipped, an interrupted
        training continues from its last checkpoint (``--resume``)."""
        state = TrainingState.load(work)
        if state.finished:
            raise AutoSegError(f"The training in {work} has finished; its model is in {state.model_path}.")
        for s in state.steps:
            if s.status == "running" and process_running(s.pid):
                raise AutoSegError(f"Step '{s.label}' of this training is still running (process {s.pid}, started "
                                   f"by a Slicer session that ended). Wait for it to finish or stop that process, "
                                   f"then resume.")
        for s in state.steps:
            if s.status != "done":
                s.status, s.pid = "pending", None
        return self._start(state, on_event)

    def discard(self, work) -> None:
        """Delete an unfinished run's work folder (checkpoints included)."""
        work = Path(work)
        if not (work / STATE_FILE).is_file():
            raise AutoSegError(f"{work} is not a training work folder (no {STATE_FILE}); nothing deleted.")
        shutil.rmtree(work)

    # -- in-process steps (called by TrainingJob) --------------------------------------------
    def run_in_process_step(self, job: TrainingJob, step) -> None:
        state = job.state
        if step.command == "expand":
            summary = expand_train_steps(state)
            state.save()
            if summary:
                job.announce(summary)
        elif step.command == "prepare":
            self._prepare_finetune(state)
        elif step.command == "install":
            self._install(job)
        else:
            raise AutoSegError(f"unknown in-process step {step.command!r}")

    @staticmethod
    def _prepare_finetune(state: TrainingState) -> None:
        """The work folder of a fine-tuning: the new dataset's dataset.json, the model's plans and fingerprint
        (the network and normalisation must stay the model's): `autoseg plan --plans-from MODEL`'s function."""
        from AutoSegLib import api
        api.plan(state.dataset, state.work, plans_from=state.base_model)

    def _install(self, job: TrainingJob) -> None:
        state = job.state
        if state.kind == "finetune" and not (state.work / "inference.json").is_file():
            base_inf = Path(state.base_model) / "inference.json"
            trained = trained_folds(state.work)
            if base_inf.is_file():
                inference = read_json(base_inf, "the fine-tuned model's inference.json", expect=dict)
                confs = [c if isinstance(c, str) else c.get("name") for c in inference.get("configurations", [])]
                if confs and all(c in trained for c in confs):
                    # Same choice and post-processing as the model, on the folds this run trained.
                    inference["folds"] = {c: trained[c] for c in confs}
                    inference["notes"] = list(inference.get("notes") or []) + [
                        f"configuration choice and post-processing inherited from {state.base_model}"]
                    write_json(state.work / "inference.json", inference)
        extra = {"training": {"kind": state.kind, "dataset": str(state.dataset), "options": state.options.to_dict()}}
        what = "fine-tuned" if state.kind == "finetune" else "trained"
        path = install_model(state.work, self.models_dir, state.options.model_name,
                             description=f"{what} in 3D Slicer on {state.dataset.name}",
                             base_model=state.base_model, extra=extra)
        state.model_path = path
        job.model_path = path
        if self.scene is not None:
            job.report_table = cv_report_table(self.scene, path, state.options.model_name)
        job.messages.append(("info", f"Model '{state.options.model_name}' installed in {path}."))
