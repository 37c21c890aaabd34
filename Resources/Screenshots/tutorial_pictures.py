"""The README tutorial's pictures of issue #14, each made by the module's own logic on slicer-core.

- `uncertainty_picture` ("Where to correct"): `AutoSegLogic.segment` with *Save uncertainty* (the real
  ``autoseg predict --save-uncertainty`` child), then what the panel's "Where to correct" section does
  (widget_uncertainty.py): the list from `uncertainty.slice_entries`, its first (most uncertain) entry chosen
  (`uncertainty.jump_to`), *Show uncertainty* on (`uncertainty.show_overlay` at the slider's default opacity).
- `effect_preview_picture` (the Segment Editor effect): a markups ROI as the region, `EffectLogic.region_box`,
  `start_preview` / `finish_preview` (the model in its child process, the preview segmentation node as the
  effect shows it), drawn with the ROI before Apply.
- `batch_table_picture` ("Batch segmentation"): `BatchLogic.start` / `finish` over a folder of cases (one
  child), then the cells of the resulting vtkMRMLTableNode. Slicer shows a table node in a qMRMLTableView,
  a Qt widget that cannot run headless; the picture draws the node's own cell texts (``GetCellText``, the
  strings the view shows) in a grid with the node's column headers.

Each function renders real MRML views (slice_views.py) and writes a PNG; it returns what it made, so that
a test can check that what the module drew is in the picture.
"""
from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

from slice_views import colour_samples, render_all, save_png, three_views, views_figure

MODULE_UI = Path(__file__).resolve().parents[2] / "AutoSegModule" / "Resources" / "UI" / "AutoSeg.ui"
ORIENTATION_AXES = {"axial": "Axial", "sagittal": "Sagittal", "coronal": "Coronal"}


@dataclass
class Pictured:
    """What a picture function made: the nodes, the renders (by orientation) and the PNG written."""
    path: Path
    nodes: Dict[str, object] = field(default_factory=dict)
    before: Dict[str, np.ndarray] = field(default_factory=dict)
    after: Dict[str, np.ndarray] = field(default_factory=dict)
    views: Dict[str, object] = field(default_factory=dict)
    entries: List = field(default_factory=list)


def panel_opacity(ui_file: Path = MODULE_UI) -> float:
    """The uncertainty overlay's opacity as the panel starts: the default of its slider in the .ui file, 0..1."""
    for widget in ET.parse(str(ui_file)).iter("widget"):
        if widget.get("name") == "uncertaintyOpacitySlider":
            value = widget.find("property[@name='value']/number")
            if value is not None:
                return int(value.text) / 100.0
    raise RuntimeError(f"{ui_file}: no uncertaintyOpacitySlider with a value; the panel's opacity is unknown.")


def outline_only(segmentation_node, thickness: int = 2) -> None:
    """Show a segmentation as outlines in the slice views (the uncertainty underneath stays visible)."""
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(int(thickness))


def _colour_bar(fig, display_node, lower: float, rect) -> None:
    """A colour bar of the overlay's colours (the display node's colour node over its window) from ``lower``."""
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.colorbar import ColorbarBase

    values, rgb = colour_samples(display_node, lower, 1.0, 128)
    ax = fig.add_axes(rect)
    ColorbarBase(ax, cmap=ListedColormap(rgb), norm=Normalize(values[0], values[-1]), orientation="horizontal")
    ax.set_xlabel("uncertainty (0: sure, 1: every label equally likely); below "
                  f"{lower:g} not drawn", fontsize=8)
    ax.tick_params(labelsize=8)


