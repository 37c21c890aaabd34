"""What the Training panel asks for, the dataset summary it shows, and the checks made before a run starts.

Everything here reads JSON and folder listings only (no image is opened, no torch), so the panel can show
a summary and refuse a bad start instantly. The full content check (`autoseg verify`) runs in the child
process as the first step of every run (see pipeline.py).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.errors import AutoSegError

MODES = ("quick", "full")
DEVICES = ("auto", "cuda", "mps", "cpu")
NUM_FOLDS = 5
#: Quick mode's default time budget (minutes) when neither epochs nor a budget is given.
QUICK_DEFAULT_MINUTES = 30.0
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-. ]*$")


class TooFewCasesError(AutoSegError):
    """The dataset has fewer cases than 5-fold cross-validation needs; ``suggestion`` is a single-fold run."""

    def __init__(self, message: str, n_cases: int, suggestion: "TrainingOptions"):
        super().__init__(message)
        self.n_cases = n_cases
        self.suggestion = suggestion


@dataclass(frozen=True)
class TrainingOptions:
    """Settings of one training (or fine-tuning) run started from Slicer.

    Attributes
    ----------
    model_name : str
        Name of the model that is installed at the end (letters, digits, space, ``_-.``).
    mode : str
        "quick": one configuration (the one planned for its time budget, 3d_budget or 2d_budget, unless
        epochs are given; else 3d_fullres, else 2d: `pipeline.QUICK_CONFIGURATIONS`), one fold, a time
        budget; no model selection.
        "full": every configuration the plans propose (the cascade excepted), 5 folds each, then find-best.
    epochs : int or None
        Epochs per fold (None: the recipe's, or the time budget decides).
    time_budget_minutes : float or None
        Wall-clock budget of the whole run; shared equally by its trainings (configuration x fold).
    device : str
        "auto", "cuda", "mps" or "cpu".
    folds : tuple of str or None
        Folds to train: "0".."4" or "all" (every case, no validation split). None: the mode's default
        (quick: "0", or "all" below 5 cases; full: 0-4).
    configuration : str or None
        Force this configuration instead of the mode's choice.
    iterations_per_epoch, val_iterations : int or None
        Advanced: batches per epoch (None: the recipe's 250 and 50).
    """
    model_name: str
    mode: str = "quick"
    epochs: Optional[int] = None
    time_budget_minutes: Optional[float] = None
    device: str = "auto"
    folds: Optional[Tuple[str, ...]] = None
    configuration: Optional[str] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations: Optional[int] = None

    def __post_init__(self):
        problems = []
        if not _MODEL_NAME.match(self.model_name or ""):
            problems.append(f"model name {self.model_name!r} is not valid: use letters, digits, spaces, '_', '-' "
                            f"or '.', starting with a letter or digit (e.g. 'Liver v1')")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.device not in DEVICES:
            problems.append(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.epochs is not None and int(self.epochs) < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.iterations_per_epoch is not None and int(self.iterations_per_epoch) < 1:
            problems.append(f"iterations per epoch must be at least 1, got {self.iterations_per_epoch}")
        if self.val_iterations is not None and int(self.val_iterations) < 0:
            problems.append(f"validation iterations must be 0 or more, got {self.val_iterations}")
        if self.time_budget_minutes is not None and float(self.time_budget_minutes) <= 0:
            problems.append(f"the time budget must be more than 0 minutes, got {self.time_budget_minutes}")
        for f in self.folds or ():
            if str(f) not in ("all", "0", "1", "2", "3", "4"):
                problems.append(f"fold {f!r} is not one of 0-4 or 'all'")
        if problems:
            raise AutoSegError("Training settings: " + "; ".join(problems) + ".")
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["folds"] = list(self.folds) if self.folds is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingOptions":
        d = dict(d)
        if d.get("folds") is not None:
            d["folds"] = tuple(d["folds"])
        return cls(**d)


@dataclass
class DatasetSummary:
    """What the panel shows about a dataset folder before training.

    Attributes
    ----------
    path : Path
    name : str
    num_cases : int
    channel_names : list of str
    labels : list of (str, int)
        Background included, the ignore label excluded.
    ignore_label : int or None
        Value of the "ignore" label (partially annotated cases), if the dataset has one.
    output_names : list of str
        Names of the network's foreground outputs, in order (labels, or regions for region datasets): the
        entries of an epoch event's ``pseudo_dice``.
    file_ending : str
    errors, warnings : list of str
        Structural problems (files missing, bad dataset.json); errors mean training cannot start.
    """
    path: Path
    name: str = ""
    num_cases: int = 0
    channel_names: List[str] = field(default_factory=list)
    labels: List[Tuple[str, int]] = field(default_factory=list)
    ignore_label: Optional[int] = None
    output_names: List[str] = field(default_factory=list)
    file_ending: str = ""
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        """A few lines for the panel."""
        if self.name == "" and self.errors:
            return "Not a usable dataset:\n" + "\n".join(f"- {e}" for e in self.errors)
        labels = ", ".join(f"{n} ({v})" for n, v in self.labels if v != 0)
        lines = [f"{self.name}: {self.num_cases} case(s); inputs: {', '.join(self.channel_names)}; labels: {labels}"]
        if self.ignore_label is not None:
            lines.append(f"Partially annotated: label value {self.ignore_label} marks voxels that are not annotated.")
        lines += [f"Error: {e}" for e in self.errors] + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def summarize_dataset(path) -> DatasetSummary:
    """Read a raw dataset folder's structure (dataset.json and file names; no image is read).

    Never raises for bad input: problems are in ``errors`` / ``warnings``.
    """
    from AutoSegLib.io.datasets import scan_dataset

    dataset, errors, warnings = scan_dataset(path)
    summary = DatasetSummary(path=Path(path), errors=list(errors), warnings=list(warnings))
    if dataset is None:
        return summary
    summary.path = dataset.root
    summary.name = dataset.name
    summary.num_cases = dataset.num_training
    summary.channel_names = [dataset.channel_names[str(i)] for i in range(dataset.num_channels)]
    summary.labels = [(n, v) for n, v in zip(dataset.labels.names, dataset.labels.values) if isinstance(v, int)]
    summary.ignore_label = dataset.labels.ignore_label
    summary.output_names = list(dataset.labels.foreground_names)
    summary.file_ending = dataset.file_ending
    if dataset.num_training == 0 and not summary.errors:
        summary.errors.append(f"{dataset.root}: no training cases found. Add cases with 'Add to training set'.")
    return summary


def resolve_folds(options: TrainingOptions, n_cases: int) -> Tuple[str, ...]:
    """The folds a run trains, checked against the number of cases.

    Quick mode trains fold 0 (4/5 of the cases, validation on the rest) or, below 5 cases, fold "all"
    (every case, no held-out validation). Full mode trains folds 0-4.

    Raises
    ------
    TooFewCasesError
        5-fold cross-validation (or any fold 0-4) asked for with fewer than 5 cases; its ``suggestion`` is
        the same run on the single fold "all".
    AutoSegError
        No case at all.
    """
    if n_cases < 1:
        raise AutoSegError("The dataset has no training case. Add cases with 'Add to training set'.")
    folds = options.folds
    if folds is None:
        if options.mode == "full":
            folds = tuple(str(i) for i in range(NUM_FOLDS))
        else:
            folds = ("0",) if n_cases >= NUM_FOLDS else ("all",)
    numbered = [f for f in folds if f != "all"]
    if numbered and n_cases < NUM_FOLDS:
        suggestion = TrainingOptions(**{**options.to_dict(), "folds": ("all",), "mode": "quick"})
        raise TooFewCasesError(
            f"The dataset has {n_cases} case(s); {NUM_FOLDS}-fold cross-validation needs at least {NUM_FOLDS} (each "
            f"fold holds out a fifth of the cases for validation). Add more cases, or train a single fold on all "
            f"{n_cases} case(s) (fold 'all': no cross-validation report, no automatic choice of configuration).",
            n_cases, suggestion)
    return tuple(folds)


def budget_per_training(options: TrainingOptions, n_trainings: int) -> Optional[float]:
    """Minutes each (configuration, fold) training gets: the run's budget shared equally; quick mode
    without epochs or budget gets `QUICK_DEFAULT_MINUTES`."""
    total = options.time_budget_minutes
    if total is None and options.mode == "quick" and options.epochs is None:
        total = QUICK_DEFAULT_MINUTES
    if total is None:
        return None
    return float(total) / max(1, int(n_trainings))


def label_dict(labels) -> Dict[str, int]:
    """``[(name, value), ...]`` -> ``{name: value}``."""
    return {str(n): int(v) for n, v in labels}


def check_finetune_compatible(model, summary: DatasetSummary) -> None:
    """Refuse fine-tuning ``model`` (a `models.ModelInfo`) on a dataset with other labels or inputs.

    Raises
    ------
    AutoSegError
        Dataset not usable, different channel count, or a different label set (names and values; the
        dataset's "ignore" label is allowed).
    """
    if not summary.ok:
        raise AutoSegError(f"{summary.path}: the dataset has problems; fix them before fine-tuning:\n"
                           + "\n".join(f"  - {e}" for e in summary.errors))
    theirs, ours = label_dict(summary.labels), label_dict(model.labels)
    if len(summary.channel_names) != len(model.channel_names):
        raise AutoSegError(
            f"Model '{model.name}' takes {len(model.channel_names)} input channel(s) ({', '.join(model.channel_names)}); "
            f"dataset {summary.path} has {len(summary.channel_names)} ({', '.join(summary.channel_names)}). Fine-tune "
            f"on a dataset made with the same inputs, or train a new model.")
    if theirs != ours:
        missing = sorted(set(ours.items()) - set(theirs.items()))
        extra = sorted(set(theirs.items()) - set(ours.items()))
        raise AutoSegError(
            f"Model '{model.name}' has labels {ours}; dataset {summary.path} has {theirs} (only in the model: {missing}; "
            f"only in the dataset: {extra}). Fine-tuning keeps the model's outputs, so the label names and values must "
            f"be the same: rename the segments before adding cases, or train a new model.")
