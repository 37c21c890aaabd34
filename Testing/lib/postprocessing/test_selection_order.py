"""Model selection decodes softmax channels exactly as training encodes them and inference decodes them."""
import numpy as np
import torch

from AutoSegLib.inference.export import probabilities_to_labels
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.postprocessing.selection import probabilities_to_label_map
from AutoSegLib.training.loss import LabelEncoder


def test_labels_listed_out_of_order_decode_consistently():
    layout = LabelLayout.from_dataset_labels({"background": 0, "tumour": 2, "organ": 1})
    assert layout.softmax_values == (0, 1, 2)
    probs = np.zeros((3, 2, 2), np.float32)
    probs[0, 0, 0] = probs[1, 0, 1] = probs[2, 1, 0] = probs[2, 1, 1] = 1.0
    expected = np.array([[0, 1], [2, 2]])
    assert np.array_equal(probabilities_to_label_map(probs, layout), expected)
    assert np.array_equal(probabilities_to_labels(torch.from_numpy(probs), layout).numpy(), expected)
    # training's target encoding is the inverse: value -> channel index
    encoded, _ = LabelEncoder(layout).encode(torch.from_numpy(expected[None, None]).long())
    assert np.array_equal(encoded.reshape(2, 2).numpy(), expected)
