"""evaluation stage: per-case metrics (`metrics`) and folder evaluation (`folders.evaluate_folders`)."""
from AutoSegLib.evaluation.folders import evaluate_folders  # noqa: F401
from AutoSegLib.evaluation.metrics import case_metrics, dice_per_label, hd95_assd, surface_distances  # noqa: F401
