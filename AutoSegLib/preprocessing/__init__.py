"""preprocessing stage: crop to the non-zero region, normalise, resample (the reference's order).

Public functions
----------------
- ``resampling.resample_image(data, current_spacing, new_shape, settings, is_probabilities=False,
  new_spacing=None)``, ``resampling.resample_label(seg, current_spacing, new_shape, settings,
  new_spacing=None)``, ``resampling.compute_new_shape(shape, spacing, new_spacing)``,
  ``resampling.separate_axis(current_spacing, new_spacing, settings)``
- ``cropping.crop_to_nonzero(data, seg=None)``
- ``normalization.normalize_image(image, scheme, use_mask, mask, intensity_properties)``,
  ``normalization.get_normalizer(name)``
- ``case.preprocess_case(image, geometry, plans, configuration_name, label=None)`` (arrays; inference too)
- ``dataset.preprocess_dataset(dataset_path, plans, configurations, work_dir, num_workers, force, progress)``
- ``storage.load_preprocessed_case(folder, case, mmap=True)`` and the on-disk layout
"""
