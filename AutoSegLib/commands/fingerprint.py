"""`autoseg fingerprint DATASET --output DIR`: extract the dataset fingerprint into DIR/fingerprint.json."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--output", "-o", default=None,
                        help="work folder (default: ./autoseg_work/<dataset folder name>); never the dataset folder")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the machine's cores)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the per-case integrity checks (they cost no extra reading)")


def run(args, progress) -> int:
    from AutoSegLib.fingerprint.extract import extract_fingerprint
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import resolve_work_dir, write_work_dataset_json

    work = resolve_work_dir(args.dataset, args.output)
    dataset = load_dataset(args.dataset)
    fp = extract_fingerprint(dataset.root, num_workers=args.workers, progress=progress, verify=not args.no_verify)
    path = fp.to_json(work / "fingerprint.json")
    write_work_dataset_json(dataset, work)
    progress({"event": "log", "level": "info",
              "message": f"{fp.num_cases} case(s); median spacing {_fmt(fp.median_spacing)}, median shape after crop "
                         f"{_fmt(fp.median_shape)}; wrote {path}"})
    progress({"event": "result", "fingerprint": str(path), "work_dir": str(work), "cases": fp.num_cases})
    return 0


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
