"""`autoseg plan DATASET --output DIR`: fingerprint (unless DIR has a current one) and plans into DIR."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--output", "-o", default=None,
                        help="work folder (default: ./autoseg_work/<dataset folder name>); never the dataset folder")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0,
                        help="memory budget per training process that sets patch and batch size (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the machine's cores)")
    parser.add_argument("--force-fingerprint", action="store_true",
                        help="recompute the fingerprint even if DIR/fingerprint.json matches the dataset")


def run(args, progress) -> int:
    from AutoSegLib.api import plan

    work, plans = plan(args.dataset, args.output, args.gpu_memory_gb, args.workers, args.force_fingerprint, progress)
    for name, c in plans.configurations.items():
        progress({"event": "log", "level": "info",
                  "message": f"{name}: spacing {_fmt(c.spacing)}, patch {c.patch_size}, batch {c.batch_size}, "
                             f"{c.network.n_stages} stages, normalisation {list(c.normalization)}"})
    progress({"event": "result", "plans": str(work / "plans.json"), "fingerprint": str(work / "fingerprint.json"),
              "work_dir": str(work), "configurations": list(plans.configurations)})
    return 0


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
