"""The Segment Editor effect "AutoSeg" (SegmentEditorEffect.py), registered by AutoSeg.py at start-up."""
