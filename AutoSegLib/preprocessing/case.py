"""Preprocessing of one case, on arrays: transpose, crop to non-zero, normalise, resample.

The order is the reference preprocessor's: normalisation happens before resampling, so that the
non-zero mask used by masked z-scoring matches the image exactly. Used by `preprocess_dataset` for the
training cases and by inference for new images (no label).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.planning.plans import ConfigurationPlan, Plans
from AutoSegLib.preprocessing.class_locations import class_key, sample_class_locations
from AutoSegLib.preprocessing.cropping import crop_to_nonzero
from AutoSegLib.preprocessing.normalization import normalize_image
from AutoSegLib.preprocessing.resampling import compute_new_shape, resample_image, resample_label


def target_spacing(cfg: ConfigurationPlan, spacing_transposed) -> Tuple[float, ...]:
    """The spacing a case is resampled to: the configuration's, completed with the case's own spacing
    along axis 0 for a 2D configuration of 3D data (slices keep their spacing)."""
    target = tuple(float(s) for s in cfg.spacing)
    if len(target) < len(spacing_transposed):
        target = (float(spacing_transposed[0]),) + target
    if len(target) != len(spacing_transposed):
        raise AutoSegError(f"configuration {cfg.name!r} has a {len(cfg.spacing)}-axis spacing {cfg.spacing} but the "
                           f"image has {len(spacing_transposed)} spatial axes; the plans do not fit this data.")
    return target


def foreground_classes(plans: Plans) -> List:
    """What class locations are sampled for: foreground labels, or foreground regions; with an ignore label
    also the set of all annotated voxels (``-1`` outside the non-zero region, and every label)."""
    layout = plans.label_layout()
    classes = list(layout.foreground_values)
    if layout.ignore_label is not None:
        classes.append((-1,) + tuple(v for v in layout.all_label_values if v != layout.ignore_label))
    return classes


def preprocess_case(image: np.ndarray, geometry: Geometry, plans: Plans, configuration_name: str,
                    label: Optional[np.ndarray] = None, seed: int = 1234, sample_locations: bool = True):
    """Preprocess one case for ``configuration_name`` of ``plans``.

    Parameters
    ----------
    image : ndarray, shape (C, *spatial), any real dtype (not modified)
    geometry : Geometry of the image (spacing in array order)
    plans : Plans
    configuration_name : str
    label : ndarray, integer, shape (*spatial) or (1, *spatial), optional
    seed : int, seeds the class-location sampling
    sample_locations : bool, sample ``class_locations`` (training data); False skips it (e.g. a cascade's
        previous-stage prediction at inference)

    Returns
    -------
    data : ndarray, float32, shape (C, *new_shape), transposed, cropped, normalised, resampled
    seg : ndarray, int8 (int16 when a value exceeds 127), shape (1, *new_shape), -1 outside the non-zero
        region; None without a label
    properties : dict (JSON-serialisable but for ``class_locations``, which holds (N, ndim) int64 arrays):
        ``geometry`` (original), ``original_shape``, ``transpose_forward``, ``shape_before_cropping``,
        ``bbox_used_for_cropping`` ([start, end) per transposed axis), ``shape_after_cropping_and_before_resampling``,
        ``spacing_transposed`` (original spacing, transposed), ``target_spacing``, ``shape_after_resampling``,
        ``configuration``, and with a label (unless ``sample_locations`` is False) ``class_locations`` (see
        class_locations.py; spatial coordinates in the preprocessed array).
    """
    cfg = plans.configuration(configuration_name)
    image = np.asarray(image)
    ndim = geometry.ndim
    if image.ndim != ndim + 1:
        raise AutoSegError(f"image of shape {image.shape} does not match its {ndim}D geometry; expected (C, *spatial).")
    if image.shape[0] != plans.num_channels:
        raise AutoSegError(f"the image has {image.shape[0]} channel(s) but the plans expect {plans.num_channels} "
                           f"({', '.join(plans.channel_names.values())}).")
    tf = tuple(int(a) for a in plans.transpose_forward)
    if sorted(tf) != list(range(ndim)):
        raise AutoSegError(f"plans transpose_forward {tf} does not fit {ndim}D images.")
    seg = None
    if label is not None:
        label = np.asarray(label)
        if label.ndim == ndim:
            label = label[None]
        if label.shape[1:] != image.shape[1:]:
            raise AutoSegError(f"label shape {label.shape[1:]} differs from image shape {image.shape[1:]}.")
        hi = int(label.max()) if label.size else 0
        seg = label.astype(np.int16 if hi <= np.iinfo(np.int16).max else np.int32, copy=False)
        seg = seg.transpose((0,) + tuple(a + 1 for a in tf))

    data = image.transpose((0,) + tuple(a + 1 for a in tf))
    spacing = tuple(geometry.spacing[a] for a in tf)
    shape_before = data.shape[1:]
    data, seg_cropped, bbox = crop_to_nonzero(data, seg)
    data = np.array(data, dtype=np.float32, order="C", copy=True)  # never modify the caller's image
    shape_cropped = data.shape[1:]

    mask = seg_cropped[0] >= 0
    for c in range(data.shape[0]):
        props = plans.intensity_properties.get(str(c))
        data[c] = normalize_image(data[c], cfg.normalization[c], bool(cfg.use_mask_for_norm[c]), mask, props)

    target = target_spacing(cfg, spacing)
    new_shape = compute_new_shape(shape_cropped, spacing, target)
    data = resample_image(data, spacing, new_shape, cfg.resampling, new_spacing=target)

    properties = {
        "geometry": geometry.to_dict(),
        "original_shape": list(image.shape[1:]),
        "transpose_forward": list(tf),
        "shape_before_cropping": list(shape_before),
        "bbox_used_for_cropping": [list(b) for b in bbox],
        "shape_after_cropping_and_before_resampling": list(shape_cropped),
        "spacing_transposed": list(spacing),
        "target_spacing": list(target),
        "shape_after_resampling": list(new_shape),
        "configuration": configuration_name,
    }
    if seg is None:
        return data, None, properties

    seg_out = resample_label(seg_cropped, spacing, new_shape, cfg.resampling, new_spacing=target)
    if sample_locations:
        properties["class_locations"] = sample_class_locations(seg_out[0], foreground_classes(plans), seed=seed)
    top = int(seg_out.max()) if seg_out.size else 0
    seg_out = seg_out.astype(np.int8 if top <= 127 else np.int16, copy=False)
    return data, seg_out, properties


__all__ = ["preprocess_case", "target_spacing", "foreground_classes", "class_key"]
