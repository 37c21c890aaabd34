"""`autoseg find-best WORK_DIR [--configurations ...] [--folds ...]`."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("work_dir", metavar="WORK_DIR", help="training work folder (trained/<configuration>/fold_<k>/)")
    parser.add_argument("-c", "--configurations", nargs="+", metavar="NAME",
                        help="configurations to compare (default: every one with finished cross-validation folds)")
    parser.add_argument("-f", "--folds", nargs="+", metavar="K",
                        help="folds to use (default 0 1 2 3 4; the ones present are used, with a warning)")
    parser.add_argument("--no-ensembles", action="store_true", help="do not score pairwise ensembles")


def run(args, progress) -> int:
    import math

    from AutoSegLib.errors import AutoSegError
    from AutoSegLib import api
    from AutoSegLib.postprocessing.selection import CV_FOLDS
    from AutoSegLib.progress import emit

    folds = None
    if args.folds:
        folds = [str(f) for f in args.folds]
        bad = [f for f in folds if f not in CV_FOLDS]
        if bad:
            raise AutoSegError(f"--folds: {bad} are not cross-validation folds; use some of {list(CV_FOLDS)} "
                               f"(fold 'all' has no validation cases to score).")
    result = api.find_best(args.work_dir, args.configurations, folds, allow_ensembles=not args.no_ensembles,
                           progress=progress)

    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    for name, score in sorted(result.candidate_scores.items(), key=lambda kv: kv[0]):
        mark = "  <- chosen" if name == result.chosen else ""
        emit(progress, "log", level="info", message=f"{name:<40} CV mean foreground Dice {f(score)}{mark}")
    steps = result.instructions.postprocessing
    emit(progress, "log", level="info",
         message=f"post-processing: {list(steps) if steps else 'none'}; Dice {f(result.dice_before)} -> "
                 f"{f(result.dice_after)}. Written: {args.work_dir}/inference.json, find_best_report.md")
    return 0
