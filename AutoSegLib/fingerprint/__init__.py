"""fingerprint stage: `extract_fingerprint(dataset_path) -> Fingerprint` (see extract.py, record.py).

Names are resolved lazily (no work at import time)."""
_EXPORTS = {
    "extract_fingerprint": "AutoSegLib.fingerprint.extract",
    "Fingerprint": "AutoSegLib.fingerprint.record",
    "CaseFingerprint": "AutoSegLib.fingerprint.record",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'AutoSegLib.fingerprint' has no attribute {name!r}")
