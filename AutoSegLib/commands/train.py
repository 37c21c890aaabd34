"""`autoseg train WORK_DIR CONFIGURATION FOLD`: train one configuration on one fold (0-4) or on all cases.

Under ``torchrun --nproc_per_node N -m AutoSegLib train ...`` the processes train data-parallel.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dir", metavar="WORK_DIR", help="folder written by `autoseg plan-and-preprocess`")
    parser.add_argument("configuration", metavar="CONFIGURATION",
                        help="auto (what the plans recommend: the budget configuration when planned with "
                             "--time-budget-minutes, else 3d_fullres), 2d, 3d_fullres, 3d_budget, 3d_lowres or "
                             "3d_cascade_fullres (as in plans.json; the cascade needs all five 3d_lowres folds "
                             "trained first)")
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


def config_from_args(args, plans=None) -> "object":
    """Build the TrainingConfig from parsed arguments: a budget configuration's planned schedule (``plans``
    given) and the fine-tuning defaults where the user set nothing."""
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
    if plans is not None and plans.budget is not None and \
            plans.configuration(args.configuration).name == plans.budget.configuration:
        config = budget_defaults(config, plans.budget, explicit)
        explicit |= {"epochs"}  # fine-tuning keeps the iterations the time buys
    if args.init_from:
        config = finetune_defaults(config, explicit)
    return config


def run(args, progress) -> int:
    from pathlib import Path

    from AutoSegLib import api
    from AutoSegLib.planning.plans import Plans

    plans = Plans.from_json(Path(args.work_dir) / "plans.json") if (Path(args.work_dir) / "plans.json").is_file() else None
    config = config_from_args(args, plans)
    api.train(args.work_dir, args.configuration, args.fold, config, output_dir=args.output, progress=progress,
              resume=args.resume)
    return 0
