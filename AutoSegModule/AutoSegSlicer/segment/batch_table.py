"""The batch results table (a vtkMRMLTableNode) and loading the case of one of its rows.

One row per case, in the order the child reported them: Case, Status, Time (s), one "<label> (ml)" column
per model label (then any other label the summary names), Mean uncertainty, Warnings, Error, Source.
Numbers are double columns (NaN where there is none: a failed case, no uncertainty) so that the table
sorts numerically. The rows themselves, the model, the output folder and which volume node each
loaded-volume case came from are kept as node attributes, so `load_case` works from the table alone.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from AutoSegLib.errors import AutoSegError

ROWS_ATTRIBUTE = "AutoSeg.BatchRows"
OUTPUT_ATTRIBUTE = "AutoSeg.BatchOutput"
MODEL_ATTRIBUTE = "AutoSeg.Model"
VOLUME_ATTRIBUTE = "AutoSeg.BatchVolume."      # + case name -> volume node ID
INPUT_ATTRIBUTE = "AutoSeg.BatchInput"          # on a volume loaded for a row: its file
LABEL_ATTRIBUTE = "AutoSeg.BatchLabel"          # on a segmentation loaded for a row: its label map file


def label_columns(model, rows: Sequence[dict]) -> List[str]:
    """Label names for the volume columns: the model's foreground labels, then others the rows name."""
    names = [name for name, _ in model.foreground_labels]
    for row in rows:
        for name in (row.get("volumes_ml") or {}):
            if name not in names:
                names.append(str(name))
    return names


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def results_table(scene, model, rows: Sequence[dict], output_dir, cases: Sequence = (), node=None):
    """Fill ``node`` (or a new vtkMRMLTableNode named '<model> batch results') with one row per case."""
    import vtk

    rows = [dict(r) for r in rows if isinstance(r, dict)]
    labels = label_columns(model, rows)
    text_columns = {"Case": lambda r: str(r.get("case", "")), "Status": lambda r: str(r.get("status", ""))}
    number_columns = {"Time (s)": lambda r: _number(r.get("seconds"))}
    for name in labels:
        number_columns[f"{name} (ml)"] = (lambda r, n=name: _number((r.get("volumes_ml") or {}).get(n)))
    number_columns["Mean uncertainty"] = lambda r: _number(r.get("mean_uncertainty"))
    sources = {c.name: c.source for c in cases}
    tail_columns = {"Warnings": lambda r: "; ".join(str(w) for w in r.get("warnings") or []),
                    "Error": lambda r: str(r.get("error") or ""),
                    "Source": lambda r: sources.get(r.get("case"), "") or ", ".join(
                        Path(str(p)).name for p in r.get("inputs") or [])}
    table = vtk.vtkTable()
    for columns, kind in ((text_columns, vtk.vtkStringArray), (number_columns, vtk.vtkDoubleArray),
                          (tail_columns, vtk.vtkStringArray)):
        for title, get in columns.items():
            array = kind()
            array.SetName(title)
            for r in rows:
                array.InsertNextValue(get(r))
            table.AddColumn(array)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{model.name} batch results"))
    node.SetAndObserveTable(table)
    for i in range(table.GetNumberOfColumns()):  # the views show these titles (Slicer 5.8+; the name-as-header
        name = table.GetColumnName(i)              # switch is deprecated)
        node.SetColumnTitle(name, name)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetLocked(True)   # a results table: not edited in the view
    for name in labels:
        node.SetColumnUnitLabel(f"{name} (ml)", "ml")
    node.SetColumnUnitLabel("Time (s)", "s")
    node.SetAttribute(ROWS_ATTRIBUTE, json.dumps(rows))
    node.SetAttribute(OUTPUT_ATTRIBUTE, str(output_dir))
    node.SetAttribute(MODEL_ATTRIBUTE, str(model.path))
    for case in cases:
        if case.volumes:
            node.SetAttribute(VOLUME_ATTRIBUTE + case.name, case.volumes[0].GetID())
    return node


def table_rows(table_node) -> List[dict]:
    """The summary rows the table was built from."""
    try:
        rows = json.loads(table_node.GetAttribute(ROWS_ATTRIBUTE) or "[]")
    except ValueError:
        rows = []
    return [r for r in rows if isinstance(r, dict)]


