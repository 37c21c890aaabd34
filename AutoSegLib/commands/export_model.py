"""`autoseg export-model WORK_OR_MODEL_DIR -o ARCHIVE`."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="WORK_OR_MODEL_DIR", help="training work folder or model folder")
    parser.add_argument("-o", "--output", required=True, metavar="ARCHIVE",
                        help="archive to write (.zip, default; .tar or .tar.gz also accepted)")
    parser.add_argument("-c", "--configurations", nargs="+", metavar="NAME",
                        help="configurations to include (default: every one with finished folds)")
    parser.add_argument("-f", "--folds", nargs="+", metavar="K", help="folds to include (default: all finished)")
    parser.add_argument("--name", help="model name recorded in model.json (default: the dataset's name)")
    parser.add_argument("--model-version", help="model version recorded in model.json")
    parser.add_argument("--description", help="description recorded in model.json")


def run(args, progress) -> int:
    from AutoSegLib import api
    from AutoSegLib.progress import emit

    meta = {k: v for k, v in (("name", args.name), ("version", args.model_version),
                              ("description", args.description)) if v}
    path = api.export_model(args.source, args.output, args.configurations, args.folds, meta, progress=progress)
    emit(progress, "log", level="info", message=f"model archive written: {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)")
    return 0
