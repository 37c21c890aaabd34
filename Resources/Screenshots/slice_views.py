"""Offscreen MRML slice views for the screenshots: Slicer's own slice pipeline, headless (slicer-core + Mesa EGL).

A view is what a Slicer slice widget draws, without Qt: a `vtkMRMLSliceLogic` (slice node, composite node,
background / foreground / label layers blended into one image) drawn by a background image actor, with the
2-D displayable managers of the segmentations and markups modules drawing over it (segment fill and outline,
markups ROI handles). The views' slice and composite nodes are in the scene like the application's, so the
module's own code that moves views (``JumpAllSlices``) or sets their layers (``slicer.util.setSliceViewerLayers``)
acts on them.

`use_egl` must run before the first render window is made (it selects VTK's EGL window: no X server needed).
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple

import numpy as np

#: Red, Yellow, Green: the names and orientations of Slicer's three slice views.
THREE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))
DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")


def use_egl() -> None:
    """Render without an X server (Mesa EGL); an explicit ``VTK_DEFAULT_OPENGL_WINDOW`` is kept."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def add_markups_logic(harness):
    """Register Slicer's markups module logic with the harness's application logic (the markups displayable
    manager finds the ROI widget through it), once per harness; returns it. The harness keeps the Python
    reference (the application logic's map alone does not keep the logic alive)."""
    import slicer

    logic = getattr(harness, "markups", None)
    if logic is None:
        logic = slicer.vtkSlicerMarkupsLogic()
        logic.SetMRMLApplicationLogic(harness.app_logic)
        logic.SetMRMLScene(harness.scene)
        harness.app_logic.SetModuleLogic("Markups", logic)
        harness.markups = logic
    return logic


def add_interaction_node(scene):
    """The application's interaction node singleton (the displayable managers look for it), if missing."""
    import slicer

    node = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    if node is None:
        node = slicer.vtkMRMLInteractionNode()
        node.SetSingletonTag("Singleton")
        scene.AddNode(node)
    return node


class OffscreenSliceView:
    """One slice view: slice logic (background/foreground/label layers) + 2-D displayable managers."""

    def __init__(self, harness, name, orientation, size=(512, 512)):
        import slicer
        import vtk

        use_egl()
        self.size = tuple(int(s) for s in size)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*self.size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # displayable managers expect one
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        add_markups_logic(harness)
        add_interaction_node(harness.scene)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(harness.app_logic)
        for dm in DISPLAYABLE_MANAGERS:
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

    @property
    def composite(self):
        return self.logic.GetSliceCompositeNode()

    def show(self, background, offset_ras=None, label=None):
        """Background volume (and label layer), fitted to the view; optionally moved through ``offset_ras``."""
        composite = self.composite
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

    def render_rgb(self) -> np.ndarray:
        """The view as an (height, width, 3) uint8 array, top row first."""
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

    def pixel_to_ras(self) -> np.ndarray:
        """(height, width, 3) RAS of each pixel centre of `render_rgb`'s array (top row first)."""
        import slicer

        xy_to_ras = slicer.util.arrayFromVTKMatrix(self.node.GetXYToRAS())
        w, h = self.size
        rows, cols = np.mgrid[0:h, 0:w].astype(float)
        xy = np.stack([cols + 0.5, (h - 1 - rows) + 0.5, np.zeros_like(rows), np.ones_like(rows)], axis=-1)
        return (xy @ xy_to_ras.T)[..., :3]


def _takes_size(method) -> bool:
    return "int" in (method.__doc__ or "").split("\n")[0]


def three_views(harness, background, size=(512, 512)) -> Dict[str, OffscreenSliceView]:
    """Red (axial), Yellow (sagittal) and Green (coronal) views of ``background`` fitted to it, keyed by
    orientation. One set per harness (like the application's layout): later calls show ``background`` in the
    same views (``size`` is that of the first call)."""
    views = getattr(harness, "slice_views", None)
    if views is None:
        views = {orientation: OffscreenSliceView(harness, name, orientation, size) for name, orientation in THREE_VIEWS}
        harness.slice_views = views
    for view in views.values():
        view.show(background)
    return views


def render_all(views: Dict[str, OffscreenSliceView]) -> Dict[str, np.ndarray]:
    return {orientation: view.render_rgb() for orientation, view in views.items()}


def voxel_values_at_pixels(view: OffscreenSliceView, volume, values: np.ndarray) -> np.ndarray:
    """``values`` (z, y, x, on ``volume``'s grid) at each pixel of ``view``'s picture (nearest voxel; NaN
    outside the volume): which voxel a pixel shows, for checks of what was drawn where."""
    import slicer
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(m)
    ras_to_ijk = slicer.util.arrayFromVTKMatrix(m)
    ras = view.pixel_to_ras()
    ijk = ras @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]
    idx = np.rint(ijk).astype(int)
    shape = values.shape
    inside = np.all((idx >= 0) & (idx < np.array([shape[2], shape[1], shape[0]])), axis=-1)
    out = np.full(idx.shape[:2], np.nan)
    i, j, k = idx[..., 0][inside], idx[..., 1][inside], idx[..., 2][inside]
    out[inside] = values[k, j, i]
    return out


def colour_samples(display_node, lo: float, hi: float, n: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` values from ``lo`` to ``hi`` and the RGB a scalar volume display node maps them to (its colour
    node over its window/level), for a colour bar beside the views."""
    color_node = display_node.GetColorNode()
    lut = color_node.GetScalarsToColors()
    table_lo, table_hi = lut.GetRange()
    win_lo = display_node.GetLevel() - display_node.GetWindow() / 2
    win_hi = display_node.GetLevel() + display_node.GetWindow() / 2
    values = np.linspace(lo, hi, n)
    rgb = np.zeros((n, 3))
    for i, v in enumerate(values):
        t = (v - win_lo) / (win_hi - win_lo)
        c = [0.0, 0.0, 0.0]
        lut.GetColor(table_lo + min(max(t, 0.0), 1.0) * (table_hi - table_lo), c)
        rgb[i] = c
    return values, rgb


def save_png(figure, path) -> None:
    """Save a matplotlib figure as a palette PNG (a few hundred KB at most for README pictures)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(str(path),
                                                                                            optimize=True)


def views_figure(shots: Dict[str, np.ndarray], titles: Sequence[str], figsize=(12, 4.4), dpi=100, footer=0.0):
    """A matplotlib figure with the views side by side under their titles; ``footer``: fraction of the
    height kept free below (legends, text)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shots), figsize=figsize, dpi=dpi)
    axes = np.atleast_1d(axes)
    for ax, title, rgb in zip(axes, titles, shots.values()):
        ax.imshow(rgb)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout(rect=(0, footer, 1, 1))
    return fig, axes
