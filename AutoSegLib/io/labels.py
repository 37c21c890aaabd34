"""The label layout of a dataset: names, values, regions and the ignore label (dataset.json "labels").

- Plain labels: ``{"background": 0, "organ": 1, "tumour": 2}``; the network has one softmax output per
  label (background included, the ignore label excluded).
- Regions: a label whose value is a list (``{"background": 0, "whole": [1, 2, 3], "core": [2, 3]}``)
  defines an overlapping region; the network has one sigmoid output per non-background region, and
  ``regions_class_order`` (dataset.json) says which label value each region paints, later ones on top.
- ``ignore``: a label named "ignore" (the highest value) marks unannotated voxels; they contribute
  nothing to the loss and are never predicted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from AutoSegLib.errors import AutoSegError

LabelValue = Union[int, Tuple[int, ...]]


# The largest label value AutoSeg stores: preprocessed label maps are int16 (preprocessing.case).
MAX_LABEL_VALUE = 32767


def _flat(labels: Dict[str, object]):
    """(name, value) for every integer in dataset.json's "labels" (region members, ignore included)."""
    for name, value in labels.items():
        for v in (value if isinstance(value, (list, tuple)) else (value,)):
            yield name, v


@dataclass(frozen=True)
class LabelLayout:
    names: Tuple[str, ...]                 # in dataset.json order, ignore excluded
    values: Tuple[LabelValue, ...]         # int, or tuple of ints for a region
    ignore_label: Optional[int] = None
    regions_class_order: Optional[Tuple[int, ...]] = None

    @classmethod
    def from_dataset_labels(cls, labels: Dict[str, object], regions_class_order=None,
                            source: str = "dataset.json") -> "LabelLayout":
        if not isinstance(labels, dict) or not labels:
            raise AutoSegError(f"{source}: 'labels' must be a non-empty mapping of name to value, "
                               f"like {{\"background\": 0, \"organ\": 1}}; found {labels!r}.")
        names, values, ignore = [], [], None
        for name, value in labels.items():
            if name == "ignore":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise AutoSegError(f"{source}: the 'ignore' label must be one integer, found {value!r}.")
                ignore = value
                continue
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    raise AutoSegError(f"{source}: label {name!r}: a region must be a list of integers, found {value!r}.")
                values.append(tuple(int(v) for v in value) if len(value) > 1 else int(value[0]))
            elif isinstance(value, int) and not isinstance(value, bool):
                values.append(int(value))
            else:
                raise AutoSegError(f"{source}: label {name!r} has value {value!r}; expected an integer or a list of integers.")
            names.append(str(name))
        bad = [(n, v) for n, v in _flat(labels) if not 0 <= v <= MAX_LABEL_VALUE]
        if bad:
            name, value = bad[0]
            raise AutoSegError(f"{source}: label {name!r} has value {value}; label values must lie in 0..{MAX_LABEL_VALUE} "
                               f"(preprocessed label maps are stored as 16-bit integers; other values would wrap "
                               f"around). Renumber the labels in dataset.json and the label files.")
        if "background" in labels and labels["background"] != 0:
            raise AutoSegError(f"{source}: 'background' has value {labels['background']!r}; background must be 0 (a "
                               f"label named background with another value would be trained as a foreground class).")
        if 0 not in [v for v in values if isinstance(v, int)]:
            raise AutoSegError(f"{source}: 'labels' must contain background with value 0; found {labels!r}.")
        plain = [v for v in values if isinstance(v, int)]
        if len(set(plain)) != len(plain):
            raise AutoSegError(f"{source}: label values must be unique; found {labels!r}.")
        if ignore is not None and any(ignore <= v for v in plain):
            raise AutoSegError(f"{source}: the 'ignore' label ({ignore}) must have the highest value; found {labels!r}.")
        has_regions = any(isinstance(v, tuple) for v in values)
        if has_regions and regions_class_order is None:
            raise AutoSegError(f"{source}: region-based labels need 'regions_class_order' in dataset.json.")
        rco = None
        if has_regions:
            n_regions = len([v for v in values if v != 0])
            if (not isinstance(regions_class_order, (list, tuple))
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in regions_class_order)
                    or len(regions_class_order) != n_regions):
                raise AutoSegError(f"{source}: 'regions_class_order' must be a list of {n_regions} integer "
                                   f"label values, one per non-background region in 'labels' order; found "
                                   f"{regions_class_order!r}.")
            rco = tuple(int(v) for v in regions_class_order)
        return cls(tuple(names), tuple(values), ignore, rco)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, tuple) for v in self.values)

    @property
    def foreground_values(self) -> Tuple[LabelValue, ...]:
        return tuple(v for v in self.values if v != 0)

    @property
    def foreground_names(self) -> Tuple[str, ...]:
        return tuple(n for n, v in zip(self.names, self.values) if v != 0)

    @property
    def softmax_values(self) -> Tuple[int, ...]:
        """Label value of each softmax output channel: channel i is the i-th smallest value (as the
        reference orders its classes), whatever the order of dataset.json's "labels". Training encodes
        targets with it, and inference and model selection decode probabilities with it."""
        if self.has_regions:
            raise ValueError("region-based labels have sigmoid outputs, not softmax channels")
        return tuple(sorted(int(v) for v in self.values))

    @property
    def num_outputs(self) -> int:
        """Number of network output channels: all labels (softmax) or foreground regions (sigmoid)."""
        return len(self.foreground_values) if self.has_regions else len(self.values)

    @property
    def all_label_values(self) -> Tuple[int, ...]:
        """Every integer that may appear in a label file (ignore included)."""
        vals = set()
        for v in self.values:
            vals.update(v if isinstance(v, tuple) else (v,))
        if self.ignore_label is not None:
            vals.add(self.ignore_label)
        return tuple(sorted(vals))

    def to_dataset_labels(self) -> Dict[str, object]:
        out: Dict[str, object] = {n: (list(v) if isinstance(v, tuple) else v) for n, v in zip(self.names, self.values)}
        if self.ignore_label is not None:
            out["ignore"] = self.ignore_label
        return out


def cascade_label_values(layout: "LabelLayout") -> Tuple[int, ...]:
    """Label values whose one-hot maps (in this order) are the extra inputs of a cascade stage: every
    foreground integer label value (for regions: every integer a region is made of), ignore excluded."""
    return tuple(v for v in layout.all_label_values if v != 0 and v != layout.ignore_label)


def cascade_one_hot(labels, values):
    """The extra input channels of a cascade stage from a previous-stage label map.

    Parameters
    ----------
    labels : ndarray of int, any shape (``-1``, outside the non-zero region, matches no value)
    values : sequence of int
        `cascade_label_values` of the label layout.

    Returns
    -------
    ndarray float32, shape ``(len(values), *labels.shape)``: channel k is 1 where ``labels == values[k]``.
    """
    import numpy as np

    labels = np.asarray(labels)
    out = np.zeros((len(values), *labels.shape), dtype=np.float32)
    for i, v in enumerate(values):
        out[i] = labels == v
    return out
