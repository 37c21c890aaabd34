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


def write_work_files(work, dataset, fingerprint, plans) -> None:
    """dataset.json (raw copy + "dataset_path"), fingerprint.json, plans.json in the work folder."""
    from pathlib import Path

    from AutoSegLib.io.atomic import write_json

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "dataset.json", {**dataset.raw_json, "dataset_path": str(dataset.root)})
    fingerprint.to_json(work / "fingerprint.json")
    plans.to_json(work / "plans.json")


def run(args, progress) -> int:
    from pathlib import Path

    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.fingerprint.extract import extract_fingerprint
    from AutoSegLib.io.datasets import default_work_dir, load_dataset
    from AutoSegLib.planning.planner import plan_experiment
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    if args.workers is not None and args.workers < 1:
        raise AutoSegError(f"--workers must be at least 1; got {args.workers}.")
    dataset = load_dataset(args.dataset)
    work = Path(args.output) if args.output else default_work_dir(args.dataset)
    if work.resolve() == dataset.root or dataset.root in work.resolve().parents:
        raise AutoSegError(f"--output {work} is inside the dataset folder {dataset.root}; AutoSeg never writes "
                           f"there. Choose another folder.")
    # the fingerprint reads every case once and runs the integrity checks on what it read (verify)
    fingerprint = extract_fingerprint(dataset.root, num_workers=args.workers, progress=progress, verify=True)
    progress({"event": "stage", "stage": "plan", "message": f"planning for {args.gpu_memory_gb:g} GB"})
    plans = plan_experiment(fingerprint, dataset, gpu_memory_gb=args.gpu_memory_gb)
    if args.configurations:
        for name in args.configurations:
            plans.configuration(name)  # "did you mean" before anything is written
    write_work_files(work, dataset, fingerprint, plans)
    result = preprocess_dataset(dataset.root, plans, args.configurations, work, num_workers=args.workers,
                                force=args.force, progress=progress)
    progress({"event": "result", "work_dir": str(work), "configurations": sorted(plans.configurations),
              "preprocessed": result["folders"]})
    progress({"event": "log", "level": "info",
              "message": f"{work}: planned {', '.join(plans.configurations)}; preprocessed {result['processed']} "
                         f"case(s) ({result['skipped']} already done)."})
    return 0
