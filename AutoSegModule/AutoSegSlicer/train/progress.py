"""Live training progress in the scene: a table node per training (one row per epoch), plot series for the
loss and pseudo-Dice curves, one plot chart showing the current training; plus a status line.

The child's ``epoch`` events (AutoSegLib/progress.py: configuration, fold, epoch (0-based), epochs,
train_loss, val_loss, pseudo_dice (one per foreground class), ema_pseudo_dice, lr, epoch_time_s, eta_s)
each add one row. A resumed training re-reads the fold's ``training_log.jsonl`` first, so its curves start
where they were; an epoch that arrives again replaces the rows from that epoch on.
Scene changes must happen on the main thread: the widget feeds events polled from a QTimer.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from AutoSegLib.io.jsonfile import JSONFileError, parse_json

log = logging.getLogger(__name__)

#: Fixed columns of a training's table; then one ``dice <label>`` column per foreground label.
BASE_COLUMNS = ("epoch", "train_loss", "val_loss", "ema_pseudo_dice", "lr", "epoch_time_s")
#: (column, series title, colour) of the curves the chart shows.
CURVES = (("train_loss", "train loss", (0.15, 0.35, 0.95)),
          ("val_loss", "validation loss", (0.95, 0.45, 0.10)),
          ("ema_pseudo_dice", "pseudo-Dice (EMA)", (0.10, 0.70, 0.20)))


def _number(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def format_eta(seconds) -> str:
    if seconds is None or not math.isfinite(float(seconds)):
        return "--"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TrainingCurves:
    """Table, plot series and chart nodes of one run.

    Parameters
    ----------
    scene : vtkMRMLScene
    title : str
        Prefix of the node names (the model name).
    label_names : sequence of str
        Foreground label names, in output order (columns ``dice <name>``).
    """

    def __init__(self, scene, title: str, label_names: Sequence[str] = ()):
        self.scene = scene
        self.title = title
        self.label_names = list(label_names)
        self.tables: Dict[Tuple[str, str], object] = {}
        self.series: Dict[Tuple[str, str], List[object]] = {}
        self.current: Optional[Tuple[str, str]] = None
        self.chart = None
        self._ensure_chart()

    def _ensure_chart(self) -> None:
        """(Re)create the chart, e.g. after the user closed the scene during training."""
        if self.chart is not None and self.chart.GetScene() is self.scene:
            return
        self.chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode",
                                                  self.scene.GenerateUniqueName(f"{self.title} training"))
        self.chart.SetTitle(f"{self.title}: training curves")
        self.chart.SetXAxisTitle("epoch")
        self.chart.SetYAxisTitle("loss / Dice")
        self.current = None

    def columns(self) -> List[str]:
        return list(BASE_COLUMNS) + [f"dice {n}" for n in self.label_names]

    # -- nodes -------------------------------------------------------------------------------
    def table(self, configuration: str, fold: str):
        """The table node of one training (created, with its series, on first use) and shown in the chart."""
        key = (str(configuration), str(fold))
        self._ensure_chart()
        if key in self.tables and self.tables[key].GetScene() is not self.scene:  # scene closed meanwhile
            del self.tables[key], self.series[key]
        if key not in self.tables:
            import slicer
            import vtk

            name = self.scene.GenerateUniqueName(f"{self.title} {key[0]} fold {key[1]}")
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
            for col in self.columns():
                arr = vtk.vtkDoubleArray()
                arr.SetName(col)
                node.AddColumn(arr)
            node.SetAttribute("AutoSeg.Configuration", key[0])
            node.SetAttribute("AutoSeg.Fold", key[1])
            series = []
            for col, title, color in CURVES:
                s = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {title}")
                s.SetAndObserveTableNodeID(node.GetID())
                s.SetXColumnName("epoch")
                s.SetYColumnName(col)
                s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
                s.SetColor(*color)
                series.append(s)
            self.tables[key], self.series[key] = node, series
        if self.current != key:
            self.chart.RemoveAllPlotSeriesNodeIDs()
            for s in self.series[key]:
                self.chart.AddAndObservePlotSeriesNodeID(s.GetID())
            self.chart.SetTitle(f"{self.title}: {key[0]} fold {key[1]}")
            self.current = key
        return self.tables[key]

    # -- rows --------------------------------------------------------------------------------
    def add_epoch(self, event: dict) -> None:
        """Append the row of one ``epoch`` event (rows from the same epoch on are replaced first)."""
        node = self.table(event.get("configuration", "?"), event.get("fold", "?"))
        table = node.GetTable()
        epoch = int(event.get("epoch", 0))
        epochs_col = table.GetColumnByName("epoch")
        # A repeated epoch (resume after the log was read): drop it and everything after it.
        for r in range(table.GetNumberOfRows() - 1, -1, -1):
            if epochs_col.GetValue(r) >= epoch:
                table.RemoveRow(r)
        values = {c: _number(event.get(c)) for c in BASE_COLUMNS}
        values["epoch"] = float(epoch)
        dice = event.get("pseudo_dice") or []
        for i, name in enumerate(self.label_names):
            values[f"dice {name}"] = _number(dice[i]) if i < len(dice) else float("nan")
        row = table.InsertNextBlankRow()
        for c, col in enumerate(self.columns()):
            table.GetColumn(c).SetValue(row, values[col])
        table.Modified()
        node.Modified()

    def load_log(self, log_path, configuration: str, fold: str) -> int:
        """Fill a training's table from its ``training_log.jsonl`` (one JSON object per epoch, the epoch
        event's keys); returns the number of epochs read. Unreadable lines are skipped."""
        path = Path(log_path)
        if not path.is_file():
            return 0
        n = 0
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                entry = parse_json(line, f"{path}: line {number}")
            except JSONFileError:
                continue
            if isinstance(entry, dict) and "epoch" in entry:
                self.add_epoch({**entry, "configuration": configuration, "fold": fold})
                n += 1
        return n

    def rows(self, configuration: str, fold: str) -> List[Dict[str, float]]:
        """The rows of one training's table as dicts (for tests and reports)."""
        node = self.tables.get((str(configuration), str(fold)))
        if node is None:
            return []
        table = node.GetTable()
        cols = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        return [{cols[c]: table.GetColumn(c).GetValue(r) for c in range(len(cols))}
                for r in range(table.GetNumberOfRows())]

    def remove(self) -> None:
        """Remove every node this object created."""
        for key in list(self.tables):
            for s in self.series[key]:
                self.scene.RemoveNode(s)
            self.scene.RemoveNode(self.tables[key])
        self.scene.RemoveNode(self.chart)
        self.tables.clear()
        self.series.clear()


