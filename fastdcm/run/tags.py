"""The DICOM attributes a metadata table exports: which, with what column type, and their values.

A tag selection is a list of items, each one of

- a keyword (``SliceThickness``), a tag (``0018,0050``, ``(0018,0050)`` or ``00180050``);
- a nested path through sequences, first item of each (``SharedFunctionalGroupsSequence/
  PixelMeasuresSequence/PixelSpacing``); ``[N]`` picks another item (``.../PerFrameFunctionalGroupsSequence[3]/...``);
- ``+ITEM``: the item added to the default set (:data:`DEFAULT_TAGS`) instead of replacing it.

Each becomes one column, named by the item's keyword path (tags without a keyword keep their
``gggg,eeee`` form). Its type comes from the DICOM data dictionary, not from the first file, so every
row group of a table has the same schema: DS/FL/FD float64, IS/US/SS/UL/SL/UV/SV int64, other VRs
string; a value multiplicity other than 1 gives a list column. A missing attribute is null. A
top-level attribute that an enhanced multi-frame file keeps in its functional groups
(``PixelSpacing``, ``SliceThickness``, ``WindowCenter``, ...) is read from the shared group, then from the
first frame's.

Privacy (:mod:`.privacy`): identifiers of the PS3.15 Basic Application Level Confidentiality Profile
(names, IDs, birth dates, accession numbers, physicians, institutions, addresses, ...: ``IDENTIFIERS``,
and every person-name VR) are refused (``InvalidOptionError``) unless ``--allow-phi``; with
``--pseudonymize`` Patient ID and UIDs may be chosen and are written as keyed hashes.
Dates and times are exported only when named (none is in the default set). Private tags (odd
groups) are exported only when named by tag, and as text.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from .. import fastheader
from ..errors import InvalidOptionError
from ..header import is_multi
from .privacy import IDENTIFIERS, KNOWN, check_fields, pseudonymized

__all__ = ["TagSpec", "DEFAULT_TAGS", "parse_tags", "extract", "extract_from", "masked"]

#: What ``--metadata`` exports without ``--tags`` (issue 10's list; no identifier, no date).
DEFAULT_TAGS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "BodyPartExamined", "Manufacturer",
    "ManufacturerModelName", "Rows", "Columns", "PixelSpacing", "SliceThickness", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "PhotometricInterpretation", "BitsStored", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "BurnedInAnnotation",
)

_FLOAT_VRS = frozenset({"DS", "FL", "FD", "OF", "OD"})
_INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_ITEM = re.compile(r"^(.+?)(?:\[(\d+)\])?$")
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


@dataclass(frozen=True)
class TagSpec:
    """One column: its name, the path of (tag, item index) steps, and its type."""

    column: str
    path: tuple[tuple[int, int], ...]  # (tag, item index in that sequence; 0 for the leaf)
    kind: str  # "float", "int", "str"
    multi: bool  # a list column
    vr: str = "UN"  # the leaf's VR in the data dictionary (implicit VR files)
    pseudonymized: bool = False  # --pseudonymize replaces its values (Patient ID, UIDs)

    @property
    def leaf(self) -> int:
        return self.path[-1][0]



def _tag_of(text: str, item: str) -> tuple[int, str]:
    known = KNOWN.get(text)
    if known is not None:
        return known[0], text
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    match = _TAG.match(text)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        return tag, keyword_for_tag(tag) or f"{tag >> 16:04x},{tag & 0xFFFF:04x}"
    tag = tag_for_keyword(text)
    if tag is None:
        raise InvalidOptionError(f"--tags: {text!r} in {item!r} is neither a DICOM keyword nor a tag like 0018,0050")
    return tag, text


_KNOWN_BY_TAG = {tag: (vr, vm) for tag, vr, vm in KNOWN.values()}


def _vr_vm(tag: int) -> tuple[str, str]:
    known = _KNOWN_BY_TAG.get(tag)
    if known is not None:
        return known
    from pydicom.datadict import dictionary_VM, dictionary_VR

    try:
        return dictionary_VR(tag), dictionary_VM(tag)
    except KeyError:  # private or unknown: text
        return "UN", "1"


def _spec(item: str, allow_phi: bool, pseudonymize: bool) -> TagSpec:
    steps = [s for s in item.strip().split("/")]
    if not steps or any(not s.strip() for s in steps):
        raise InvalidOptionError(f"--tags: {item!r} is not a keyword, a tag or a path like Sequence/Keyword")
    path, names = [], []
    for i, step in enumerate(steps):
        match = _ITEM.match(step.strip())
        text, index = match.group(1), int(match.group(2) or 0)
        tag, name = _tag_of(text, item)
        vr, vm = _vr_vm(tag)
        check_fields([name], "--tags", allow_phi=allow_phi, pseudonymize=pseudonymize)
        last = i == len(steps) - 1
        if not last and vr != "SQ":
            raise InvalidOptionError(f"--tags: {name} in {item!r} is not a sequence, so nothing can be below it")
        if last and vr == "SQ":
            raise InvalidOptionError(f"--tags: {item!r} ends at a sequence; name an attribute inside it")
        path.append((tag, index))
        names.append(name + (f"[{index}]" if index else ""))
    vr, vm = _vr_vm(path[-1][0])
    private = bool((path[-1][0] >> 16) & 1)
    kind = "str" if private else "float" if vr in _FLOAT_VRS else "int" if vr in _INT_VRS else "str"
    return TagSpec(column="/".join(names), path=tuple(path), kind=kind, multi=vm != "1" and not private, vr=vr,
                   pseudonymized=pseudonymized(names[-1].split("[")[0]))


_GROUP_END = re.compile(r"(^\+?|[/(])[0-9A-Fa-f]{4}$")
_ELEMENT_START = re.compile(r"^[0-9A-Fa-f]{4}(\)|\[|/|$)")


def _split(text: str) -> list[str]:
    """Comma-separated items, where the comma inside a tag (``0018,0050``) does not separate."""
    out: list[str] = []
    for token in text.split(","):
        if out and _GROUP_END.search(out[-1].strip()) and _ELEMENT_START.match(token.strip()):
            out[-1] = out[-1].rstrip() + "," + token.strip()
        else:
            out.append(token)
    return out


def parse_tags(
    items: str | Iterable[str] | None, *, allow_phi: bool = False, pseudonymize: bool = False
) -> tuple[TagSpec, ...]:
    """The columns of a selection (comma-separated text or a list; None: the default set).
    Identifiers are refused unless ``allow_phi`` (or ``pseudonymize`` for Patient ID and UIDs)."""
    if items is None:
        items = []
    elif isinstance(items, str):
        items = _split(items)
    items = [s.strip() for s in items]
    if any(not s for s in items):
        raise InvalidOptionError("--tags: an empty item (two commas, or a comma at an end)")
    if not items or all(s.startswith("+") for s in items):
        items = list(DEFAULT_TAGS) + [s[1:] for s in items]
    elif any(s.startswith("+") for s in items):
        raise InvalidOptionError("--tags: either list the tags, or add to the default set with +TAG, not both")
    specs: list[TagSpec] = []
    seen: set[str] = set()
    for item in items:
        spec = _spec(item, allow_phi, pseudonymize)
        if spec.column not in seen:
            seen.add(spec.column)
            specs.append(spec)
    return tuple(specs)


# --------------------------------------------------------------------------- values


def _find(ds: Any, path: tuple[tuple[int, int], ...]) -> Any:
    """The element at ``path`` (None when absent)."""
    node = ds
    for depth, (tag, index) in enumerate(path):
        if node is None or tag not in node:
            return None
        elem = node[tag]
        if depth == len(path) - 1:
            return elem
        items = elem.value
        if not items or index >= len(items):
            return None
        node = items[index]
    return None


def _typed(value: Any, spec: TagSpec) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.hex() if spec.kind == "str" else None
    many = is_multi(value)
    values = list(value) if many else [value]
    out = []
    for v in values:
        if v is None or v == "":
            continue
        try:
            # text: surrounding spaces are padding (PS3.5 6.2), pydicom keeps some ("DERIVED ")
            out.append(float(v) if spec.kind == "float" else int(v) if spec.kind == "int" else _text(v, spec))
        except (TypeError, ValueError):
            return None  # a malformed number: null, never a wrong one
    if spec.multi:
        return out
    return out[0] if out else None


def _text(value: Any, spec: TagSpec) -> str:
    text = str(value)
    return text.rstrip(" \0") if spec.vr in _SINGLE_TEXT_VRS else text.strip(" \0")


def extract(ds: Any, specs: tuple[TagSpec, ...]) -> dict[str, Any]:
    """``{column: value}`` of one dataset (a value pydicom cannot read is null)."""
    row: dict[str, Any] = {}
    for spec in specs:
        elem = None
        try:
            elem = _find(ds, spec.path)
            if elem is None and len(spec.path) == 1:
                for group in _FUNCTIONAL_GROUPS:  # enhanced multi-frame: shared group, then frame 1's
                    seq = ds.get(group) if hasattr(ds, "get") else None
                    if not seq:
                        continue
                    for inner in seq[0]:
                        if inner.VR == "SQ" and inner.value and spec.leaf in inner.value[0]:
                            elem = inner.value[0][spec.leaf]
                            break
                    if elem is not None:
                        break
            row[spec.column] = _typed(elem.value, spec) if elem is not None else None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError, OverflowError):
            row[spec.column] = None  # pydicom cannot read this damaged element: null, the rest of the row stays
    return row


# --------------------------------------------------------------------------- the fast path

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # one value: a backslash is text
_STRIPPED_VRS = frozenset({"DS", "IS", "UI", "CS", "AE", "AS", "DA", "DT", "TM"})  # leading spaces are padding too
_BINARY = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8", "UV": "<u8", "SV": "<i8"}
#: Shared / Per-frame Functional Groups Sequence, as their tags' bytes (little endian): values may live there
_ENHANCED = (b"\x00\x52\x29\x92", b"\x00\x52\x30\x92")
_SLOW = object()


class _Selection:
    """What the fast path keeps of one selection of attributes (a run has one): the leaf tags for
    the header walk, the columns, the values decoded so far by (index, VR code, raw bytes), and,
    per thread, the last file's values (the attributes of a series repeat in every file)."""

    __slots__ = ("specs", "tags", "columns", "nested", "values", "multi", "local")

    def __init__(self, specs: tuple[TagSpec, ...]) -> None:
        import numpy as np

        self.specs = specs
        self.tags = np.array([s.leaf for s in specs], np.int64)
        self.columns = tuple(s.column for s in specs)
        self.nested = any(len(s.path) > 1 for s in specs)
        self.values: dict[tuple, Any] = {}
        self.multi = tuple(s.column for s in specs if s.multi)  # (list columns: a row gets its own lists)
        self.local = threading.local()

    def last(self) -> "_Last":
        last = getattr(self.local, "last", None)
        if last is None:
            last = self.local.last = _Last(len(self.specs))
        return last


