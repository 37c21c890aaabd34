"""Model archive: round trip (zip and tar.gz), slimmed checkpoints, reuse, and every refusal case."""
import io
import json
import os
import tarfile
import zipfile

import pytest
import torch

from AutoSegLib.cli import main
from AutoSegLib.errors import AutoSegError
from AutoSegLib.models.archive import MANIFEST, export_model_archive
from AutoSegLib.models.extract import extract_model_archive


def _model_folder(root):
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps({"dataset_name": "Toy", "x": 1}))
    (root / "dataset.json").write_text(json.dumps({"name": "Toy", "labels": {"background": 0, "organ": 1}}))
    (root / "fingerprint.json").write_text("{}")
    (root / "inference.json").write_text(json.dumps({"schema_version": 1, "configurations": ["3d_fullres"],
                                                     "postprocessing": []}))
    (root / "preprocessed").mkdir()
    (root / "preprocessed" / "big.npy").write_bytes(b"0" * 1000)
    g = torch.Generator().manual_seed(0)
    for fold in ("0", "1"):
        f = root / "trained" / "3d_fullres" / f"fold_{fold}"
        (f / "validation").mkdir(parents=True)
        weights = {"conv.weight": torch.randn(4, 1, 3, 3, 3, generator=g), "conv.bias": torch.zeros(4)}
        torch.save({"network_weights": weights, "configuration": "3d_fullres", "plans_identifier": "abc",
                    "num_input_channels": 1, "num_outputs": 2, "epoch": 3}, f / "checkpoint_final.pt")
        torch.save({"network_weights": weights, "optimizer_state": {"lr": 0.1}, "epoch": 3},
                   f / "checkpoint_latest.pt")
        (f / "training_log.jsonl").write_text('{"epoch": 0}\n')
        (f / "validation" / "summary.json").write_text("{}")
        (f / "validation" / "case.npz").write_bytes(b"x" * 100)
    # a fold whose checkpoint_final carries optimizer state: must be re-saved with weights only
    f = root / "trained" / "2d" / "fold_0"
    f.mkdir(parents=True)
    torch.save({"network_weights": {"w": torch.ones(2)}, "optimizer_state": {"m": torch.ones(2)}, "epoch": 1,
                "configuration": "2d"}, f / "checkpoint_final.pt")
    return root


@pytest.mark.parametrize("name", ["model.zip", "model.tar.gz", "model.tar"])
def test_round_trip(tmp_path, name):
    src = _model_folder(tmp_path / "work")
    archive = export_model_archive(src, tmp_path / name, metadata={"description": "toy"})
    dest = extract_model_archive(archive, tmp_path / "out")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert "preprocessed/big.npy" not in files and not any(f.endswith((".npz", "checkpoint_latest.pt")) for f in files)
    for rel in ("plans.json", "dataset.json", "fingerprint.json", "inference.json",
                "trained/3d_fullres/fold_1/validation/summary.json", "trained/3d_fullres/fold_0/training_log.jsonl"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    # a weights-only checkpoint is copied byte for byte; one with optimizer state is slimmed
    assert (dest / "trained/3d_fullres/fold_0/checkpoint_final.pt").read_bytes() == \
        (src / "trained/3d_fullres/fold_0/checkpoint_final.pt").read_bytes()
    slim = torch.load(dest / "trained/2d/fold_0/checkpoint_final.pt", weights_only=True)
    assert set(slim) == {"network_weights", "epoch", "configuration"}
    assert torch.equal(slim["network_weights"]["w"], torch.ones(2))
    meta = json.loads((dest / "model.json").read_text())
    assert meta["name"] == "Toy" and meta["description"] == "toy"
    assert meta["configurations"] == {"2d": ["0"], "3d_fullres": ["0", "1"]}
    # extracting the same archive again reuses the folder
    (dest / "touched").write_text("x")
    assert extract_model_archive(archive, dest) == dest and (dest / "touched").exists()


def test_never_replaces_a_foreign_folder(tmp_path):
    archive = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "m.zip")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(AutoSegError, match="refusing to replace"):
        extract_model_archive(archive, mine)
    assert (mine / "precious.txt").read_text() == "keep"
    # a folder extracted from an older archive is replaced
    first = extract_model_archive(archive, tmp_path / "cache")
    (first / "dataset.json").write_text("{}")
    (first / ".autoseg_archive.json").write_text('{"sha256": "old"}')
    extract_model_archive(archive, tmp_path / "cache")
    assert json.loads((tmp_path / "cache" / "dataset.json").read_text())["name"] == "Toy"


