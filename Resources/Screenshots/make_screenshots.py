"""Renders the README/extension screenshots headless from real MRML slice views (slicer-core, offscreen VTK).

Run from the repository root with the project environment; one command regenerates every picture::

    .venv/bin/python Resources/Screenshots/make_screenshots.py [--data ../shared/data] [--model /tmp/bench15v2/budget_float32_15min/work]
        [--case la_009] [--batch-cases la_009 la_012 la_017] [--only segmentation uncertainty effect batch]

``segmentation``: a BraTS 2015 case (FLAIR) is loaded through Slicer's volume storage node; its reference label
map becomes an AutoSeg segmentation by the module's own logic (`AutoSegLogic.apply_labels`) drawn by Slicer's
2-D segmentation displayable manager over the slice logic's blended background (``segmentation-axial.png``,
``segmentation-three-views.png``; ``--label-layer`` draws the module's export as the label layer instead).

``uncertainty``, ``effect``, ``batch`` (issue #14's tutorial, tutorial_pictures.py): a real prediction by a
real model, the AutoSeg LA model (an AutoSeg work folder, configuration 3d_budget, fold 0), installed by the
module's *Add model* path (``autoseg import-model`` into a temporary models folder: the model folder given is
never written) and run by the module's logic in its child process (``autoseg predict``), on held-out cases of
LA2018_1p25mm (fold 0's validation cases in the model's splits_final.json: never trained on). The batch is
three cases of which the last is deliberately broken (its image file truncated), as the module's test does.
Writes ``uncertainty-overlay.png``, ``effect-preview.png``, ``batch-results.png``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "Testing" / "slicer"), str(ROOT / "AutoSegModule"), str(ROOT)]

from slice_views import THREE_VIEWS, OffscreenSliceView, use_egl  # noqa: E402

PICTURES = ("segmentation", "uncertainty", "effect", "batch")
LA_DATASET = "LA2018_1p25mm"
DEFAULT_MODEL = Path("/tmp/bench15v2/budget_float32_15min/work")  # bench/budget_la.py --budgets 15
DEFAULT_CASE = "la_009"
DEFAULT_BATCH = ("la_009", "la_012", "la_017")   # held out from that model's training; the last is broken


class Missing(Exception):
    """An input the pictures need is not there (the message says which and how to give it)."""


def brats_pictures(h, data: Path, case: str, label_layer: bool, out_dir: Path) -> list:
    import numpy as np
    import matplotlib.pyplot as plt

    from AutoSegLib.io.images import read_image
    from AutoSegSlicer.segment.logic import AutoSegLogic
    from AutoSegSlicer.common.models import ModelInfo

    folder = data / "BraTS2015_4cases"
    images = sorted((folder / "imagesTr").glob(f"{case}_0000*"))
    labels = sorted((folder / "labelsTr").glob(f"{case}*"))
    if not (folder / "dataset.json").is_file() or not images or not labels:
        raise Missing(f"{folder}: no dataset.json or no image/label of case '{case}' (give --data and --brats-case).")
    dataset = json.loads((folder / "dataset.json").read_text())
    volume = h.load_volume(images[0], name="FLAIR")
    label, _ = read_image(labels[0])
    # The node's grid is the file's grid (right-handed file): the label array applies as is.
    model = ModelInfo(path=folder, name="BraTS labels", version="", description="", channel_names=("FLAIR",),
                      labels=tuple((n, int(v)) for n, v in dataset["labels"].items()), file_ending=".nii.gz",
                      configurations=(), folds=())
    logic = AutoSegLogic(scene=h.scene, models_dir=ROOT / "autoseg_work" / "models", python_executable=sys.executable)
    seg = logic.apply_labels(model, volume, label)
    seg.GetDisplayNode().SetOpacity2DFill(0.7)
    seg.GetDisplayNode().SetOpacity2DOutline(1.0)

    # centre of the tumour, in RAS, to put every view through it
    from AutoSegSlicer.common.conversion import node_ijk_to_ras
    k, j, i = np.argwhere(label > 0).mean(axis=0)
    centre = node_ijk_to_ras(volume) @ np.array([i, j, k, 1.0])
    views = {o: OffscreenSliceView(h, n, o) for n, o in THREE_VIEWS}
    # The segmentation's merged label map (the module's export: stored label values, the volume's grid)
    # as the slice views' label layer, coloured with the segments' colours.
    import slicer

    from AutoSegSlicer.common import conversion
    from AutoSegSlicer.correct import export
    merged, assignment = export.labelmap_array(seg, volume)
    colors = slicer.vtkMRMLColorTableNode()
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(assignment.values) + 1)
    colors.SetColor(0, "background", 0, 0, 0, 0)
    segs = seg.GetSegmentation()
    for sid, name, value in zip(assignment.segment_ids, assignment.names, assignment.values):
        colors.SetColor(value, name, *segs.GetSegment(sid).GetColor(), 1.0)
    h.scene.AddNode(colors)
    label_node = conversion.add_volume_from_array(h.scene, merged, conversion.geometry_from_node(volume),
                                                  "labels", labelmap=True)
    label_node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    shots = {}
    for orientation, view in views.items():
        view.show(volume, centre[:3], label_node if label_layer else None)
        shots[orientation] = view.render_rgb()
    plt.imsave(out_dir / "segmentation-axial.png", shots["Axial"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=100)
    for ax, (orientation, rgb) in zip(axes, shots.items()):
        ax.imshow(rgb)
        ax.set_title(orientation)
        ax.axis("off")
    names = [segs.GetNthSegment(n).GetName() for n in range(segs.GetNumberOfSegments())]
    handles = [plt.Rectangle((0, 0), 1, 1, color=segs.GetNthSegment(n).GetColor()) for n in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_dir / "segmentation-three-views.png")
    plt.close(fig)
    return [out_dir / "segmentation-axial.png", out_dir / "segmentation-three-views.png"]


def la_image(data: Path, case: str) -> Path:
    path = data / LA_DATASET / "imagesTr" / f"{case}_0000.nii.gz"
    if not path.is_file():
        raise Missing(f"{path}: LA case '{case}' not found (give --data, the folder holding {LA_DATASET}, and "
                      f"--case / --batch-cases).")
    return path


def check_model(model: Path, cases) -> list:
    """Notes on ``model`` (an AutoSeg work or model folder) and whether ``cases`` were held out of its fold 0."""
    if not (model / "dataset.json").is_file() or not (model / "plans.json").is_file():
        raise Missing(f"{model}: not an AutoSeg model or work folder (no dataset.json / plans.json). Give --model, "
                      f"e.g. a work folder trained on {LA_DATASET} (configuration 3d_budget, fold 0).")
    splits = model / "splits_final.json"
    if not splits.is_file():
        return [f"{model} has no splits_final.json: cannot check that the cases were held out of training."]
    trained_on = set(json.loads(splits.read_text())[0]["train"])
    return [f"case {c} is in fold 0's training cases of {model}: the pictures show a case the model has seen."
            for c in cases if c in trained_on]


def la_pictures(h, args, which, out_dir: Path, work: Path) -> list:
    """The uncertainty, effect and batch pictures on the LA model and cases (see the module docstring)."""
    import numpy as np

    from AutoSegSlicer.correct import export
    from AutoSegSlicer.segment.logic import AutoSegLogic
    import tutorial_pictures as tp

    model_dir = Path(args.model)
    for note in check_model(model_dir, [args.case, *args.batch_cases]):
        print("note:", note, file=sys.stderr)
    images = {c: la_image(Path(args.data), c) for c in dict.fromkeys([args.case, *args.batch_cases])}
    logic = AutoSegLogic(scene=h.scene, models_dir=work / "models", python_executable=sys.executable,
                         pythonpath=str(ROOT), work_root=work / "runs")
    print(f"installing {model_dir} (autoseg import-model) ...", file=sys.stderr)
    logic.add_model(model_dir, timeout=1800)
    (model,), _ = logic.models()
    written = []
    volume = h.load_volume(images[args.case], name=args.case)
    if "uncertainty" in which or "effect" in which:
        made = tp.uncertainty_picture(h, logic, model, volume, out_dir / "uncertainty-overlay.png",
                                      case_label=args.case)
        written.append(made.path)
        print("most uncertain slices:", *[t for t, _ in made.entries], sep="\n  ", file=sys.stderr)
    if "effect" in which:
        # ROI: a 40 mm cube centred on the whole-volume prediction's centroid: the atrium reaches beyond it, so
        # the preview shows the region's cut.
        label, _ = export.labelmap_array(made.nodes["segmentation"], volume)
        if not label.any():
            raise RuntimeError(f"the model found nothing in {args.case}: no place for the effect's ROI")
        from AutoSegSlicer.common.conversion import node_ijk_to_ras
        k, j, i = np.argwhere(label > 0).mean(axis=0)
        centre = (node_ijk_to_ras(volume) @ np.array([i, j, k, 1.0]))[:3]
        h.scene.RemoveNode(made.nodes["segmentation"])   # a fresh scene state for the effect: scan only
        from AutoSegSlicer.segment import uncertainty
        uncertainty.hide_overlay()
        written.append(tp.effect_preview_picture(h, logic, model, volume, out_dir / "effect-preview.png", centre,
                                                 (40.0, 40.0, 40.0)).path)
    if "batch" in which:
        folder = work / "batch_input"
        folder.mkdir()
        for n, case in enumerate(args.batch_cases):
            data = images[case].read_bytes()
            broken = n == len(args.batch_cases) - 1
            (folder / images[case].name).write_bytes(data[: len(data) // 3] if broken else data)   # truncated
        written.append(tp.batch_table_picture(h, logic, model, folder, work / "batch_output",
                                              out_dir / "batch-results.png").path)
    return written


def main(argv=None) -> int:
    use_egl()
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding BraTS2015_4cases and LA2018_1p25mm")
    parser.add_argument("--brats-case", default="brats_2013_pat0003")
    parser.add_argument("--label-layer", action="store_true",
                        help="draw the exported label map as the label layer instead of the segmentation itself")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="AutoSeg work/model folder of the LA model")
    parser.add_argument("--case", default=DEFAULT_CASE, help="LA case of the uncertainty and effect pictures")
    parser.add_argument("--batch-cases", nargs="+", default=list(DEFAULT_BATCH),
                        help="LA cases of the batch picture; the last one's file is truncated (the broken case)")
    parser.add_argument("--only", nargs="+", choices=PICTURES, default=list(PICTURES))
    parser.add_argument("--out", default=str(HERE), help="folder the PNG files go to")
    args = parser.parse_args(argv)
    if len(args.batch_cases) < 2:
        parser.error("--batch-cases needs at least two cases (the last one is broken on purpose)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from autoseg_harness import SlicerHarness
    from AutoSegLib.errors import AutoSegError

    work = Path(tempfile.mkdtemp(prefix="autoseg-screenshots-"))
    groups = [(brats_pictures, (Path(args.data), args.brats_case, args.label_layer, out_dir))] \
        if "segmentation" in args.only else []
    if set(args.only) - {"segmentation"}:
        groups.append((la_pictures, (args, set(args.only), out_dir, work)))
    written, errors = [], []
    try:
        for make, make_args in groups:
            h = SlicerHarness()   # a scene of its own (and its own Red/Yellow/Green views) per group
            try:
                written += make(h, *make_args)
            finally:
                errors += h.vtk_errors
                h.close()
    except (Missing, AutoSegError) as exc:
        print(f"make_screenshots: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if errors:
        print("VTK errors:", *errors, sep="\n", file=sys.stderr)
    for path in written:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