class _Last:
    """One thread's last file of a selection: its values' bytes, lengths and VR codes (what
    ``kernels.changed_values`` compares the next file's with) and the values they decoded to
    (None: none yet, or dropped)."""

    __slots__ = ("bytes", "seen", "changed", "row", "explicit")
    WIDTH = 64  # longer values are decoded for every file (a UID is at most 64 bytes)

    def __init__(self, n: int) -> None:
        import numpy as np

        self.bytes = np.zeros((n, self.WIDTH), np.uint8)
        self.seen = np.full((n, 2), -3, np.int64)
        self.changed = np.zeros(n, np.int64)
        self.row: dict[str, Any] | None = None
        self.explicit: bool | None = None

    def drop(self) -> None:
        """Forget the last file (its values were not all decoded): the next one is decoded whole."""
        self.seen[:, 0] = -3
        self.row = None


_SELECTIONS: dict[int, _Selection] = {}  # id(specs) -> its _Selection


def _selection(specs: tuple[TagSpec, ...]) -> _Selection:
    hit = _SELECTIONS.get(id(specs))
    if hit is None or hit.specs is not specs:
        if len(_SELECTIONS) > 16:
            _SELECTIONS.clear()
        hit = _SELECTIONS[id(specs)] = _Selection(specs)
    return hit


