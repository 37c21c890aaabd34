"""Cascade training: previous-stage predictions on the next grid, patches with one-hot channels, the
cascade perturbations, the missing-prediction error, and lowres -> cascade -> predict end to end."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from AutoSegLib.errors import AutoSegError
from AutoSegLib.training.cascade_augmentation import (RandomBinaryOperator, RemoveRandomComponent,
                                                      binary_operation, previous_stage_to_one_hot, small_components)
from AutoSegLib.training.config import TrainingConfig

FAST = TrainingConfig(epochs=1, iterations_per_epoch=3, val_iterations=1, num_workers=0, torch_threads=1,
                      mirror_at_validation=False, seed=1)
CASCADE = dict(n_cases=4, shape=(16, 20, 24), lowres_spacing=(2.0, 2.0, 2.0), lowres_patch=(8, 8, 12))


def _ball(radius, ndim=3):
    r = int(np.floor(radius))
    grid = np.mgrid[(slice(-r, r + 1),) * ndim]
    return (grid ** 2).sum(0) <= radius ** 2


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---- the perturbations on hand-made arrays -------------------------------------------------------------
def test_dilation_grows_a_cube_by_the_radius_with_a_ball():
    mask = np.zeros((20, 20, 20), bool)
    mask[8:12, 8:12, 8:12] = True
    grown = binary_operation(mask, "dilation", 3)
    zs, ys, xs = np.nonzero(grown)
    assert (zs.min(), zs.max(), ys.min(), ys.max(), xs.min(), xs.max()) == (5, 14, 5, 14, 5, 14)  # 4 + 2*3
    assert grown[5, 10, 10] and not grown[5, 5, 5]          # a ball: faces move by 3, corners round off
    # the same as the textbook dilation with the discrete ball {|o| <= r}, for a non-integer radius too
    for r in (1, 2.5, 3):
        np.testing.assert_array_equal(binary_operation(mask, "dilation", r),
                                      ndimage.binary_dilation(mask, structure=_ball(r)))


def test_erosion_opening_and_closing():
    cube = np.zeros((20, 20, 20), bool)
    cube[5:15, 5:15, 5:15] = True
    eroded = binary_operation(cube, "erosion", 2)
    expected = np.zeros_like(cube)
    expected[7:13, 7:13, 7:13] = True
    np.testing.assert_array_equal(eroded, expected)               # 10^3 -> 6^3
    with_line = cube.copy()
    with_line[10, 10, 15:19] = True                               # a 1-voxel spur
    opened = binary_operation(with_line, "opening", 1.5)
    assert not opened[10, 10, 16:19].any() and opened[10, 10, 10]  # the spur goes, the cube stays
    holed = cube.copy()
    holed[10, 10, 10] = False
    assert binary_operation(holed, "closing", 1)[10, 10, 10]       # the hole is filled
    assert binary_operation(np.zeros((5, 5, 5), bool), "dilation", 2).sum() == 0
    with pytest.raises(ValueError):
        binary_operation(cube, "thinning", 1)


def test_morphology_equals_the_textbook_operations_with_a_ball():
    # random blobs, some touching the border (outside the patch: not background for erosion)
    rng = np.random.default_rng(0)
    for _ in range(4):
        mask = ndimage.gaussian_filter(rng.random((24, 28, 20)), 2) > 0.52
        r = float(rng.uniform(1, 5))
        ball = _ball(r)
        dilate = lambda m: ndimage.binary_dilation(m, structure=ball)
        erode = lambda m: ndimage.binary_erosion(m, structure=ball, border_value=1)
        for op, expected in (("dilation", dilate(mask)), ("erosion", erode(mask)),
                             ("opening", dilate(erode(mask))), ("closing", erode(dilate(mask)))):
            np.testing.assert_array_equal(binary_operation(mask, op, r), expected, err_msg=f"{op} r={r}")


def test_binary_operator_keeps_channels_exclusive_and_respects_probability():
    data = np.zeros((2, 3, 16, 16, 16), np.float32)               # image channel + two one-hot channels
    data[:, 1, 4:8, 4:12, 4:12] = 1
    data[:, 2, 8:12, 4:12, 4:12] = 1
    untouched = RandomBinaryOperator(2, p_per_sample=0.0)(data=data.copy())["data"]
    np.testing.assert_array_equal(untouched, data)
    changed = 0
    for seed in range(6):
        out = RandomBinaryOperator(2, p_per_sample=1.0, rng=np.random.default_rng(seed))(data=data.copy())["data"]
        assert out[:, 1:].sum(1).max() <= 1                        # one-hot stays one-hot
        assert set(np.unique(out[:, 1:])) <= {0.0, 1.0}
        np.testing.assert_array_equal(out[:, 0], data[:, 0])       # the image channel is not touched
        changed += int(not np.array_equal(out, data))
    assert changed >= 5


def test_component_removal_drops_a_small_component_and_keeps_a_large_one():
    mask = np.zeros((16, 16, 16), bool)
    mask[1:3, 1:3, 1:3] = True                                     # 8 voxels
    mask[5:15, 5:15, 5:15] = True                                  # 1000 voxels > 15% of 4096
    labels, ids = small_components(mask, 0.15)
    assert len(ids) == 1 and (labels == ids[0]).sum() == 8
    data = np.concatenate([np.zeros((1, 1, 16, 16, 16)), mask[None, None]], axis=1).astype(np.float32)
    out = RemoveRandomComponent(1, p_per_sample=1.0, rng=np.random.default_rng(0))(data=data.copy())["data"]
    assert out[0, 1, 1:3, 1:3, 1:3].sum() == 0 and out[0, 1, 5:15, 5:15, 5:15].all()
    # a large component alone is never removed
    only_large = data.copy()
    only_large[0, 1, 1:3, 1:3, 1:3] = 0
    out = RemoveRandomComponent(1, p_per_sample=1.0, rng=np.random.default_rng(0))(data=only_large.copy())["data"]
    np.testing.assert_array_equal(out, only_large)


def test_previous_stage_map_becomes_one_hot_channels():
    data = np.zeros((1, 1, 2, 2), np.float32)
    seg = np.array([[[[0, 1], [2, 2]], [[-1, 2], [1, 0]]]], np.float32)  # (B=1, 2, 2, 2)
    d, s = previous_stage_to_one_hot(data, seg, (1, 2))
    assert d.shape == (1, 3, 2, 2) and s.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(d[0, 1], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(d[0, 2], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(s[0, 0], [[0, 1], [2, 2]])


# ---- sampling: the extra channels line up with the patch ---------------------------------------------
def _coordinate_case(folder, prev_folder, case, shape, rng, offset):
    """Image = flat voxel index + 1 + ``offset`` (a patch tells which case and voxels it came from; 0 = padding)."""
    image = (np.arange(np.prod(shape), dtype=np.float32) + 1 + offset).reshape(1, *shape)
    seg = rng.integers(0, 3, (1, *shape)).astype(np.int8)
    prev = rng.integers(-1, 3, (1, *shape)).astype(np.int8)
    np.save(folder / f"{case}.npy", image)
    np.save(folder / f"{case}_seg.npy", seg)
    np.save(prev_folder / f"{case}.npy", prev)
    (folder / f"{case}.json").write_text(json.dumps({"class_locations": {"1": np.argwhere(seg[0] == 1)[:20].tolist()}}))
    return seg[0], prev[0]


def test_patch_extra_channels_equal_one_hot_of_the_previous_map_at_the_same_crop(tmp_path):
    from AutoSegLib.training.workers import BatchSpec, BatchStream

    prev_folder = tmp_path / "predicted_3d_lowres"
    prev_folder.mkdir()
    rng = np.random.default_rng(0)
    shape = (10, 12, 14)
    offsets = {"a": 0, "b": 10000}
    truth = {c: _coordinate_case(tmp_path, prev_folder, c, shape, rng, offsets[c]) for c in ("a", "b")}
    spec = BatchSpec(folder=str(tmp_path), cases=("a", "b"), batch_size=4, patch_size=(8, 8, 16),
                     sample_patch_size=(8, 8, 16), forced=(False, False, True, True), augment=False,
                     previous_folder=str(prev_folder), cascade_values=(1, 2))
    with BatchStream(spec, 0, seed=5) as stream:
        for _ in range(3):
            data, seg = next(stream)
            assert data.shape == (4, 3, 8, 8, 16) and seg.shape == (4, 1, 8, 8, 16)
            for b in range(4):
                inside = data[b, 0] > 0
                case = "b" if data[b, 0].max() > 10000 else "a"
                index = data[b, 0].astype(np.int64) - 1 - offsets[case]
                ref, prev = truth[case]
                np.testing.assert_array_equal(seg[b, 0][inside], ref.ravel()[index[inside]])
                for k, v in enumerate((1, 2)):
                    np.testing.assert_array_equal(data[b, 1 + k][inside], prev.ravel()[index[inside]] == v)
                    assert not data[b, 1 + k][~inside].any()                 # padding: no previous label
                assert (seg[b, 0][~inside] == -1).all()
    # with augmentation: same channel layout, still one-hot
    aug = BatchSpec(**{**spec.__dict__, "augment": True, "sample_patch_size": (10, 12, 18), "max_angle": 0.5,
                       "mirror_axes": (0, 1, 2)})
    with BatchStream(aug, 0, seed=5) as stream:
        data, seg = next(stream)
    assert data.shape == (4, 3, 8, 8, 16) and seg.shape == (4, 1, 8, 8, 16)
    assert set(np.unique(data[:, 1:])) <= {0.0, 1.0} and data[:, 1:].sum(1).max() <= 1


# ---- next-stage predictions on the cascade's grid ---------------------------------------------------
@pytest.fixture(scope="module")
def cascade_work(tmp_path_factory, make_work):
    return make_work(tmp_path_factory.mktemp("cascade"), **CASCADE)


def test_next_stage_predictions_land_on_the_cascade_grid(cascade_work, tmp_path):
    from AutoSegLib.inference.export import export_logits
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.preprocessing.dataset import preprocessed_folder
    from AutoSegLib.training.cascade import load_previous_stage, save_next_stage_predictions
    from AutoSegLib.training.data import load_case

    work = tmp_path / "work"
    shutil.copytree(cascade_work, work)
    plans = Plans.from_json(work / "plans.json")
    raw = Path(json.loads((work / "dataset.json").read_text())["dataset_path"])
    low_folder = preprocessed_folder(work, plans, "3d_lowres")
    full_folder = preprocessed_folder(work, plans, "3d_cascade_fullres")
    case = "case_001"
    image, geometry = read_case([raw / "imagesTr" / f"{case}_0000.nii.gz"])
    reference, _ = read_image(raw / "labelsTr" / f"{case}.nii.gz")
    _, full_seg, _ = load_case(full_folder, case, mmap=False)
    # a perfect prediction in the raw grid lands exactly on the cascade's preprocessed label
    written = save_next_stage_predictions(work, plans, "3d_lowres", case, reference, image, geometry, 0, "id")
    assert written == [full_folder / "predicted_3d_lowres" / f"{case}.npy"]
    mapped = load_previous_stage(full_folder / "predicted_3d_lowres", case, shape=full_seg.shape[1:])
    assert mapped.shape == full_seg.shape == (1, 16, 20, 24)
    np.testing.assert_array_equal(mapped, full_seg)
    record = json.loads((full_folder / "predicted_3d_lowres" / f"{case}.json").read_text())
    assert record["previous_stage"] == "3d_lowres" and record["fold"] == "0" and record["shape"] == [1, 16, 20, 24]
    # the lowres labels as a lowres prediction (exported to the raw grid, as validation does) land where the
    # lowres voxels lie: Dice > 0.93 to them blown up 2x by hand (nearest neighbour), while a one-voxel
    # shift scores < 0.9 (measured: 0.97 vs 0.83-0.88); to the fullres labels the 2x coarser grid limits it
    _, low_seg, low_props = load_case(low_folder, case, mmap=False)
    assert low_seg.shape[1:] == (8, 10, 12)
    logits = torch.from_numpy(np.stack([(np.maximum(low_seg[0], 0) == k) * 10.0 for k in range(3)]).astype(np.float32))
    labels, _ = export_logits(logits, low_props, plans, "3d_lowres")
    save_next_stage_predictions(work, plans, "3d_lowres", case, labels, image, geometry, 0, "id")
    mapped = load_previous_stage(full_folder / "predicted_3d_lowres", case, mmap=False)[0] > 0
    by_hand = low_seg[0].repeat(2, 0).repeat(2, 1).repeat(2, 2) > 0
    assert _dice(mapped, by_hand) > 0.93
    assert all(_dice(np.roll(mapped, 1, axis=a), by_hand) < 0.9 for a in range(3))
    assert _dice(mapped, full_seg[0] > 0) > 0.85


def test_missing_previous_stage_predictions_are_a_clear_error(cascade_work, tmp_path):
    from AutoSegLib.training.trainer import train_fold

    work = tmp_path / "work"
    shutil.copytree(cascade_work, work)
    with pytest.raises(AutoSegError) as err:
        train_fold(work, "3d_cascade_fullres", 0, FAST)
    msg = str(err.value)
    assert "4 of 4 cases" in msg and "case_000" in msg and "case_003" in msg
    # 4 cases: splits_final.json has 4 folds, each validating one case; every one of them is needed
    assert all(f"`autoseg train {work} 3d_lowres {k}`" in msg for k in range(4)) and "3d_lowres 4`" not in msg
    assert not (work / "trained" / "3d_cascade_fullres").exists()


# ---- end to end -------------------------------------------------------------------------------------
def test_lowres_then_cascade_then_predict(cascade_work, tmp_path):
    from AutoSegLib import api
    from AutoSegLib.io.images import read_image
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.preprocessing.dataset import preprocessed_folder
    from AutoSegLib.training.trainer import train_fold

    work = tmp_path / "work"
    shutil.copytree(cascade_work, work)
    splits = [{"train": ["case_002", "case_003"], "val": ["case_000", "case_001"]},
              {"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]}]
    (work / "splits_final.json").write_text(json.dumps(splits))
    plans = Plans.from_json(work / "plans.json")
    predicted = preprocessed_folder(work, plans, "3d_cascade_fullres") / "predicted_3d_lowres"

    train_fold(work, "3d_lowres", 0, FAST)
    assert sorted(p.name for p in predicted.glob("*.npy")) == ["case_000.npy", "case_001.npy"]
    with pytest.raises(AutoSegError) as err:   # fold 1's validation cases are still missing
        train_fold(work, "3d_cascade_fullres", 0, FAST)
    assert "case_002, case_003" in str(err.value) and "3d_lowres 1`" in str(err.value)
    assert "3d_lowres 0`" not in str(err.value)

    train_fold(work, "3d_lowres", 1, FAST)
    for case in ("case_002", "case_003"):
        full = np.load(preprocessed_folder(work, plans, "3d_fullres") / f"{case}.npy", mmap_mode="r")
        assert np.load(predicted / f"{case}.npy").shape == (1, *full.shape[1:])
    # a finished fold re-validated with --resume writes them again
    (predicted / "case_003.json").unlink()
    train_fold(work, "3d_lowres", 1, FAST, resume=True)
    assert (predicted / "case_003.json").is_file()

    out = train_fold(work, "3d_cascade_fullres", 0, FAST)
    ck = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert ck["num_input_channels"] == 3 and ck["configuration"] == "3d_cascade_fullres"
    first_conv = next(w for w in ck["network_weights"].values() if w.ndim == 5)
    assert first_conv.shape[1] == 3                      # 1 image channel + one-hot of labels 1 and 2
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[0]["train_loss"]) and np.isfinite(log[0]["val_loss"])
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert sorted(summary["cases"]) == ["case_000", "case_001"]

    model = api.load_model(work)
    assert model.configurations["3d_cascade_fullres"].num_input_channels == 3
    raw = Path(json.loads((work / "dataset.json").read_text())["dataset_path"])
    events = []
    written = api.predict(model, [raw / "imagesTr" / "case_002_0000.nii.gz"], tmp_path / "pred",
                          configuration="3d_cascade_fullres", folds=["0"], tta=False, device="cpu",
                          progress=events.append)
    labels, _ = read_image(written[0])
    assert labels.shape == (16, 20, 24)
    assert any("cascade: predicting 3d_lowres first" in str(e.get("message", "")) for e in events)


def test_predictions_of_a_previous_stage_planned_otherwise_are_stale(cascade_work, tmp_path):
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.training.cascade import check_previous_stage, save_next_stage_predictions
    from AutoSegLib.planning.plans import plans_identifier

    work = tmp_path / "work"
    shutil.copytree(cascade_work, work)
    plans = Plans.from_json(work / "plans.json")
    raw = Path(json.loads((work / "dataset.json").read_text())["dataset_path"])
    current = plans_identifier(plans.configuration("3d_lowres"))
    cases = ["case_000", "case_001"]
    for identifier in ("made-with-other-plans", current):
        for case in cases:
            image, geometry = read_case([raw / "imagesTr" / f"{case}_0000.nii.gz"])
            labels, _ = read_image(raw / "labelsTr" / f"{case}.nii.gz")
            save_next_stage_predictions(work, plans, "3d_lowres", case, labels, image, geometry, 0, identifier)
        if identifier != current:
            with pytest.raises(AutoSegError, match=r"2 case\(s\) \(case_000, case_001\).*plans differ"):
                check_previous_stage(work, plans, "3d_cascade_fullres", cases)
    assert check_previous_stage(work, plans, "3d_cascade_fullres", cases).name == "predicted_3d_lowres"