def test_selection_and_inference_consistency(tmp_path):
    src = _model_folder(tmp_path / "work")
    with pytest.raises(AutoSegError, match="inference instructions"):
        export_model_archive(src, tmp_path / "a.zip", configurations=["2d"])
    archive = export_model_archive(src, tmp_path / "b", configurations=["3d_fullres"], folds=["1"])
    assert archive.name == "b.zip"
    names = zipfile.ZipFile(archive).namelist()
    assert "trained/3d_fullres/fold_1/checkpoint_final.pt" in names
    assert not any("fold_0" in n or "/2d/" in n for n in names)
    with pytest.raises(AutoSegError, match="no trained"):
        export_model_archive(src, tmp_path / "c.zip", configurations=["3d_lowres"])
    assert main(["export-model", str(src), "-o", str(tmp_path / "cli.zip")]) == 0
    assert (tmp_path / "cli.zip").is_file()


def _zip_with(tmp_path, entries, base=None):
    """A copy of a valid archive plus extra (name, bytes[, mode]) entries."""
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        if base is not None:
            with zipfile.ZipFile(base) as src:
                for info in src.infolist():
                    zf.writestr(info, src.read(info))
        for entry in entries:
            name, data = entry[0], entry[1]
            info = zipfile.ZipInfo(name)
            if len(entry) > 2:
                info.external_attr = entry[2] << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("entry, message", [
    (("../escape.json", b"{}"), "outside"),
    (("/abs/escape.json", b"{}"), "absolute"),
    (("trained/../../escape.json", b"{}"), "outside"),
    (("C:/escape.json", b"{}"), "absolute"),
    (("link.json", b"/etc/passwd", 0o120777), "link"),
    (("postprocessing.pkl", b"\x80\x04."), "file type"),
])
def test_refuses_unsafe_entries(tmp_path, entry, message):
    base = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "ok.zip")
    evil = _zip_with(tmp_path, [entry], base)
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(AutoSegError, match=message):
        extract_model_archive(evil, dest)
    assert not dest.exists() and not (tmp_path / "escape.json").exists()
    assert not list(tmp_path.rglob(".dest.tmp-*"))


