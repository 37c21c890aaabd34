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
    from AutoSegLib import api
    from AutoSegLib.io.work_folder import FINGERPRINT_JSON

    work, fp = api.fingerprint(args.dataset, args.output, num_workers=args.workers, verify=not args.no_verify,
                               progress=progress)
    path = work / FINGERPRINT_JSON
    progress({"event": "log", "level": "info",
              "message": f"{fp.num_cases} case(s); median spacing {_fmt(fp.median_spacing)}, median shape after crop "
                         f"{_fmt(fp.median_shape)}; wrote {path}"})
    progress({"event": "result", "fingerprint": str(path), "work_dir": str(work), "cases": fp.num_cases})
    return 0


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
