"""`TrainingConfig`: every number of the training recipe as one frozen record (variants are values).

Defaults are the nnU-Net trainer's (recipe.md): 1000 epochs x 250 iterations, 50 validation iterations,
SGD Nesterov (lr 0.01, momentum 0.99, weight decay 3e-5), poly decay with exponent 0.9, gradient norm
clipped at 12, a third of each batch forced to contain foreground, deep supervision on, EMA factor 0.9 for
the validation pseudo-Dice. A short schedule is ``TrainingConfig(epochs=5)``, never a subclass.

Fine-tuning (``init_from`` set) uses `finetune_defaults`: unless the user sets them, 100 epochs (a budget
configuration: the iterations its time buys) at the recipe's learning rate. A tenth of it (1e-3) was the
default until measured: A (16 LA cases, 15 min) fine-tuned 10 min on 32 cases reached held-out Dice 0.897
at 1e-3 and 0.903 at 1e-2, against 0.891 for A and 0.885 for a new 10-minute model
(bench/finetune_loop.py, bench/README.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Optional, Tuple

from AutoSegLib.errors import AutoSegError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# What fine-tuning changes when the user did not set these fields explicitly.
FINETUNE_EPOCHS = 100


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of one training run (all have recipe defaults).

    Attributes
    ----------
    epochs, iterations_per_epoch, val_iterations : int
        Schedule: ``epochs`` epochs of ``iterations_per_epoch`` training batches, each followed by
        ``val_iterations`` validation batches (pseudo-Dice on patches).
    initial_lr, weight_decay, momentum, poly_exponent : float
        SGD Nesterov; ``lr(epoch) = initial_lr * (1 - epoch / epochs) ** poly_exponent``.
    grad_clip : float
        Gradient-norm clipping threshold.
    oversample_foreground : float
        Fraction of each batch forced to contain foreground (the last ``round(B * fraction)`` samples).
    box_margin_mm : tuple of float
        When given (a coarse-to-fine pair's fine stage, `planning.coarse_to_fine`): every patch is centred at a
        uniformly drawn voxel of the case's foreground box grown by this margin (mm per axis of the
        preprocessed grid), the region that stage will be asked about; ``oversample_foreground`` is then unused.
    deep_supervision : bool
        Loss on every decoder level but the lowest.
    ema_factor : float
        ``ema = ema_factor * ema + (1 - ema_factor) * mean_pseudo_dice``; best checkpoint by ``ema``.
    num_workers : int or None
        Augmentation worker processes; None chooses (see ``workers.choose_workers``). 0 runs in-process.
    torch_threads : int or None
        Intra-op threads of torch on CPU; None chooses.
    time_budget_minutes : float or None
        Wall-clock minutes for the whole training, its validation included: training stops (inside an
        epoch if need be) early enough for the epoch's validation batches and the fold's final validation
        to end within it.
    seed : int
        Seeds weights, sampling and augmentation.
    device : str
        "auto" (cuda, then mps, then cpu), "cuda", "cuda:1", "mps" or "cpu".
    precision : str
        "auto": float16 autocast + grad scaling on CUDA, bfloat16 autocast on CPU when the CPU supports
        it natively; or "float32" / "bfloat16" / "float16".
    channels_last : bool
        channels_last(_3d) memory layout on CPU. Off by default: measured on the LA network (batch 3,
        48x80x96, bfloat16) a training step was ~8% slower with it, although inference-only
        convolutions are faster (performance-notes.md).
    init_from : str or None
        Model folder or checkpoint whose weights start the run (fine-tuning).
    save_every_epoch : bool
        Write checkpoint_latest.pt after every epoch (always on in the CLI).
    validate_at_end : bool
        Predict the fold's validation cases in full after training.
    mirror_at_validation : bool
        Test-time mirroring in that final validation (8 flips in 3D: slow on CPU).
    batch_size : int or None
        Override the plans' batch size (None: the plans').
    fill_budget : bool
        With a time budget: train until the budget is used (its validation time kept), not only for
        ``epochs``, which is then the planned estimate; the learning rate anneals on the budget's time
        alone, so it reaches 0 when training stops however fast the iterations run. `budget_defaults` turns
        it on unless the user set the schedule: a budget plan's iteration count is a prediction, and the
        30-minute LA plan that the calibration overestimated 1.32x finished 7.5 minutes early without it.
    """
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    initial_lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    oversample_foreground: float = 0.33
    box_margin_mm: Tuple[float, ...] = ()
    deep_supervision: bool = True
    ema_factor: float = 0.9
    num_workers: Optional[int] = None
    torch_threads: Optional[int] = None
    time_budget_minutes: Optional[float] = None
    seed: int = 12345
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = False
    init_from: Optional[str] = None
    save_every_epoch: bool = True
    validate_at_end: bool = True
    mirror_at_validation: bool = True
    batch_size: Optional[int] = None
    fill_budget: bool = False

    def __post_init__(self):
        problems = []
        for name in ("epochs", "iterations_per_epoch"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_iterations < 0:
            problems.append(f"val_iterations must be >= 0, got {self.val_iterations}")
        if not 0 <= self.oversample_foreground <= 1:
            problems.append(f"oversample_foreground must be in [0, 1], got {self.oversample_foreground}")
        if self.initial_lr <= 0:
            problems.append(f"initial_lr must be > 0, got {self.initial_lr}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            problems.append(f"time_budget_minutes must be > 0, got {self.time_budget_minutes}")
        if self.num_workers is not None and self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise AutoSegError("invalid training settings: " + "; ".join(problems) + ".")

    def replace(self, **changes) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "training_config.json") -> "TrainingConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise AutoSegError(f"{source}: unknown training settings {sorted(unknown)}.")
        return cls(**d)

    @property
    def fills_budget(self) -> bool:
        """True when training runs until its time budget is used (``fill_budget`` with a budget)."""
        return self.fill_budget and self.time_budget_minutes is not None

    def lr_at(self, epoch: float, elapsed_s: Optional[float] = None) -> float:
        """Poly learning rate for ``epoch`` (0-based, fractional within an epoch).

        With a time budget, the schedule's progress is the larger of the epoch fraction and the fraction of
        the budget used (``elapsed_s``), so a run stopped by its budget has still annealed its learning
        rate instead of stopping at the start of a 1000-epoch schedule. When the run fills its budget
        (`fills_budget`), the progress is the budget fraction alone: ``epochs`` is only an estimate then."""
        fraction = min(epoch, self.epochs) / self.epochs
        if self.time_budget_minutes is not None and elapsed_s is not None:
            used = min(elapsed_s / (60.0 * self.time_budget_minutes), 1.0)
            fraction = used if self.fills_budget else max(fraction, used)
        return self.initial_lr * (1 - fraction) ** self.poly_exponent


def budget_defaults(config: TrainingConfig, budget, explicitly_set: "set[str]") -> TrainingConfig:
    """The schedule a budget configuration was planned for (``planning.plans.BudgetPlan``), for the fields
    the user did not set: the time budget (the planned one), epochs and iterations that it buys (rescaled
    when the user gave another time budget), validation batches, the planned device and precision, and no
    mirroring in the final validation (8x its cost in 3D, which the budget does not pay for). The run fills
    its budget (``fill_budget``) unless the user set the epochs or iterations per epoch. A fine stage
    (``budget.located_by``) samples its patches in the foreground box grown by its margin (`box_margin_mm`)."""
    from AutoSegLib.planning.budget import schedule_for

    minutes = config.time_budget_minutes if "time_budget_minutes" in explicitly_set else budget.minutes
    epochs, per_epoch, val_iterations = schedule_for(budget, minutes)
    planned = {"time_budget_minutes": minutes, "epochs": epochs, "iterations_per_epoch": per_epoch,
               "val_iterations": val_iterations, "precision": budget.precision, "device": budget.device,
               "mirror_at_validation": False,
               "fill_budget": not explicitly_set & {"epochs", "iterations_per_epoch"}}
    if budget.located_by:
        planned["box_margin_mm"] = tuple(float(m) for m in budget.roi_margin_mm)
    return config.replace(**{k: v for k, v in planned.items() if k not in explicitly_set})


def finetune_defaults(config: TrainingConfig, explicitly_set: "set[str]") -> TrainingConfig:
    """The shorter fine-tuning schedule when the user did not set the epochs (``explicitly_set`` names the
    fields the user did set): 100 epochs. The learning rate stays the recipe's (see the module docstring)."""
    if "epochs" in explicitly_set:
        return config
    return config.replace(epochs=FINETUNE_EPOCHS)
