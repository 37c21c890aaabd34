"""inference stage: sliding-window prediction, ensembles, export to the input grid.

- ``sliding_window.predict_sliding_window(array, predictor, patch_size, ...)``: pure stitching (Gaussian
  weights, mirroring, 2D over 3D), numerically the reference's.
- ``runner.predict_logits(model, configuration, data, ...)``: fold-averaged logits of a preprocessed case;
  ``runner.NetworkPredictor`` wraps a network as a predictor; ``resolve_device`` / ``resolve_precision``.
- ``compiled``: each fold's network exported to ONNX (``export_model``, ``ensure_exported``) and run by
  OpenVINO or ONNX Runtime on the CPU (``resolve_runtime``, ``predict_logits_compiled``): no torch import.
- ``export.export_logits(logits, properties, plans, configuration)``: logits -> label map and
  probabilities in the raw case's grid.
- ``predict.predict_arrays(model, images, geometry, ...)``: one in-memory case (the Slicer module's entry).
- ``files.predict_files(model, inputs, output, ...)``: folders of cases or one case's channel files.

Nothing is imported here, so importing the package costs nothing.
"""
