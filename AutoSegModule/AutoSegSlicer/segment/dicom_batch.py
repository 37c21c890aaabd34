"""DICOM series from Slicer's DICOM database as batch cases.

`list_series` and `cases_from_dicom` take the database as a collaborator (``slicer.dicomDatabase``, a
ctkDICOMDatabase, in the application: ``patients()``, ``studiesForPatient()``, ``seriesForStudy()``,
``descriptionForSeries()``, ``filesForSeries()``). ctkDICOMDatabase is a Qt class that slicer-core does not
have, so the tests pass a stand-in with those methods; the conversion (`write_series`) is SimpleITK only
and is tested on a real DICOM series written by SimpleITK. The series is converted when the batch is
staged (`batch.BatchLogic.stage`), in Slicer's process, before the child starts.
"""
from __future__ import annotations

import contextlib
import locale
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.segment.batch import BatchCase, case_name, unique_names

POSITION, ORIENTATION = "0020|0032", "0020|0037"


def list_series(database) -> List[Tuple[str, str]]:
    """``[(series instance UID, "patient / description"), ...]`` of every series in the database."""
    out = []
    for patient in database.patients():
        for study in database.studiesForPatient(patient):
            for series in database.seriesForStudy(study):
                description = database.descriptionForSeries(series) or series
                out.append((str(series), f"{patient} / {description}"))
    return out


def cases_from_dicom(database, series_uids: Sequence[str], model) -> List[BatchCase]:
    """One case per series (one-input models), named after its description."""
    if len(model.channel_names) != 1:
        raise AutoSegError(f"Model '{model.name}' takes {len(model.channel_names)} inputs: a batch over DICOM series "
                           f"needs a one-input model.")
    if not series_uids:
        raise AutoSegError("No DICOM series selected: choose series in the DICOM database first.")
    names, files = [], []
    for uid in series_uids:
        found = [str(f) for f in database.filesForSeries(uid)]
        if not found:
            raise AutoSegError(f"DICOM series {uid} has no files in the database (moved or deleted?).")
        names.append(case_name(database.descriptionForSeries(uid) or uid))
        files.append(found)
    return [BatchCase(n, dicom=[f], source=f"DICOM {uid}")
            for n, f, uid in zip(unique_names(names), files, series_uids)]


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""


def sorted_series(files: Sequence[str]) -> List[str]:
    """The files of one single-frame series in slice order (along the slice normal); AutoSegError for files
    without position/orientation, with differing orientation or slice size, or two slices at one place."""
    import SimpleITK as sitk

    with kept_locale():
        return _sorted_series(sitk, files)


def _sorted_series(sitk, files):
    keyed = []
    first = None
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise AutoSegError(f"{f}: not a readable DICOM file ({str(exc).strip().splitlines()[-1]}).") from None
        position, orientation = _tag(reader, POSITION), _tag(reader, ORIENTATION)
        try:
            pos = np.array([float(v) for v in position.split("\\")])
            ori = np.array([float(v) for v in orientation.split("\\")])
        except ValueError:
            pos = ori = np.zeros(0)
        if pos.size != 3 or ori.size != 6:
            raise AutoSegError(f"{f}: no image position/orientation (0020,0032/0037); not a slice of a 3-D series.")
        key = (tuple(np.round(ori, 4)), tuple(reader.GetSize()[:2]))
        if first is None:
            first = key
        elif key != first:
            raise AutoSegError(f"{f}: orientation or slice size differs from the rest of the series "
                               f"({key} vs {first}); it mixes several series.")
        normal = np.cross(ori[:3], ori[3:])
        keyed.append((float(pos @ normal), str(f)))
    keyed.sort()
    places = [k for k, _ in keyed]
    if len(places) != len(set(np.round(places, 4))):
        raise AutoSegError(f"Series of {len(files)} files has several slices at one position (several series or "
                           f"time points); choose one series.")
    return [f for _, f in keyed]


@contextlib.contextmanager
def kept_locale():
    """Restore the process locale afterwards. SimpleITK's DICOM (GDCM) writer was seen to set it to "C" (Python's
    default text encoding then turns from UTF-8 into ASCII, for the whole process); its reader did not here, but
    a reader that does would do so inside Slicer's process, so the reading is wrapped too."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_series(files: Sequence[str], dest) -> Path:
    """Read one DICOM series (slices sorted by `sorted_series`) and write it as an image file ``dest``."""
    import SimpleITK as sitk

    with kept_locale():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sorted_series(files))
        image = reader.Execute()
        dest = Path(dest)
        sitk.WriteImage(image, str(dest), True)
    return dest
