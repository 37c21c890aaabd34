"""The steps of a training run and their state on disk, so that a run interrupted (cancelled, crashed, Slicer
closed) can be resumed from where it stopped.

A run is a list of steps, each one ``python -m AutoSegLib <command> ...`` child process, or an in-process
step of the module ("prepare" for fine-tuning, "install" at the end)::

    new model:   verify -> fingerprint -> plan -> [expand] -> preprocess -c <the chosen configurations>
                 -> train <conf> <fold> ... -> find-best (full mode) -> install
    fine-tune:   verify -> prepare (the model's plans/fingerprint into the work folder)
                 -> preprocess -c <the model's configurations> -> train <conf> <fold> --init-from MODEL ...
                 -> find-best (5 folds) -> install

The steps after planning depend on the plans (which configurations exist), so they are added
("expanded") once plan is done; only the configurations that will be trained are preprocessed. verify
reads every case and reports every problem; the fingerprint then skips its own (identical) checks. The state lives in ``WORK/autoseg_training.json`` (written atomically after
every change of a step's status); a train step that was running when the run stopped is restarted with
``--resume`` (the trainer continues from ``checkpoint_latest.pt``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.jsonfile import read_json
from AutoSegLib.io.work_folder import fold_dir
from AutoSegSlicer.train.options import TrainingOptions, budget_per_training

STATE_FILE = "autoseg_training.json"
LOG_FILE = "autoseg_training.log"
STATE_FORMAT = 1
#: Preference order of quick mode's single configuration: the one planned for its time budget first.
QUICK_CONFIGURATIONS = ("3d_budget", "2d_budget", "3d_fullres", "2d", "3d_lowres")
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass
class Step:
    """One step: ``command`` is an AutoSegLib CLI command, or "prepare" / "expand" / "install" (in-process)."""
    command: str
    args: List[str] = field(default_factory=list)
    status: str = PENDING
    configuration: Optional[str] = None
    fold: Optional[str] = None
    pid: Optional[int] = None   # the child process while it runs (a Slicer that crashed may leave it running)

    @property
    def in_process(self) -> bool:
        return self.command in ("prepare", "expand", "install")

    @property
    def label(self) -> str:
        if self.command == "train":
            return f"train {self.configuration} fold {self.fold}"
        return self.command

    def to_dict(self) -> dict:
        return {"command": self.command, "args": list(self.args), "status": self.status,
                "configuration": self.configuration, "fold": self.fold, "pid": self.pid}


@dataclass
class TrainingState:
    """Everything needed to continue a run: what it trains, where, and each step's status.

    Attributes
    ----------
    kind : str
        "train" (a new model) or "finetune".
    dataset, work : Path
        The raw dataset folder and the work folder (preprocessed data, checkpoints, this state).
    options : TrainingOptions
    folds : list of str
        The folds trained (resolved from the options and the number of cases).
    base_model : Path or None
        The model being fine-tuned.
    steps : list of Step
    model_path : Path or None
        Where the finished model was installed.
    """
    kind: str
    dataset: Path
    work: Path
    options: TrainingOptions
    folds: List[str]
    base_model: Optional[Path] = None
    steps: List[Step] = field(default_factory=list)
    model_path: Optional[Path] = None

    @property
    def finished(self) -> bool:
        return bool(self.steps) and all(s.status == DONE for s in self.steps)

    @property
    def path(self) -> Path:
        return self.work / STATE_FILE

    def next_step(self) -> Optional[Step]:
        return next((s for s in self.steps if s.status != DONE), None)

    def train_steps(self) -> List[Step]:
        return [s for s in self.steps if s.command == "train"]

    def to_dict(self) -> dict:
        return {"format": STATE_FORMAT, "kind": self.kind, "dataset": str(self.dataset), "work": str(self.work),
                "options": self.options.to_dict(), "folds": list(self.folds),
                "base_model": str(self.base_model) if self.base_model else None,
                "steps": [s.to_dict() for s in self.steps],
                "model_path": str(self.model_path) if self.model_path else None}

    def save(self) -> Path:
        return write_json(self.path, self.to_dict())

    @classmethod
    def load(cls, work) -> "TrainingState":
        """Read ``WORK/autoseg_training.json``.

        Raises
        ------
        AutoSegError
            No state there, unreadable JSON, or a format this version does not know.
        """
        path = Path(work) / STATE_FILE
        d = read_json(path, "a training state", hint="The run cannot be resumed. Start a new training.",
                      missing=f"not found; {work} holds no training started from Slicer.")
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise AutoSegError(f"{path}: unknown format {d.get('format') if isinstance(d, dict) else d!r} "
                               f"(expected {STATE_FORMAT}); start a new training.")
        try:
            return cls(kind=d["kind"], dataset=Path(d["dataset"]), work=Path(d["work"]),
                       options=TrainingOptions.from_dict(d["options"]), folds=list(d["folds"]),
                       base_model=Path(d["base_model"]) if d.get("base_model") else None,
                       steps=[Step(**s) for s in d["steps"]],
                       model_path=Path(d["model_path"]) if d.get("model_path") else None)
        except (KeyError, TypeError) as exc:
            raise AutoSegError(f"{path}: incomplete or unknown entries ({exc!r}); the run cannot be resumed. Start a "
                               f"new training.") from None


def _train_args(work: Path, configuration: str, fold: str, options: TrainingOptions, n_folds: int,
                init_from: Optional[Path] = None, share: float = 1.0) -> List[str]:
    """A train step's arguments; ``share`` is this configuration's part of a fold's minutes."""
    args = [str(work), configuration, str(fold)]
    if options.epochs is not None:
        args += ["--epochs", str(int(options.epochs))]
    budget = budget_per_training(options, n_folds)
    if budget is not None:
        budget *= share
        args += ["--time-budget-minutes", f"{budget:g}"]
    if options.iterations_per_epoch is not None:
        args += ["--iterations-per-epoch", str(int(options.iterations_per_epoch))]
    if options.val_iterations is not None:
        args += ["--val-iterations", str(int(options.val_iterations))]
    if options.device != "auto":
        args += ["--device", options.device]
    if options.mode == "quick":
        args.append("--no-mirroring")  # the fold's final validation without 8 flips: quick means quick
    if init_from is not None:
        args += ["--init-from", str(init_from)]
    return args


