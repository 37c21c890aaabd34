"""The module's self-test checks (AutoSegSlicer.selftest, run by AutoSeg.py's test case inside Slicer),
run here against slicer-core's scene."""
from __future__ import annotations

import pytest

from AutoSegSlicer import selftest


@pytest.mark.parametrize("check", selftest.ALL_CHECKS, ids=lambda c: c.__name__)
def test_selftest_check(check, slicer_harness, tmp_path):
    check(slicer_harness.scene, tmp_path)


def test_a_check_can_fail(slicer_harness, tmp_path, monkeypatch):
    """The checks are not vacuous: a segmentation built with wrong values makes the check fail."""
    from AutoSegSlicer.common import segmentation

    original = segmentation.segment_specs

    def shifted(labels, colors=None, terminologies=None):
        return [segmentation.SegmentSpec(s.name, s.value, s.color, s.terminology)
                for s in original(labels, colors, terminologies)][::-1]   # names swapped with values

    monkeypatch.setattr(segmentation, "segment_specs", shifted)
    with pytest.raises(AssertionError):
        selftest.check_segment_correct_export_dataset(slicer_harness.scene, tmp_path)