# -- Where to correct -------------------------------------------------------------------------------------------
def uncertainty_picture(harness, logic, model, volume, out, size=(512, 512), timeout: float = 1800,
                        case_label: str = "") -> Pictured:
    """Segment ``volume`` with *Save uncertainty*, go to the most uncertain slice of the panel's list, show the
    overlay; render the three views before and after the overlay and write ``out``."""
    from AutoSegSlicer.segment import uncertainty
    from AutoSegSlicer.segment.options import PredictOptions

    seg = logic.segment(model, [volume], PredictOptions(save_uncertainty=True), timeout=timeout)
    found = logic.last_job.uncertainty
    if found is None or found.volume is None:
        raise RuntimeError("The prediction left no uncertainty volume: is --save-uncertainty in this AutoSegLib?")
    entries = uncertainty.slice_entries(found.row)
    if not entries:
        raise RuntimeError(f"The prediction summary lists no uncertain slices: {found.row}")
    outline_only(seg)
    views = three_views(harness, volume, size)
    uncertainty.jump_to(harness.scene, entries[0][1])          # the list's first entry clicked
    before = render_all(views)
    uncertainty.show_overlay(volume, found.volume, opacity=panel_opacity())   # "Show uncertainty" ticked
    after = render_all(views)

    chosen = entries[0][0]
    titles = [f"{o}" + ("  (the chosen slice)" if ORIENTATION_AXES.get(chosen.split()[0]) == o else "")
              for o in after]
    fig, _ = views_figure(after, titles, figsize=(12, 5.6), footer=0.2)
    mean = found.row.get("mean_uncertainty")
    mean_text = f"mean uncertainty {mean:.3f}; " if isinstance(mean, (int, float)) else ""
    listing = "\n".join(("> " if i == 0 else "   ") + text for i, (text, _) in enumerate(entries))
    fig.text(0.01, 0.19, f"{case_label or volume.GetName()}: {mean_text}most uncertain slices (click one to go "
             f"there):\n{listing}", fontsize=8.5, family="monospace", va="top")
    _colour_bar(fig, found.volume.GetDisplayNode(), uncertainty.SHOW_ABOVE, (0.56, 0.1, 0.4, 0.035))
    out = Path(out)
    save_png(fig, out)
    _close(fig)
    return Pictured(out, {"segmentation": seg, "uncertainty": found.volume, "volume": volume}, before, after,
                    views, entries)


# -- Segment Editor effect --------------------------------------------------------------------------------------
def effect_preview_picture(harness, logic, model, volume, out, roi_center_ras, roi_size_mm, size=(512, 512),
                           timeout: float = 1800) -> Pictured:
    """The effect's preview of ``model`` inside a markups ROI (centre RAS, size in mm) over an empty segmentation,
    rendered with the ROI before Apply; writes ``out``."""
    from AutoSegSlicer.common import region as effect_region
    from AutoSegSlicer.effect.logic import EffectLogic

    scene = harness.scene
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} segmentation")
    target.CreateDefaultDisplayNodes()
    target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi.CreateDefaultDisplayNodes()
    roi.GetDisplayNode().SetFillVisibility(False)   # its outline only: the preview's colour stays readable
    roi.SetCenter(*[float(c) for c in roi_center_ras])
    roi.SetSize(*[float(s) for s in roi_size_mm])
    effect = EffectLogic(logic)
    box = effect.region_box(effect_region.REGION_ROI, volume, roi_node=roi)
    views = three_views(harness, volume, size)
    for view in views.values():
        view.node.JumpSliceByCentering(*[float(c) for c in roi_center_ras])
    before = render_all(views)
    job = effect.start_preview(model, [volume], target, fast=False, box=box)
    result = job.job.wait(timeout)
    if result is None:
        effect.cancel(job)
        raise RuntimeError(f"The preview did not finish within {timeout} s.")
    preview = effect.finish_preview(job, result)
    after = render_all(views)

    fig, _ = views_figure(after, list(after), figsize=(12, 4.9), footer=0.1)
    names = ", ".join(name for name, value in effect.preview_labels(preview) if value)
    fig.text(0.01, 0.06, f"AutoSeg effect, region: markups ROI '{roi.GetName()}'. Preview of model "
             f"'{model.name}' ({names}) before Apply: Apply writes it into '{target.GetName()}' under the masking "
             f"settings, Cancel removes it.", fontsize=9, va="top", wrap=True)
    out = Path(out)
    save_png(fig, out)
    _close(fig)
    return Pictured(out, {"preview": preview, "roi": roi, "segmentation": target, "volume": volume}, before, after,
                    views)


