"""What every task of the module uses (the bottom layer: imports no other sub-package): the child-process
runner, dependencies, the models list, the panel's parameters, storage folders, slot guards, conversions
between volume/segmentation nodes and arrays, the ROI and region boxes, and the shared Qt helpers (``widget``)."""
