"""Correct and export a segmentation: label values, label-map export, a corrected case added to a dataset
(``logic.CorrectionLogic``, the base of the panel's logic); the section's Qt wiring is ``widget``."""