def test_refuses_tar_symlink(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("plans.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(AutoSegError, match="link"):
        extract_model_archive(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_executing_checkpoint(tmp_path):
    src = _model_folder(tmp_path / "work")
    base = export_model_archive(src, tmp_path / "ok.zip")
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = marker
    buf = io.BytesIO()
    torch.save({"network_weights": {"w": torch.ones(1)}, "evil": payload}, buf)
    with zipfile.ZipFile(base) as src_zip, zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        for info in src_zip.infolist():
            if info.filename != MANIFEST and not info.filename.endswith("fold_1/checkpoint_final.pt"):
                zf.writestr(info, src_zip.read(info))
        zf.writestr("trained/3d_fullres/fold_1/checkpoint_final.pt", buf.getvalue())
    with pytest.raises(AutoSegError, match="refused"):
        extract_model_archive(tmp_path / "evil.zip", tmp_path / "dest")
    assert not marker.exists() and not (tmp_path / "dest").exists()
    assert not list(tmp_path.glob(".dest.tmp-*"))  # the temporary extraction was removed


def test_refuses_tampered_and_incomplete(tmp_path):
    base = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "ok.zip")
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(tmp_path / "t.zip", "w") as zf:
        for info in src.infolist():
            data = src.read(info)
            zf.writestr(info, data.replace(b"Toy", b"Bad") if info.filename == "dataset.json" else data)
    with pytest.raises(AutoSegError, match="checksum"):
        extract_model_archive(tmp_path / "t.zip", tmp_path / "d1")
    with zipfile.ZipFile(tmp_path / "nomodel.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(AutoSegError, match="plans.json"):
        extract_model_archive(tmp_path / "nomodel.zip", tmp_path / "d2")
    (tmp_path / "junk.zip").write_bytes(b"not an archive")
    with pytest.raises(AutoSegError, match="not a model archive"):
        extract_model_archive(tmp_path / "junk.zip", tmp_path / "d3")
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_plain_tar_is_read_as_tar_even_without_its_extension(tmp_path):
    """A .tar written by export-model ends with a checkpoint, itself a zip: zip detection by the end
    record took the tar for a zip. The format comes from the name, else from the leading bytes."""
    src = _model_folder(tmp_path / "work")
    archive = export_model_archive(src, tmp_path / "model.tar")
    assert zipfile.is_zipfile(archive)  # the trap
    renamed = archive.rename(tmp_path / "model.bin")
    dest = extract_model_archive(renamed, tmp_path / "out")
    assert (dest / "plans.json").read_bytes() == (src / "plans.json").read_bytes()


def test_refuses_decompression_bomb_before_writing(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plans.json", "{}")
        zf.writestr("dataset.json", "{}")
        zf.writestr("notes.txt", b"0" * (80 * 2 ** 20))   # 80 MiB -> ~80 KiB
    with pytest.raises(AutoSegError, match=r"bomb\.zip: refused: .*would expand to 80 MiB"):
        extract_model_archive(tmp_path / "bomb.zip", tmp_path / "dest")
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


def test_extracts_only_what_the_manifest_lists(tmp_path):
    base = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "ok.zip")
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(tmp_path / "extra.zip", "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        zf.writestr("trained/3d_fullres/fold_0/extra.txt", "smuggled")
    with pytest.raises(AutoSegError, match=r"extra\.zip: refused: entry 'trained/3d_fullres/fold_0/extra.txt' is "
                                           r"not listed in its archive_manifest.json"):
        extract_model_archive(tmp_path / "extra.zip", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_manifest_naming_local_files_reveals_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    base = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "ok.zip")
    for name in (str(secret), "../../secret.txt"):
        with zipfile.ZipFile(base) as src, zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == MANIFEST:
                    m = json.loads(data)
                    m["files"][name] = {"size": 1, "sha256": "0"}
                    data = json.dumps(m).encode()
                zf.writestr(info, data)
        with pytest.raises(AutoSegError) as err:
            extract_model_archive(tmp_path / "m.zip", tmp_path / "dest")
        assert "refused" in str(err.value) and "missing" not in str(err.value) and "checksum" not in str(err.value)


def test_errors_about_content_name_the_archive_not_a_temporary_path(tmp_path):
    base = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "ok.zip")
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(tmp_path / "trunc.zip", "w") as zf:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "trained/3d_fullres/fold_1/checkpoint_final.pt":
                data = data[:100]
            if info.filename != MANIFEST:
                zf.writestr(info, data)
    with pytest.raises(AutoSegError) as err:
        extract_model_archive(tmp_path / "trunc.zip", tmp_path / "dest")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'trunc.zip'}: entry trained/3d_fullres/fold_1/checkpoint_final.pt")
    assert ".tmp-" not in text


def test_cache_drops_extractions_of_deleted_archives(tmp_path):
    from AutoSegLib.models.extract import STALE_TEMPORARY_S, prune_archive_cache
    cache = tmp_path / "cache"
    a = export_model_archive(_model_folder(tmp_path / "work"), tmp_path / "a.zip")
    b = tmp_path / "b.zip"
    b.write_bytes(a.read_bytes())
    extract_model_archive(a, cache / "a_zip")
    extract_model_archive(b, cache / "b_zip")
    (cache / "mine").mkdir()                       # not an extraction: never touched
    old_tmp = cache / ".x.tmp-1234"
    old_tmp.mkdir()
    os.utime(old_tmp, (0, 0))
    fresh_tmp = cache / ".y.tmp-5678"               # may belong to a running extraction
    fresh_tmp.mkdir()
    b.unlink()
    removed = prune_archive_cache(cache, keep=cache / "a_zip")
    assert sorted(p.name for p in removed) == [".x.tmp-1234", "b_zip"]
    assert sorted(p.name for p in cache.iterdir()) == [".y.tmp-5678", "a_zip", "mine"]
    assert STALE_TEMPORARY_S >= 3600
    a.unlink()
    assert prune_archive_cache(cache, keep=cache / "a_zip") == []   # kept: the one in use
