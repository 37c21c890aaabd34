"""`autoseg verify DATASET`: check a raw dataset folder and report every problem found (writes nothing)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the machine's cores)")


def run(args, progress) -> int:
    from AutoSegLib import api

    report = api.verify(args.dataset, num_workers=args.workers, progress=progress)
    for w in report.warnings:
        progress({"event": "log", "level": "warning", "message": w})
    report.raise_if_failed()
    progress({"event": "result", "dataset": str(report.dataset.root), "cases": report.cases_checked,
              "warnings": len(report.warnings), "errors": 0})
    progress({"event": "log", "level": "info",
              "message": f"{report.dataset.root}: OK, {report.cases_checked} case(s) checked, "
                         f"{len(report.warnings)} warning(s)."})
    return 0
