"""`autoseg train WORK_DIR CONFIGURATION FOLD`: train one configuration on one fold (0-4) or on all cases.

Under ``torchrun --nproc_per_node N -m AutoSegLib train ...`` the processes train data-parallel.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dir", metavar="WORK_DIR", help="folder written by `autoseg plan-and-preprocess`")
    parser.add_argument("configuration", metavar="CONFIGURATION",
                        help="auto (what the plans recommend: the budget configuration when planned with "
                             "--time-budget-minutes, both stages in order when it was planned coarse to fine; "
                             "else 3d_fullres), 2d, 3d_fullres, 3d_budget, 3d_budget_fine, 3d_lowres or "
                             "3d_cascade_fullres (as in plans.json; the cascade needs all five 3d_lowres folds "
                             "trained first, 3d_budget_fine the same fold of 3d_budget)")
    parser.add_argument("fold", metavar="FOLD", help="cross-validation fold 0-4, or 'all' to train on every case")
    parser.add_argument("--epochs", type=int, default=None,
                        help="number of epochs (default 1000; 100 with --init-from)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None, help="training batches per epoch (default 250)")
    parser.add_argument("--val-iterations", type=int, default=None, help="validation batches per epoch (default 50)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="initial learning rate (default 0.01, with --init-from too)")
    parser.add_argument("--time-budget-minutes", type=float, default=None,
                        help="the whole training, its validation included, ends within this time (default for a "
                             "budget configuration: the planned budget; its schedule is rescaled to this time)")
    parser.add_argument("--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: float16 mixed precision on CUDA, bfloat16 on CPUs that support it natively")
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation worker processes (default: 1 on CPU, up to 12 on a GPU; 0 = in-process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 12345)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt of this fold")
    parser.add_argument("--init-from", metavar="MODEL_OR_CHECKPOINT", default=None,
                        help="fine-tune: start from the weights of a model folder, work folder or checkpoint "
                             "(same labels and architecture); shorter default schedule")
    parser.add_argument("--output", default=None,
                        help="root for trained/<configuration>/fold_<k>/ (default: WORK_DIR)")
    parser.add_argument("--no-mirroring", action="store_true",
                        help="no test-time mirroring in the fold's final validation (8x faster in 3D)")
    parser.add_argument("--no-validation", action="store_true", help="skip the fold's final full validation")


def config_from_args(args, plans=None, configuration: "str | None" = None) -> "object":
    """Build the TrainingConfig of ``configuration`` (default ``args.configuration``) from parsed arguments: a
    budget configuration's planned schedule (``plans`` given) and the fine-tuning defaults where the user set
    nothing. ``auto`` with a coarse-to-fine pair shares a --time-budget-minutes between the stages as it was
    planned (a third, two thirds); a stage named alone gets all of it."""
    from AutoSegLib.training.config import TrainingConfig, budget_defaults, finetune_defaults

    mapping = {"epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch", "val_iterations": "val_iterations",
               "learning_rate": "initial_lr", "time_budget_minutes": "time_budget_minutes", "workers": "num_workers",
               "threads": "torch_threads", "seed": "seed"}
    values = {field: getattr(args, arg) for arg, field in mapping.items() if getattr(args, arg, None) is not None}
    config = TrainingConfig(device=args.device, precision=args.precision, init_from=args.init_from,
                            mirror_at_validation=not args.no_mirroring, validate_at_end=not args.no_validation,
                            **values)
    explicit = set(values) | {k for k in ("device", "precision") if getattr(args, k) != "auto"}
    if args.no_mirroring:
        explicit.add("mirror_at_validation")
    record = plans.budget_for(plans.configuration(configuration or args.configuration).name) \
        if plans is not None else None
    if record is not None:
        if "time_budget_minutes" in explicit and args.configuration == "auto" and len(plans.stages("auto")) > 1:
            total = sum(plans.budget_for(c).minutes for c in plans.stages("auto"))
            config = config.replace(time_budget_minutes=config.time_budget_minutes * record.minutes / total)
        config = budget_defaults(config, record, explicit)
        explicit |= {"epochs"}  # fine-tuning keeps the iterations the time buys
    if args.init_from:
        config = finetune_defaults(config, explicit)
    return config


def run(args, progress) -> int:
    from pathlib import Path

    from AutoSegLib import api
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.planning.plans import Plans

    plans = Plans.from_json(Path(args.work_dir) / "plans.json") if (Path(args.work_dir) / "plans.json").is_file() else None
    stages = plans.stages(args.configuration) if plans is not None and args.configuration == "auto" else \
        (args.configuration,)
    if len(stages) > 1 and args.output:
        raise AutoSegError(f"--output names one fold folder, and auto trains {' then '.join(stages)}: train them one "
                           f"at a time, each with its --output.")
    for stage in stages:
        if stage != stages[-1] and args.resume and _finished(Path(args.work_dir), stage, args.fold):
            progress({"event": "log", "level": "info", "message": f"{stage} fold {args.fold} is trained already"})
            continue
        config = config_from_args(args, plans, stage)
        api.train(args.work_dir, stage, args.fold, config, output_dir=args.output, progress=progress,
                  resume=args.resume)
    return 0


def _finished(work_dir, configuration: str, fold) -> bool:
    from AutoSegLib.io.work_folder import fold_dir
    folder = fold_dir(work_dir, configuration, fold)
    return (folder / "checkpoint_final.pt").is_file()
