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

R: the bounding box of the predicted foreground enlarged by 10 mm on each side (`inference.summary`'s
region; the whole image when nothing is predicted). No reference label enters R.
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

    from AutoSegLib.inference.summary import analysis_region
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
        from scipy.ndimage import distance_transform_edt
        near = (distance_transform_edt(~p, sampling=geometry.spacing) <= 10.0) if p.any() else np.ones_like(p)
        row = {"case": case, "dice": float(dice), "members": members, "wrong_voxels": int(wrong.sum()),
               "wrong_in_region": int(wrong[region].sum()), "region_voxels": int(np.prod([s.stop - s.start for s in region]))}
        for m, u in maps.items():
            ur, wr = u[region].ravel(), wrong[region].ravel()
            k = max(1, int(round(0.1 * ur.size)))
            top = np.argpartition(-ur, k - 1)[:k]
            row[m] = {"mean": float(ur.mean()), "mean_whole_image": float(u.mean()),
                      "mean_foreground": float(u[p].mean()) if p.any() else float(u.mean()),
                      "relative_volume": float(u.sum() / max(p.sum(), 1)),
                      "mean_near_foreground": float(u[near].mean()),
                      "caught": int(wr[top].sum()), "top_wrong_share": float(wr[top].mean())}
        rows.append(row)
        print(f"{case}: Dice {dice:.3f}, wrong {row['wrong_voxels']} ({row['wrong_in_region']} in R), "
              + ", ".join(f"{m} mean {row[m]['mean']:.4f} caught {row[m]['caught'] / max(row['wrong_in_region'], 1):.2f}"
                          for m in MEASURES), flush=True)
    err = np.array([1 - r["dice"] for r in rows])
    summary = {}
    for m in MEASURES:
        mean_u = np.array([r[m]["mean"] for r in rows])
        alt = {k: np.array([r[m][k] for r in rows]) for k in ("mean_whole_image", "mean_foreground", "relative_volume",
                                                            "mean_near_foreground")}
        caught = sum(r[m]["caught"] for r in rows)
        wrong = sum(r["wrong_in_region"] for r in rows)
        per_case = [r[m]["caught"] / r["wrong_in_region"] for r in rows if r["wrong_in_region"]]
        summary[m] = {"pearson": float(np.corrcoef(mean_u, err)[0, 1]), "spearman": rank_corr(mean_u, err),
                      **{f"pearson_{k}": float(np.corrcoef(v, err)[0, 1]) for k, v in alt.items()},
                      **{f"spearman_{k}": rank_corr(v, err) for k, v in alt.items()},
                      "wrong_caught_by_top10_pooled": caught / max(wrong, 1),
                      "wrong_caught_by_top10_case_mean": float(np.mean(per_case)),
                      "top10_precision_case_mean": float(np.mean([r[m]["top_wrong_share"] for r in rows]))}
    share_in_region = sum(r["wrong_in_region"] for r in rows) / max(sum(r["wrong_voxels"] for r in rows), 1)
    out = {"model": args.model, "configuration": configuration, "folds": folds, "tta": not args.no_tta,
           "cases": rows, "mean_dice": float(np.mean([r["dice"] for r in rows])),
           "wrong_share_in_region": share_in_region, "measures": summary, "seconds": time.monotonic() - t0}
    print(json.dumps({k: v for k, v in out.items() if k != "cases"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
