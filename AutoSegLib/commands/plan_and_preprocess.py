"""`autoseg plan-and-preprocess DATASET`: verify + fingerprint + plan + preprocess in one go."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="work folder (default: ./autoseg_work/<dataset folder name>)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0,
                        help="memory budget per training process used to size patches and batches (default 8)")
    parser.add_argument("--configurations", "-c", nargs="+", default=None, metavar="NAME",
                        help="configurations to preprocess (default: all planned)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the machine's cores)")
    parser.add_argument("--force", action="store_true", help="redo cases that are already preprocessed")
    parser.add_argument("--force-fingerprint", action="store_true",
                        help="recompute the fingerprint even if DIR/fingerprint.json matches the dataset")


def write_work_files(work, dataset, fingerprint, plans) -> None:
    """dataset.json (raw copy + "dataset_path"), fingerprint.json and plans.json in the work folder."""
    from pathlib import Path

    from AutoSegLib.io.datasets import write_work_dataset_json

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    write_work_dataset_json(dataset, work)
    fingerprint.to_json(work / "fingerprint.json")
    plans.to_json(work / "plans.json")


KNOWN_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def run(args, progress) -> int:
    from difflib import get_close_matches

    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.datasets import load_dataset, resolve_work_dir, write_work_dataset_json
    from AutoSegLib.planning.planner import plan_experiment
    from AutoSegLib.planning.workdir import fingerprint_for
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    if args.workers is not None and args.workers < 1:
        raise AutoSegError(f"--workers must be at least 1; got {args.workers}.")
    if not args.gpu_memory_gb > 0:
        raise AutoSegError(f"--gpu-memory-gb must be a positive number of gigabytes; got {args.gpu_memory_gb}.")
    for name in args.configurations or ():
        if name not in KNOWN_CONFIGURATIONS:   # before anything is computed or written
            close = get_close_matches(name, KNOWN_CONFIGURATIONS, n=1)
            raise AutoSegError(f"unknown configuration {name!r}; the planner makes {list(KNOWN_CONFIGURATIONS)}."
                               + (f" Did you mean {close[0]!r}?" if close else ""))
    work = resolve_work_dir(args.dataset, args.output)
    dataset = load_dataset(args.dataset)
    # the fingerprint reads every case once and runs the integrity checks on what it read (verify); a
    # current WORK/fingerprint.json is reused
    fingerprint = fingerprint_for(dataset, work, num_workers=args.workers, progress=progress,
                                  force=args.force_fingerprint)
    progress({"event": "stage", "stage": "plan", "message": f"planning for {args.gpu_memory_gb:g} GB"})
    plans = plan_experiment(fingerprint, dataset, gpu_memory_gb=args.gpu_memory_gb)
    if args.configurations:
        for name in args.configurations:
            plans.configuration(name)  # planned for this dataset? (3d_lowres is not always)
    plans.to_json(work / "plans.json")
    write_work_dataset_json(dataset, work)
    result = preprocess_dataset(dataset.root, plans, args.configurations, work, num_workers=args.workers,
                                force=args.force, progress=progress)
    progress({"event": "result", "work_dir": str(work), "configurations": sorted(plans.configurations),
              "preprocessed": result["folders"]})
    progress({"event": "log", "level": "info",
              "message": f"{work}: planned {', '.join(plans.configurations)}; preprocessed {result['processed']} "
                         f"case(s) ({result['skipped']} already done)."})
    return 0
