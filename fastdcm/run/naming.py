"""Output names from templates: plain relative names, unique in a run.

Two steps (the atomic writer, ``write.py``, then keeps every name inside the output root by
walking it through directory fds without following a symlink):

1. :func:`output_name` builds a relative POSIX name for one frame of one source, from the
   source's relative path (the default) or a template of DICOM keywords. Every value is
   sanitised (:func:`sanitize_component`) before it becomes part of a name: tag text never
   reaches the file system raw.
2. :class:`NameRegistry` remembers every name handed out in a run (as 16-byte digests of
   the case-folded name) and refuses a second claim with :class:`NameConflictError`
   (status ``name_conflict``): two inputs never write the same file silently.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Sequence
from typing import Callable, Iterable, Mapping

from .discover import DICOM_EXTENSIONS as _DISCOVERED_EXTENSIONS
from ..errors import FastDcmError, Status

__all__ = [
    "Template",
    "compile_template",
    "output_name",
    "sanitize_component",
    "sanitize_rel",
    "strip_dicom_extension",
    "NameRegistry",
    "NameConflictError",
    "MAX_COMPONENT_BYTES",
    "SPECIAL_FIELDS",
]

#: Longest path component produced from a value, in UTF-8 bytes (file systems allow 255;
#: frame suffix and extension are added after the cap).
MAX_COMPONENT_BYTES = 100
_HASH_CHARS = 8  # hex digits of the suffix that keeps two cut values apart

#: Placeholders that are not DICOM keywords.
SPECIAL_FIELDS = frozenset({"stem", "rel", "frame"})

#: Extensions removed from the input's name before the output extension is added. Other
#: suffixes are kept (``1.2.840.113619.2.1`` is a UID-named file, not an extension ``.1``).
DICOM_EXTENSIONS = tuple(sorted(_DISCOVERED_EXTENSIONS))

_WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{p}{i}" for p in ("COM", "LPT") for i in list("123456789") + ["\u00b9", "\u00b2", "\u00b3"]]
)
_PAD_SPEC = re.compile(r"0?[1-9][0-9]?")


class NameConflictError(FastDcmError):
    """Another input of this run already writes this output name.

    (Belongs in ``errors.py`` beside the other statuses' errors; kept here until it moves.)
    """

    status = Status.NAME_CONFLICT


# --------------------------------------------------------------------------- sanitising


def _bad_char(ch: str) -> bool:
    if ch in _WINDOWS_FORBIDDEN:
        return True
    # control (Cc), format (Cf: bidi overrides, zero-width), surrogates (Cs: undecodable
    # bytes), private use (Co), unassigned (Cn), line/paragraph separators (Zl, Zp)
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _cap(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes; a cut text ends with ``~`` and a
    short hash of the full text, so two long values sharing a prefix stay distinct."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    digest = hashlib.blake2b(data, digest_size=_HASH_CHARS // 2).hexdigest()
    keep = data[: limit - _HASH_CHARS - 1].decode("utf-8", "ignore").rstrip(". ")
    return f"{keep}~{digest}"


@functools.lru_cache(maxsize=4096)  # folder names repeat across an archive
def sanitize_component(value: str, *, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """One safe path component from arbitrary text.

    Path separators, NUL, control and format characters and Windows-forbidden characters
    become ``_``; leading dots become ``_`` (no hidden files, no ``.``/``..``); trailing
    dots and spaces are dropped; Windows device names (``CON``, ``com1.txt``...) get a
    ``_`` prefix; an empty result is ``_``; long results are cut to ``max_bytes`` UTF-8
    bytes with a hash suffix. The text is NFC-normalised first.
    """
    text = unicodedata.normalize("NFC", str(value))
    text = "".join("_" if _bad_char(ch) else ch for ch in text)
    text = text.lstrip(" ")  # before the dots: " .x" must not become ".x"
    stripped = text.lstrip(".")
    text = "_" * (len(text) - len(stripped)) + stripped
    text = text.rstrip(". ")
    if not text:
        return "_"
    if text.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        text = "_" + text
    text = _cap(text, max_bytes)
    return text or "_"


def sanitize_rel(rel: str, *, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """A relative POSIX path whose every component is sanitised (empty ones dropped)."""
    parts = [p for p in re.split(r"[\\/]", rel) if p not in ("",)]
    return "/".join(sanitize_component(p, max_bytes=max_bytes) for p in parts) or "_"


def strip_dicom_extension(name: str) -> str:
    """``IM1.dcm`` -> ``IM1``; ``IM1.IMA`` -> ``IM1``; ``1.2.3.4`` and ``IM1`` unchanged."""
    lower = name.lower()
    for ext in DICOM_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def _normalize_extension(extension: str) -> str:
    ext = extension if extension.startswith(".") else "." + extension
    if len(ext) < 2 or not all(ch.isalnum() for ch in ext[1:]):
        raise ValueError(f"output extension must be letters and digits, like 'png', not {extension!r}")
    return ext


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A validated name template: literal text and ``{Keyword}`` / ``{Keyword:0N}`` fields.

    ``keywords`` lists the DICOM keywords it reads (the header module reads only those).
    """

    text: str
    parts: tuple[tuple[str, str | None, str], ...]  # (literal, field or None, pad spec)

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for _, f, _ in self.parts if f and f not in SPECIAL_FIELDS))

    @property
    def has_frame(self) -> bool:
        return any(f == "frame" for _, f, _ in self.parts)


