"""Privacy rules: which attributes identify a person, and keyed pseudonyms for the ones a dataset needs.

By default nothing a run writes (output names, the metadata table) carries an identifier of the
PS3.15 Basic Application Level Confidentiality Profile: a name template or a ``--tags`` selection
naming one (:data:`IDENTIFIERS`, or any person-name attribute) is a usage error. Two ways to ask:

- ``--pseudonymize KEY``: Patient ID and every UID (:func:`pseudonymized`) are replaced, in names and
  in the table, by a keyed hash, HMAC-SHA256 of the value under the key, its first 20 hex digits
  (80 bits): stable across runs and machines for one key, so a patient's or a series' images stay
  grouped, and neither reversible nor recomputable without the key. The key is given as ``env``
  (read from ``FASTDCM_PSEUDONYM_KEY``), ``@FILE`` (the file's first line) or the text itself, and must
  be at least 16 characters; it never appears in the manifest, the resume command or a log line.
- ``--allow-phi``: identifiers are written as they are (the summary says so).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from ..errors import InvalidOptionError

__all__ = ["IDENTIFIERS", "is_identifier", "pseudonymized", "Pseudonymizer", "load_key", "KEY_VAR", "check_fields"]

KEY_VAR = "FASTDCM_PSEUDONYM_KEY"
MIN_KEY_CHARS = 16
DIGITS = 20

#: Identifiers of the Basic Profile (PS3.15 Table E.1-1) kept out of names and tables by default.
IDENTIFIERS = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
    "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAddress",
    "PatientTelephoneNumbers", "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation", "PatientReligiousPreference",
    "AdditionalPatientHistory", "PatientComments", "PatientInsurancePlanCodeSequence", "CountryOfResidence",
    "RegionOfResidence", "AccessionNumber", "StudyID", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "RequestingPhysician", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName",
    "DeviceSerialNumber", "RequestAttributesSequence", "ResponsiblePerson", "ResponsibleOrganization",
    "PersonName", "ContentCreatorName", "ScheduledPerformingPhysicianName", "RequestedProcedureID",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "AdmissionID", "ServiceEpisodeID", "PatientState",
    "ImageComments", "StudyComments", "DerivationDescription", "VerifyingObserverName",
})


def _vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    try:
        return dictionary_VR(tag) if tag is not None else ""
    except KeyError:
        return ""


def is_identifier(keyword: str) -> bool:
    return keyword in IDENTIFIERS or _vr(keyword) == "PN"


def pseudonymized(keyword: str) -> bool:
    """Whether ``--pseudonymize`` replaces this attribute's value: Patient ID and every UID."""
    return keyword in ("PatientID", "OtherPatientIDs") or _vr(keyword) == "UI"


def check_fields(keywords: list[str], what: str, *, allow_phi: bool, pseudonymize: bool) -> None:
    """Refuse identifiers among ``keywords`` (used by ``what``: a name template, --tags)."""
    if allow_phi:
        return
    for keyword in keywords:
        if is_identifier(keyword) and not (pseudonymize and pseudonymized(keyword)):
            hint = " or --pseudonymize KEY" if pseudonymized(keyword) else ""
            raise InvalidOptionError(
                f"{what}: {keyword} is an identifier (PS3.15 Basic Profile); it is written only with --allow-phi{hint}"
            )


def load_key(spec: str) -> bytes:
    """The key of ``--pseudonymize``: ``env``, ``@FILE`` or the text itself."""
    if spec == "env":
        text = os.environ.get(KEY_VAR, "")
        if not text:
            raise InvalidOptionError(f"--pseudonymize env: {KEY_VAR} is not set")
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as f:
                text = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise InvalidOptionError(f"--pseudonymize: the key file {spec[1:]} cannot be read: {exc.strerror or exc}") from None
    else:
        text = spec
    if len(text) < MIN_KEY_CHARS:
        raise InvalidOptionError(f"--pseudonymize: the key must be at least {MIN_KEY_CHARS} characters")
    return text.encode("utf-8")


class Pseudonymizer:
    """Keyed hashes of identifying values (picklable: the key goes to the workers, nowhere else)."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __repr__(self) -> str:  # never the key
        return "Pseudonymizer(<key>)"

    def __call__(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [self(v) for v in value]
        digest = hmac.new(self.key, str(value).strip(" \0").encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:DIGITS]

    def fingerprint(self) -> str:
        """What the options fingerprint records of the key: a keyed digest, not the key."""
        return hmac.new(self.key, b"fastdcm options fingerprint", hashlib.sha256).hexdigest()[:16]

    def __getstate__(self):
        return self.key

    def __setstate__(self, key):
        self.key = key