def train_budget_s(step: Step) -> Optional[float]:
    """The seconds a train step's ``--time-budget-minutes`` gives it (None without one)."""
    if "--time-budget-minutes" not in step.args:
        return None
    try:
        return 60.0 * float(step.args[step.args.index("--time-budget-minutes") + 1])
    except (IndexError, ValueError):
        return None


def new_model_state(dataset: Path, work: Path, options: TrainingOptions, folds: List[str]) -> TrainingState:
    """The steps of training a new model (train steps are added by `expand_train_steps`)."""
    plan_args = [str(dataset), "--output", str(work)]
    if options.mode == "quick" and options.epochs is None:
        # quick mode trains one configuration for its budget: plan one that fits it on this device
        plan_args += ["--time-budget-minutes", f"{budget_per_training(options, len(folds)):g}"]
        if options.device != "auto":
            plan_args += ["--device", options.device]
    steps = [Step("verify", [str(dataset)]),
             Step("fingerprint", [str(dataset), "--output", str(work), "--no-verify"]),
             Step("plan", plan_args),
             Step("expand")]
    return TrainingState("train", Path(dataset), Path(work), options, list(folds), steps=steps)


def budget_summary(plans: dict, now: Optional[float] = None) -> Optional[str]:
    """What the budget configuration of a plans.json dict will do, for the panel before training starts:
    resolution, patch, iterations and the expected finish (local time); None without a budget plan."""
    import time

    budget = plans.get("budget")
    if not isinstance(budget, dict):
        return None
    records = [budget] + ([budget["fine"]] if isinstance(budget.get("fine"), dict) else [])
    minutes = sum(float(r["minutes"]) for r in records)
    finish = time.strftime("%H:%M", time.localtime((now or time.time()) + 60 * minutes))
    parts = []
    for r in records:
        conf = (plans.get("configurations") or {}).get(r.get("configuration"), {})
        spacing = conf.get("spacing") or []
        where = " inside the box the first finds" if r.get("located_by") else ""
        parts.append(f"{r['configuration']}: {' x '.join(f'{v:.3g}' for v in spacing)} mm voxels "
                     f"({r['spacing_factor']:g}x the data's){where}, patch "
                     f"{' x '.join(str(p) for p in conf.get('patch_size', []))}, about {r['iterations']} iterations "
                     f"of {r['step_seconds']:.2f} s in {float(r['minutes']):.3g} min")
    return (f"{'; then '.join(parts)} on {budget['device']} ({budget['precision']}; more iterations if they run "
            f"faster: training uses its whole budget), validation included: training expected to finish at "
            f"{finish} ({minutes:g} min).")


def trainable_configurations(plans: dict) -> List[str]:
    """Configurations of a plans.json dict that train on their own (the cascade's second stage excluded)."""
    confs = plans.get("configurations") or {}
    return [name for name, c in confs.items() if not (isinstance(c, dict) and c.get("previous_stage"))]


def choose_configurations(plans: dict, options: TrainingOptions, source: str = "plans.json") -> List[str]:
    """Quick mode: the one configuration (forced, else the first of `QUICK_CONFIGURATIONS` planned);
    full mode: every trainable configuration."""
    available = trainable_configurations(plans)
    if not available:
        raise AutoSegError(f"{source}: no trainable configuration planned; re-run planning or check the dataset.")
    if options.configuration:
        if options.configuration not in available:
            raise AutoSegError(f"{source}: configuration {options.configuration!r} is not planned; available: "
                               f"{', '.join(available)}.")
        return [options.configuration]
    if options.mode == "full":
        return available
    budget = plans.get("budget") or {}
    fine = (budget.get("fine") or {}).get("configuration")
    if fine in available and budget.get("configuration") in available:
        return [budget["configuration"], fine]  # coarse to fine: the coarse stage first
    return [next((c for c in QUICK_CONFIGURATIONS if c in available), available[0])]


