"""Budget planning rules (planning.budget, planning.coarse_to_fine) with stand-in device calibrations, and the
calibration's cache."""
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.network.memory import conv_macs
from AutoSegLib.planning import budget as B
from AutoSegLib.planning import coarse_to_fine as C2F
from AutoSegLib.training.calibration import Calibration
from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans, ResamplingSettings

# The LA2018_1p25mm fullres numbers (reference plans): target 1.25 mm, median image 44 x 71 x 96.
LA_SPACING = (1.25, 1.25, 1.25)
LA_MEDIAN = (44.0, 71.0, 96.0)


def base_plan(ndim=3):
    topo = NetworkTopology("plain_unet", 2, (32, 64), ((3,) * ndim,) * 2, ((1,) * ndim, (2,) * ndim), (2, 2), (2,))
    return ConfigurationPlan(name="3d_fullres" if ndim == 3 else "2d", spacing=(1.0,) * ndim, patch_size=(32,) * ndim,
                             batch_size=2, median_image_size=(32.0,) * ndim, normalization=("zscore",),
                             use_mask_for_norm=(False,), network=topo, resampling=ResamplingSettings(),
                             batch_dice=True, data_identifier="x")


@dataclass
class FlatDevice:
    """A device with a constant throughput and free data loading: an iteration costs 6 x MACs / rate."""
    gflop_per_s: float
    device: str = "cpu"
    precision: str = "float32"
    key: str = "test device"

    def gflops(self, patch, features):
        return self.gflop_per_s

    def network_seconds(self, macs, patch, features):
        return 6.0 * macs / (self.gflop_per_s * 1e9)

    def step_seconds(self, macs, patch, batch, features):
        return self.network_seconds(macs, patch, features)


def plan(minutes, device, spacing=LA_SPACING, median=LA_MEDIAN, n_cases=64):
    return B.plan_budget(minutes, device, spacing, median, 1, 2, n_cases, base_plan(len(spacing)))


def test_a_fast_device_keeps_the_stock_resolution_width_and_a_whole_image_patch():
    conf, record = plan(60, FlatDevice(1e9))
    assert record.spacing_factor == 1.0 and record.base_features == 32
    assert conf.spacing == LA_SPACING
    # 44 x 71 x 96 padded to the pooling divisibility (4 pools on each axis: 16): 48 x 80 x 96
    assert conf.patch_size == (48, 80, 96) and conf.batch_size == 2
    assert conf.network.features_per_stage == (32, 64, 128, 256, 320)
    assert conf.name == "3d_budget" and conf.normalization == ("zscore",) and conf.batch_dice