class TrainingStatus:
    """The panel's status line: step k of n, stage, configuration/fold, epoch, ETA; updated from events.

    The run's ETA adds to the current training's ETA ``remaining_trainings`` more trainings: each one's own
    time budget where ``later_budgets_s`` gives it (a coarse-to-fine pair's stages differ), else epochs x
    the last epoch's time, capped by the per-training time budget ``budget_s``.
    """

    def __init__(self, budget_s: Optional[float] = None):
        self.budget_s = budget_s
        self.remaining_trainings = 0
        self.later_budgets_s: List[Optional[float]] = []
        self.run_eta_s: Optional[float] = None
        self.step_label = ""
        self.step_index = 0
        self.step_count = 0
        self.stage = ""
        self.message = ""
        self.configuration: Optional[str] = None
        self.fold: Optional[str] = None
        self.epoch: Optional[int] = None
        self.epochs: Optional[int] = None
        self.eta_s: Optional[float] = None
        self.last_dice: Optional[float] = None

    def start_step(self, label: str, index: int, count: int) -> None:
        self.step_label, self.step_index, self.step_count = label, index, count
        self.stage, self.message, self.eta_s, self.run_eta_s = label, "", None, None
        self.epoch = self.epochs = None

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage = str(event.get("stage", self.stage))
            self.message = str(event.get("message", ""))
        elif kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            self.message = f"{event.get('current')}/{event.get('total')} {event.get('message') or ''}".strip()
            self.eta_s = event.get("eta_s")
        elif kind == "epoch":
            self.stage = "train"
            self.configuration = str(event.get("configuration"))
            self.fold = str(event.get("fold"))
            self.epoch = int(event.get("epoch", 0)) + 1
            self.epochs = event.get("epochs")
            self.eta_s = event.get("eta_s")
            self.last_dice = event.get("ema_pseudo_dice")
            self.message = ""
            self.run_eta_s = None
            try:
                per_training = float(event.get("epoch_time_s")) * int(self.epochs)
                if self.budget_s is not None:
                    per_training = min(per_training, self.budget_s)
                if self.eta_s is not None and self.remaining_trainings > 1:
                    later = list(self.later_budgets_s)[:self.remaining_trainings - 1]
                    later += [None] * (self.remaining_trainings - 1 - len(later))
                    self.run_eta_s = float(self.eta_s) + sum(per_training if b is None else float(b) for b in later)
            except (TypeError, ValueError):
                pass

    def text(self) -> str:
        parts = [f"Step {self.step_index}/{self.step_count}: {self.step_label}" if self.step_count else self.stage]
        if self.epoch is not None:
            parts.append(f"{self.configuration} fold {self.fold}, epoch {self.epoch}/{self.epochs}")
            if self.last_dice is not None:
                parts.append(f"pseudo-Dice {float(self.last_dice):.3f}")
        elif self.message:
            parts.append(self.message)
        if self.eta_s is not None:
            whole = f" (whole run {format_eta(self.run_eta_s)})" if self.run_eta_s is not None else ""
            parts.append(f"ETA {format_eta(self.eta_s)}{whole}")
        return " - ".join(parts)
