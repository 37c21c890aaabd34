"""One training run in progress: its steps run one after the other in child processes, driven by `poll`.

`TrainingJob.poll` (the widget calls it from a QTimer; `wait` loops on it) drains the current child's
events, updates the status line and the curves (scene changes on the caller's thread only), appends to
the run's log file, and when a child has exited starts the next step. In-process steps ("prepare",
"expand", "install") run inside `poll`. The state file is saved whenever a step's status changes, so a run
stopped at any point (Cancel, a crash, Slicer closed) can be resumed (pipeline.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, List, Optional

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.work_folder import fold_dir
from AutoSegSlicer.common.runner import RunResult, autoseglib_command
from AutoSegSlicer.train.pipeline import (DONE, FAILED, LOG_FILE, PENDING, RUNNING, Step, TrainingState,
                                             resume_args, train_budget_s)
from AutoSegSlicer.train.options import budget_per_training
from AutoSegSlicer.train.progress import TrainingCurves, TrainingStatus

log = logging.getLogger(__name__)

#: How a full disk reads in a message: the OS's words, and AutoSegLib's `WriteError` ("the disk is full",
#: "the disk quota is exceeded"), raised by its writers in the child and by the in-process model install.
_DISK_FULL = ("no space left", "enospc", "errno 28", "disk full", "disk quota exceeded", "the disk is full",
              "the disk quota is exceeded")


def is_disk_full(message: str) -> bool:
    text = (message or "").lower()
    return any(k in text for k in _DISK_FULL)


class TrainingJob:
    """A run being executed.

    Attributes
    ----------
    state : TrainingState
    status : TrainingStatus
        For the panel's status line (``status.text()``).
    curves : TrainingCurves or None
        Table/plot nodes (None without a scene).
    messages : list of (level, str)
        Warnings and errors worth showing (verification messages among them).
    error : str or None
        Why the run stopped, for the user; None while running or after success/cancel.
    cancelled, finished : bool
    model_path : Path or None
        The installed model, once the run has finished.
    report_table : vtkMRMLTableNode or None
        The cross-validation report.
    """

    def __init__(self, logic, state: TrainingState, curves: Optional[TrainingCurves],
                 on_event: Optional[Callable[[dict], None]] = None, label_names=()):
        self.logic = logic
        self.state = state
        self.curves = curves
        self.on_event = on_event
        self.label_names = list(label_names)
        budget = budget_per_training(state.options, max(1, len(state.train_steps())))
        self.status = TrainingStatus(budget_s=budget * 60 if budget is not None else None)
        self.messages: List[tuple] = []
        self.error: Optional[str] = None
        self.cancelled = False
        self.finished = False
        self.model_path: Optional[Path] = None
        self.report_table = None
        self.runner = None
        self._step: Optional[Step] = None
        self._result: Optional[RunResult] = None
        self._last_epoch: Optional[dict] = None
        self.log_path = state.work / LOG_FILE

    # -- driving -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return not (self.finished or self.cancelled or self.error is not None)

    def start(self) -> "TrainingJob":
        self.state.work.mkdir(parents=True, exist_ok=True)
        self._log(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.state.kind} '{self.state.options.model_name}' "
                  f"(dataset {self.state.dataset}, work {self.state.work})")
        self._advance()
        return self

    def poll(self) -> bool:
        """Handle what the child sent since the last call; start the next step when it has exited.
        Returns True while the run goes on."""
        if self.runner is not None:
            for event in self.runner.poll_events():
                self._handle(event)
            if self._result is not None:
                result, self._result = self._result, None
                self.runner = None
                self._step_finished(result)
        return self.running

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> bool:
        """Poll until the run ends (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def cancel(self) -> None:
        """Kill the running child (and its children); the step stays resumable. The scene is kept."""
        if self.runner is not None:
            self.runner.cancel()
            for event in self.runner.poll_events():
                self._handle(event)
            self.runner, self._result = None, None
        if self._step is not None and self._step.status == RUNNING:
            self._step.status, self._step.pid = PENDING, None
            self.state.save()
        self.cancelled = True
        self._log("=== cancelled")
        self._emit({"event": "log", "level": "warning", "message": "Training cancelled; it can be resumed."})

    # -- steps -------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Run in-process steps and start the next child step; mark the run finished after the last."""
        while True:
            step = self.state.next_step()
            if step is None:
                self.finished = True
                self._log("=== finished")
                return
            self._step = step
            index = self.state.steps.index(step) + 1
            self.status.start_step(step.label, index, len(self.state.steps))
            self._emit({"event": "stage", "stage": step.label, "message": f"step {index}/{len(self.state.steps)}"})
            self._log(f"--- step {index}/{len(self.state.steps)}: {step.label}")
            if not step.in_process:
                rest = self.state.steps[index:]
                trains = [s for s in rest if s.command == "train"]
                self.status.remaining_trainings = len(trains)
                self.status.later_budgets_s = [train_budget_s(s) for s in trains[1:]]
                try:
                    self._start_child(step)
                except OSError as exc:  # the interpreter is missing or cannot be executed
                    self.runner = None
                    self._fail(step, f"could not start {self.logic.python_executable} ({exc}). Check the "
                                     f"Python that runs AutoSeg (PythonSlicer in Slicer).")
                return
            try:
                self.logic.run_in_process_step(self, step)
            except AutoSegError as exc:
                self._fail(step, str(exc))
                return
            except Exception as exc:  # e.g. OSError while copying the model: never leave the run hanging
                log.exception("step %s failed", step.label)
                self._fail(step, f"{type(exc).__name__}: {exc}")
                return
            step.status = DONE
            self.state.save()

    def _start_child(self, step: Step) -> None:
        args = resume_args(step, self.state.work)
        if step.command == "train":
            if "--resume" in args and self.curves is not None:
                self.curves.load_log(fold_dir(self.state.work, step.configuration, step.fold) / "training_log.jsonl",
                                     step.configuration, step.fold)
            elif self.curves is not None:
                self.curves.table(step.configuration, step.fold)
        step.status = RUNNING
        self.state.save()
        self.runner = self.logic.runner_factory(on_event=None, on_finished=self._on_finished,
                                                pythonpath=self.logic.pythonpath)
        argv = autoseglib_command(self.logic.python_executable, step.command, args)
        self._log("$ " + " ".join(argv))
        self.runner.start(argv)
        step.pid = self.runner.pid
        self.state.save()

    def _on_finished(self, result: RunResult) -> None:  # called inside runner.poll_events
        self._result = result

    def _step_finished(self, result: RunResult) -> None:
        step = self._step
        step.pid = None
        if result.ok:
            step.status = DONE
            self.state.save()
            self._advance()
            return
        self._fail(step, result.error or result.failure_message(f"Step '{step.label}'"), result)

    def _fail(self, step: Step, message: str, result: Optional[RunResult] = None) -> None:
        step.status = FAILED
        self.state.save()
        if step.command == "verify":
            text = (f"The dataset {self.state.dataset} failed verification; training did not start. Fix these "
                    f"problems (or add/replace the cases) and start again:\n{message}")
        elif is_disk_full(message):
            text = self._disk_full_message(step, message)
        elif step.command == "train":
            ckpt = fold_dir(self.state.work, step.configuration, step.fold) / "checkpoint_latest.pt"
            kept = (f"The last saved checkpoint is kept ({ckpt}); press Resume to continue from it." if ckpt.is_file()
                    else "No epoch had finished, so there is no checkpoint to continue from.")
            text = f"Training {step.configuration} fold {step.fold} stopped: {message}\n{kept} Log: {self.log_path}"
        else:
            text = f"Step '{step.label}' failed: {message}\nLog: {self.log_path}"
        tail = [ln for ln in (result.log_tail if result is not None else []) if message not in ln]
        if tail and step.command != "verify":
            text += "\n\nLast lines of its output:\n" + "\n".join(tail[-10:])
        self.error = text
        self.messages.append(("error", text))
        self._log("=== failed: " + text)

    def _disk_full_message(self, step: Step, message: str) -> str:
        """The full disk named by the folder the step was writing: the models folder for the install, else
        the work folder."""
        import shutil

        if step.command == "install":
            where, folder, clean = "the models folder", Path(self.logic.models_dir), "old models"
        else:
            where, folder, clean = "the work folder", Path(self.state.work), "old work folders"
        try:
            free = shutil.disk_usage(folder).free / 2 ** 30
            free_s = f" ({free:.1f} GiB free now)"
        except OSError:
            free_s = ""
        kept = ""
        if step.command == "train":
            ckpt = fold_dir(self.state.work, step.configuration, step.fold) / "checkpoint_latest.pt"
            if ckpt.is_file():
                epoch = self._last_epoch.get("epoch") if self._last_epoch else None
                at = f" (after epoch {int(epoch) + 1})" if epoch is not None else ""
                kept = f" The last good checkpoint{at} is kept: {ckpt}."
        return (f"The disk holding {where} {folder} is full{free_s}: {message}\nTraining stopped."
                f"{kept} Free some disk space (or delete {clean}), then press Resume to continue.")

    # -- events ------------------------------------------------------------------------------
    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        self.status.update(event)
        if kind == "epoch":
            self._last_epoch = event
            if self.curves is not None:
                self.curves.add_epoch(event)
            self._log(f"[{event.get('configuration')} fold {event.get('fold')}] epoch {int(event.get('epoch', 0)) + 1}"
                      f"/{event.get('epochs')} train {event.get('train_loss')} val {event.get('val_loss')} "
                      f"dice {event.get('pseudo_dice')} ema {event.get('ema_pseudo_dice')}")
        elif kind == "log":
            level = event.get("level", "info")
            self._log(("" if level == "info" else level.upper() + ": ") + str(event.get("message", "")))
            if level == "warning" and not event.get("raw"):
                self.messages.append(("warning", str(event.get("message", ""))))
        elif kind == "error":
            self._log("ERROR: " + str(event.get("message", "")))
        elif kind == "stage":
            self._log(f"== {event.get('stage')}: {event.get('message', '')}")
        self._emit(event)

    def announce(self, message: str) -> None:
        """A message for the panel (status log) and the run's log file, e.g. what the budget plan will do."""
        self.messages.append(("info", message))
        self._log(message)
        self._emit({"event": "log", "level": "info", "message": message})

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("training event callback failed")

    def _log(self, line: str) -> None:
        # An append-only log read while it grows cannot be written atomically; it holds no data anything
        # depends on (the state file and checkpoints are written atomically).
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError:
            pass
