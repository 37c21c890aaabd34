"""Peak memory (and time) of `autoseg predict` on a CT-sized volume with a random-weight 3-class model.

Measures RSS, not accuracy: a 512 x 512 x 400 int16 volume (0.7 x 0.7 x 1.25 mm, so the plans' spacing
(1.0, 0.8, 0.8) forces resampling both ways), a small plain U-Net, one fold. The prediction runs in a
child process; its peak RSS comes from the kernel (``getrusage(RUSAGE_CHILDREN)``).

    .venv/bin/python bench/predict_memory.py [--shape 400 512 512] [--tta] [--save-probabilities]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_inputs(root: Path, shape, spacing_zyx) -> Path:
    import numpy as np
    import SimpleITK as sitk
    sys.path.insert(0, str(REPO / "Testing" / "lib" / "inference"))
    from conftest import make_plans, write_model  # the tests' tiny-model factory

    from AutoSegLib.network.unet import build_network  # noqa: F401  (import check)
    from AutoSegLib.planning.plans import NetworkTopology
    import dataclasses

    plans = make_plans(spacing=(1.0, 0.8, 0.8))
    topo = NetworkTopology("plain_unet", 4, (8, 16, 32, 32), ((1, 3, 3),) + ((3, 3, 3),) * 3,
                           ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), (1, 1, 1, 1), (1, 1, 1), True)
    conf = dataclasses.replace(plans.configurations["3d_fullres"], network=topo, patch_size=(64, 128, 128))
    plans = dataclasses.replace(plans, configurations={"3d_fullres": conf})
    model = write_model(root / "model", plans)
    # a CT-like volume: air outside a body ellipse, soft tissue inside, smooth so it compresses fast
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    body = ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.35)) ** 2 <= 1
    vol = np.where(body, np.int16(40), np.int16(-1000)) + (z % 7).astype(np.int16)
    img = sitk.GetImageFromArray(vol.astype(np.int16))
    img.SetSpacing(tuple(reversed(spacing_zyx)))
    (root / "in").mkdir()
    sitk.WriteImage(img, str(root / "in" / "ct_0000.nii.gz"), True)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[400, 512, 512], help="z y x")
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.25, 0.7, 0.7], help="z y x, mm")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--save-probabilities", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step-size", type=float, default=1.0,
                    help="window step (default 1.0: fewer windows, same arrays, so the same peak memory as 0.5)")
    ap.add_argument("--keep", default=None, help="folder to keep inputs/outputs in (default: temporary)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model = make_inputs(root, args.shape, args.spacing)
        print(f"inputs written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        cmd = [sys.executable, "-m", "AutoSegLib", "predict", "-m", str(model), "-i", str(root / "in"),
               "-o", str(root / "out"), "--device", "cpu", "--threads", str(args.threads),
               "--step-size", str(args.step_size)]
        if not args.tta:
            cmd.append("--no-tta")
        if args.save_probabilities:
            cmd.append("--save-probabilities")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        wall = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
        result = {"shape_zyx": args.shape, "spacing_zyx": args.spacing, "tta": args.tta,
                  "save_probabilities": args.save_probabilities, "step_size": args.step_size, "wall_s": round(wall, 1),
                  "peak_rss_gib": round(peak_gib, 2), "limit_gib": 6.0, "ok": peak_gib <= 6.0}
        print(json.dumps(result))
        return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