@lru_cache(maxsize=64)
def compile_template(text: str) -> Template:
    """Validate a template once, up front; ``ValueError`` with a clear message if it is wrong.

    Allowed fields: DICOM keywords (``pydicom.datadict.keyword_dict``), ``{stem}`` (the
    input's file name without a DICOM extension), ``{rel}`` (its relative path, the same
    way) and ``{frame}`` (1-based, zero-padded to the frame count's width). A field may
    carry a zero-padding width for numbers, ``{InstanceNumber:04}``. ``/`` in the literal
    text makes folders; the template may not be absolute nor contain ``..``.
    """
    from pydicom.datadict import keyword_dict

    if not text or not text.strip():
        raise ValueError("the name template is empty")
    if "\x00" in text:
        raise ValueError("the name template contains a NUL character")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"name template {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    parts: list[tuple[str, str | None, str]] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None, ""))
            continue
        if conversion:
            raise ValueError(f"name template {text!r}: conversions like '!{conversion}' are not supported")
        if field == "":
            raise ValueError(f"name template {text!r}: empty placeholder '{{}}'; name a DICOM keyword")
        if field not in SPECIAL_FIELDS and field not in keyword_dict:
            hint = _closest(field, keyword_dict)
            raise ValueError(
                f"name template {text!r}: {{{field}}} is neither a DICOM keyword nor one of "
                f"{{stem}}, {{rel}}, {{frame}}" + (f"; did you mean {{{hint}}}?" if hint else "")
            )
        if spec and not _PAD_SPEC.fullmatch(spec):
            raise ValueError(
                f"name template {text!r}: format '{{{field}:{spec}}}' is not supported; "
                "only a zero-padding width such as {InstanceNumber:04}"
            )
        parts.append((literal, field, spec))
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        raise ValueError(f"name template {text!r} must be relative to the output folder")
    if any(piece == ".." for lit, _, _ in parts for piece in re.split(r"[\\/]", lit)):
        raise ValueError(f"name template {text!r} may not contain '..'")
    return Template(text=text, parts=tuple(parts))


def _closest(field: str, keywords: Mapping[str, int]) -> str | None:
    lower = field.lower()
    for keyword in keywords:
        if keyword.lower() == lower:
            return keyword
    return None


def _pad(value: str, spec: str) -> str:
    if spec and re.fullmatch(r"[+-]?\d+", value.strip()):
        return format(int(value.strip()), spec + "d")
    return value


Fields = Mapping[str, object] | Callable[[str], object]
#: Between the values of a multi-valued attribute in a name: ImageType ORIGINAL\\PRIMARY -> ORIGINAL_PRIMARY.
MULTI_VALUE_SEPARATOR = "_"


def _field_value(fields: Fields | None, keyword: str) -> str:
    if fields is None:
        value = None
    elif callable(fields) and not isinstance(fields, Mapping):
        value = fields(keyword)
    else:
        value = fields.get(keyword)
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # pydicom's MultiValue too
        return MULTI_VALUE_SEPARATOR.join(str(v) for v in value)
    return str(value)


