"""Benchmark: does `predict --save-uncertainty` point at the errors? Held-out LA cases, a budget-trained model.

    PYTHONPATH=$PWD .venv/bin/python bench/uncertainty_la.py [--model /tmp/la_b15] [--json out.json]

The model's fold 0 (one fold, so the ensemble is the 8 test-time mirrorings) predicts the 16 cases of its
fold-0 validation split (splits_final.json: never trained on) exactly as predict does (preprocessing, sliding
window, mirroring, `inference.uncertainty.EnsembleStatistics`, export to the input grid); from the one run
every measure is exported: ``entropy`` (of the prediction's own probabilities, softmax of the ensemble's mean
logits: what predict writes), ``entropy_of_mean_probabilities`` (of the members' mean probabilities),
``mutual_information`` and ``variance`` (`inference.uncertainty`). Per measure:

- the Pearson and Spearman correlation, over cases, between the case's mean uncertainty and its Dice error
  (1 - Dice of the left atrium), the mean taken over the region R (below), as predict_summary.json's
  ``mean_uncertainty``;
- the fraction of wrong voxels (prediction != reference) that lie among the 10 % most uncertain voxels of R
  (per case, pooled: sum over cases of the wrong voxels caught / all wrong voxels in R; random ranking
  catches 10 %), and the share of all wrong voxels that lie in R.

R: the voxels within 10 mm of the predicted foreground (`inference.summary.analysis_region`; the whole image
when nothing is predicted). No reference label enters R. Other case aggregates are reported too (whole image,
predicted foreground, its bounding box, and sum(u) / predicted volume).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "LA2018_1p25mm"


def predict_all_measures(model, configuration, images, geometry, tta=True, runtime="torch"):
    """labels (raw grid) and {measure: uncertainty (raw grid)} from one ensemble run."""
    from AutoSegLib.inference.export import export_logits
    from AutoSegLib.inference.runner import predict_logits
    from AutoSegLib.inference.uncertainty import MEASURES, EnsembleStatistics, export_uncertainty
    from AutoSegLib.preprocessing.case import preprocess_case

    data, _, props = preprocess_case(images, geometry, model.plans, configuration)
    stats = EnsembleStatistics(regions=model.label_layout.has_regions)
    logits = predict_logits(model, configuration, np.ascontiguousarray(data, np.float32), tta=tta, runtime=runtime,
                            statistics=stats)
    labels, _ = export_logits(logits, props, model.plans, configuration, return_probabilities=False)
    mean_p, mean_e, mean_q = stats.result()
    from AutoSegLib.inference.uncertainty import entropy_of_logits, measure_from_moments
    maps = {("entropy_of_mean_probabilities" if m == "entropy" else m):
            export_uncertainty(measure_from_moments(mean_p, mean_e, mean_q, m, stats.regions), props,
                               model.plans, configuration) for m in MEASURES}
    maps["entropy"] = export_uncertainty(entropy_of_logits(logits, stats.regions), props, model.plans, configuration)
    return labels, maps, stats.members


def rank_corr(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/la_b15")  # copy it first: the compiled runtime exports network.onnx into it
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-tta", action="store_true")
    args = ap.parse_args()

    from AutoSegLib.inference.summary import MARGIN_MM, analysis_region
    from AutoSegLib.io.images import read_case, read_image
    MEASURES = ("entropy", "entropy_of_mean_probabilities", "mutual_information", "variance")
    from AutoSegLib.models.folder import load_model

    model = load_model(args.model)
    configuration = model.default_configurations()[0]
    split = json.loads((Path(args.model) / "splits_final.json").read_text())[0]
    cases = sorted(split["val"])
    folds = list(model.configurations[configuration].folds)
    print(f"model {args.model} {configuration} folds {folds}; {len(cases)} fold-0 validation cases", flush=True)
    rows = []
    t0 = time.monotonic()
    for case in cases:
        images, geometry = read_case([Path(args.data) / "imagesTr" / f"{case}_0000.nii.gz"])
        ref, _ = read_image(Path(args.data) / "labelsTr" / f"{case}.nii.gz")
        labels, maps, members = predict_all_measures(model, configuration, images, geometry, tta=not args.no_tta,
                                                        runtime=args.runtime)
        p, r = labels > 0, ref > 0
        dice = 2.0 * np.logical_and(p, r).sum() / max(p.sum() + r.sum(), 1)
        region = analysis_region(labels, geometry)
        wrong = p != r
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(p)) if p.any() else ()
        pads = [int(np.ceil(MARGIN_MM / s)) for s in geometry.spacing]
        box10 = np.zeros(p.shape, bool)
        box10[tuple(slice(max(0, b.start - m), b.stop + m) for b, m in zip(box, pads)) if box else ()] = True
        regions = {"R": region, "box10": box10, "image": np.ones(p.shape, bool)}
        row = {"case": case, "dice": float(dice), "members": members, "wrong_voxels": int(wrong.sum()),
               **{f"wrong_in_{k}": int(wrong[v].sum()) for k, v in regions.items()}}
        for m, u in maps.items():
            row[m] = {"mean": float(u[region].mean()), "mean_whole_image": float(u.mean()),
                      "mean_foreground": float(u[p].mean()) if p.any() else float(u.mean()),
                      "mean_foreground_box": float(u[box].mean()),
                      "relative_volume": float(u.sum() / max(p.sum(), 1))}
            for k, v in regions.items():
                ur, wr = u[v], wrong[v]
                n = max(1, int(round(0.1 * ur.size)))
                top = np.argpartition(-ur, n - 1)[:n]
                row[m][f"caught_{k}"] = int(wr[top].sum())
                row[m][f"top_wrong_share_{k}"] = float(wr[top].mean())
        rows.append(row)
        print(f"{case}: Dice {dice:.3f}, wrong {row['wrong_voxels']} ({row['wrong_in_R']} in R), "
              + ", ".join(f"{m} mean {row[m]['mean']:.4f} caught {row[m]['caught_R'] / max(row['wrong_in_R'], 1):.2f}"
                          for m in MEASURES), flush=True)
    err = np.array([1 - r["dice"] for r in rows])
    summary = {}
    for m in MEASURES:
        mean_u = np.array([r[m]["mean"] for r in rows])
        alt = {k: np.array([r[m][k] for r in rows]) for k in ("mean_whole_image", "mean_foreground", "relative_volume",
                                                            "mean_foreground_box")}
        summary[m] = {"pearson": float(np.corrcoef(mean_u, err)[0, 1]), "spearman": rank_corr(mean_u, err),
                      **{f"pearson_{k}": float(np.corrcoef(v, err)[0, 1]) for k, v in alt.items()},
                      **{f"spearman_{k}": rank_corr(v, err) for k, v in alt.items()}}
        for k in ("R", "box10", "image"):
            summary[m][f"wrong_caught_by_top10_{k}"] = (sum(r[m][f"caught_{k}"] for r in rows)
                                                       / max(sum(r[f"wrong_in_{k}"] for r in rows), 1))
            summary[m][f"top10_precision_{k}"] = float(np.mean([r[m][f"top_wrong_share_{k}"] for r in rows]))
    share_in_region = {k: sum(r[f"wrong_in_{k}"] for r in rows) / max(sum(r["wrong_voxels"] for r in rows), 1)
                       for k in ("R", "box10")}
    out = {"model": args.model, "configuration": configuration, "folds": folds, "tta": not args.no_tta,
           "cases": rows, "mean_dice": float(np.mean([r["dice"] for r in rows])),
           "wrong_share_in_region": share_in_region, "measures": summary, "seconds": time.monotonic() - t0}
    print(json.dumps({k: v for k, v in out.items() if k != "cases"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