def test_the_first_candidate_that_buys_the_target_iterations_is_chosen():
    conf, record = plan(15, FlatDevice(100))
    iters = [c[3] for c in record.candidates]
    chosen = [(c[0], c[1]) for c in record.candidates].index((record.spacing_factor, record.base_features))
    assert record.target_iterations == 1000  # a 15-minute budget keeps the short budgets' target
    assert iters[chosen] >= 1000 and all(i < 1000 for i in iters[:chosen])
    # the candidate list is finest first, widest first at each spacing
    assert [c[0] for c in record.candidates] == sorted(c[0] for c in record.candidates)
    # its iteration count is the budget minus the reserve over 6 x MACs / throughput
    macs = conv_macs(conf.network, conf.patch_size, 1, 2) * 2
    step = 6 * macs / 100e9
    assert record.step_seconds == pytest.approx(step, rel=1e-3)
    assert iters[chosen] == int((900 - record.reserve_seconds) // step) or \
        abs(iters[chosen] - (900 - record.reserve_seconds) / step) < 2
    # the schedule spends those iterations in epochs of equal length
    assert record.epochs * record.iterations_per_epoch == record.iterations
    assert record.iterations <= iters[chosen] < record.iterations + record.iterations_per_epoch
    assert record.epochs >= B.EPOCHS_PER_RUN - 1 or record.iterations_per_epoch == B.MIN_ITERATIONS_PER_EPOCH


def test_a_higher_iteration_target_chooses_the_first_candidate_that_reaches_it():
    _, default = plan(30, FlatDevice(100))
    iters = [c[3] for c in default.candidates]
    keys = [(c[0], c[1]) for c in default.candidates]
    assert default.target_iterations == 2500  # above 15 minutes
    # ask for more than the default choice buys: the first candidate (finest first) at or above that count
    target = iters[keys.index((default.spacing_factor, default.base_features))] + 1
    expected = next(k for k, i in zip(keys, iters) if i >= target)
    _, record = B.plan_budget(30, FlatDevice(100), LA_SPACING, LA_MEDIAN, 1, 2, 64, base_plan(),
                              target_iterations=target)
    assert (record.spacing_factor, record.base_features) == expected
    assert record.spacing_factor > default.spacing_factor and record.target_iterations == target
    assert record.candidates == default.candidates  # the same candidates, another choice among them
    for bad in (B.MIN_ITERATIONS - 1, 0, 1000.5):
        with pytest.raises(AutoSegError, match=f"at least {B.MIN_ITERATIONS}"):
            B.plan_budget(30, FlatDevice(100), LA_SPACING, LA_MEDIAN, 1, 2, 64, base_plan(), target_iterations=bad)


def test_the_iteration_target_grows_above_a_quarter_hour():
    # 1000 up to 15 minutes (the README demo's 1.5), 2500 above (Slicer quick mode's 30; LA gained 0.009 at 30, 60)
    assert [B.target_iterations_for(m) for m in (1.5, 10, 15, 15.5, 30, 60, 600)] == [1000] * 3 + [2500] * 4
    # the same device and data: 15 minutes holds to 1000, 16 to 2500 and so plans coarser
    _, at15 = plan(15, FlatDevice(100))
    _, at16 = plan(16, FlatDevice(100))
    assert (at15.target_iterations, at16.target_iterations) == (1000, 2500)
    assert at16.spacing_factor > at15.spacing_factor
    assert [c[3] for c in at16.candidates if (c[0], c[1]) == (at16.spacing_factor, at16.base_features)][0] >= 2500


def test_slower_devices_and_smaller_budgets_plan_coarser():
    factors = [plan(m, FlatDevice(g))[1].spacing_factor for m, g in ((60, 100), (15, 100), (15, 20))]
    assert factors[0] <= factors[1] <= factors[2] and factors[0] < factors[2]


def test_coarsening_makes_anisotropic_spacing_isotropic_first():
    assert B.coarsened_spacing((3.6, 0.8, 0.8), 2.0) == (3.6, 1.6, 1.6)
    assert B.coarsened_spacing((3.6, 0.8, 0.8), 5.0) == (4.0, 4.0, 4.0)
    assert B.coarsened_spacing((1.25, 1.25, 1.25), 1.5) == pytest.approx((1.875,) * 3)


def test_candidates_stop_before_the_median_image_gets_too_small():
    _, record = plan(15, FlatDevice(8.0))  # nothing reaches the target: the cheapest candidate wins
    coarsest = max(c[0] for c in record.candidates)
    assert min(np.asarray(LA_MEDIAN) / coarsest) >= B.MIN_MEDIAN_EDGE
    assert (record.spacing_factor, record.base_features) == (coarsest, B.BASE_FEATURES[-1])


def test_a_budget_too_small_names_the_smallest_that_plans():
    device = FlatDevice(0.5)
    with pytest.raises(AutoSegError, match=r"smallest budget that plans is (\d+) minutes") as err:
        plan(1, device)
    minutes = int(err.value.args[0].split("smallest budget that plans is ")[1].split()[0])
    assert isinstance(err.value, B.BudgetTooSmall) and err.value.smallest_minutes == minutes  # the demo's fallback
    _, record = plan(minutes, device)  # and that budget does plan
    assert record.iterations >= B.MIN_ITERATIONS - B.MIN_ITERATIONS_PER_EPOCH
    with pytest.raises(AutoSegError, match="positive"):
        plan(0, device)


def test_2d_data_gets_a_2d_budget_configuration():
    conf, record = B.plan_budget(10, FlatDevice(50), (1.0, 1.0), (256.0, 256.0), 1, 3, 30, base_plan(2))
    assert conf.name == record.configuration == "2d_budget" and len(conf.patch_size) == 2


def test_sliding_windows_counts_half_patch_steps():
    assert B.sliding_windows((32, 32, 32), (32, 32, 32)) == 1
    assert B.sliding_windows((20, 20), (32, 32)) == 1          # smaller than the patch: one (padded) window
    assert B.sliding_windows((64, 48, 32), (32, 32, 32)) == 3 * 2 * 1  # (64-32)/16+1, ceil((48-32)/16)+1


def test_schedule_for_another_time_rescales_the_iterations():
    _, record = plan(30, FlatDevice(100))
    assert B.schedule_for(record) == (record.epochs, record.iterations_per_epoch, record.val_iterations)
    epochs, per_epoch, _ = B.schedule_for(record, 10)
    assert epochs * per_epoch == pytest.approx((600 - record.reserve_seconds) / record.step_seconds,
                                               abs=per_epoch + 1)
    with pytest.raises(AutoSegError, match="give at least"):
        B.schedule_for(record, record.reserve_seconds / 60)


def test_budget_plans_round_trip_through_plans_json(tmp_path):
    conf, record = plan(15, FlatDevice(100))
    plans = Plans(dataset_name="x", channel_names={"0": "MRI"}, labels={"background": 0, "a": 1},
                  transpose_forward=(0, 1, 2), transpose_backward=(0, 1, 2), original_median_spacing=LA_SPACING,
                  original_median_shape=LA_MEDIAN, intensity_properties={},
                  configurations={"3d_fullres": base_plan(), "3d_budget": conf}, budget=record)
    plans.to_json(tmp_path / "plans.json")
    back = Plans.from_json(tmp_path / "plans.json")
    assert back == plans and back.recommended_configuration == "3d_budget"
    assert back.configuration("auto") == conf
    stock = Plans.from_dict({k: v for k, v in plans.to_dict().items() if k != "budget"} |
                            {"configurations": {"3d_fullres": json.loads(json.dumps(plans.to_dict()))
                                                ["configurations"]["3d_fullres"]}})
    assert stock.budget is None and stock.recommended_configuration == "3d_fullres"


# ---- calibration -----------------------------------------------------------------------------------------
def make_calibration(**kw):
    """Probes 32^3 and 64^3 voxels x 16 and 32 features at 100, 200, 50 and 100 GFLOP/s (6 FLOPs per MAC)."""
    rates = (100e9, 200e9, 50e9, 100e9)
    macs = (1e9, 2e9, 8e9, 16e9)
    d = dict(key="k", device="cpu", precision="float32", threads=2, probe_macs=macs,
             probe_seconds=tuple(6 * m / r for m, r in zip(macs, rates)), probe_voxels=(32 ** 3, 32 ** 3, 64 ** 3, 64 ** 3),
             probe_features=(16, 32, 16, 32), augment_seconds_per_voxel=1e-7, workers=1, measured_at="now")
    d.update(kw)
    return Calibration(**d)


def test_throughput_is_bilinear_in_log_voxels_and_log_features():
    cal = make_calibration()
    # the probes themselves
    assert cal.gflops((32, 32, 32), 16) == pytest.approx(100) and cal.gflops((32, 32, 32), 32) == pytest.approx(200)
    assert cal.gflops((64, 64, 64), 16) == pytest.approx(50) and cal.gflops((64, 64, 64), 32) == pytest.approx(100)
    # a third of the way in log voxels (64x32x32 = 2 x 32^3, 64^3 = 8 x 32^3), halfway in log features
    # (22.6 = sqrt(16 x 32)): weighted geometric means of the probes' rates
    third = (64, 32, 32)
    assert cal.gflops(third, 16) == pytest.approx(100 ** (2 / 3) * 50 ** (1 / 3))
    assert cal.gflops((32, 32, 32), (16 * 32) ** 0.5) == pytest.approx((100 * 200) ** 0.5)
    assert cal.gflops(third, (16 * 32) ** 0.5) == pytest.approx(((100 * 200) ** 0.5) ** (2 / 3) * ((50 * 100) ** 0.5) ** (1 / 3))
    # features clamped; voxels clamped below the smallest probe, extrapolated above the largest
    assert cal.gflops((32, 32, 32), 8) == pytest.approx(100) and cal.gflops((32, 32, 32), 64) == pytest.approx(200)
    assert cal.gflops((8, 8, 8), 16) == pytest.approx(100)
    assert cal.gflops((128, 64, 64), 16) == pytest.approx(50 / 2 ** (1 / 3))  # 2x the voxels: a third of 8x's halving
    assert cal.network_seconds(1e10, third, 16) == pytest.approx(6e10 / (100 ** (2 / 3) * 50 ** (1 / 3) * 1e9))
    # the CPU pays network + augmentation; a GPU overlaps them across its workers
    assert cal.step_seconds(1e10, (10, 10, 10), 2, 16) == pytest.approx(6e10 / 100e9 + 1e-7 * 2000)
    gpu = make_calibration(device="cuda", workers=4, augment_seconds_per_voxel=2e-3)  # data 1 s > network 0.6 s
    assert gpu.step_seconds(1e10, (10, 10, 10), 2, 16) == pytest.approx(2e-3 * 2000 / 4)


def test_a_calibration_cached_by_version_1_is_measured_again(tmp_path, monkeypatch):
    from AutoSegLib.training import calibration as C
    calls = []
    monkeypatch.setattr(C, "_time_probe", lambda patch, base, ex: (calls.append(1), (1e9 * base, 0.01 * base))[1])
    monkeypatch.setattr(C, "_time_augmentation", lambda: 2e-7)
    cache = tmp_path / "cal.json"
    key = C.cache_key("cpu", "float32", 2)
    old = dict(key=key, device="cpu", precision="float32", threads=2, probe_macs=[1e9, 1e11], probe_seconds=[0.1, 1.0],
               augment_seconds_per_voxel=1e-7, workers=1, measured_at="then")
    cache.write_text(json.dumps({"version": 1, "entries": {key: old}}))
    cal = C.calibrate("cpu", "float32", cache_path=cache, threads=2)
    assert len(calls) == len(C.PROBES) and len(cal.probe_voxels) == len(C.PROBES)


def test_calibration_is_measured_once_and_cached_per_precision(tmp_path, monkeypatch):
    from AutoSegLib.training import calibration as C

    calls = []

    def fake_probe(patch, base, ex):
        calls.append((patch, base))
        return 1e9 * base, 0.01 * base

    monkeypatch.setattr(C, "_time_probe", fake_probe)
    monkeypatch.setattr(C, "_time_augmentation", lambda: 2e-7)
    cache = tmp_path / "cal.json"
    first = C.calibrate("cpu", "float32", cache_path=cache, threads=2)
    assert len(calls) == len(C.PROBES) and first.precision == "float32" and first.threads == 2
    again = C.calibrate("cpu", "float32", cache_path=cache, threads=2)
    assert again == first and len(calls) == len(C.PROBES)          # from the cache
    C.calibrate("cpu", "float32", cache_path=cache, threads=1)       # other threads: measured
    assert len(calls) == 2 * len(C.PROBES)
    C.calibrate("cpu", "float32", cache_path=cache, threads=2, force=True)
    assert len(calls) == 3 * len(C.PROBES)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2 and all("torch" in k and "float32" in k for k in entries)
    cache.write_text("{not json")                                    # a damaged cache is measured again
    C.calibrate("cpu", "float32", cache_path=cache, threads=2)
    assert len(calls) == 4 * len(C.PROBES) and json.loads(cache.read_text())["version"] == C.CACHE_VERSION


def test_the_real_probe_measures_a_training_step(tmp_path):
    import torch

    from AutoSegLib.training import calibration as C
    from AutoSegLib.device import choose_execution

    macs, seconds = C._time_probe((16, 16, 16), 4, choose_execution(torch.device("cpu"), "float32", False, 3))
    topo, patch = C.probe_topology((16, 16, 16), 4)
    assert macs == conv_macs(topo, patch, 1, 2) * C.PROBE_BATCH and 0 < seconds < 60
    assert math.isfinite(C._time_augmentation())


def test_an_unknown_device_is_refused(tmp_path):
    from AutoSegLib.training.calibration import calibrate
    with pytest.raises(AutoSegError, match="device"):
        calibrate("tpu", cache_path=tmp_path / "c.json")


def test_plan_passes_the_iteration_target_to_the_budget_plan(synthetic_dataset, tmp_path, monkeypatch, capsys):
    from AutoSegLib import cli
    from AutoSegLib.training import calibration as calibration_mod

    raw = synthetic_dataset(n_cases=4, shape=(16, 32, 32))
    work = tmp_path / "work"
    assert cli.main(["plan", str(raw), "-o", str(work), "--budget-iterations", "2000"]) == 2
    assert "--time-budget-minutes" in capsys.readouterr().err and not (work / "plans.json").exists()
    stand_in = Calibration(key="stand-in", device="cpu", precision="float32", threads=1,
                           probe_macs=(1e8, 2e8, 1e10, 2e10), probe_seconds=(6e8 / 50e9, 1.2e9 / 50e9, 6e10 / 50e9, 1.2e11 / 50e9),
                           probe_voxels=(32 ** 3, 32 ** 3, 64 ** 3, 64 ** 3), probe_features=(16, 32, 16, 32),
                           augment_seconds_per_voxel=1e-8, workers=1, measured_at="test")
    monkeypatch.setattr(calibration_mod, "calibrate", lambda *a, **kw: stand_in)
    budgets = {}
    for target in (None, 5000):
        out = tmp_path / f"w{target}"
        args = ["plan", str(raw), "-o", str(out), "--time-budget-minutes", "10", "--device", "cpu"]
        assert cli.main(args + ([] if target is None else ["--budget-iterations", str(target)])) == 0
        budgets[target] = Plans.from_json(out / "plans.json").budget
    assert budgets[None].target_iterations == 1000 and budgets[5000].target_iterations == 5000  # 10 minutes
    for target, record in budgets.items():
        want = 1000 if target is None else target
        reached = [(c[0], c[1]) for c in record.candidates if c[3] >= want]
        assert reached, "the stand-in device is meant to reach both targets"
        assert (record.spacing_factor, record.base_features) == reached[0]
    assert budgets[5000].spacing_factor > budgets[None].spacing_factor
    assert "the finest that buys 5000 iterations" in capsys.readouterr().err
    # A target no candidate reaches: the candidate with the most iterations, and the log says so.
    out = tmp_path / "w_unreached"
    assert cli.main(["plan", str(raw), "-o", str(out), "--time-budget-minutes", "10", "--device", "cpu",
                     "--budget-iterations", "10000000"]) == 0
    record = Plans.from_json(out / "plans.json").budget
    assert record.iterations < 10_000_000 and max(c[3] for c in record.candidates) == max(
        c[3] for c in record.candidates if (c[0], c[1]) == (record.spacing_factor, record.base_features))
    assert "the most iterations of any candidate (none buys 10000000)" in capsys.readouterr().err


# ---- coarse to fine ----------------------------------------------------------------------------------------
# A CT-like field of view (1 mm, 160 x 256 x 256 after cropping) around a 30 x 40 x 40 mm structure.
CT_SPACING = (1.0, 1.0, 1.0)
CT_MEDIAN = (160.0, 256.0, 256.0)
CT_EXTENTS = np.array([[30.0, 40.0, 40.0], [26.0, 36.0, 44.0], [34.0, 44.0, 36.0]])


def pair(minutes, device, spacing=CT_SPACING, median=CT_MEDIAN, extents=CT_EXTENTS, n_cases=40):
    _, single = B.plan_budget(minutes, device, spacing, median, 1, 2, n_cases, base_plan())
    return single, C2F.plan_coarse_to_fine(minutes, device, spacing, median, extents, 1, 2, n_cases, base_plan(),
                                           single)


def test_a_small_structure_in_a_large_image_gets_a_coarse_and_a_fine_stage():
    single, planned = pair(30, FlatDevice(120))
    assert single.spacing_factor > 1.0  # the whole image at 1 mm does not buy 1000 iterations
    coarse_plan, coarse, fine_plan, fine = planned
    # the time: a third for the coarse stage, planned by the budget rule for those minutes
    assert coarse.minutes == pytest.approx(10.0) and fine.minutes == pytest.approx(20.0)
    _, alone = B.plan_budget(10.0, FlatDevice(120), CT_SPACING, CT_MEDIAN, 1, 2, 40, base_plan())
    assert coarse == alone and coarse_plan.name == "3d_budget"
    # the fine stage: the data's spacing, a patch around the median box plus two coarse voxels a side
    margin = [2 * s for s in coarse_plan.spacing]
    assert fine.roi_margin_mm == pytest.approx(margin) and fine.located_by == "3d_budget"
    roi = np.median(CT_EXTENTS, 0) + 2 * np.asarray(margin)
    assert fine_plan.spacing == CT_SPACING and fine_plan.median_image_size == pytest.approx(tuple(roi))
    assert all(p >= r for p, r in zip(fine_plan.patch_size, roi))      # padded up to the pooling divisibility
    assert all(p < r + 16 for p, r in zip(fine_plan.patch_size, roi))
    assert fine_plan.name == fine.configuration == "3d_budget_fine" and fine.spacing_factor == 1.0
    # it buys 1000 iterations in its share (the single plan's 30 minutes ask for 2500, the coarse stage's 10 for
    # 1000), on a schedule of whole epochs
    assert (single.target_iterations, coarse.target_iterations, fine.target_iterations) == (2500, 1000, 1000)
    assert fine.iterations >= 1000 - fine.iterations_per_epoch
    assert fine.epochs * fine.iterations_per_epoch == fine.iterations


def test_the_single_plan_stays_where_the_structure_fills_the_image():
    # LA2018: the median atrium box is 30 x 47 x 82 voxels of a 44 x 71 x 96 image at 1.25 mm
    la_extents = np.array([[30 * 1.25, 47 * 1.25, 82 * 1.25]])
    single, planned = pair(15, FlatDevice(100), (1.25,) * 3, (44.0, 71.0, 96.0), la_extents, n_cases=64)
    assert single.spacing_factor > 1.0 and planned is None


def test_no_pair_when_the_single_plan_keeps_the_data_resolution():
    single, planned = pair(60, FlatDevice(1e9))
    assert single.spacing_factor == 1.0 and planned is None


def test_no_pair_when_the_region_is_the_image_or_a_third_of_the_budget_plans_nothing():
    single, planned = pair(30, FlatDevice(120), extents=np.array([[150.0, 240.0, 240.0]]))
    assert single.spacing_factor > 1.0 and planned is None
    with pytest.raises(B.BudgetTooSmall):  # 10 minutes are too few on this device, 30 are not
        B.plan_budget(10, FlatDevice(30), CT_SPACING, CT_MEDIAN, 1, 2, 40, base_plan())
    single, planned = pair(30, FlatDevice(30))
    assert single.spacing_factor > 1.0 and planned is None


def test_plans_recommend_the_fine_stage_and_train_the_coarse_one_first(tmp_path):
    from dataclasses import replace

    _, (coarse_plan, coarse, fine_plan, fine) = pair(30, FlatDevice(120))
    plans = Plans(dataset_name="d", channel_names={"0": "CT"}, labels={"background": 0, "organ": 1},
                  transpose_forward=(0, 1, 2), transpose_backward=(0, 1, 2), original_median_spacing=CT_SPACING,
                  original_median_shape=CT_MEDIAN, intensity_properties={},
                  configurations={"3d_budget": coarse_plan, "3d_budget_fine": fine_plan},
                  budget=replace(coarse, fine=fine))
    assert plans.recommended_configuration == "3d_budget_fine"
    assert plans.stages("auto") == ("3d_budget", "3d_budget_fine") and plans.stages("3d_budget") == ("3d_budget",)
    assert plans.budget_for("3d_budget_fine") == fine and plans.budget_for("3d_budget") == plans.budget
    plans.to_json(tmp_path / "plans.json")
    assert Plans.from_json(tmp_path / "plans.json") == plans  # the nested fine record round-trips
