"""Plans that fit the compute: a configuration sized for a training time budget on a measured device.

The stock configurations are sized for GPU memory and ~250,000 iterations; on a laptop CPU an hour buys
about a hundred of them. The budget configuration (``3d_budget``, ``2d_budget`` for 2D data) is chosen by
explicit rules from the device's measured cost (`training.calibration.Calibration`):

1. **Time**: the budget pays for training *and* its validation. Reserved first (`validation_reserve`):
   the fold's final validation (its cases predicted in full, no mirroring: windows at half-patch steps x
   one forward pass, a forward pass costing a third of a training step, plus a fixed cost per case) and
   per-epoch validation batches, plus ``OVERHEAD_S`` for start-up and checkpoints. The rest buys
   iterations.
2. **Candidates**, finest first: the fullres target spacing coarsened by ``SPACING_FACTORS`` (the finest
   axes first: ``new[a] = max(target[a], factor x finest target)``, so anisotropic data first becomes
   isotropic), each with ``BASE_FEATURES`` (32 then 16 features in the first stage, doubling per stage,
   capped at 320/512). A candidate's median image must keep ``MIN_MEDIAN_EDGE`` voxels per axis.
3. **Patch**: the whole median image when it has at most ``MAX_PATCH_VOXELS`` voxels; otherwise the axis
   largest relative to the median image shrinks by one divisibility step at a time (the stock rule).
   Batch size ``BATCH_SIZE`` (the stock planner's minimum: more, cheaper steps).
4. **Choice**: the first candidate whose predicted iterations reach the target (`target_iterations_for`:
   ``TARGET_ITERATIONS_SHORT`` for budgets up to ``SHORT_BUDGET_MINUTES``, ``TARGET_ITERATIONS`` above; or
   the ``target_iterations`` the user asks for: more iterations at a coarser spacing); when none does, the
   candidate with the most iterations. Fewer than ``MIN_ITERATIONS`` is an error that names the
   smallest budget that would plan.
5. **Schedule**: poly learning rate over exactly those iterations (annealed per iteration), epochs of
   ``iterations / EPOCHS_PER_RUN`` iterations (at least ``MIN_ITERATIONS_PER_EPOCH``) so that progress,
   pseudo-Dice and checkpoints come every few minutes; ``VAL_ITERATIONS`` validation batches per epoch.

Every constant is a rule the tests pin; the measurements behind them are written next to them.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.planning.plans import BudgetPlan

# Factors tried on the target spacing, finest first.
SPACING_FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
# First-stage features tried at each spacing, widest first (the stock plans use 32).
BASE_FEATURES = (32, 16)
BATCH_SIZE = 2
# A patch covering the whole median image is the fastest way to learn where a structure is; above this it
# is cut like the stock plans' (128^3 / 4: the LA median image at 1.25 mm, 44x71x96, fits whole).
MAX_PATCH_VOXELS = 524_288
MIN_MEDIAN_EDGE = 16
# The iterations the choice must buy, by budget (`target_iterations_for`). Measured on LA (bench/README.md,
# budget_la.py, float32, one run each): asked for 2500 instead of 1000, the plan scored the same at 15 minutes
# (0.899 vs 0.900 held-out Dice) and 0.009 more at 30 and 60 (0.907 vs 0.898, 0.913 vs 0.904; the reference
# trainer reached 0.858 in 60), while on the 1.5-minute README demo it cost the small lesion 0.028 (0.898 vs
# 0.926, under the demo's floor). Short budgets keep 1000; longer ones ask for 2500.
TARGET_ITERATIONS_SHORT = 1000
TARGET_ITERATIONS = 2500
SHORT_BUDGET_MINUTES = 15.0
MIN_ITERATIONS = 150
EPOCHS_PER_RUN = 40
MIN_ITERATIONS_PER_EPOCH = 5
VAL_ITERATIONS = 2
OVERHEAD_S = 30.0
FINAL_VALIDATION_STEP = 0.5
# What the final validation costs besides the network (reading and preprocessing the raw case, resampling to
# the raw grid, writing the label map and compressed probabilities), per case; the margin on the whole
# estimate; a checkpoint write. Measured on LA cases (2 cores): 0.6 s per case on the idle machine, 3.3 s at
# a load average of 5 (a 15-minute budget overran by 18 s with 0.5 s per case).
FINAL_VALIDATION_PER_CASE_S = 2.0
RESERVE_MARGIN = 1.25
CHECKPOINT_S = 5.0


def candidate_topology(pool, base: int):
    """The plain U-Net of a candidate: the pooling plan's stages, ``base`` first-stage features doubling per
    stage (`features_for`)."""
    from AutoSegLib.planning.topology import plain_topology
    topo = plain_topology(pool)
    return replace(topo, features_per_stage=features_for(base, topo.n_stages, len(pool.patch_size)))


def budget_configuration_name(ndim: int) -> str:
    return "3d_budget" if ndim == 3 else "2d_budget"


def coarsened_spacing(target: Sequence[float], factor: float) -> Tuple[float, ...]:
    """``max(target[a], factor * min(target))`` per axis: the finest axes coarsen first."""
    finest = float(min(target))
    return tuple(max(float(t), factor * finest) for t in target)


def features_for(base: int, n_stages: int, ndim: int) -> Tuple[int, ...]:
    from AutoSegLib.planning.topology import MAX_FEATURES_2D, MAX_FEATURES_3D
    cap = MAX_FEATURES_3D if ndim == 3 else MAX_FEATURES_2D
    return tuple(min(cap, base * 2 ** s) for s in range(n_stages))


def budget_patch(spacing: Sequence[float], median_shape: Sequence[float]):
    """(pooling plan, patch) for a candidate: the whole median image, cut down to ``MAX_PATCH_VOXELS``."""
    from AutoSegLib.planning.topology import FEATUREMAP_MIN_EDGE, pooling_plan

    pool = pooling_plan(spacing, median_shape, FEATUREMAP_MIN_EDGE)
    patch, divisible = list(pool.patch_size), pool.divisible_by
    while float(np.prod(patch, dtype=np.float64)) > MAX_PATCH_VOXELS:
        ratios = [p / m for p, m in zip(patch, median_shape)]
        axis = max(range(len(patch)), key=lambda a: (ratios[a], a))
        trial = list(patch)
        trial[axis] -= divisible[axis]
        divisible = pooling_plan(spacing, trial, FEATUREMAP_MIN_EDGE).divisible_by
        patch[axis] -= divisible[axis]
        pool = pooling_plan(spacing, patch, FEATUREMAP_MIN_EDGE)
        patch, divisible = list(pool.patch_size), pool.divisible_by
    return pool


def sliding_windows(shape: Sequence[float], patch: Sequence[int], step: float = FINAL_VALIDATION_STEP) -> int:
    """Number of sliding-window positions over ``shape`` (the inference rule: steps of ``step x patch``)."""
    n = 1
    for s, p in zip(shape, patch):
        s = max(float(s), float(p))
        n *= int(math.ceil((s - p) / (p * step))) + 1
    return n


def validation_reserve(forward_s_per_patch: float, batch_size: int, val_iterations: int, final_windows: int,
                       final_cases: int, flips: int = 1) -> float:
    """Seconds a training must keep for validation after its last iteration: ``val_iterations`` batches of
    the last epoch, and the final validation's windows (times ``flips`` mirrorings) plus
    ``FINAL_VALIDATION_PER_CASE_S`` per case; times ``RESERVE_MARGIN``, plus a checkpoint write. Used by the
    planner (with a predicted forward time) and by the epoch loop (with the measured one)."""
    epoch_val = val_iterations * batch_size * forward_s_per_patch
    final = final_windows * flips * forward_s_per_patch + FINAL_VALIDATION_PER_CASE_S * final_cases
    return RESERVE_MARGIN * (epoch_val + final) + CHECKPOINT_S


def score_candidate(minutes: float, calibration, pool, base: int, shape, n_channels: int, n_outputs: int,
                    n_val: int, windows: Optional[int] = None) -> Tuple[int, float, float, object]:
    """(iterations, seconds per iteration, reserve seconds, topology) that ``minutes`` buy for the plain U-Net
    of pooling plan ``pool`` with ``base`` first-stage features: the budget less the validation reserve
    (`validation_reserve`, every epoch's validation batches, ``OVERHEAD_S``) over the predicted step.
    ``windows`` is the final validation's sliding windows in all (default: ``n_val`` images of ``shape``)."""
    from AutoSegLib.network.memory import conv_macs

    topo = candidate_topology(pool, base)
    macs = conv_macs(topo, pool.patch_size, n_channels, n_outputs) * BATCH_SIZE
    step = calibration.step_seconds(macs, pool.patch_size, BATCH_SIZE, base)
    forward = calibration.network_seconds(macs / BATCH_SIZE, pool.patch_size, base) / 3.0
    # every epoch's validation batches are paid during training, the last ones and the final validation
    # after it, start-up before it
    if windows is None:
        windows = n_val * sliding_windows(shape, pool.patch_size)
    reserve = (validation_reserve(forward, BATCH_SIZE, VAL_ITERATIONS, windows, n_val)
               + (EPOCHS_PER_RUN - 1) * VAL_ITERATIONS * BATCH_SIZE * forward + OVERHEAD_S)
    iterations = int((60.0 * minutes - reserve) // step) if 60.0 * minutes > reserve else 0
    return iterations, float(step), float(reserve), topo


def target_iterations_for(minutes: float) -> int:
    """The choice rule's default iteration target for a budget of ``minutes`` (see ``TARGET_ITERATIONS``).

    >>> target_iterations_for(15), target_iterations_for(30)
    (1000, 2500)
    """
    return TARGET_ITERATIONS_SHORT if minutes <= SHORT_BUDGET_MINUTES else TARGET_ITERATIONS


class BudgetTooSmall(AutoSegError):
    """The budget buys fewer than `MIN_ITERATIONS`; ``smallest_minutes`` is the smallest that plans."""

    def __init__(self, message: str, smallest_minutes: int):
        super().__init__(message)
        self.smallest_minutes = smallest_minutes


def plan_budget(minutes: float, calibration, target_spacing: Sequence[float], median_shape: Sequence[float],
                n_channels: int, n_outputs: int, n_cases: int, base_plan, validation_cases: Optional[int] = None,
                target_iterations: Optional[int] = None) -> Tuple[object, BudgetPlan]:
    """Choose the budget configuration by the module's rules.

    Parameters
    ----------
    minutes : float
        Training budget (validation included).
    calibration : training.calibration.Calibration
        Measured cost of the device (or a stand-in with ``step_seconds``, ``network_seconds``,
        ``gflops``, ``key``, ``device``, ``precision``).
    target_spacing, median_shape : sequence of float
        Fullres target spacing and median image shape at it, transposed order (2 or 3 axes).
    n_channels, n_outputs : int
        Network inputs and outputs (for the MAC count).
    n_cases : int
        Training cases (a fold validates about a fifth of them at the end).
    base_plan : ConfigurationPlan
        The stock plan of the same dimensionality: normalisation, resampling and batch-dice settings are
        copied from it.
    validation_cases : int, optional
        Cases of the final validation (default ``ceil(n_cases / 5)``).
    target_iterations : int, optional
        The choice rule's iteration target (default `target_iterations_for` the budget; at least
        ``MIN_ITERATIONS``).

    Returns
    -------
    (ConfigurationPlan, BudgetPlan)

    Raises
    ------
    AutoSegError
        The budget buys fewer than ``MIN_ITERATIONS`` iterations of the cheapest candidate (the message
        names the smallest budget that plans); a ``target_iterations`` below ``MIN_ITERATIONS``.
    """
    if not minutes > 0:
        raise AutoSegError(f"the time budget must be a positive number of minutes; got {minutes}.")
    target_iterations = target_iterations_for(minutes) if target_iterations is None else target_iterations
    if not (isinstance(target_iterations, int) and target_iterations >= MIN_ITERATIONS):
        raise AutoSegError(f"the budget's target iterations must be a whole number of at least {MIN_ITERATIONS} "
                           f"(fewer train nothing useful); got {target_iterations!r}.")
    ndim = len(target_spacing)
    name = budget_configuration_name(ndim)
    target = np.asarray(target_spacing, np.float64)
    median = np.asarray(median_shape, np.float64)
    n_val = validation_cases if validation_cases is not None else max(1, math.ceil(n_cases / 5))
    candidates, scored = [], []
    for factor in SPACING_FACTORS:
        spacing = np.asarray(coarsened_spacing(target, factor))
        shape = median * target / spacing
        if factor > SPACING_FACTORS[0] and shape.min() < MIN_MEDIAN_EDGE:
            break
        pool = budget_patch(tuple(spacing), tuple(shape))
        for base in BASE_FEATURES:
            iterations, step, reserve, topo = score_candidate(minutes, calibration, pool, base, shape, n_channels,
                                                              n_outputs, n_val)
            entry = (float(factor), int(base), tuple(int(p) for p in pool.patch_size), iterations)
            candidates.append(entry)
            scored.append((entry, tuple(float(s) for s in spacing), shape, topo, step, reserve))
    chosen = next((s for s in scored if s[0][3] >= target_iterations), None)
    if chosen is None:
        chosen = max(scored, key=lambda s: s[0][3])
    (factor, base, patch, iterations), spacing, shape, topo, step, reserve = chosen
    if iterations < MIN_ITERATIONS:
        need = math.ceil((MIN_ITERATIONS * step + reserve) / 60.0)
        raise BudgetTooSmall(
            f"a {minutes:g}-minute budget buys {max(iterations, 0)} training iterations on {calibration.device} "
            f"({calibration.precision}), fewer than the {MIN_ITERATIONS} that train anything useful. The smallest "
            f"budget that plans is {need} minutes; or train on a faster device.", need)
    per_epoch, epochs, iterations = schedule_rule(iterations)
    plan = replace(base_plan, name=name, spacing=spacing, patch_size=patch, batch_size=BATCH_SIZE,
                   median_image_size=tuple(float(v) for v in shape), network=topo, previous_stage=None,
                   next_stages=(), data_identifier="")
    record = BudgetPlan(configuration=name, minutes=float(minutes), device=calibration.device,
                        precision=calibration.precision, machine=calibration.key,
                        gflops=round(float(calibration.gflops(patch, base)), 2), step_seconds=round(float(step), 4),
                        iterations=int(iterations), iterations_per_epoch=int(per_epoch), epochs=int(epochs),
                        val_iterations=VAL_ITERATIONS, reserve_seconds=round(float(reserve), 1),
                        spacing_factor=float(factor), base_features=int(base), candidates=tuple(candidates),
                        target_iterations=int(target_iterations))
    return plan, record


def schedule_rule(iterations: int) -> Tuple[int, int, int]:
    """(iterations per epoch, epochs, iterations) for ``iterations``: about ``EPOCHS_PER_RUN`` equal epochs of
    at least ``MIN_ITERATIONS_PER_EPOCH``, the iterations rounded down to whole epochs."""
    per_epoch = max(MIN_ITERATIONS_PER_EPOCH, int(iterations) // EPOCHS_PER_RUN)
    epochs = max(1, int(iterations) // per_epoch)
    return per_epoch, epochs, epochs * per_epoch


def schedule_for(budget: BudgetPlan, minutes: Optional[float] = None) -> Tuple[int, int, int]:
    """(epochs, iterations per epoch, validation iterations) that ``minutes`` (default: the planned
    budget) buy at the planned iteration time, by the module's schedule rule; used when a budget
    configuration is trained (or fine-tuned) for another time than it was planned for.

    Raises
    ------
    AutoSegError
        When ``minutes`` buys fewer than ``MIN_ITERATIONS_PER_EPOCH`` iterations.
    """
    if minutes is None or float(minutes) == budget.minutes:
        return budget.epochs, budget.iterations_per_epoch, budget.val_iterations
    iterations = int((60.0 * float(minutes) - budget.reserve_seconds) // budget.step_seconds)
    if iterations < MIN_ITERATIONS_PER_EPOCH:
        need = (MIN_ITERATIONS * budget.step_seconds + budget.reserve_seconds) / 60.0
        raise AutoSegError(f"{minutes:g} minutes buy {max(iterations, 0)} iterations of {budget.configuration} "
                           f"({budget.step_seconds:.2f} s each, {budget.reserve_seconds:.0f} s kept for validation); "
                           f"give at least {math.ceil(need)} minutes.")
    per_epoch = max(MIN_ITERATIONS_PER_EPOCH, iterations // EPOCHS_PER_RUN)
    return max(1, iterations // per_epoch), per_epoch, budget.val_iterations
