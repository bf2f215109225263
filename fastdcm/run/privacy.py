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

Output names are also checked file by file (:func:`guard_names`): names mirror the input paths, and
archives are often foldered by patient name, ID or accession number; a folder or file name showing
one of the file's identifying values (:data:`NAME_GUARD`) makes the input ``identifier_in_name``
(nothing written), or, with ``--pseudonymize``, is replaced by its keyed hash. The manifest, the
table and the gallery record each input's own path as it was given (the run's inputs, not its
dataset).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
from typing import Any

from ..errors import IdentifierInNameError, InvalidOptionError
from ..header import is_multi

__all__ = [
    "IDENTIFIERS", "is_identifier", "pseudonymized", "Pseudonymizer", "load_key", "KEY_VAR", "check_fields",
    "NAME_GUARD", "guard_names",
]

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
    "ImageComments", "StudyComments", "DerivationDescription", "VerifyingObserverName", "TimezoneOffsetFromUTC",
})


#: The identifiers an output name is checked against, file by file (default names mirror the input
#: paths, and archives are often foldered by patient name, ID or accession number).
NAME_GUARD = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientBirthDate", "AccessionNumber", "MedicalRecordLocator",
)
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _needles(keyword: str, value: Any) -> tuple[set[str], set[str]]:
    """What of an identifying value must not be in a name: words (a token of a name equal to one
    is a hit: "doe" in "doe_john") and runs of 6 or more letters and digits (a hit anywhere in a
    name: "doejohn" in "DOE^JOHN-ct"). IDs of 4 or more characters are words; shorter ones, and
    a person's given names alone, would match names by chance."""
    words: set[str] = set()
    runs: set[str] = set()
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        text = str(v or "").lower()
        whole = _NOT_ALNUM.sub("", text)
        if len(whole) >= 6:
            runs.add(whole)
        if keyword.endswith("Name"):  # Person Name DOE^JOHN: the family name's words (a given name alone is not)
            words.update(w for w in _NOT_ALNUM.split(text.split("^")[0]) if len(w) >= 3)
        elif len(whole) >= 4:
            words.add(whole)
    return words, runs


@functools.lru_cache(maxsize=1024)
def _needles_of(items: tuple) -> tuple[tuple[str, frozenset, tuple], ...]:
    """(keyword, words, runs) per identifying value (cached: a patient's files repeat them)."""
    out = []
    for keyword, value in items:
        words, runs = _needles(keyword, list(value) if isinstance(value, tuple) else value)
        if words or runs:
            out.append((keyword, frozenset(words), tuple(runs)))
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _needles_by(pairs: tuple) -> tuple[tuple[str, frozenset, tuple], ...]:
    """:func:`_needles_of` of the identifying values as the guard reads them, (keyword, value) pairs
    with None and empty values among them (one cache lookup a file: a series repeats them)."""
    items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs if v not in (None, "", [], ()))
    return _needles_of(items) if items else ()


def guard_names(
    names: list[str], values: dict[str, Any], pseudonymizer: "Pseudonymizer | None" = None, templated: bool = False
) -> list[str]:
    """``names`` unchanged when no identifying value of the file (``values``: :data:`NAME_GUARD`'s)
    shows in them; with a pseudonymizer, each folder or file name that shows one replaced by its
    keyed hash (the file name keeps its extension); else IdentifierInNameError naming the attribute
    (and where the name came from: the input path, or with ``templated`` a ``--name`` template)."""
    pairs = tuple(values.items())
    try:
        needles = _needles_by(pairs)
    except TypeError:  # a multi-valued identifier (a list) cannot be a cache key
        needles = _needles_by(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs))
    if not needles:
        return names
    out = []
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts):
            hit = _hit(part, needles)
            if hit is None:
                continue
            if pseudonymizer is None:
                what = "folder" if i < len(parts) - 1 else "file name"
                where, other = ("the name --name makes", "a --name template without it") if templated else (
                    "the input path", "--name TEMPLATE to name outputs otherwise")
                raise IdentifierInNameError(
                    f"the output name would carry the file's {hit} (in a {what} of {where}): use "
                    f"--pseudonymize KEY to replace it by a keyed hash, {other}, "
                    "or --allow-phi if it is a pseudonym already"
                )
            stem, dot, ext = part.rpartition(".") if i == len(parts) - 1 and "." in part else (part, "", "")
            parts[i] = pseudonymizer(stem) + dot + ext
        out.append("/".join(parts))
    return out


