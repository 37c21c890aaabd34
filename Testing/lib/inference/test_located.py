"""Where a fine stage predicts (inference.located), on hand-computed boxes."""
import numpy as np
import torch

from AutoSegLib.inference import located as L


def test_the_region_is_the_foreground_box_grown_by_the_margin_and_clipped():
    labels = np.zeros((10, 20, 30), np.uint8)
    labels[2:4, 5:9, 25:28] = 2
    assert L.foreground_box(labels) == ((2, 4), (5, 9), (25, 28))
    # 3 mm at (2, 1, 1) mm: ceil(1.5) = 2 voxels on axis 0, 3 on the others; clipped at 30
    assert L.region_of_interest(labels, (2.0, 1.0, 1.0), (3.0, 3.0, 3.0)) == ((0, 6), (2, 12), (22, 30))
    assert L.region_of_interest(np.zeros((4, 4, 4)), (1, 1, 1), (1, 1, 1)) is None
    # the margin is recorded in the transposed order: transposed axis i is array axis transpose_forward[i]
    assert L.margin_in_array_order((1.0, 2.0, 3.0), (2, 0, 1)).tolist() == [2.0, 3.0, 1.0]


def test_a_raw_box_maps_onto_the_preprocessed_grid_outwards():
    # raw (z, y, x) = (20, 40, 60), transposed to (x, z, y), cropped to x 10..50, z 0..20, y 5..35,
    # then resampled by 0.5 on every axis: (40, 20, 30) -> (20, 10, 15)
    props = {"transpose_forward": [2, 0, 1], "bbox_used_for_cropping": [[10, 50], [0, 20], [5, 35]],
             "shape_after_cropping_and_before_resampling": [40, 20, 30], "shape_after_resampling": [20, 10, 15]}
    box = ((3, 9), (0, 12), (15, 21))        # array order: z, y, x
    # x: 15..21 -> 5..11 cropped -> 2.5..5.5 -> 2..6; z: 3..9 -> 1.5..4.5 -> 1..5; y: 0..12 -> 0..7 -> 0..3.5 -> 0..4
    assert L.box_on_preprocessed_grid(box, props) == ((2, 6), (1, 5), (0, 4))
    assert L.box_on_preprocessed_grid(((3, 9), (0, 12), (52, 58)), props) is None   # outside the crop on x


def test_logits_in_a_box_are_the_networks_inside_and_background_outside():
    data = np.arange(2 * 12 * 16 * 20, dtype=np.float32).reshape(2, 12, 16, 20)
    seen = []

    def net(crop):   # stands for the sliding window: two outputs, the crop's own first channel twice
        seen.append(crop.shape)
        return torch.from_numpy(np.stack([crop[0], -crop[0]]))

    box = ((4, 6), (6, 9), (8, 10))
    logits = L.logits_in_box(data, box, (4, 4, 8), net, 2, regions=False)
    # half a patch of context (2, 2, 4) around the box, and at least a patch on each axis
    assert seen == [(2, 6, 7, 10)]
    inside = tuple(slice(lo, hi) for lo, hi in box)
    assert torch.equal(logits[(0, *inside)], torch.from_numpy(data[(0, *inside)]))
    out = np.ones(data.shape[1:], bool)
    out[inside] = False
    assert torch.all(logits[0][torch.from_numpy(out)] == 30.0) and torch.all(logits[1][torch.from_numpy(out)] == -30.0)
    regions = L.background_logits((3, 3), 2, regions=True)
    assert torch.all(regions == -30.0)   # region-based: every region absent


def test_the_estimate_sizes_a_fine_stage_by_its_planned_region_not_the_whole_image():
    from types import SimpleNamespace

    from AutoSegLib.inference.estimate import located_shape
    from AutoSegLib.planning.plans import BudgetPlan

    fine_conf = SimpleNamespace(median_image_size=(20.0, 30.0, 40.0), patch_size=(16, 32, 32), spacing=(1.5, 1.0, 1.0))
    record = BudgetPlan(configuration="3d_budget_fine", minutes=10, device="cpu", precision="float32", machine="m",
                        gflops=1, step_seconds=1, iterations=1, iterations_per_epoch=1, epochs=1, val_iterations=1,
                        reserve_seconds=1, spacing_factor=1.0, base_features=16, located_by="3d_budget")

    class Plans:
        transpose_forward = (0, 2, 1)   # transposed axis 1 is array axis 2

        def budget_for(self, name):
            return record if name == "3d_budget_fine" else None

        def configuration(self, name):
            return fine_conf

    # transposed: (20 + 16) x 1.5 = 54 mm, (30 + 32) x 1 = 62 mm, (40 + 32) x 1 = 72 mm, on array axes 0, 2, 1;
    # at 3 x 0.5 x 1 mm (array order): 18, 144, 62 voxels, each at most the image's size
    assert located_shape(Plans(), "3d_budget_fine", (200, 300, 100), (3.0, 0.5, 1.0)) == (18, 144, 62)
    assert located_shape(Plans(), "3d_budget_fine", (200, 100, 50), (3.0, 0.5, 1.0)) == (18, 100, 50)
    assert located_shape(Plans(), "3d_budget", (200, 300, 100), (3.0, 0.5, 1.0)) is None
