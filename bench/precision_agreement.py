"""float32 against bfloat16 inference with one AutoSeg model, in one process: time, agreement of the label
maps and probabilities, and Dice of each to the reference labels.

    .venv/bin/python bench/precision_agreement.py MODEL IMAGES_DIR LABELS_DIR [--cases N]

IMAGES_DIR holds single-channel ``<case>_0000.nii.gz`` files, LABELS_DIR ``<case>.nii.gz``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from AutoSegLib import api  # noqa: E402
from AutoSegLib.inference.predict import predict_arrays  # noqa: E402
from AutoSegLib.io.images import read_case, read_image  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    denom = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / denom if denom else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--cases", type=int, default=4)
    args = ap.parse_args()
    model = api.load_model(args.model)
    for path in sorted(args.images.glob("*_0000.nii.gz"))[:args.cases]:
        case = path.name[:-len("_0000.nii.gz")]
        images, geometry = read_case([path])
        truth, _ = read_image(args.labels / f"{case}.nii.gz")
        out = {}
        for precision in ("float32", "bfloat16"):
            start = time.perf_counter()
            labels, probs = predict_arrays(model, images, geometry, device="cpu", precision=precision,
                                           return_probabilities=True)
            out[precision] = (labels, probs, time.perf_counter() - start)
        values = [int(v) for v in np.unique(truth) if v > 0]
        f32, bf16 = out["float32"], out["bfloat16"]
        print(f"{case}: float32 {f32[2]:.1f} s, bfloat16 {bf16[2]:.1f} s; max |dp| {np.abs(f32[1] - bf16[1]).max():.4f}; "
              f"Dice float32 vs bfloat16 {[round(dice(f32[0], bf16[0], v), 5) for v in values]}; "
              f"to the labels: float32 {[round(dice(f32[0], truth, v), 4) for v in values]}, "
              f"bfloat16 {[round(dice(bf16[0], truth, v), 4) for v in values]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
