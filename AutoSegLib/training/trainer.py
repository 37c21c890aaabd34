"""`train_fold`: train one configuration on one cross-validation fold (or on all cases).

One loop for every variant (settings come from `TrainingConfig`):

    setup (plans, data check, split, network, optimiser; resume or fine-tuning start)
    for each epoch: poly lr -> iterations_per_epoch training steps -> val_iterations validation batches
        -> pseudo-Dice, EMA -> training_log.jsonl, progress.png, checkpoint_latest/best, "epoch" event
    checkpoint_final -> full validation of the fold's validation cases (validation/summary.json); a stage
        that a cascade follows also writes those cases' predictions onto the next stage's grid

A time budget stops the loop after the current iteration (the partial epoch is validated and logged);
resume restarts from the last completed epoch. Under torchrun every process trains on its share of each
batch and only rank 0 writes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from AutoSegLib.errors import AutoSegError, WriteError
from AutoSegLib.io.atomic import require_free_space, write_json
from AutoSegLib.progress import ProgressCallback, emit
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training import checkpoint as ckpt_mod
from AutoSegLib.training import distributed as dist_mod

log = logging.getLogger(__name__)


def fold_output_dir(work_dir: Path, configuration: str, fold, output_dir=None) -> Path:
    from AutoSegLib.io.work_folder import fold_dir
    return fold_dir(output_dir or work_dir, configuration, fold)


def train_fold(work_dir: "str | Path", configuration: str, fold: Union[int, str],
               config: Optional[TrainingConfig] = None, output_dir: "str | Path | None" = None,
               progress: Optional[ProgressCallback] = None, resume: bool = False) -> Path:
    """Train ``configuration`` on ``fold`` of the work folder.

    Parameters
    ----------
    work_dir : path
        Folder written by ``autoseg plan-and-preprocess`` (plans.json, dataset.json, preprocessed/).
    configuration : str
        A configuration of the plans ('2d', '3d_fullres', '3d_budget', '3d_lowres', '3d_cascade_fullres'), or
        'auto' for the one the plans recommend (`Plans.recommended_configuration`). A cascade
        stage needs the previous stage's predictions of every case of the fold, which the previous stage's
        folds write at the end of their training (``training.cascade``); its network gets them as one-hot
        input channels after the image channels.
    fold : int or "all"
        0..4 (per splits_final.json, created if absent) or "all" (every case, no validation).
    config : TrainingConfig, optional
        Schedule and settings. None: the recipe's, or for a budget configuration the schedule it was planned
        for (`training.config.budget_defaults`).
    output_dir : path, optional
        Root for ``trained/<configuration>/fold_<k>/`` (default: ``work_dir``).
    progress : callable, optional
        Receives "stage", "progress" (iterations), "epoch" and "result" events.
    resume : bool
        Continue from the newest loadable checkpoint of that folder (``checkpoint_latest.pt``, else
        ``checkpoint_best.pt``); when none loads, start anew with a warning (as the reference does).

    Returns
    -------
    Path
        The fold folder (checkpoints, training_log.jsonl, progress.png, validation/).

    Raises
    ------
    AutoSegError
        Unknown configuration or fold; missing preprocessed data or data made with other plans; for a cascade
        stage, missing or stale previous-stage predictions (naming the cases and the runs that make them); an existing
        run without ``resume``; a resume checkpoint made with other plans; ``init_from`` weights with other labels or
        another architecture; CUDA out of memory. Nothing is overwritten in those cases.
    """
    from AutoSegLib.allocator import keep_freed_memory
    from AutoSegLib.device import choose_execution, resolve_device
    from AutoSegLib.io.labels import cascade_label_values
    from AutoSegLib.network.unet import build_network
    from AutoSegLib.planning.plans import Plans, network_input_channels, plans_identifier
    from AutoSegLib.training.data import check_preprocessed
    from AutoSegLib.training.loss import SegmentationLoss
    from AutoSegLib.training.splits import fold_cases, parse_fold
    from AutoSegLib.training.workers import choose_workers

    t_start = time.monotonic()
    work_dir = Path(work_dir)
    plans = Plans.from_json(work_dir / "plans.json")
    plan = plans.configuration(configuration)
    configuration = plan.name  # "auto" -> the recommended configuration
    if config is None:
        config = TrainingConfig()
        if plans.budget_for(configuration) is not None:
            from AutoSegLib.training.config import budget_defaults
            config = budget_defaults(config, plans.budget_for(configuration), set())
    layout = plans.label_layout()
    fold = parse_fold(fold, 10 ** 6 if (work_dir / "splits_final.json").is_file() else 5)
    data_folder, cases = check_preprocessed(work_dir, plans, configuration)
    train_cases, val_cases = fold_cases(work_dir, cases, fold)
    previous_folder, cascade_values = None, ()
    if plan.previous_stage:  # cascade: every case needs its held-out prediction by the previous stage
        from AutoSegLib.training.cascade import check_previous_stage
        previous_folder = check_previous_stage(work_dir, plans, configuration, list(train_cases) + list(val_cases))
        cascade_values = cascade_label_values(layout)
    from AutoSegLib.inference.located import coarse_validation_maps, located_stage
    located = located_stage(plans, configuration)
    if located is not None and config.validate_at_end and val_cases:  # before hours of training, not after
        from AutoSegLib.training.validation import work_file_ending
        coarse_validation_maps(work_dir, located[0], fold, val_cases, work_file_ending(work_dir, plans))
    num_inputs = network_input_channels(plans, configuration)
    fold_dir = fold_output_dir(work_dir, configuration, fold, output_dir)

    info = dist_mod.from_environment()
    device = resolve_device(config.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    dist_mod.init(info, device.type)
    ex = choose_execution(device, config.precision, config.channels_last, len(plan.patch_size))
    workers, threads = choose_workers(device.type)
    workers = workers if config.num_workers is None else config.num_workers
    threads = threads if config.torch_threads is None else config.torch_threads
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads // (info.world_size if info.enabled else 1)))
        keep_freed_memory()  # before the augmentation workers fork: they inherit it

    resumed = None
    if resume:
        source, resumed = ckpt_mod.load_resume_checkpoint(fold_dir, progress)
        if resumed is None:  # as the reference: a fold with nothing loadable to resume from starts anew
            message = f"{fold_dir}: no loadable checkpoint to resume from; starting a new training."
            log.warning(message)
            emit(progress, "log", level="warning", message=message)
        else:
            want = plans_identifier(plan)
            if resumed.get("plans_identifier") != want or resumed.get("configuration") != configuration:
                raise AutoSegError(f"{source}: made with other plans or another configuration than "
                                   f"{configuration!r} of {work_dir / 'plans.json'}. Train into another --output, "
                                   f"or delete the folder.")
    elif any((fold_dir / n).is_file() for n in ckpt_mod.RESUMABLE + ("checkpoint_final.pt",)):
        raise AutoSegError(f"{fold_dir}: holds a training already. Use --resume to continue it, --output for "
                           f"another place, or delete the folder to start over.")

    torch.manual_seed(config.seed)
    net = build_network(plan.network, num_inputs, layout.num_outputs, deep_supervision=config.deep_supervision)
    init_info = {}
    if config.init_from and resumed is None:
        _, init_info = _load_init(config.init_from, net, configuration, fold, plans.labels, plan)
    net.to(ex.device).to(memory_format=ex.memory_format)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.initial_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if ex.use_scaler else None
    state = {"epoch": 0, "log": [], "ema": None, "best_ema": None, "elapsed_s": 0.0, "segment": 0, "iteration": 0,
             "partial_losses": []}
    if resumed is not None:
        net.load_state_dict(resumed["network_weights"])
        net.to(memory_format=ex.memory_format)
        if "optimizer_state" in resumed:
            optimizer.load_state_dict(resumed["optimizer_state"])
        if scaler is not None and resumed.get("grad_scaler_state"):
            scaler.load_state_dict(resumed["grad_scaler_state"])
        loop = resumed.get("loop_state") or {}
        state.update({k: loop[k] for k in state if k in loop})
        state["segment"] = int(state["segment"]) + 1
        ckpt_mod.set_rng_state(loop.get("rng") or {})
    model = net
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    n_out = (plan.network.n_stages - 1) if config.deep_supervision else 1
    loss_fn = SegmentationLoss(layout, plan.batch_dice, n_out, ddp=info.enabled)
    base = {"configuration": configuration, "plans_identifier": plans_identifier(plan),
            "num_input_channels": num_inputs, "num_outputs": layout.num_outputs,
            "labels": dict(plans.labels), "fold": str(fold), "format_version": ckpt_mod.FORMAT_VERSION}
    if info.is_main:
        # room for the checkpoints and the validation outputs, before hours of training, not at their end
        needed = _bytes_to_write(net, data_folder, val_cases if config.validate_at_end else (), layout.num_outputs,
                                 plans.num_channels)
        require_free_space(fold_dir, needed, "this training's checkpoints")
        fold_dir.mkdir(parents=True, exist_ok=True)
        ckpt_mod.cleanup_temporaries(fold_dir)
        write_json(fold_dir / "training_config.json", {**config.to_dict(), "resolved": {
            "device": str(ex.device), "autocast": str(ex.autocast_dtype), "memory_format": str(ex.memory_format),
            "workers": workers, "torch_threads": torch.get_num_threads(), "world_size": info.world_size,
            "train_cases": len(train_cases), "val_cases": len(val_cases), **init_info}})
    emit(progress, "stage", stage="train", message=(
        f"{configuration} fold {fold}: {len(train_cases)} training / {len(val_cases)} validation cases on {ex.device} "
        f"({ex.autocast_dtype or 'float32'}), {workers} augmentation worker(s), {torch.get_num_threads()} threads"))

    from AutoSegLib.training.epochs import EpochRunner
    runner = EpochRunner(model, net, optimizer, scaler, loss_fn, ex, plan, config, info, data_folder,
                         train_cases, val_cases or train_cases, workers, state, progress, configuration, fold,
                         previous_folder=previous_folder, cascade_values=cascade_values,
                         final_cases=val_cases if config.validate_at_end else ())
    state["elapsed_s"] = float(state["elapsed_s"]) + (time.monotonic() - t_start)  # setup counts against a budget
    try:
        runner.run(fold_dir, base)
    except WriteError as exc:  # a full disk mid-training: say what is left and how to go on
        raise WriteError(f"{exc} {_how_to_go_on(fold_dir, state)}") from exc
    finally:
        runner.close()
    if info.is_main:
        record = plans.budget_for(configuration)
        if record is not None and runner.mean_step_s:
            note = off_plan(record, runner.mean_step_s, sum(e["iterations"] for e in state["log"]))
            if note:
                from AutoSegLib.training.calibration import forget
                level, message = note
                if forget(record.machine):
                    message += (" Its cached measurement is dropped: the next plan (Slicer's quick mode included) "
                                "measures the device again.")
                emit(progress, "log", level=level, message=message)
        final = {**base, "network_weights": net.state_dict(), "epoch": state["epoch"]}
        ckpt_mod.save_checkpoint(fold_dir / "checkpoint_final.pt", final)
        if config.validate_at_end and val_cases:
            from AutoSegLib.training.validation import validate_fold
            emit(progress, "stage", stage="validation", message=f"predicting {len(val_cases)} validation cases")
            summary = validate_fold(net, plans, configuration, data_folder, val_cases, work_dir,
                                    fold_dir / "validation", ex, config.mirror_at_validation, progress,
                                    fold=fold)
            emit(progress, "result", fold_dir=str(fold_dir), mean_foreground_dice=summary["mean_foreground_dice"],
                 mean_dice=summary["mean_dice"])
        else:
            emit(progress, "result", fold_dir=str(fold_dir))
    dist_mod.barrier(info)
    dist_mod.shutdown(info)
    return fold_dir


# A budget plan's training iterations may take this many times their planned time, or its inverse, before
# training says the device is slower (or faster) than its calibration, which predicts the LA candidates within
# 0.9-1.3x (bench/README.md). The same 2-core Xeon measured its calibration probes 1.3-1.6x slower one
# afternoon than at night; a Zen 4 EPYC measured them 1.25-1.45x slower minutes after the machine started than
# an hour later, and trained at 0.66x the planned time. Past it the cached calibration is dropped
# (`calibration.forget`), so that the next plan measures the device as it is now instead of planning with
# stale figures for good (too coarse when they are slow, too few iterations when they are fast).
OFF_PLAN = 1.4


def off_plan(record, measured_step_s: float, iterations: int) -> Optional[Tuple[str, str]]:
    """(log level, message) when training iterations took ``OFF_PLAN`` times the ``step_seconds`` that the budget
    ``record`` (planning.plans.BudgetPlan) was planned with or more (a warning: fewer iterations than planned),
    or ``1 / OFF_PLAN`` times or less (information: the run used its time for more); else None."""
    ratio = measured_step_s / record.step_seconds if record.step_seconds > 0 else 1.0
    if 1.0 / OFF_PLAN < ratio < OFF_PLAN:
        return None
    said = (f"training iterations took {measured_step_s:.2f} s, {ratio:.2f}x the {record.step_seconds:.2f} s that "
            f"{record.configuration} was planned for ({record.device}, {record.precision}): {iterations} iterations "
            f"instead of about {record.iterations}.")
    if ratio >= OFF_PLAN:
        return "warning", (said + " The device is slower than when it was measured (other work running, power "
                           "saving, another machine); measured again, its plan for this budget is coarser.")
    return "info", (said + " The device is faster than when it was measured (it was busy then); measured again, "
                    "its plan for this budget may be finer.")


def _how_to_go_on(fold_dir: Path, state: dict) -> str:
    """After a failed checkpoint write: which checkpoint a --resume would continue from, if any."""
    kept = [n for n in ckpt_mod.RESUMABLE if (fold_dir / n).is_file()]
    if kept:
        return (f"Training stopped after {int(state['epoch'])} completed epoch(s); {kept[0]} from before is "
                f"intact: free some space and run the same command with --resume to continue from it.")
    return (f"Training stopped after {int(state['epoch'])} completed epoch(s), before any checkpoint was saved: "
            f"free some space and run the same command again (it starts anew).")


def _bytes_to_write(net, data_folder, val_cases, num_outputs: int, num_inputs: int) -> float:
    """Bytes a training writes at most at one time: checkpoint_latest and _best (weights + SGD momentum,
    each beside its previous copy while it is replaced), checkpoint_final, and the validation probabilities
    (float32 per output channel, about the size of the preprocessed image per input channel)."""
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    validation = 0.0
    for case in val_cases:
        try:
            validation += (Path(data_folder) / f"{case}.npy").stat().st_size * num_outputs / max(1, num_inputs)
        except OSError:
            pass
    return 2 * 2 * 2 * weights + weights + validation


def _load_init(source, net, configuration, fold, labels, plan):
    from AutoSegLib.training.init_from import load_initial_weights
    return load_initial_weights(source, net, configuration, fold, labels, plan)
