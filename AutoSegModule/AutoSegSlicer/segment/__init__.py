"""Segment loaded scans: predict options, the segmentation job (``logic.AutoSegLogic``), batches of files and
DICOM series, the uncertainty overlay; the panel (``widget.AutoSegPanel``) and its Segment, Where-to-correct and
Batch sections."""
