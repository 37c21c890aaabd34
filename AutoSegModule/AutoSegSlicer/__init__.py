"""The AutoSeg Slicer module's code, kept in a package (Slicer loads every top-level .py of a module folder as
a module), grouped by what the user does. Sub-packages import one way, ``common`` at the bottom:

- ``common``: what every task uses: the child-process runner, dependencies, the models list, the panel's
  parameters, storage folders, slot guards, volume/segmentation conversion, ROI and region boxes;
- ``correct`` (on common): correct and export a segmentation, convert it, add a case to a dataset;
- ``segment`` (on correct, common): predict options, the segmentation job, batch (files, DICOM), the
  uncertainty overlay, and the panel itself (`segment.widget.AutoSegPanel`, hosting the other sections);
- ``train`` (on correct, common): training options, pipeline, job, progress, partial annotations, install;
- ``effect`` (on segment, common): the Segment Editor effect's logic (its Qt shell is SegmentEditorAutoSegLib).

In each, Qt-free logic lives in ``logic*.py`` and plain module names (run headless against slicer-core);
whatever builds or wires Qt widgets is in ``widget*.py``. The self-test (``selftest``) sits on top.
"""
