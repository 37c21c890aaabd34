"""Helpers shared by the Slicer module tests (and usable by the module's self-test): a fake child
command and a model-folder factory."""
from __future__ import annotations

from pathlib import Path

from autoseg_harness import REPO

FAKE_PREDICT = Path(__file__).resolve().parent / "fake_predict.py"


def fake_runner_factory(mode: str):
    """A runner factory whose child runs fake_predict.py in ``mode`` instead of ``-m AutoSegLib <command>``
    (argv after the command is passed through). The real `ProcessRunner` does the work."""
    from AutoSegSlicer.runner import ProcessRunner

    class FakeRunner(ProcessRunner):
        def start(self, argv):
            assert argv[1:3] == ["-m", "AutoSegLib"], argv
            super().start([argv[0], str(FAKE_PREDICT), mode, *argv[4:]])

    def factory(**kwargs):
        kwargs.setdefault("pythonpath", str(REPO))
        return FakeRunner(**kwargs)

    return factory


def make_model_folder(path, channel_names=("MRI",), labels=None, model_json=None, configuration="3d_fullres",
                      patch=(16, 16, 16)):
    """A model folder with the layout of DEVELOPERS.md (the checkpoint is a placeholder: enough for the
    module, which never loads weights itself). Returns its path."""
    import json

    path = Path(path)
    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    fold = path / "trained" / configuration / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pt").write_bytes(b"placeholder")
    (path / "dataset.json").write_text(json.dumps({
        "name": path.name, "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}))
    (path / "plans.json").write_text(json.dumps({"configurations": {configuration: {"patch_size": list(patch)}}}))
    if model_json is not None:
        (path / "model.json").write_text(json.dumps(model_json))
    return path
