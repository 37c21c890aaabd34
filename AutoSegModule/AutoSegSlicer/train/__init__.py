"""Train and fine-tune from Slicer: options, the resumable pipeline and its job, progress curves, partially
annotated cases, installing the finished model (``logic.TrainingLogic``); the section's Qt wiring is ``widget``."""