def burned_in(image: Any) -> bool:
    """Whether the image says Burned In Annotation YES (read from the header bytes when it can)."""
    global _BURNED_IN
    if _BURNED_IN is None:
        _BURNED_IN = parse_tags("BurnedInAnnotation")
    value = extract_from(image, _BURNED_IN).get("BurnedInAnnotation")
    return str(value or "").strip().upper() == "YES"


_BURNED_IN: tuple[TagSpec, ...] | None = None


def extract_from(image: Any, specs: tuple[TagSpec, ...]) -> dict[str, Any]:
    """``extract`` for a rendered :class:`~fastdcm.render.Image`: the values are read from the
    header's bytes by the compiled header walk when every item is a top-level attribute of a plain
    little-endian file with ASCII text (only the values whose bytes differ from the last file's are
    decoded: 15-37 us a file in a run); else from pydicom's dataset (~1-2 ms).
    Both give the same values (a test holds them to each other on every test file)."""
    row = _fast(image.header_bytes, specs, image.file_size)
    return row if row is not None else extract(image.dataset, specs)


def _fast(buffer: bytes | None, specs: tuple[TagSpec, ...], total: int | None = None) -> dict[str, Any] | None:
    selection = _selection(specs)
    if buffer is None or selection.nested:
        return None
    last = selection.last()
    found = fastheader.find_changed(buffer, selection.tags, total, last.bytes, last.seen, last.changed)
    if found is None:
        return None
    explicit, pixels, rows, count = found
    if buffer.find(_ENHANCED[0], 0, pixels) >= 0 or buffer.find(_ENHANCED[1], 0, pixels) >= 0:
        last.drop()
        return None  # (probably) an enhanced multi-frame file: pydicom's path reads the functional groups
    row = last.row
    if row is None or last.explicit is not explicit:
        row, changed = {}, range(len(specs))  # every value, in the columns' order
    else:
        changed = last.changed[:count].tolist()  # the values whose bytes differ from the last file's
    last.row, last.explicit = row, explicit
    known, columns = selection.values, selection.columns
    for i in changed:
        start, length, code = rows[i].tolist()
        if start < 0:
            row[columns[i]] = None
            continue
        if not explicit:
            code = -1
        data = buffer[start : start + length]
        key = (i, code, data) if length <= 64 else None
        value = known.get(key, _SLOW) if key is not None else _SLOW
        if value is _SLOW:
            spec = specs[i]
            value = _raw_value(data, chr(code & 0xFF) + chr(code >> 8) if code >= 0 else spec.vr, spec)
            if value is _SLOW:
                last.drop()
                return None
            if key is not None:
                if len(known) >= 4096:
                    known.clear()
                known[key] = value
        row[columns[i]] = value
    out = row.copy()
    for column in selection.multi:  # a list of its own in each row (the last file's stays as it is)
        value = out[column]
        if value.__class__ is list:
            out[column] = value[:]
    return out


