"""A stand-in ``autoseg predict`` child speaking this session's agreed interface (docs: interfaces.md), for the
module's batch, estimate and uncertainty logic while the library's options are written in parallel.

It segments by threshold (1 where image > 50, 2 where > 150) every ``<case>_0000<ext>`` of the input folder,
emits the ``estimate`` event first (``fits`` false when the image is named in ``AUTOSEG_FAKE_NO_FIT``;
then it stops unless ``--force``), fails cases whose name contains "broken" (with ``--continue-on-error``
the others go on and it exits 2 with "N of M cases failed"), writes ``<case>_uncertainty.nii.gz`` with
``--save-uncertainty`` (uncertainty = 1 on the boundary voxels of label 1, else 0) and
``predict_summary.json``. Volumes in ml are computed by the stand-in from its own label map, so the tests
can compare the table with an independent count.
"""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE = r'''
import json, os, sys, time
from pathlib import Path
import numpy as np
from AutoSegLib.io.images import read_image, write_image

def ev(**k):
    print(json.dumps(k), flush=True)

def main(args):
    print("argv " + json.dumps(args), flush=True)
    opt = lambda name: args[args.index(name) + 1]
    inp, out = Path(opt("-i")), Path(opt("-o"))
    files = sorted(inp.glob("*_0000.nii.gz")) if inp.is_dir() else [inp]
    fits = os.environ.get("AUTOSEG_FAKE_NO_FIT", "") == ""
    ev(event="estimate", seconds=12.5, peak_memory_mib=9000.0 if not fits else 900.0,
       available_memory_mib=4000.0, fits=fits, message="needs about 8.8 GiB, 3.9 GiB available" if not fits else "ok")
    if not fits and "--force" not in args:
        ev(event="error", message="the memory will not fit: needs about 8.8 GiB, 3.9 GiB available; use --force")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in files:
        case = f.name[:-len("_0000.nii.gz")]
        t0 = time.perf_counter()
        row = {"case": case, "inputs": [str(f)], "status": "ok", "error": None, "seconds": 0.0, "output": None,
               "uncertainty": None, "volumes_ml": {}, "mean_uncertainty": None, "uncertain_slices": [], "warnings": []}
        try:
            if "broken" in case:
                raise ValueError(f"{f.name}: truncated image data")
            image, geo = read_image(f)
            label = (image > 50).astype(np.uint8) + (image > 150).astype(np.uint8)
            dest = out / (case + ".nii.gz")
            write_image(label, geo, dest)
            ml = float(np.prod(geo.spacing)) / 1000.0
            row["output"] = str(dest)
            row["volumes_ml"] = {"organ": float((label == 1).sum()) * ml, "lesion": float((label == 2).sum()) * ml}
            if "--save-uncertainty" in args:
                unc = np.zeros(label.shape, np.float32)
                unc[(label == 1) & (np.roll(label, 1, axis=2) != 1)] = 1.0
                udest = out / (case + "_uncertainty.nii.gz")
                write_image(unc, geo, udest)
                row["uncertainty"] = str(udest)
                row["mean_uncertainty"] = float(unc.mean())
                k = int(np.argmax(unc.sum(axis=(1, 2))))
                point = (geo.index_to_physical_matrix() @ np.array([0.0, 0.0, k, 1.0]))[:3].tolist()
                row["uncertain_slices"] = [{"axis": "axial", "index": k, "position_lps": point,
                                            "uncertain_volume_ml": float(unc[k].sum()) * ml, "labels": ["organ"]}]
            if "spacing" in case:
                row["warnings"].append("spacing 9.0 mm is far outside the training range 1.0-1.5 mm")
        except Exception as exc:
            if "--continue-on-error" not in args:
                ev(event="error", message=str(exc))
                return 2
            row["status"], row["error"] = "failed", str(exc)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        rows.append(row)
        ev(event="case", **row)
    summary = {"version": 1, "model": opt("-m"), "settings": {}, "cases": rows}
    tmp = out / "predict_summary.json.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, out / "predict_summary.json")
    failed = sum(r["status"] == "failed" for r in rows)
    if failed:
        ev(event="error", message=f"{failed} of {len(rows)} cases failed (see predict_summary.json)")
        return 2
    return 0

sys.exit(main(sys.argv[1:]))
'''


def runner_factory(folder):
    """A runner factory whose child is `SOURCE` (given the ``predict`` arguments) instead of ``-m AutoSegLib``."""
    from autoseg_harness import REPO
    from AutoSegSlicer.common.runner import ProcessRunner

    script = Path(folder) / "fake_predict_child.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SOURCE)
    started = []

    class Runner(ProcessRunner):
        def start(self, argv):
            assert list(argv[1:4]) == ["-m", "AutoSegLib", "predict"] and argv[-1] == "--progress-json", argv
            started.append(list(argv))
            super().start([sys.executable, str(script), *argv[4:-1]])

    def factory(**kwargs):
        kwargs.setdefault("pythonpath", str(REPO))
        return Runner(**kwargs)

    factory.started = started
    return factory
