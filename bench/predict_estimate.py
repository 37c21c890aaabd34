"""The pre-flight estimate against measured wall time and peak memory of `autoseg predict`.

    PYTHONPATH=$PWD .venv/bin/python bench/predict_estimate.py [--model /tmp/la_b15] [--skip-ct] [--json out.json]

Five LA cases made to differ in size (one as is, one cropped, two upsampled to a finer spacing, one padded
to a larger field of view), each predicted by its own `autoseg predict` process (default settings:
OpenVINO, mirroring on, step 0.5; 2 threads) after one ``--estimate-only`` run has cached the calibration.
Measured: the process's peak RSS (``wait4``'s ``ru_maxrss``) and the wall time from the estimate event to the
end (the estimate is printed after start-up, so it promises the rest), and the whole command's wall time.

CT-sized: a 512x512x400 volume with a 3-class random-weight model (`bench/predict_memory.py`'s inputs),
`predict --no-tta --step-size 1.0` (peak memory does not depend on either): peak RSS against 6 GiB and
against the estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = Path("/work/shared/data/LA2018_1p25mm")


def run_cli(args, env) -> dict:
    """Run `autoseg predict ... --progress-json`; wall, peak RSS, estimate event, time after the estimate."""
    cmd = [sys.executable, "-m", "AutoSegLib", "predict", *args, "--progress-json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    estimate, t_est, timeline = None, None, []
    for line in proc.stdout:
        if line.startswith("{"):
            ev = json.loads(line)
            if ev.get("event") == "estimate":
                estimate, t_est = ev, time.perf_counter()
            if ev.get("event") in ("estimate", "stage"):  # where the time went: seconds from the start
                timeline.append((round(time.perf_counter() - t0, 2), ev.get("message") or ev["event"]))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return {"wall_s": wall, "after_estimate_s": (time.perf_counter() - t_est) if t_est else None,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "estimate": estimate,
            "timeline": timeline + [(round(wall, 2), "end")]}


def la_inputs(root: Path) -> list:
    import SimpleITK as sitk
    out = []

    def save(img, name):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(d / f"{name}_0000.nii.gz"), True)
        out.append((name, d, img.GetSize()))

    def resample(img, spacing):
        size = [int(round(s * sp / spacing)) for s, sp in zip(img.GetSize(), img.GetSpacing())]
        return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (spacing,) * 3,
                             img.GetDirection(), 0.0, img.GetPixelID())

    read = lambda c: sitk.ReadImage(str(DATA / "imagesTr" / f"{c}_0000.nii.gz"))  # noqa: E731
    save(read("la_072"), "as_is")
    img = read("la_073")
    save(img[: img.GetSize()[0] // 2 + 8, :, :], "cropped")
    save(resample(read("la_070"), 0.9), "spacing_0p9")
    save(resample(read("la_076"), 0.7), "spacing_0p7")
    img = read("la_067")
    arr = sitk.GetArrayFromImage(img)
    rng = np.random.default_rng(0)
    big = rng.normal(float(arr.mean()), float(arr.std()), (arr.shape[0] + 40, arr.shape[1] + 120,
                                                         arr.shape[2] + 120)).astype(arr.dtype)
    big[20:20 + arr.shape[0], 60:60 + arr.shape[1], 60:60 + arr.shape[2]] = arr
    padded = sitk.GetImageFromArray(big)
    padded.SetSpacing(img.GetSpacing())
    padded.SetDirection(img.GetDirection())
    padded.SetOrigin(img.TransformIndexToPhysicalPoint((-60, -60, -20)))
    save(padded, "padded")
    return out


def roi_on_padded(model: Path, work: Path, env) -> dict:
    """A 64 mm cube around the atrium of la_067 padded to a larger field of view: --roi vs the whole volume."""
    import SimpleITK as sitk
    img = sitk.ReadImage(str(DATA / "imagesTr" / "la_067_0000.nii.gz"))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / "la_067.nii.gz"))) > 0
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(gt).mean(0)[::-1]]))
    lo, hi = centre - 32, centre + 32
    whole = work / "out" / "padded" / "padded.nii.gz"
    r = run_cli(["-m", str(model), "-i", str(work / "inputs" / "padded"), "-o", str(work / "out" / "padded_roi"),
                 "--threads", "2", "--roi", *map(str, lo), *map(str, hi), *EXTRA], env)
    t_whole = [row for row in RESULTS["la"] if row["input"] == "padded"][0]
    seg_roi = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "padded_roi" / "padded.nii.gz")))
    seg_whole = sitk.GetArrayFromImage(sitk.ReadImage(str(whole)))
    region = (slice(20, 20 + gt.shape[0]), slice(60, 60 + gt.shape[1]), slice(60, 60 + gt.shape[2]))
    from AutoSegLib.inference.roi import roi_mask, roi_to_box
    from AutoSegLib.io.geometry import Geometry
    geo = Geometry.from_sitk(img)
    box = roi_to_box((lo, hi), gt.shape, geo)
    inside = np.zeros(gt.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = roi_mask((lo, hi), gt.shape, geo, box)

    def dice(a, b):
        return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    roi_l, whole_l = seg_roi[region] > 0, seg_whole[region] > 0
    out = {"roi_wall_s": r["wall_s"], "roi_after_estimate_s": r["after_estimate_s"], "roi_peak_rss_mib": r["peak_rss_mib"],
           "whole_wall_s": t_whole["wall_s"], "whole_after_estimate_s": t_whole["after_estimate_s"],
           "whole_peak_rss_mib": t_whole["peak_rss_mib"],
           "dice_gt_in_box_roi": dice(roi_l & inside, gt & inside), "dice_gt_in_box_whole": dice(whole_l & inside, gt & inside),
           "dice_roi_vs_whole_in_box": dice(roi_l & inside, whole_l & inside),
           "labels_outside_box": int(seg_roi[region][~inside].sum() + seg_roi.sum() - seg_roi[region].sum())}
    print(f"\nROI, la_067 padded to {' x '.join(map(str, seg_roi.shape[::-1]))} voxels, 64 mm cube: "
          f"{out['roi_after_estimate_s']:.1f} s vs {out['whole_after_estimate_s']:.1f} s whole (after the estimate), "
          f"peak RSS {out['roi_peak_rss_mib']:.0f} vs {out['whole_peak_rss_mib']:.0f} MiB; Dice to GT in the box "
          f"{out['dice_gt_in_box_roi']:.4f} vs {out['dice_gt_in_box_whole']:.4f}; ROI vs whole in the box "
          f"{out['dice_roi_vs_whole_in_box']:.4f}; labels outside the box {out['labels_outside_box']}", flush=True)
    return out


RESULTS: dict = {}
EXTRA: list = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/la_b15")
    ap.add_argument("--work", default="/tmp/infer-bench-estimate")
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--skip-la", action="store_true")
    ap.add_argument("--no-tta", action="store_true", help="LA cases and ROI without mirroring (8x faster)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from fast_mode import copy_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(work / "cache"))
    if args.no_tta:
        EXTRA.append("--no-tta")
    results = RESULTS
    results.update({"la": [], "ct": None})
    if not args.skip_la:
        model = copy_model(Path(args.model), work / "model")
        inputs = la_inputs(work / "inputs")
        run_cli(["-m", str(model), "-i", str(inputs[0][1]), "-o", str(work / "warm"), "--threads", "2",
                 "--estimate-only"], env)  # calibration (and export) once
        print("| input | size (x y z) | estimated s | measured s after the estimate | ratio | whole command s | "
              "estimated peak MiB | measured peak RSS MiB | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, folder, size in inputs:
            r = run_cli(["-m", str(model), "-i", str(folder), "-o", str(work / "out" / name), "--threads", "2",
                         *EXTRA], env)
            e = r["estimate"]
            row = {"input": name, "size": list(size), **r}
            results["la"].append(row)
            print(f"| {name} | {' x '.join(map(str, size))} | {e['seconds']:.1f} | {r['after_estimate_s']:.1f} | "
                  f"{e['seconds'] / r['after_estimate_s']:.2f} | {r['wall_s']:.1f} | {e['peak_memory_mib']:.0f} | "
                  f"{r['peak_rss_mib']:.0f} | {e['peak_memory_mib'] / r['peak_rss_mib']:.2f} |", flush=True)
        results["roi"] = roi_on_padded(model, work, env)
    if not args.skip_ct:
        from predict_memory import make_inputs
        with tempfile.TemporaryDirectory(dir=str(work)) as tmp:
            root = Path(tmp)
            model = make_inputs(root, (400, 512, 512), (1.25, 0.7, 0.7))
            from AutoSegLib.inference.compiled import export_model
            from AutoSegLib.models.folder import load_model
            export_model(load_model(model))  # as export-model/import-model do: predict then needs no torch
            r = run_cli(["-m", str(model), "-i", str(root / "in"), "-o", str(root / "out"), "--threads", "2",
                         "--no-tta", "--step-size", "1.0"], env)
            # the estimate's parts for this case, from the calibration the run cached (same cache folder)
            os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
            from AutoSegLib.inference.calibrate import measure
            from AutoSegLib.inference.estimate import case_cost
            loaded = load_model(model)
            conf = next(iter(loaded.configurations))
            r["estimate_parts"] = case_cost(measure(loaded, conf, "openvino"), loaded, conf, (400, 512, 512),
                                            (1.25, 0.7, 0.7), 1, False, 1.0, False)
        e = r["estimate"]
        results["ct"] = r
        print(f"\nCT-sized 512x512x400, 3 classes (OpenVINO, no TTA, step 1.0): peak RSS {r['peak_rss_mib'] / 1024:.2f} "
              f"GiB (limit 6), estimated {e['peak_memory_mib'] / 1024:.2f} GiB; {r['wall_s']:.0f} s, estimated "
              f"{e['seconds']:.0f} s after start-up ({r['after_estimate_s']:.0f} s measured)")
        print("where the time went (s from the start, what began):", r["timeline"])
        print("the estimate's parts for the case (s):", {k: round(v, 1) for k, v in r["estimate_parts"].items()})
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
