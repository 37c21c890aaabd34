"""Per-epoch training record: training_log.jsonl (one JSON object per epoch) and progress.png.

Each epoch entry: ``epoch`` (0-based), ``train_loss``, ``val_loss``, ``pseudo_dice`` (list per foreground
class, NaN -> null), ``mean_pseudo_dice``, ``ema_pseudo_dice``, ``lr``, ``epoch_time_s``,
``data_wait_s`` (time the loop waited for batches), ``time`` (UNIX seconds at the end of the epoch).
The whole log lives in the checkpoint's loop state too, so a resumed run rewrites both files from it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Sequence

from AutoSegLib.io.atomic import atomic_path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_log(path: Path, entries: Sequence[dict]) -> None:
    """Rewrite ``training_log.jsonl`` atomically from ``entries``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for e in entries:
                f.write(json.dumps({k: _clean(v) for k, v in e.items()}) + "\n")


def read_log(path: Path) -> List[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    from AutoSegLib.io.jsonfile import JSONFileError, parse_json
    text = path.read_bytes().decode("utf-8", errors="replace")
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(parse_json(line, f"{path}: line {n}", "a training log entry", expect=dict))
            except JSONFileError as exc:
                raise JSONFileError(f"{exc} Delete the line (or the file) to go on.") from None
    return entries


def plot_progress(path: Path, entries: Sequence[dict], title: str = "") -> None:
    """Draw losses, pseudo-Dice (per class and EMA) and the learning rate per epoch into a PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    epochs = [e["epoch"] + 1 for e in entries]
    fig = Figure(figsize=(10, 9), dpi=80)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)

    def series(key):
        return [float("nan") if e.get(key) is None else e[key] for e in entries]

    ax1.plot(epochs, series("train_loss"), "b-", label="train loss")
    ax1.plot(epochs, series("val_loss"), "r-", label="validation loss")
    ax1.set_ylabel("loss")
    ax1.legend(loc="upper right")
    n_cls = max((len(e.get("pseudo_dice") or []) for e in entries), default=0)
    for c in range(n_cls):
        vals = [float("nan") if (e.get("pseudo_dice") or [None] * n_cls)[c] is None else e["pseudo_dice"][c]
                for e in entries]
        ax2.plot(epochs, vals, ":", label=f"pseudo-Dice class {c + 1}")
    ax2.plot(epochs, series("mean_pseudo_dice"), "g--", label="mean pseudo-Dice")
    ax2.plot(epochs, series("ema_pseudo_dice"), "g-", linewidth=2, label="pseudo-Dice (EMA)")
    ax2.set_ylabel("pseudo-Dice")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right")
    ax3.plot(epochs, series("lr"), "k-", label="learning rate")
    ax3.set_ylabel("learning rate")
    ax3.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
