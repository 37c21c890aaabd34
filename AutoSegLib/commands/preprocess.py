"""`autoseg preprocess WORK_DIR`: crop, resample and normalise the training cases of a planned work folder."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("work_dir", help="work folder holding plans.json and dataset.json (from `autoseg plan`)")
    parser.add_argument("--configurations", "-c", nargs="+", default=None, metavar="NAME",
                        help="configurations to preprocess (default: all in plans.json)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the machine's cores)")
    parser.add_argument("--force", action="store_true", help="redo cases that are already preprocessed")


def run(args, progress) -> int:
    from AutoSegLib.api import preprocess

    result = preprocess(args.work_dir, args.configurations, args.workers, args.force, progress)
    progress({"event": "log", "level": "info",
              "message": f"preprocessed {result['processed']} case(s), {result['skipped']} already done; "
                         + ", ".join(f"{k}: {v}" for k, v in result["folders"].items())})
    return 0
