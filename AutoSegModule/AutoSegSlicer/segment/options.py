"""The options of one ``autoseg predict`` run as the module passes them, and the pre-flight estimate.

`PredictOptions.args` builds the command-line options agreed for ``autoseg predict`` (``--fast``, ``--roi``,
``--save-uncertainty``, ``--force``, ``--runtime``, ...). `MemoryWillNotFit` is what the logic raises when the
child stopped because its ``estimate`` event said the memory will not fit; the panel asks and reruns with
``--force``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from AutoSegLib.errors import AutoSegError

DEVICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class PredictOptions:
    """Options of a prediction (docs/interfaces: ``autoseg predict``'s options).

    device, tta, folds (None: all), step_size, show_3d; fast (``--fast``); roi: None or two opposite corners
    ``((x0, y0, z0), (x1, y1, z1))`` in the input file's LPS millimetres (``--roi``, see `roi.roi_box_lps`);
    save_uncertainty (``--save-uncertainty``); force (``--force``: run although the pre-flight estimate says
    the memory will not fit); runtime (``--runtime``; auto: the compiled CPU runtime, no PyTorch needed).
    """
    device: str = "auto"
    tta: bool = True
    folds: Optional[Tuple[str, ...]] = None
    step_size: float = 0.5
    show_3d: bool = False
    fast: bool = False
    roi: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None
    save_uncertainty: bool = False
    force: bool = False
    runtime: str = "auto"

    def args(self) -> List[str]:
        if self.device not in DEVICES:
            raise AutoSegError(f"Device {self.device!r} is not one of {', '.join(DEVICES)}.")
        if not 0.1 <= float(self.step_size) <= 1.0:
            raise AutoSegError(f"Step size {self.step_size} must be between 0.1 and 1 (fraction of the patch size).")
        out = ["--device", self.device, "--runtime", self.runtime, "--step-size", f"{float(self.step_size):g}"]
        if not self.tta:
            out.append("--no-tta")
        if self.folds:
            out += ["--folds", *[str(f) for f in self.folds]]
        if self.fast:
            out.append("--fast")
        if self.roi is not None:
            out += ["--roi", *[f"{c:.6g}" for c in _roi_numbers(self.roi)]]
        if self.save_uncertainty:
            out.append("--save-uncertainty")
        if self.force:
            out.append("--force")
        return out


def _roi_numbers(roi) -> List[float]:
    """``((x0, y0, z0), (x1, y1, z1))`` -> six floats; AutoSegError for anything else or an empty box."""
    try:
        numbers = [float(c) for corner in roi for c in corner]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 6 or not all(math.isfinite(c) for c in numbers):
        raise AutoSegError(f"The region of interest must be two corners (x, y, z) in millimetres; got {roi!r}.")
    if any(numbers[i] == numbers[i + 3] for i in range(3)):
        raise AutoSegError(f"The region of interest {numbers[:3]} .. {numbers[3:]} mm is empty (zero size along an "
                           f"axis): enlarge the ROI.")
    return numbers


class MemoryWillNotFit(AutoSegError):
    """The child stopped before any work because its pre-flight estimate said the memory will not fit.

    ``estimate`` is the child's ``estimate`` event; `question` asks whether to run anyway (``--force``).
    """

    def __init__(self, estimate: dict):
        self.estimate = dict(estimate)
        super().__init__(str(estimate.get("message") or "The memory needed is more than is available."))

    def question(self) -> str:
        e = self.estimate
        peak, free = e.get("peak_memory_mib"), e.get("available_memory_mib")
        sizes = (f" It needs about {peak / 1024:.1f} GiB; {free / 1024:.1f} GiB is available."
                 if isinstance(peak, (int, float)) and isinstance(free, (int, float)) else "")
        return (f"{self} {sizes}".strip() + "\n\nRunning anyway may make the computer swap or stop the run. "
                "Tip: choose 'Fast', fewer folds, or an ROI. Run anyway?")


def describe_estimate(event: dict) -> str:
    """One line for the panel from an ``estimate`` event: expected time and peak memory."""
    seconds, peak = event.get("seconds"), event.get("peak_memory_mib")
    parts = []
    if isinstance(seconds, (int, float)):
        parts.append(f"about {int(seconds // 60)}:{int(seconds % 60):02d} min")
    if isinstance(peak, (int, float)):
        free = event.get("available_memory_mib")
        of = f" of {free / 1024:.1f} GiB available" if isinstance(free, (int, float)) else ""
        parts.append(f"peak memory {peak / 1024:.1f} GiB{of}")
    text = "Expected: " + ", ".join(parts) if parts else str(event.get("message", ""))
    return text + ("" if event.get("fits", True) else " (will NOT fit)")
