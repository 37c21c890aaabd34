"""`autoseg preprocess WORK_DIR`: crop, resample and normalise the training cases of a planned work folder."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("work_dir", help="work folder holding plans.json and dataset.json (from `autoseg plan`)")
    parser.add_argument("--configurations", "-c", nargs="+", default=None, metavar="NAME",
                        help="configurations to preprocess (default: all in plans.json)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the machine's cores)")
    parser.add_argument("--force", action="store_true", help="redo cases that are already preprocessed")


def dataset_path_of(work_dir) -> str:
    """The raw dataset folder recorded in ``WORK/dataset.json`` ("dataset_path")."""
    import json
    from pathlib import Path

    from AutoSegLib.errors import AutoSegError

    path = Path(work_dir) / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AutoSegError(f"{path}: not found. {Path(work_dir)} is not a planned work folder; run "
                           f"`autoseg plan DATASET --output {work_dir}` first.") from None
    except json.JSONDecodeError as exc:
        raise AutoSegError(f"{path}: not valid JSON ({exc}). Re-run `autoseg plan`.") from None
    if not data.get("dataset_path"):
        raise AutoSegError(f"{path}: no \"dataset_path\" entry (the raw dataset folder). Re-run `autoseg plan "
                           f"DATASET --output {work_dir}`.")
    return data["dataset_path"]


def run(args, progress) -> int:
    from AutoSegLib.api import preprocess

    result = preprocess(args.work_dir, args.configurations, args.workers, args.force, progress)
    progress({"event": "log", "level": "info",
              "message": f"preprocessed {result['processed']} case(s), {result['skipped']} already done; "
                         + ", ".join(f"{k}: {v}" for k, v in result["folders"].items())})
    return 0
