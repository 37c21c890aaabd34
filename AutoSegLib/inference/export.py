"""Network logits (preprocessed grid) -> probabilities and label map in the raw case's own grid.

Order of operations (the reference's, so that results agree with it): the logits are resampled from the
configuration's spacing to the cropped original shape with the probability resampling settings (one
channel at a time, stored as float16 like the reference's float16 logits), THEN softmax (sigmoid for
regions) in float32, argmax (regions: painted in ``regions_class_order`` where > 0.5), pasted into the
crop bounding box (probabilities outside: background 1, regions 0), and transposed back.

The logits may be a torch tensor (the torch runtime) or a numpy array (the compiled runtimes: then
nothing here imports torch); torch logits take torch's softmax, bit for bit the reference's.

Memory: the full-resolution logits are float16 and the non-linearity runs in slabs along axis 0, so a
512x512x400 volume with 3 classes needs about 2 x 0.6 GB plus the outputs.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.planning.plans import ConfigurationPlan, Plans

SLAB_VOXELS = 16_000_000  # voxels per channel processed at once in the non-linearity


def case_properties(properties: dict) -> dict:
    """The properties export needs, from a ``preprocess_case`` properties dict (transposed axis order):
    ``shape_before_cropping``, ``bbox`` ([[lo, hi], ...]), ``shape_after_cropping``, ``spacing``
    (original spacing, transposed)."""
    def first(*names):
        for n in names:
            if n in properties and properties[n] is not None:
                return properties[n]
        raise KeyError(f"preprocessing properties lack {names[0]!r} (have {sorted(properties)})")

    return {
        "shape_before_cropping": tuple(int(s) for s in first("shape_before_cropping")),
        "bbox": [[int(a), int(b)] for a, b in first("bbox_used_for_cropping", "bbox")],
        "shape_after_cropping": tuple(int(s) for s in first("shape_after_cropping_and_before_resampling",
                                                            "shape_after_cropping")),
        "spacing": tuple(float(s) for s in first("spacing_transposed", "spacing")),
    }


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if _is_torch(x) else np.asarray(x)


def resample_logits(logits, current_spacing: Sequence[float], new_shape: Sequence[int],
                    new_spacing: Sequence[float], conf: ConfigurationPlan):
    """Resample (K, *spatial) logits to ``new_shape`` one channel at a time; returns float16 (K, *new_shape)
    (the reference stores its resampled logits in the dtype of its float16 accumulator), a torch tensor
    for torch logits, else a numpy array."""
    new_shape = tuple(int(s) for s in new_shape)
    torch_in = _is_torch(logits)
    if tuple(logits.shape[1:]) == new_shape:
        return logits.to(_torch_float16()) if torch_in else np.asarray(logits, np.float16)
    from AutoSegLib.preprocessing.resampling import resample_image
    params = inspect.signature(resample_image).parameters
    extra = {"new_spacing": tuple(new_spacing)} if "new_spacing" in params else {}
    out = np.empty((logits.shape[0], *new_shape), dtype=np.float16)
    for c in range(logits.shape[0]):
        # float64 input keeps resample_image on its float64 path, the reference's: its float16 rounding of
        # the result then lands on the same values (float32 interpolation flips some by one float16 ulp)
        chan = (logits[c:c + 1].double().cpu().numpy() if torch_in
                else np.asarray(logits[c:c + 1], dtype=np.float64))
        res = resample_image(chan, tuple(current_spacing), new_shape, conf.resampling, is_probabilities=True, **extra)
        # float32 then float16: the cast torch's float32 -> float16 conversion made before
        out[c] = np.asarray(res, dtype=np.float32)[0].astype(np.float16)
        del chan, res
    if torch_in:
        import torch
        return torch.from_numpy(out)
    return out


def _torch_float16():
    import torch
    return torch.float16


def apply_nonlinearity(logits, layout: LabelLayout):
    """float32 probabilities: softmax over channels, or sigmoid per region (torch in, torch out; numpy in,
    numpy out)."""
    if _is_torch(logits):
        import torch
        x = logits.float()
        return torch.sigmoid(x) if layout.has_regions else torch.softmax(x, 0)
    x = np.asarray(logits, dtype=np.float32)
    if layout.has_regions:
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    e /= e.sum(axis=0, keepdims=True)
    return e


def probabilities_to_labels(probs, layout: LabelLayout):
    """(K, *spatial) probabilities -> (*spatial) int16 label values (torch or numpy, as given)."""
    if _is_torch(probs):
        import torch
        if layout.has_regions:
            seg = torch.zeros(probs.shape[1:], dtype=torch.int16)
            for i, value in enumerate(layout.regions_class_order):
                seg[probs[i] > 0.5] = int(value)
            return seg
        values = torch.tensor(layout.softmax_values, dtype=torch.int16)
        return values[probs.argmax(0)]
    probs = np.asarray(probs)
    if layout.has_regions:
        seg = np.zeros(probs.shape[1:], dtype=np.int16)
        for i, value in enumerate(layout.regions_class_order):
            seg[probs[i] > 0.5] = int(value)
        return seg
    values = np.asarray(layout.softmax_values, dtype=np.int16)
    return values[probs.argmax(0)]


def label_dtype(layout: LabelLayout):
    return np.uint8 if max(layout.all_label_values) < 255 else np.uint16


def logits_to_probabilities(logits, layout: LabelLayout, want_probabilities: bool,
                            labels_out: Optional[np.ndarray] = None, probs_out: Optional[np.ndarray] = None
                            ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Non-linearity and labels in slabs along axis 0.

    Returns ``(labels (*spatial), probabilities (K, *spatial) float32 or None)``, written into
    ``labels_out`` / ``probs_out`` when given (views into larger arrays: no extra copy)."""
    spatial = tuple(logits.shape[1:])
    labels = np.zeros(spatial, dtype=label_dtype(layout)) if labels_out is None else labels_out
    probs = None
    if want_probabilities:
        probs = np.empty((logits.shape[0], *spatial), dtype=np.float32) if probs_out is None else probs_out
    per_slice = int(np.prod(spatial[1:])) if len(spatial) > 1 else 1
    step = max(1, SLAB_VOXELS // max(per_slice, 1))
    for z0 in range(0, spatial[0], step):
        p = apply_nonlinearity(logits[:, z0:z0 + step], layout)
        labels[z0:z0 + step] = _to_numpy(probabilities_to_labels(p, layout))
        if probs is not None:
            probs[:, z0:z0 + step] = _to_numpy(p)
        del p
    return labels, probs


def _transpose_back(labels: np.ndarray, probs: Optional[np.ndarray], plans: Plans
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    back = tuple(int(a) for a in plans.transpose_backward)
    if back == tuple(range(len(back))):
        return labels, probs
    labels = np.ascontiguousarray(labels.transpose(back))
    if probs is not None:
        probs = np.ascontiguousarray(probs.transpose((0, *[a + 1 for a in back])))
    return labels, probs


def export_logits(logits, properties: dict, plans: Plans, configuration: str,
                  return_probabilities: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Logits of one case in its preprocessed grid -> label map and probabilities in its raw grid.

    Parameters
    ----------
    logits : Tensor or ndarray, (K, *preprocessed spatial), float16 or float32
        Network output (after sliding window and fold averaging), transposed axis order.
    properties : dict
        From ``preprocess_case`` (shape before cropping, bbox, shape after cropping, original spacing).
    plans : Plans
    configuration : str
        The configuration that produced the logits (its spacing and resampling settings).
    return_probabilities : bool
        Also return the probabilities.

    Returns
    -------
    labels : ndarray (*raw spatial), uint8 (uint16 for label values >= 255)
        Label values as in dataset.json, in the raw image's array order.
    probabilities : ndarray (K, *raw spatial) float32, or None
        Softmax (or sigmoid per region) probabilities; background 1 (regions: 0) outside the crop.
    """
    conf = plans.configuration(configuration)
    props = case_properties(properties)
    layout = plans.label_layout()
    spacing = props["spacing"]
    current = tuple(conf.spacing) if len(conf.spacing) == len(spacing) else (spacing[0], *conf.spacing)
    full = resample_logits(logits, current, props["shape_after_cropping"], spacing, conf)
    # the full-size outputs are allocated once; the crop's results are written straight into them
    region = tuple(slice(lo, hi) for lo, hi in props["bbox"])
    labels = np.zeros(props["shape_before_cropping"], dtype=label_dtype(layout))
    probs = None
    if return_probabilities:
        probs = np.zeros((full.shape[0], *props["shape_before_cropping"]), dtype=np.float32)
        if not layout.has_regions:
            probs[0] = 1.0  # outside the crop: certainly background
    logits_to_probabilities(full, layout, return_probabilities, labels[region],
                            None if probs is None else probs[(slice(None), *region)])
    del full
    return _transpose_back(labels, probs, plans)
