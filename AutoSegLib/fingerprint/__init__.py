"""fingerprint stage: `extract_fingerprint(dataset_path) -> Fingerprint` (see extract.py, record.py)."""
from AutoSegLib.fingerprint.extract import extract_fingerprint
from AutoSegLib.fingerprint.record import CaseFingerprint, Fingerprint

__all__ = ["extract_fingerprint", "Fingerprint", "CaseFingerprint"]
