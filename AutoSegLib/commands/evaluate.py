"""`autoseg evaluate PRED_DIR REF_DIR --output DIR [--labels dataset.json]`."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted label maps (<case>.nii.gz ...)")
    parser.add_argument("ref_dir", metavar="REF_DIR", help="folder of reference label maps, named like the predictions")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="where summary.json, per_case.csv and summary.csv are written")
    parser.add_argument("--labels", metavar="DATASET_JSON",
                        help="dataset.json (or a model/work folder holding one) naming the labels/regions and the "
                             "ignore label; default: every non-zero value found in the references")
    parser.add_argument("--num-workers", type=int, default=1, help="cases scored in parallel (default 1)")
    parser.add_argument("--no-surface", action="store_true", help="skip HD95/ASSD (much faster)")


def load_label_layout(path):
    """LabelLayout from a dataset.json file or a folder holding one."""
    import json
    from pathlib import Path

    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.labels import LabelLayout

    p = Path(path)
    if p.is_dir():
        p = p / "dataset.json"
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise AutoSegError(f"{p}: not found; --labels takes a dataset.json (or a folder holding one).") from None
    except json.JSONDecodeError as exc:
        raise AutoSegError(f"{p}: not valid JSON ({exc}).") from None
    if not isinstance(d, dict) or "labels" not in d:
        raise AutoSegError(f"{p}: no 'labels' mapping; expected a dataset.json like "
                           f"{{\"labels\": {{\"background\": 0, \"organ\": 1}}}}.")
    return LabelLayout.from_dataset_labels(d["labels"], d.get("regions_class_order"), source=str(p))


def run(args, progress) -> int:
    import math

    from AutoSegLib import api
    from AutoSegLib.progress import emit

    layout = load_label_layout(args.labels) if args.labels else None
    summary = api.evaluate(args.pred_dir, args.ref_dir, args.output, layout, num_workers=args.num_workers,
                           surface=not args.no_surface, progress=progress)

    def f(v, digits=4):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    for name in summary["labels"]:
        m = summary["mean"][name]
        emit(progress, "log", level="info",
             message=f"{name}: Dice {f(m['Dice'])}  IoU {f(m['IoU'])}  HD95 {f(m['HD95_mm'], 2)} mm  "
                     f"ASSD {f(m['ASSD_mm'], 2)} mm  ({summary['n_defined'][name]['Dice']} case(s))")
    emit(progress, "log", level="info", message=f"foreground mean Dice {f(summary['foreground_mean']['Dice'])}")
    emit(progress, "result", output=str(args.output), foreground_mean_dice=summary["foreground_mean"]["Dice"],
         cases=len(summary["cases"]))
    return 0
