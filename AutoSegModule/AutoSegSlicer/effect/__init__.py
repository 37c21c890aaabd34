"""The Segment Editor effect "AutoSeg" without Qt (``logic.EffectLogic``); its Qt shell is
SegmentEditorAutoSegLib/SegmentEditorEffect.py, its region boxes are ``common.region``."""