@functools.lru_cache(maxsize=4096)
def _parts_of(part: str) -> tuple[frozenset, str]:
    low = part.lower()
    return frozenset(_NOT_ALNUM.split(low)), _NOT_ALNUM.sub("", low)


@functools.lru_cache(maxsize=8192)
def _hit(part: str, needles: tuple) -> str | None:
    """The keyword of the first identifying value ``part`` of a name shows, or None (cached: the
    folders of a series' names repeat, with the same needles)."""
    tokens, joined = _parts_of(part)
    for keyword, words, runs in needles:
        if not tokens.isdisjoint(words) or any(r in joined for r in runs):
            return keyword
    return None


#: The data dictionary's entries of the attributes a default run reads (the name guard's, Burned In
#: Annotation) and those of the default ``--metadata`` columns and the gallery's grouping: keyword ->
#: (tag, VR, VM) as pydicom's dictionary has them (a test holds them to it). A run parses these tags
#: from here, without importing pydicom (~0.19 s of the run's start-up).
KNOWN: dict[str, tuple[int, str, str]] = {
    "PatientName": (0x00100010, "PN", "1"),
    "PatientID": (0x00100020, "LO", "1"),
    "OtherPatientIDs": (0x00101000, "LO", "1-n"),
    "OtherPatientNames": (0x00101001, "PN", "1-n"),
    "PatientBirthName": (0x00101005, "PN", "1"),
    "PatientBirthDate": (0x00100030, "DA", "1"),
    "AccessionNumber": (0x00080050, "SH", "1"),
    "MedicalRecordLocator": (0x00101090, "LO", "1"),
    "BurnedInAnnotation": (0x00280301, "CS", "1"),
    # the default --metadata columns (run/tags.py DEFAULT_TAGS) and the gallery's (gallery.GALLERY_TAGS)
    "StudyInstanceUID": (0x0020000D, "UI", "1"),
    "SeriesInstanceUID": (0x0020000E, "UI", "1"),
    "SOPInstanceUID": (0x00080018, "UI", "1"),
    "Modality": (0x00080060, "CS", "1"),
    "BodyPartExamined": (0x00180015, "CS", "1"),
    "Manufacturer": (0x00080070, "LO", "1"),
    "ManufacturerModelName": (0x00081090, "LO", "1"),
    "Rows": (0x00280010, "US", "1"),
    "Columns": (0x00280011, "US", "1"),
    "PixelSpacing": (0x00280030, "DS", "2"),
    "SliceThickness": (0x00180050, "DS", "1"),
    "InstanceNumber": (0x00200013, "IS", "1"),
    "ImagePositionPatient": (0x00200032, "DS", "3"),
    "ImageOrientationPatient": (0x00200037, "DS", "6"),
    "PhotometricInterpretation": (0x00280004, "CS", "1"),
    "BitsStored": (0x00280101, "US", "1"),
    "RescaleSlope": (0x00281053, "DS", "1"),
    "RescaleIntercept": (0x00281052, "DS", "1"),
    "WindowCenter": (0x00281050, "DS", "1-n"),
    "WindowWidth": (0x00281051, "DS", "1-n"),
    "SeriesNumber": (0x00200011, "IS", "1"),
}


def _vr(keyword: str) -> str:
    known = KNOWN.get(keyword)
    if known is not None:
        return known[1]
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
        if is_multi(value):
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