def output_name(
    template: str | Template | None,
    *,
    source,
    frame: int | None,
    n_frames: int,
    extension: str,
    fields: Fields | None = None,
) -> str:
    """The relative POSIX output name of one frame of one source.

    ``frame`` is 0-based (``None`` for a single-frame object); in names it is 1-based and
    zero-padded to the width of ``n_frames``. Without a template the name mirrors
    ``source.rel`` (``a/b/IM0001.png``; ``a/b/IM0001_f003.png`` for frame index 2 of a
    multi-frame object). A template fills ``{Keyword}`` fields from ``fields`` (a mapping or
    a callable keyword -> value); if it has no ``{frame}`` and the object has several
    frames, ``_fNNN`` is appended so frames never collide. ``.dcm``, ``.dicom``, ``.dic``
    and ``.IMA`` are stripped from the input's name; other names are kept whole.
    Every component is sanitised; ``writer.OutputRoot`` refuses anything that is not a plain name.
    """
    ext = _normalize_extension(extension)
    multi = frame is not None and n_frames > 1
    if frame is not None and not 0 <= frame < max(n_frames, 1):
        raise ValueError(f"frame index {frame} out of range for {n_frames} frame(s)")
    frame_text = f"{frame + 1:0{len(str(n_frames))}d}" if frame is not None else ""
    rel = strip_dicom_extension(source.rel)
    stem = rel.rpartition("/")[2]

    if template is None:
        components = [sanitize_component(p) for p in rel.split("/") if p]
        append_frame = multi
    else:
        compiled = template if isinstance(template, Template) else compile_template(template)
        pieces: list[str] = []
        for literal, field, spec in compiled.parts:
            pieces.append(literal)
            if field is None:
                continue
            if field == "rel":
                # rel keeps its folders: each component is sanitised separately, so a
                # private marker survives joining with the rest of the template
                pieces.append("\x00".join(sanitize_component(p) for p in rel.split("/") if p))
            elif field == "stem":
                pieces.append(sanitize_component(stem))
            elif field == "frame":
                pieces.append(format((frame or 0) + 1, spec + "d") if spec else frame_text or "1")
            else:
                pieces.append(sanitize_component(_pad(_field_value(fields, field), spec)))
        # "/" in the literal text makes folders; "\x00" marks {rel}'s own folders (no value
        # can contain "\x00": sanitize_component replaced it)
        joined = "".join(pieces)
        components = [
            sanitize_component(c) for c in re.split(r"[/\x00]", joined.replace("\\", "/")) if c
        ]
        append_frame = multi and not compiled.has_frame
    if not components:
        components = ["_"]
    last = components[-1]
    if last.lower().endswith(ext.lower()) and len(last) > len(ext):
        last = last[: -len(ext)]  # '{SOPInstanceUID}.png': the extension is added once, after the frame
    if append_frame:
        last = f"{last}_f{frame_text}"
    components[-1] = last + ext
    return "/".join(components)


# --------------------------------------------------------------------------- the root check


# --------------------------------------------------------------------------- the registry


def _name_key(name: str, digest_size: int) -> bytes:
    folded = unicodedata.normalize("NFC", name).casefold()
    return hashlib.blake2b(folded.encode("utf-8", "surrogatepass"), digest_size=digest_size).digest()


class NameRegistry:
    """The output names handed out in one run; a second claim of a name is a conflict.

    Names compare case-insensitively and Unicode-normalised (NFC + casefold), as on the
    case-insensitive file systems of macOS and Windows. Only a 16-byte blake2b digest per
    name is kept, with the digest of its owner (about 150 bytes per name in a dict, so ~1.5 GB
    at 10^7 names; a digest collision, odds ~1e-25, would be a reported false conflict, never an
    overwrite). An owner (``owner=``, the input's :func:`owner_key`) may claim its own names
    again (a resumed input); a claim without an owner conflicts with any earlier claim. The
    registry lives in the one process that owns the run; ``--resume`` seeds it from the manifest.
    """

    def __init__(self, *, digest_size: int = 16) -> None:
        self._digest_size = digest_size
        self._keys: dict[bytes, bytes | None] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: str) -> bool:
        return _name_key(name, self._digest_size) in self._keys

    def owner(self, name: str) -> bytes | None:
        """The owner digest of ``name`` (None: unclaimed, or claimed without an owner)."""
        return self._keys.get(_name_key(name, self._digest_size))

    def claim(self, names: str | Iterable[str], *, path: str | None = None, owner: bytes | None = None) -> None:
        """Claim all ``names`` (one input's outputs) or none of them.

        Raises :class:`NameConflictError` naming the first conflicting output, if one of
        them was claimed before in this run by another owner (or appears twice in ``names``).
        """
        if isinstance(names, str):
            names = [names]
        keys: list[bytes] = []
        fresh: set[bytes] = set()
        for name in names:
            key = _name_key(name, self._digest_size)
            taken = key in self._keys and (owner is None or self._keys[key] != owner)
            if taken or key in fresh:
                raise NameConflictError(
                    f"output name {name!r} is already used by another input in this run "
                    "(names compare case-insensitively); use a --name template that tells them apart",
                    path=path,
                )
            fresh.add(key)
            keys.append(key)
        for key in keys:
            self._keys[key] = owner

    def release(self, names: str | Iterable[str]) -> None:
        """Forget names (e.g. an input that failed before writing, to be retried)."""
        if isinstance(names, str):
            names = [names]
        for name in names:
            self._keys.pop(_name_key(name, self._digest_size), None)


def owner_key(path: str) -> bytes:
    """The digest that identifies an input as the owner of its output names (its path)."""
    return hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=16).digest()
