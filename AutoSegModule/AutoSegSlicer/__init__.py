"""The AutoSeg Slicer module's code, kept in a sub-package (Slicer loads every top-level .py of a module
folder as a module). Logic classes take their collaborators (scene, module logics, paths, runner) as
arguments so they run headless against slicer-core; only `widget` imports qt/ctk.
"""
