"""Progress reporting: library functions call a callback with plain-dict events; the CLI renders them.

Every long-running library function takes ``progress: ProgressCallback | None``. An event is a dict with
an ``"event"`` key; the kinds and their keys are:

- ``stage``:    ``stage`` (str), ``message`` (str). A pipeline stage starts (verify, fingerprint, plan,
  preprocess, train, predict, find-best, evaluate, ...).
- ``progress``: ``stage``, ``current`` (int), ``total`` (int), ``eta_s`` (float or None), ``message``.
- ``epoch``:    ``configuration``, ``fold``, ``epoch`` (0-based), ``epochs``, ``train_loss``, ``val_loss``,
  ``pseudo_dice`` (list, one per foreground class), ``ema_pseudo_dice``, ``lr``, ``epoch_time_s``,
  ``eta_s``.
- ``log``:      ``level`` ("info", "warning", "error"), ``message``.
- ``result``:   free keys: what a command produced (paths, scores).
- ``error``:    ``message`` (emitted by the CLI when a command fails).

With ``--progress-json`` the CLI writes each event as one JSON object per line on stdout (the Slicer
module reads these); otherwise it draws a progress bar on stderr.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, Optional

ProgressCallback = Callable[[dict], None]


def emit(progress: Optional[ProgressCallback], event: str, **fields: Any) -> None:
    """Send one event to ``progress`` if it is not None."""
    if progress is not None:
        progress({"event": event, **fields})


class ProgressTracker:
    """Counts steps of one stage and emits ``progress`` events with an ETA.

    Parameters
    ----------
    progress : callable or None
        Where events go.
    stage : str
        Stage name put in every event.
    total : int
        Number of steps expected.
    """

    def __init__(self, progress: Optional[ProgressCallback], stage: str, total: int):
        self.progress, self.stage, self.total = progress, stage, int(total)
        self.current = 0
        self._start = time.monotonic()

    def step(self, message: str = "", n: int = 1) -> None:
        self.current += n
        elapsed = time.monotonic() - self._start
        eta = None
        if 0 < self.current < self.total:
            eta = elapsed / self.current * (self.total - self.current)
        elif self.current >= self.total:
            eta = 0.0
        emit(self.progress, "progress", stage=self.stage, current=self.current, total=self.total,
             eta_s=eta, message=message)


def json_lines_renderer(stream=None) -> ProgressCallback:
    """A callback that writes each event as one JSON line (flushed) to ``stream`` (default stdout)."""

    def render(event: dict) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(event, default=_json_default) + "\n")
        out.flush()

    return render


def _json_default(value: Any):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def console_renderer(stream=None, width: int = 30) -> ProgressCallback:
    """A callback that draws a one-line progress bar with ETA and prints stage, log and epoch lines."""
    state = {"bar_open": False}

    def close_bar(out) -> None:
        if state["bar_open"]:
            out.write("\n")
            state["bar_open"] = False

    def render(event: dict) -> None:
        out = stream or sys.stderr
        kind = event.get("event")
        if kind == "progress":
            total = max(int(event.get("total") or 0), 1)
            cur = min(int(event.get("current") or 0), total)
            filled = int(width * cur / total)
            bar = "#" * filled + "-" * (width - filled)
            msg = str(event.get("message") or "")[:40]
            out.write(f"\r{event.get('stage', '')} [{bar}] {cur}/{total} ETA {_format_seconds(event.get('eta_s'))} {msg:<40}")
            state["bar_open"] = True
            if cur >= total:
                close_bar(out)
        elif kind == "stage":
            close_bar(out)
            out.write(f"== {event.get('stage')}: {event.get('message', '')}\n")
        elif kind == "log":
            close_bar(out)
            level = event.get("level", "info")
            prefix = "" if level == "info" else f"{level.upper()}: "
            out.write(f"{prefix}{event.get('message')}\n")
        elif kind == "epoch":
            close_bar(out)
            dice = event.get("pseudo_dice") or []
            dice_s = ", ".join(f"{d:.3f}" for d in dice if d is not None)
            out.write(
                f"[{event.get('configuration')} fold {event.get('fold')}] epoch {int(event.get('epoch', 0)) + 1}/{event.get('epochs')}"
                f"  train {event.get('train_loss', float('nan')):.4f}  val {event.get('val_loss', float('nan')):.4f}"
                f"  dice [{dice_s}]  ema {event.get('ema_pseudo_dice') or 0:.3f}  lr {event.get('lr', 0):.2e}"
                f"  {event.get('epoch_time_s', 0):.1f}s  ETA {_format_seconds(event.get('eta_s'))}\n")
        elif kind == "error":
            close_bar(out)
            out.write(f"ERROR: {event.get('message')}\n")
        out.flush()

    return render
