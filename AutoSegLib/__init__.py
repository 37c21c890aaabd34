"""AutoSegLib: self-configuring deep-learning segmentation (the nnU-Net recipe), pure Python.

Never imports slicer, qt or vtk. Importing this package does no work: heavy modules (torch,
SimpleITK) are imported by the stage that needs them.
"""
__version__ = "0.1.0"
