"""PALETTE COLOR: the palette over every stored value, read from the LUT data itself.

The expansion (``plan.palette_lut``) is held to pydicom's ``apply_color_lut`` on every palette
the two read alike, and to PS3.3 C.7.6.3.1.5 where they do not (a stored value past the last
entry maps to the last entry: pydicom's index wraps at the LUT's 8 or 16 bits there).
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.pixels.processing import apply_color_lut

from fastdcm import fastheader, header, plan
from fastdcm.fastheader import Attributes
from fastdcm.render import Image

PALETTE_FILE = get_testdata_file("OBXXXX1A.dcm")  # 8-bit stored values, 256 entries of 16 bits, explicit VR LE


def _spec(bits_stored: int, signed: bool) -> header.PixelSpec:
    return header.PixelSpec(
        transfer_syntax_uid="1.2.840.10008.1.2.1", rows=1, columns=1, samples_per_pixel=1, bits_allocated=16,
        bits_stored=bits_stored, high_bit=bits_stored - 1, pixel_representation=int(signed),
        photometric_interpretation="PALETTE COLOR", planar_configuration=0, number_of_frames=1,
        pixel_keyword="PixelData", is_encapsulated=False,
    )


def _palette(entries: int, first: int, nominal: int, data_bits: int, seed: int) -> tuple[Attributes, pydicom.Dataset]:
    """The same palette as the fast header's Attributes and as a pydicom Dataset."""
    rng = np.random.default_rng(seed)
    n = entries or 65536
    dtype = np.uint8 if data_bits == 8 else np.dtype("<u2")
    attrs, ds = Attributes(), pydicom.Dataset()
    for i, c in enumerate(("Red", "Green", "Blue")):
        data = rng.integers(0, 1 << min(nominal, data_bits), n).astype(dtype).tobytes()
        attrs[f"{c}PaletteColorLookupTableDescriptor"] = (entries, first, nominal)
        attrs[f"{c}PaletteColorLookupTableData"] = data
        ds.add_new(0x00281101 + i, "SS" if first < 0 else "US", [entries, first, nominal])
        ds.add_new(0x00281201 + i, "OW", data)
    return attrs, ds


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 16), st.booleans(), st.sampled_from([0, 1, 2, 255, 256, 300, 4096]), st.integers(-40, 40),
    st.sampled_from([(8, 8), (8, 16), (16, 16)]), st.integers(0, 2**32 - 1),
)
def test_the_expansion_is_pydicoms_where_its_index_fits_the_lut(bits, signed, entries, first, depths, seed):
    nominal, data_bits = depths
    spec = _spec(max(bits, 2) if signed else bits, signed)
    attrs, ds = _palette(entries, first, nominal, data_bits, seed)
    values = plan._stored_values(spec)
    ours = plan.palette_lut(attrs, spec)
    assert ours is not None and ours.shape == (len(values), 3)
    # where pydicom's index (stored - first, held in the LUT's own 8 or 16 bits) does not wrap
    fits = (values < first) | (values.astype(np.int64) - first < (1 << data_bits))
    want = apply_color_lut(values, ds)
    assert ours.dtype == want.dtype
    np.testing.assert_array_equal(ours[fits], want[fits])


def test_a_stored_value_past_the_last_entry_maps_to_the_last_entry():
    """16-bit stored values through a palette of 256 8-bit entries: 300 is past the last entry
    (PS3.3 C.7.6.3.1.5: "also mapped to the last entry"); pydicom's index wraps to 44 there."""
    attrs, ds = _palette(256, 0, 8, 8, seed=1)
    spec = _spec(16, False)
    ours = plan.palette_lut(attrs, spec)
    last = [np.frombuffer(attrs[f"{c}PaletteColorLookupTableData"], np.uint8)[255] for c in ("Red", "Green", "Blue")]
    np.testing.assert_array_equal(ours[300], last)
    np.testing.assert_array_equal(ours[65535], last)
    below = [np.frombuffer(attrs[f"{c}PaletteColorLookupTableData"], np.uint8)[0] for c in ("Red", "Green", "Blue")]
    attrs, _ = _palette(256, 10, 8, 8, seed=1)
    np.testing.assert_array_equal(plan.palette_lut(attrs, spec)[3], below)  # below the first mapped: the first entry


@pytest.mark.parametrize("what", ["segmented", "odd data length", "12-bit entries", "green missing"])
def test_palettes_it_does_not_read_are_left_to_pydicom(what):
    attrs, _ = _palette(256, 0, 16, 16, seed=2)
    if what == "segmented":
        for c in ("Red", "Green", "Blue"):
            attrs[f"Segmented{c}PaletteColorLookupTableData"] = attrs.pop(f"{c}PaletteColorLookupTableData")
    elif what == "odd data length":
        attrs["RedPaletteColorLookupTableData"] += b"\0\0\0"
    elif what == "12-bit entries":
        for c in ("Red", "Green", "Blue"):
            attrs[f"{c}PaletteColorLookupTableDescriptor"] = (256, 0, 12)
    else:
        del attrs["GreenPaletteColorLookupTableData"]
    assert plan.palette_lut(attrs, _spec(8, False)) is None


def _wide_stored_values() -> bytes:
    """OBXXXX1A's palette as 256 8-bit entries over 16-bit stored values, some past the last entry."""
    ds = pydicom.dcmread(PALETTE_FILE)
    for c in ("Red", "Green", "Blue"):
        ds[f"{c}PaletteColorLookupTableDescriptor"].value = [256, 0, 8]
        data = np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2")
        ds[f"{c}PaletteColorLookupTableData"].value = (data >> 8).astype(np.uint8).tobytes()
    ds.BitsStored, ds.HighBit = 16, 15
    ds.BitsAllocated = 16
    pixels = np.zeros((ds.Rows, ds.Columns), np.uint16)
    pixels[0, :4] = (0, 255, 256, 300)
    pixels[1, :] = np.arange(ds.Columns) % 256
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_both_header_paths_give_the_standards_colours(monkeypatch):
    data = _wide_stored_values()
    fast = header.read_header(data)
    with monkeypatch.context() as m:
        m.setattr(fastheader, "parse", lambda buffer, total=None: None)
        slow = header.read_header(data)
    assert fast.attrs is not fast.dataset and slow.attrs is slow.dataset
    a, b = Image(fast).render_frame(0).array, Image(slow).render_frame(0).array
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0, 2], a[0, 1])  # 256 and 300: the last entry, as 255 is
    np.testing.assert_array_equal(a[0, 3], a[0, 1])


def test_a_palette_image_renders_without_importing_pydicom():
    """pydicom's import (~0.15-0.2 s) was paid by every worker on its first palette image."""
    code = (
        "import sys, fastdcm\n"
        f"rgb = fastdcm.render({PALETTE_FILE!r})\n"
        "assert rgb.ndim == 3, rgb.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydicom'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
