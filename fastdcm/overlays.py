"""Overlay planes burned into a rendered frame (``render(..., overlays=True)``, ``--overlays``).

RENDERING.md 4: overlays are not burned in unless asked for. When asked, every Overlay Plane of
the image (groups 6000-601E, PS3.3 C.9.2, graphics and ROI alike) that covers the frame is drawn
in white, the output's largest value (255, 65535 at depth 16, white in
colour and in every channel of a window stack), over the rendered frame, after the VOI and the
MONOCHROME1 inversion, as a viewer shows it. An overlay pixel at (r, c) lands on the image pixel
(r + origin row - 1, c + origin column - 1) (Overlay Origin is 1-based); what falls outside the
image is cut off. Of a multi-frame overlay (C.9.3), overlay frame k (from 0) covers the image's
frame Image Frame Origin + k (from 1; Image Frame Origin 1 when absent); a single-frame overlay
covers the image's first frame (Image Frame Origin) only, as dcmtk draws it.

The bits are unpacked by pydicom (``pydicom.overlays.get_overlay_array``). An overlay embedded in
the pixel data (retired in 2004, found in older archives: no Overlay Data element, Overlay Bits
Allocated equal to Bits Allocated) is bit Overlay Bit Position of each stored value of the frame
itself (every frame its own), placed at its origin as any plane, as dcmtk reads it; its bit must
lie above Bits Stored (below it is the image: not drawn).
Resized outputs are burned at the frame's own size and then resized; with ``reduce=k`` (the frame
decoded or averaged 2^k times smaller) each output pixel becomes white in the share of its
2^k x 2^k block that the overlay covers (the block mean of the burned-in frame where the image
under the overlay is even).

The header's bytes are searched for an overlay plane's tag first: an image without one (almost
all) costs a byte search, not pydicom's parse of its header.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import InvalidPixelModuleError

__all__ = ["may_have_overlays", "overlay_mask", "burn", "describe_overlays"]

#: An Overlay Rows element's tag, little endian: group 6000-601E (even), element 0010 (every
#: plane has one, embedded ones too). A match in the header's bytes may be chance (then pydicom's
#: dataset says there is none).
_OVERLAY_ROWS = re.compile(rb"[\x00\x02\x04\x06\x08\x0a\x0c\x0e\x10\x12\x14\x16\x18\x1a\x1c\x1e]\x60\x10\x00")
_GROUPS = range(0x6000, 0x6020, 2)


def may_have_overlays(header_bytes: bytes | None, end: int = -1) -> bool:
    """False when ``header_bytes`` (the file's bytes, or its first bytes) hold no overlay plane's tag
    before ``end`` (the pixel data's offset; -1: anywhere); True when they may (or are not known:
    a pydicom Dataset source)."""
    if header_bytes is None:
        return True
    return _OVERLAY_ROWS.search(header_bytes, 0, end if end >= 0 else len(header_bytes)) is not None


def overlay_mask(ds: Any, frame: int, rows: int, columns: int, stored: Any = None,
                 bits_stored: int = 0) -> np.ndarray | None:
    """The union of the overlay planes of ``ds`` that cover ``frame`` (0-based) as a (rows, columns)
    bool array in image coordinates, or None when none covers it. ``stored``: a callable giving the
    frame's stored values at full size, unmasked (for embedded planes; called only for them), and
    ``bits_stored`` the image's Bits Stored. InvalidPixelModuleError for an overlay plane that
    cannot be read (its data shorter than its rows and columns say, a non-numeric attribute)."""
    from pydicom.overlays import get_overlay_array

    mask: np.ndarray | None = None
    values = None  # the frame's stored values, fetched once for the embedded planes
    for group, embedded in _planes(ds, bits_stored):
        try:
            top, left = _origin(ds, group)
            if embedded:  # the frame's own bit (each frame carries its plane)
                values = stored() if values is None and stored is not None else values
                if values is None or values.ndim != 2 or values.dtype.kind not in "iu":
                    continue
                position = _int(ds, group, 0x0102, 0)
                bits = (values.view(f"u{values.dtype.itemsize}") >> position) & 1
                bits = bits[: _int(ds, group, 0x0010, 0), : _int(ds, group, 0x0011, 0)]
            else:
                k = frame + 1 - _int(ds, group, 0x0051, 1)  # the overlay frame covering ``frame``
                if not 0 <= k < _int(ds, group, 0x0015, 1):
                    continue
                bits = get_overlay_array(ds, group)
                if bits.ndim == 3:
                    if k >= bits.shape[0]:
                        continue
                    bits = bits[k]
        except (AttributeError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise InvalidPixelModuleError(f"overlay plane {group:04X}: {exc}") from None
        # the part of the plane inside the image
        r0, c0 = max(0, top), max(0, left)
        r1, c1 = min(rows, top + bits.shape[0]), min(columns, left + bits.shape[1])
        if r0 >= r1 or c0 >= c1:
            continue
        if mask is None:
            mask = np.zeros((rows, columns), bool)
        mask[r0:r1, c0:c1] |= bits[r0 - top : r1 - top, c0 - left : c1 - left].astype(bool)
    return mask


def _planes(ds: Any, bits_stored: int) -> Any:
    """(group, embedded) of each overlay plane of ``ds``: with Overlay Data, or embedded in the
    pixel data (:func:`_is_embedded`)."""
    for group in _GROUPS:
        embedded = (group, 0x3000) not in ds
        if not embedded or _is_embedded(ds, group, bits_stored):
            yield group, embedded


def _is_embedded(ds: Any, group: int, bits_stored: int) -> bool:
    """Whether ``group`` is a plane embedded in the pixel data (retired): no Overlay Data, Overlay
    Bits Allocated above 1 and its Overlay Bit Position at or above the image's Bits Stored."""
    try:
        return (
            (group, 0x0010) in ds
            and _int(ds, group, 0x0100, 1) > 1
            and bits_stored <= _int(ds, group, 0x0102, -1) < _int(ds, group, 0x0100, 1)
        )
    except (ValueError, TypeError):
        return False


def _origin(ds: Any, group: int) -> tuple[int, int]:
    """Overlay Origin as 0-based (row, column) of the image (1, 1 when absent)."""
    origin = ds[(group, 0x0050)].value if (group, 0x0050) in ds else [1, 1]
    return int(origin[0]) - 1, int(origin[1]) - 1


def describe_overlays(ds: Any, bits_stored: int = 0) -> list[str]:
    """One line per overlay plane (``fastdcm info``): its group, type, size, and where it is (origin
    and frames, or its bit of the pixel data), or why it cannot be read."""
    lines = []
    for group, embedded in _planes(ds, bits_stored):
        try:
            kind = {"G": "graphics", "R": "ROI"}.get(str(ds[(group, 0x0040)].value).strip(), "type ?") \
                if (group, 0x0040) in ds else "type ?"
            rows, cols = _int(ds, group, 0x0010, 0), _int(ds, group, 0x0011, 0)
            if embedded:
                where = f"in bit {_int(ds, group, 0x0102, 0)} of the pixel data (retired), every frame"
            else:
                top, left = _origin(ds, group)
                count, first = _int(ds, group, 0x0015, 1), _int(ds, group, 0x0051, 1)
                frames = f"frame {first}" if count == 1 else f"frames {first}-{first + count - 1}"
                where = f"at row {top + 1}, column {left + 1}, {frames}"
            lines.append(f"{group:04X}: {kind}, {cols} x {rows} {where}")
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            lines.append(f"{group:04X}: cannot be read ({exc})")
    return lines


def _int(ds: Any, group: int, element: int, default: int) -> int:
    """An overlay attribute's (first) value as an integer; ``default`` when absent or empty."""
    from pydicom.multival import MultiValue

    if (group, element) not in ds:
        return default
    value = ds[(group, element)].value
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return default
    return int(value)


def burn(array: np.ndarray, mask: np.ndarray, ymax: int, reduce: int = 0) -> np.ndarray:
    """``array`` (rows, columns[, channels]; uint8 or uint16) with the overlay ``mask`` (the frame's
    full size) drawn in ``ymax``; with ``reduce`` > 0 the mask is averaged over 2^reduce blocks and
    each pixel moved toward ``ymax`` by the share its block covers (rounded half up)."""
    out = np.array(array, copy=True)
    if reduce:
        step = 1 << reduce
        rows, cols = out.shape[:2]
        padded = np.zeros((rows * step, cols * step), np.float64)
        padded[: mask.shape[0], : mask.shape[1]] = mask[: rows * step, : cols * step]
        share = padded.reshape(rows, step, cols, step).mean(axis=(1, 3))
        if out.ndim == 3:
            share = share[:, :, None]
        blended = np.floor(out * (1.0 - share) + ymax * share + 0.5)
        return np.clip(blended, 0, ymax).astype(out.dtype)
    out[mask] = ymax  # (a colour or stack pixel: every channel)
    return out