def _raw_value(data: bytes, vr: str, spec: TagSpec) -> Any:
    if vr in _BINARY:
        import numpy as np

        size = np.dtype(_BINARY[vr]).itemsize
        if len(data) % size:
            return _SLOW
        return _typed(np.frombuffer(data, _BINARY[vr]).tolist(), spec)
    if vr in _TEXT_VRS or vr in _SINGLE_TEXT_VRS:
        if not data.isascii() or b"\x1b" in data:
            return _SLOW  # a character set other than ASCII: pydicom decodes it
        text = data.decode("ascii")
        if vr in _SINGLE_TEXT_VRS or "\\" not in text:  # one value (most are): typed as _typed types it
            item = text.strip(" \0") if vr in _STRIPPED_VRS else text.rstrip(" \0")
            if not item:
                return None
            kind = spec.kind
            try:
                value = float(item) if kind == "float" else int(item) if kind == "int" else _text(item, spec)
            except ValueError:
                return None  # a malformed number: null, never a wrong one
            return [value] if spec.multi else value
        if spec.multi and spec.kind != "str":  # numbers (a position, an orientation): float() and int()
            number = float if spec.kind == "float" else int  # drop the spaces around each themselves
            try:
                return [number(item) for item in text.split("\\")]
            except ValueError:
                pass  # an empty value, NUL padding or a malformed number: typed below as _typed types it
        items = [item.strip(" \0") if vr in _STRIPPED_VRS else item.rstrip(" \0") for item in text.split("\\")]
        return _typed(items, spec)
    return _SLOW


# --------------------------------------------------------------------------- masking (fastdcm info)

#: What an identifier's value becomes where a dataset is shown without --allow-phi.
MASK = "<masked>"
_BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})  # dates and times: the Basic Profile removes or alters both
_MASKABLE_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


def is_identifier(elem: Any) -> bool:
    """A Basic Profile identifier (:data:`IDENTIFIERS`, any person name) or a private element."""
    return elem.keyword in IDENTIFIERS or elem.VR == "PN" or bool(elem.tag.group & 1) and elem.tag.element >= 0x0100


def masked(ds: Any, *, bulk_limit: int | None = None) -> Any:
    """A copy of ``ds`` with every identifier's value and every date and time (DA, DT, TM: the Basic
    Profile removes or alters them, and the table has them only when named) replaced by :data:`MASK` (in
    sequences too; ``ds`` is not changed). ``bulk_limit``: binary values longer than that are left out."""
    import copy

    from pydicom import config
    from pydicom.dataelem import DataElement

    out = copy.deepcopy(ds)

    def visit(dataset: Any, elem: Any) -> None:
        if bulk_limit is not None and elem.VR in _BULK_VRS and len(elem.value or b"") > bulk_limit:
            del dataset[elem.tag]
        elif is_identifier(elem) or elem.VR in _DATE_VRS:
            value = [] if elem.VR == "SQ" else MASK if elem.VR in _MASKABLE_TEXT else None
            dataset[elem.tag] = DataElement(elem.tag, elem.VR, value, validation_mode=config.IGNORE)

    out.walk(visit)
    return out
