"""The readable record of a find-best run: ``find_best_report.json`` (everything) and
``find_best_report.md`` (the scores table and each post-processing decision)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict

from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.io.labels import LabelLayout

if TYPE_CHECKING:
    from AutoSegLib.postprocessing.selection import SelectionResult, TrainedConfiguration


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(work_dir: Path, result: "SelectionResult", layout: LabelLayout,
                 found: "Dict[str, TrainedConfiguration]") -> None:
    """``find_best_report.json`` (everything) and ``find_best_report.md`` (the scores table, decisions)."""
    report = {
        "chosen": result.chosen,
        "configurations": list(result.instructions.configurations),
        "folds": {n: list(t.folds) for n, t in found.items()},
        "num_cases": len(result.cases),
        "candidates": {c: {"foreground_dice": s, "per_label": result.candidate_label_scores[c]}
                       for c, s in result.candidate_scores.items()},
        "postprocessing": {"steps": list(result.instructions.postprocessing), "decisions": result.postprocessing_log,
                           "foreground_dice_before": result.dice_before, "foreground_dice_after": result.dice_after},
        "notes": result.notes,
    }
    write_json(work_dir / "find_best_report.json", _json_safe(report))
    names = list(layout.foreground_names)
    lines = ["# find-best report", "",
             f"Cross-validation cases: {len(result.cases)}. Metric: mean foreground Dice (per label: mean over "
             f"cases where the label is in the prediction or the reference).", "",
             "| candidate | mean foreground Dice | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for c, s in sorted(result.candidate_scores.items(), key=lambda kv: -(kv[1] if not math.isnan(kv[1]) else -1)):
        mark = " **(chosen)**" if c == result.chosen else ""
        lines.append(f"| {c}{mark} | {_f(s)} | " + " | ".join(_f(result.candidate_label_scores[c][n]) for n in names)
                     + " |")
    lines += ["", "## Post-processing (decided on the chosen candidate)", ""]
    for d in result.postprocessing_log:
        what = "all foreground merged" if d["step"]["labels"] == "foreground" else f"label {d.get('label')}"
        if "foreground_dice_before" in d:
            detail = f"foreground Dice {_f(d['foreground_dice_before'])} -> {_f(d['foreground_dice_after'])}"
            if d.get("labels_worse"):
                detail += f"; worse for {d['labels_worse']}"
        else:
            detail = f"Dice of {d.get('label')} {_f(d['label_dice_before'])} -> {_f(d['label_dice_after'])}"
        lines.append(f"- keep largest component ({what}): {'**kept**' if d['kept'] else 'not kept'} ({detail})")
    lines += ["", f"Mean foreground Dice: {_f(result.dice_before)} without, {_f(result.dice_after)} with the kept "
              f"post-processing.", ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    with atomic_path(work_dir / "find_best_report.md") as tmp:
        tmp.write_text("\n".join(lines))
