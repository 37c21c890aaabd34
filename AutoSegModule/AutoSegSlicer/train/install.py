"""Installing a finished training as a model (a new model, or a new version of a fine-tuned one), and its
cross-validation report as a table node.

The copy itself is AutoSegLib's (`AutoSegLib.models.install.install_from_work`: the work folder's model
files, staged in a hidden folder and renamed into place when complete, so the model list never shows a
half-copied model). This module decides the model's folder name, version and model.json. An existing
model is never touched: fine-tuning installs version k+1 in its own folder (``<name>_v<k+1>``).
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.io.jsonfile import read_json_or_none
from AutoSegLib.io.work_folder import fold_dir, trained_folds
from AutoSegLib.models.install import install_from_work

log = logging.getLogger(__name__)


def folder_name(name: str) -> str:
    """A folder name for a model name (spaces and odd characters become '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("._") or "model"


def next_version(models_dir, name: str) -> int:
    """1 + the highest integer version installed under ``name`` (1 when none)."""
    from AutoSegSlicer.common.models import list_models

    found, _ = list_models(models_dir)
    versions = []
    for m in found:
        if m.name == name:
            try:
                versions.append(int(float(m.version or 1)))
            except ValueError:
                versions.append(1)
    return max(versions, default=0) + 1


def install_model(work, models_dir, name: str, description: str = "", base_model=None,
                  extra: Optional[dict] = None) -> Path:
    """Install a finished training from ``work`` into ``models_dir`` as a model; returns the model folder.

    Parameters
    ----------
    work : path
        Work folder with dataset.json, plans.json and trained/<configuration>/fold_<k>/checkpoint_final.pt.
    models_dir : path
        The module's models folder.
    name : str
        The model's name (model.json); its version is the next free one for that name.
    base_model : path, optional
        The model that was fine-tuned: its model.json terminology and colours are carried over and it is
        recorded as ``parent``.
    extra : dict, optional
        More model.json keys (training settings).

    Raises
    ------
    AutoSegError
        No final checkpoint (training did not finish), or dataset.json / plans.json missing.
    WriteError
        A file could not be copied (the disk is full, ...): nothing is installed, other models are unchanged.
    """
    models_dir = Path(models_dir)
    version = next_version(models_dir, name)
    dest = models_dir / (folder_name(name) + ("" if version == 1 else f"_v{version}"))
    while dest.exists():
        version += 1
        dest = models_dir / f"{folder_name(name)}_v{version}"
    meta = {"name": name, "version": str(version), "description": description,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if base_model is not None:
        base_meta = read_json_or_none(Path(base_model) / "model.json", expect=dict) or {}
        for k in ("terminology", "colors"):
            if k in base_meta:
                meta[k] = base_meta[k]
        meta["parent"] = {"path": str(base_model), "name": base_meta.get("name"),
                          "version": base_meta.get("version")}
    meta.update(extra or {})
    installed = install_from_work(work, models_dir, dest.name, meta)
    log.info("Installed model %s version %s in %s", name, version, installed)
    return installed


# -- cross-validation report ---------------------------------------------------------------------------
def _dice_by_label(summary: dict, labels: List[Tuple[str, int]]) -> Dict[str, float]:
    """Mean Dice per foreground label from a fold's validation/summary.json: ``mean_dice`` keyed by label name
    (AutoSegLib.training.validation), or nnU-Net's ``mean`` keyed by label value with ``{"Dice": x}``."""
    out: Dict[str, float] = {}
    if not isinstance(summary, dict):
        return out
    by_name = summary.get("mean_dice")
    mean = summary.get("mean")
    for name, value in labels:
        if value == 0:
            continue
        dice = by_name.get(name) if isinstance(by_name, dict) else None
        if dice is None and isinstance(mean, dict):
            entry = mean.get(str(value), mean.get(name))
            dice = entry.get("Dice", entry.get("dice")) if isinstance(entry, dict) else None
        if isinstance(dice, (int, float)):
            out[name] = float(dice)
    return out


def cv_report(folder) -> dict:
    """The cross-validation report of a work or model folder.

    Returns
    -------
    dict
        ``rows``: list of ``(configuration, fold, {label: Dice})`` from each fold's validation/summary.json;
        ``labels``: foreground label names; ``chosen``: configurations find-best chose (inference.json), or
        []; ``postprocessing``: its post-processing steps (list, possibly empty).
    """
    folder = Path(folder)
    dataset = read_json_or_none(folder / "dataset.json", expect=dict) or {}
    labels = [(str(n), int(v)) for n, v in (dataset.get("labels") or {}).items()
              if n != "ignore" and isinstance(v, int)]
    rows = []
    for conf, folds in trained_folds(folder, checkpoints=None).items():
        for fold in folds:
            summary = read_json_or_none(fold_dir(folder, conf, fold) / "validation" / "summary.json")
            if summary is not None:
                rows.append((conf, fold, _dice_by_label(summary, labels)))
    inference = read_json_or_none(folder / "inference.json", expect=dict) or {}
    chosen = inference.get("configurations") or []
    chosen = [c if isinstance(c, str) else str(c.get("name", c)) if isinstance(c, dict) else str(c) for c in chosen]
    post = inference.get("postprocessing") or inference.get("post_processing") or []
    return {"rows": rows, "labels": [n for n, v in labels if v != 0], "chosen": chosen, "postprocessing": post}


def _describe_steps(steps) -> str:
    """Post-processing steps in words: ``largest_component(foreground)``, ..."""
    if not steps:
        return "none"
    out = []
    for st in steps:
        if isinstance(st, dict):
            out.append(f"{st.get('step', '?')}({st.get('labels', '')})")
        else:
            out.append(str(st))
    return ", ".join(out)


def cv_report_table(scene, folder, title: str):
    """A table node of the cross-validation: one row per (configuration, fold) with Dice per label and their
    mean, a "mean" row per configuration with several folds, and a last row naming the chosen
    configuration(s) and the post-processing (also in the node attributes ``AutoSeg.Chosen`` /
    ``AutoSeg.PostProcessing``). Returns the node, or None when no fold has a validation summary."""
    import vtk

    report = cv_report(folder)
    if not report["rows"]:
        return None
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{title} cross-validation"))
    names = report["labels"]
    cols = [("configuration", vtk.vtkStringArray), ("fold", vtk.vtkStringArray)]
    cols += [(f"Dice {n}", vtk.vtkDoubleArray) for n in names] + [("mean Dice", vtk.vtkDoubleArray)]
    arrays = []
    for col, cls in cols:
        arr = cls()
        arr.SetName(col)
        node.AddColumn(arr)
        arrays.append(node.GetTable().GetColumnByName(col))
    table = node.GetTable()

    def add_row(conf: str, fold: str, vals):
        row = table.InsertNextBlankRow()
        arrays[0].SetValue(row, conf)
        arrays[1].SetValue(row, fold)
        for i, v in enumerate(vals):
            arrays[2 + i].SetValue(row, v)
        known = [v for v in vals if v == v]
        if vals:
            arrays[-1].SetValue(row, sum(known) / len(known) if known else float("nan"))

    nan = float("nan")
    by_conf: Dict[str, List[List[float]]] = {}
    for conf, fold, dice in report["rows"]:
        vals = [dice.get(n, nan) for n in names]
        add_row(conf, fold, vals)
        by_conf.setdefault(conf, []).append(vals)
    for conf, rows in by_conf.items():
        if len(rows) > 1:
            means = []
            for i in range(len(names)):
                known = [r[i] for r in rows if r[i] == r[i]]
                means.append(sum(known) / len(known) if known else nan)
            add_row(conf, "mean", means)
    chosen = " + ".join(report["chosen"]) or "(no model selection: single fold)"
    post = _describe_steps(report["postprocessing"])
    add_row(f"chosen: {chosen}", f"post-processing: {post}", [])
    for i in range(2, len(arrays)):
        arrays[i].SetValue(table.GetNumberOfRows() - 1, nan)
    node.SetAttribute("AutoSeg.Chosen", chosen)
    node.SetAttribute("AutoSeg.PostProcessing", post)
    table.Modified()
    return node
