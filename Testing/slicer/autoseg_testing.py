"""Helpers shared by the Slicer module tests; they come from the module's own self-test code
(AutoSegSlicer.selftest), so the tests and Slicer's self-test use the same stand-in child and model folder."""
from __future__ import annotations

import tempfile
from pathlib import Path

from autoseg_harness import add_module_to_path

add_module_to_path()

from AutoSegSlicer import selftest  # noqa: E402

make_model_folder = selftest.make_model_folder
_BIN = Path(tempfile.mkdtemp(prefix="autoseg-test-bin-"))


def fake_runner_factory(mode: str):
    """Runner factory whose child is the stand-in predict script in ``mode`` (ok, sleep, fail, nooutput)."""
    return selftest.fake_runner_factory(mode, _BIN)
