"""Renders the README/extension screenshots headless from real MRML slice views (slicer-core, offscreen VTK).

Run from the repository root with the project environment::

    .venv/bin/python Resources/Screenshots/make_screenshots.py [--data ../shared/data]

A BraTS 2015 case (FLAIR) is loaded through Slicer's volume storage node; its reference label map is turned
into an AutoSeg segmentation by the module's own logic (`AutoSegLogic.apply_labels`: one segment per
label, label values as tags, colours) and drawn by Slicer's own 2-D segmentation displayable manager
(fill + outline) over the slice logic's blended background: the pipeline of a Slicer slice view (the
views must be "mapped in layout" and the background image actor drawn behind the managers' actors).
``--label-layer`` draws the module's export (`export.labelmap_array`) as the label layer instead. Writes
``segmentation-axial.png`` and ``segmentation-three-views.png`` next to this script.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "Testing" / "slicer"), str(ROOT / "AutoSegModule"), str(ROOT)]


class OffscreenSliceView:
    """One slice view: slice logic (background/foreground/label layers) + 2-D displayable managers."""

    def __init__(self, harness, name, orientation, size=(512, 512)):
        import slicer
        import vtk

        self.size = size
        # Mesa EGL renders without an X server (VTK_DEFAULT_OPENGL_WINDOW is set in main()).
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # displayable managers expect one
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(harness.app_logic)
        for dm in ("vtkMRMLSegmentationsDisplayableManager2D",):
            if not factory.IsDisplayableManagerRegistered(dm):
                factory.RegisterDisplayableManager(dm)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(harness.app_logic)
        if harness.app_logic.GetSliceLogics() is None:
            harness.app_logic.SetSliceLogics(vtk.vtkCollection())
        harness.app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(harness.scene)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.node.SetMappedInLayout(1)  # displayable managers draw only in views shown in the layout
        self.managers.SetMRMLDisplayableNode(self.node)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()  # under the displayable managers' actors
        self.renderer.AddViewProp(self.actor)

    def show(self, background, offset_ras=None, label=None):
        composite = self.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())
            composite.SetLabelOpacity(0.55)
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground(*self.size) if _takes_size(self.logic.FitSliceToBackground) \
            else self.logic.FitSliceToBackground()
        if offset_ras is not None:
            self.node.JumpSliceByOffsetting(*offset_ras)
        self.actor.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())

    def render_rgb(self):
        import vtk
        from vtk.util import numpy_support

        self.managers.RequestRender()
        self.window.Render()
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        img = grab.GetOutput()
        w, h, _ = img.GetDimensions()
        arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
        return arr.copy()


def _takes_size(method) -> bool:
    return "int" in (method.__doc__ or "").split("\n")[0]


def main(argv=None):
    import os

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--case", default="brats_2013_pat0003")
    parser.add_argument("--label-layer", action="store_true",
                        help="draw the exported label map as the label layer instead of the segmentation itself")
    args = parser.parse_args(argv)

    from autoseg_harness import SlicerHarness
    from AutoSegLib.io.images import read_image
    from AutoSegSlicer.logic import AutoSegLogic
    from AutoSegSlicer.models import ModelInfo

    data = Path(args.data) / "BraTS2015_4cases"
    dataset = json.loads((data / "dataset.json").read_text())
    image = sorted((data / "imagesTr").glob(f"{args.case}_0000*"))[0]
    label_file = sorted((data / "labelsTr").glob(f"{args.case}*"))[0]
    h = SlicerHarness()
    volume = h.load_volume(image, name="FLAIR")
    label, _ = read_image(label_file)
    # The node's grid is the file's grid (right-handed file): the label array applies as is.
    labels = tuple((n, int(v)) for n, v in dataset["labels"].items())
    model = ModelInfo(path=data, name="BraTS labels", version="", description="", channel_names=("FLAIR",),
                      labels=labels, file_ending=".nii.gz", configurations=(), folds=())
    logic = AutoSegLogic(scene=h.scene, models_dir=ROOT / "autoseg_work" / "models", python_executable=sys.executable)
    seg = logic.apply_labels(model, volume, label)
    seg.GetDisplayNode().SetOpacity2DFill(0.7)
    seg.GetDisplayNode().SetOpacity2DOutline(1.0)

    # centre of the tumour, in RAS, to put every view through it
    from AutoSegSlicer.conversion import node_ijk_to_ras
    k, j, i = np.argwhere(label > 0).mean(axis=0)
    centre = node_ijk_to_ras(volume) @ np.array([i, j, k, 1.0])
    views = {o: OffscreenSliceView(h, n, o) for n, o in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))}
    offsets = {o: centre[:3] for o in ("Axial", "Sagittal", "Coronal")}
    # The segmentation's merged label map (the module's export: stored label values, the volume's grid)
    # as the slice views' label layer, coloured with the segments' colours.
    import slicer

    from AutoSegSlicer import conversion, export
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
        view.show(volume, offsets[orientation], label_node if args.label_layer else None)
        shots[orientation] = view.render_rgb()
    out_dir = Path(__file__).resolve().parent
    plt.imsave(out_dir / "segmentation-axial.png", shots["Axial"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=100)
    for ax, (orientation, rgb) in zip(axes, shots.items()):
        ax.imshow(rgb)
        ax.set_title(orientation)
        ax.axis("off")
    names = [seg.GetSegmentation().GetNthSegment(n).GetName() for n in range(seg.GetSegmentation().GetNumberOfSegments())]
    colors = [seg.GetSegmentation().GetNthSegment(n).GetColor() for n in range(len(names))]
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_dir / "segmentation-three-views.png")
    if h.vtk_errors:
        print("VTK errors:", *h.vtk_errors, sep="\n", file=sys.stderr)
    for name in ("segmentation-axial.png", "segmentation-three-views.png"):
        print(out_dir / name)
    h.close()


if __name__ == "__main__":
    main()
