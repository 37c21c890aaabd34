"""`autoseg plan-and-preprocess DATASET`: verify + fingerprint + plan + preprocess in one go."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="work folder (default: ./autoseg_work/<dataset folder name>)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0,
                        help="memory budget per training process used to size patches and batches (default 8)")
    parser.add_argument("--configurations", "-c", nargs="+", default=None, metavar="NAME",
                        help="configurations to preprocess (default: all planned; with --time-budget-minutes the "
                             "budget configuration)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the machine's cores)")
    parser.add_argument("--force", action="store_true", help="redo cases that are already preprocessed")
    parser.add_argument("--force-fingerprint", action="store_true",
                        help="recompute the fingerprint even if DIR/fingerprint.json matches the dataset")
    from AutoSegLib.commands.plan import add_budget_arguments
    add_budget_arguments(parser)


KNOWN_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_budget", "2d_budget",
                        "3d_budget_fine")


def run(args, progress) -> int:
    from difflib import get_close_matches

    from AutoSegLib.api import plan_and_preprocess
    from AutoSegLib.commands.plan import budget_options, describe
    from AutoSegLib.errors import AutoSegError

    for name in args.configurations or ():
        if name not in KNOWN_CONFIGURATIONS:   # before anything is computed or written
            close = get_close_matches(name, KNOWN_CONFIGURATIONS, n=1)
            raise AutoSegError(f"unknown configuration {name!r}; the planner makes {list(KNOWN_CONFIGURATIONS)}."
                               + (f" Did you mean {close[0]!r}?" if close else ""))
    work, plans, result = plan_and_preprocess(args.dataset, args.output, args.gpu_memory_gb, args.configurations,
                                              args.workers, args.force, args.force_fingerprint, progress,
                                              **budget_options(args))
    describe(plans, progress)
    progress({"event": "result", "work_dir": str(work), "configurations": sorted(plans.configurations),
              "preprocessed": result["folders"]})
    progress({"event": "log", "level": "info",
              "message": f"{work}: planned {', '.join(plans.configurations)}; preprocessed {result['processed']} "
                         f"case(s) ({result['skipped']} already done)."})
    return 0