def expand_train_steps(state: TrainingState) -> Optional[str]:
    """After planning: replace the "expand" step with one train step per (configuration, fold), then
    find-best (full mode with 5 folds) and install. Returns `budget_summary` when a budget configuration
    will be trained."""
    plans_path = state.work / "plans.json"
    plans = read_json(plans_path, "the plans", hint="Planning finished but its plans cannot be read.", expect=dict)
    confs = choose_configurations(plans, state.options, str(plans_path))
    idx = next(i for i, s in enumerate(state.steps) if s.command == "expand")
    new = [Step("preprocess", [str(state.work), "--configurations", *confs])]
    new += _train_and_finish_steps(state, confs, init_from=None, shares=stage_shares(plans, confs))
    state.steps[idx:idx + 1] = [Step("expand", status=DONE)] + new
    return budget_summary(plans) if plans.get("budget", {}) and \
        plans["budget"].get("configuration") in confs else None


def stage_shares(plans: dict, confs: List[str]) -> dict:
    """Each configuration's part of a fold's minutes: as planned for a coarse-to-fine pair (a third, two
    thirds), else equal."""
    budget = plans.get("budget") or {}
    fine = budget.get("fine") or {}
    if fine and set(confs) == {budget.get("configuration"), fine.get("configuration")}:
        total = float(budget["minutes"]) + float(fine["minutes"])
        return {budget["configuration"]: float(budget["minutes"]) / total,
                fine["configuration"]: float(fine["minutes"]) / total}
    return {c: 1.0 / len(confs) for c in confs}


def _train_and_finish_steps(state: TrainingState, confs: List[str], init_from: Optional[Path],
                            shares: Optional[dict] = None) -> List[Step]:
    shares = shares or {c: 1.0 / len(confs) for c in confs}
    steps = [Step("train", _train_args(state.work, c, f, state.options, len(state.folds), init_from, shares[c]),
                  configuration=c, fold=f)
             for c in confs for f in state.folds]
    if sorted(state.folds) == [str(i) for i in range(5)]:
        steps.append(Step("find-best", [str(state.work)]))
    steps.append(Step("install"))
    return steps


def finetune_state(dataset: Path, work: Path, options: TrainingOptions, folds: List[str], model) -> TrainingState:
    """The steps of fine-tuning ``model`` (a `models.ModelInfo`): its configurations, the given folds, each
    initialised from the model's weights."""
    state = TrainingState("finetune", Path(dataset), Path(work), options, list(folds), base_model=Path(model.path))
    confs = [options.configuration] if options.configuration else list(model.configurations)
    unknown = [c for c in confs if c not in model.configurations]
    if unknown:
        raise AutoSegError(f"Model '{model.name}' has no trained configuration {unknown[0]!r}; it has "
                           f"{', '.join(model.configurations)}.")
    state.steps = [Step("verify", [str(dataset)]), Step("prepare"),
                   Step("preprocess", [str(work), "--configurations", *confs])]
    state.steps += _train_and_finish_steps(state, confs, init_from=Path(model.path))
    return state


def resume_args(step: Step, work: Path) -> List[str]:
    """The arguments a train step is (re)started with: ``--resume`` when its fold has a checkpoint to resume
    from (latest, or best alone after a stop during the first checkpoint write: the trainer falls back to
    the newest loadable one, see AutoSegLib.training.checkpoint.RESUMABLE)."""
    args = list(step.args)
    if step.command == "train" and "--resume" not in args:
        folder = fold_dir(work, step.configuration, step.fold)
        if any((folder / name).is_file() for name in ("checkpoint_latest.pt", "checkpoint_best.pt")):
            args.append("--resume")
    return args




def process_running(pid: Optional[int]) -> bool:
    """Whether ``pid`` is a live AutoSegLib child (POSIX; on other systems: False, nothing is checked)."""
    if not pid or os.name != "posix":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{int(pid)}/cmdline")
    if cmdline.is_file():  # Linux: make sure the pid was not reused by something else
        try:
            return b"autoseglib" in cmdline.read_bytes().lower()
        except OSError:
            return False
    return True


def find_resumable(work_root) -> List[TrainingState]:
    """Unfinished runs under ``work_root`` (one sub-folder per run), newest first; unreadable states skipped."""
    root = Path(work_root)
    found = []
    if not root.is_dir():
        return found
    for state_file in root.glob(f"*/{STATE_FILE}"):
        try:
            state = TrainingState.load(state_file.parent)
        except (AutoSegError, KeyError, TypeError):
            continue
        if not state.finished:
            found.append((state_file.stat().st_mtime, state))
    return [s for _, s in sorted(found, key=lambda t: -t[0])]