@dataclass
class LoadedCase:
    volume: object
    segmentation: object
    uncertainty: object   # uncertainty.CaseUncertainty


def _in_output(path, output_dir: Path) -> Optional[Path]:
    if not path:
        return None
    path = Path(str(path))
    return path if path.is_absolute() else output_dir / path


def _find_node(scene, class_name: str, attribute: str, value: str):
    nodes = scene.GetNodesByClass(class_name)
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(attribute) == value:
            return node
    return None


def default_loader(path):
    """Load an image file as a volume in the Slicer application."""
    import slicer

    return slicer.util.loadVolume(str(path))


def load_case(scene, table_node, case: str, loader: Optional[Callable] = None) -> LoadedCase:
    """Load case ``case`` of a results table: its volume (the scene's node it came from, else its first input
    file through ``loader``), its label map as a segmentation (one segment per model label) and, when
    saved, its uncertainty. Loading a row twice reuses what the first load created.

    Raises
    ------
    AutoSegError
        The case is not in the table, did not succeed (its error is given), or its files are gone.
    """
    from AutoSegLib.io.images import read_image
    from AutoSegSlicer.common import models, segmentation
    from AutoSegSlicer.segment import uncertainty

    row = next((r for r in table_rows(table_node) if r.get("case") == case), None)
    if row is None:
        raise AutoSegError(f"Case '{case}' is not in table '{table_node.GetName()}'.")
    if row.get("status") != "ok":
        raise AutoSegError(f"Case '{case}' {row.get('status', 'failed')}: {row.get('error') or 'no label map'}; "
                           f"there is nothing to load.")
    output_dir = Path(table_node.GetAttribute(OUTPUT_ATTRIBUTE) or ".")
    model = models.read_model_info(table_node.GetAttribute(MODEL_ATTRIBUTE))
    volume_id = table_node.GetAttribute(VOLUME_ATTRIBUTE + case)
    if volume_id:
        volume = scene.GetNodeByID(volume_id)
        if volume is None:
            raise AutoSegError(f"The volume case '{case}' was segmented from is no longer in the scene.")
    else:
        inputs = [p for p in (_in_output(p, output_dir) for p in row.get("inputs") or []) if p is not None]
        if not inputs or not inputs[0].is_file():
            raise AutoSegError(f"Case '{case}': its input file {inputs[0] if inputs else '(none listed)'} is gone.")
        volume = _find_node(scene, "vtkMRMLScalarVolumeNode", INPUT_ATTRIBUTE, str(inputs[0]))
        if volume is None:
            volume = (loader or default_loader)(inputs[0])
            volume.SetAttribute(INPUT_ATTRIBUTE, str(inputs[0]))
    label_path = _in_output(row.get("output"), output_dir)
    if label_path is None or not label_path.is_file():
        raise AutoSegError(f"Case '{case}': its label map {label_path or '(none listed)'} is gone from {output_dir}.")
    seg = _find_node(scene, "vtkMRMLSegmentationNode", LABEL_ATTRIBUTE, str(label_path))
    if seg is None:
        label, geometry = read_image(label_path)
        known = {v for _, v in model.labels}
        extra = sorted({int(v) for v in np.unique(label)} - known)
        if extra:
            raise AutoSegError(f"{label_path}: values {extra} are not labels of model '{model.name}'.")
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{case} {model.name}"))
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        seg.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        segmentation.fill_segmentation(seg, label, geometry,
                                       segmentation.segment_specs(model.labels, model.colors, model.terminology))
        seg.SetAttribute(LABEL_ATTRIBUTE, str(label_path))
        seg.SetAttribute("AutoSeg.Model", str(model.path))
        seg.SetAttribute("AutoSeg.SourceVolume", volume.GetID())
        segmentation.place_beside(scene, seg, volume)
    unc_path = _in_output(row.get("uncertainty"), output_dir)
    unc_node = None
    if unc_path is not None and unc_path.is_file():
        unc_node = _find_node(scene, "vtkMRMLScalarVolumeNode", "AutoSeg.Uncertainty", str(unc_path))
        if unc_node is None:
            unc_node = uncertainty.load_volume(scene, unc_path, f"{case} uncertainty")
            unc_node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return LoadedCase(volume, seg, uncertainty.CaseUncertainty(unc_node, row))
