"""postprocessing stage: connected-component post-processing, inference instructions, model selection.

Public functions: `largest_component`, `remove_all_but_largest_component`, `apply_postprocessing`,
`load_inference_instructions`, `save_inference_instructions` (and `InferenceInstructions`); model
selection (find-best) lives in `postprocessing.selection` (imported on use: it needs torch-free numpy
only, but reads files).
"""
from AutoSegLib.postprocessing.components import (labels_mask, largest_component,  # noqa: F401
                                                  remove_all_but_largest_component)
from AutoSegLib.postprocessing.instructions import (InferenceInstructions, apply_postprocessing,  # noqa: F401
                                                    foreground_label_values, load_inference_instructions,
                                                    save_inference_instructions, validate_step)