# -- Batch segmentation -----------------------------------------------------------------------------------------
def batch_table_picture(harness, logic, model, folder, output_dir, out, timeout: float = 3600) -> Pictured:
    """Segment every case of ``folder`` in one child (*A folder of images*, *Save uncertainty* on, as the panel
    passes it), build the results table node and write its cells as ``out``."""
    from AutoSegSlicer.segment import batch
    from AutoSegSlicer.segment.options import PredictOptions

    logic_b = batch.BatchLogic(logic)
    cases = batch.cases_from_folder(folder, model)
    job = logic_b.start(model, cases, output_dir, PredictOptions(save_uncertainty=True), input_folder=folder)
    result = job.wait(timeout)
    if result is None:
        logic_b.cancel(job)
        raise RuntimeError(f"The batch did not finish within {timeout} s.")
    table = logic_b.finish(job, result)
    out = Path(out)
    draw_table(table, out)
    return Pictured(out, {"table": table})


def table_cells(table_node):
    """(headers, rows of cell texts) of a vtkMRMLTableNode: the column names and ``GetCellText`` of each cell."""
    headers = [table_node.GetColumnName(c) for c in range(table_node.GetNumberOfColumns())]
    rows = [[table_node.GetCellText(r, c) for c in range(len(headers))] for r in range(table_node.GetNumberOfRows())]
    return headers, rows


def _wrapped(text: str, header: str) -> str:
    """A cell's text as shown in a narrow column: long texts wrapped (at most 4 lines), otherwise as it is."""
    width = 44 if header in ("Error", "Warnings") else 24
    if len(text) <= width:
        return text
    lines = textwrap.wrap(text, width, break_long_words=True)
    return "\n".join(lines[:4]) + (" ..." if len(lines) > 4 else "")


def draw_table(table_node, out, dpi: int = 100) -> None:
    """Draw a table node's cells (`table_cells`, verbatim; long texts wrapped) as a grid under its header row."""
    import matplotlib.pyplot as plt

    headers, rows = table_cells(table_node)
    cells = [[_wrapped(t, h) for t, h in zip(row, headers)] for row in rows]
    lines = [max([1] + [c.count("\n") + 1 for c in row]) for row in cells]
    status = headers.index("Status") if "Status" in headers else None
    failed = [status is not None and row[status] == "failed" for row in rows]
    units = [1.4] + [n + 0.6 for n in lines]                      # header, then each row's height in text lines
    line_inches = 0.19
    fig = plt.figure(figsize=(13.5, 0.45 + line_inches * sum(units)), dpi=dpi)
    top = 1 - 0.4 / (0.45 + line_inches * sum(units))
    ax = fig.add_axes((0.005, 0.01, 0.99, top - 0.01))
    ax.axis("off")
    widths = [max([len(h)] + [max(len(p) for p in c.split("\n")) for c in col]) + 3
              for h, col in zip(headers, zip(*cells) if cells else [[]] * len(headers))]
    table = ax.table(cellText=cells or None, colLabels=headers, cellLoc="left", bbox=(0, 0, 1, 1),
                     colWidths=[w / sum(widths) for w in widths])
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#b0b0b0")
        cell.set_height(units[r] / sum(units))
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(weight="bold")
        elif failed[r - 1]:
            cell.set_facecolor("#fbe3e3")
    fig.text(0.005, 1 - 0.08 / (0.45 + line_inches * sum(units)), f"Table node '{table_node.GetName()}' "
             f"({len(rows)} rows)", ha="left", va="top", fontsize=10)
    save_png(fig, out)
    _close(fig)


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)

