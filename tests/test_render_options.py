"""The grayscale pipeline on small generated objects, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import fastdcm
from fastdcm.options import RenderOptions

from .naive import reference


def make(tmp_path, stored: np.ndarray, name="x.dcm", *, bits_stored=None, frames=1, **attrs) -> str:
    """Write a MONOCHROME2 object holding ``stored`` (rows, cols) or (frames, rows, cols)."""
    arr = np.asarray(stored)
    signed = arr.dtype.kind == "i"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    path = str(tmp_path / name)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.arange(-1024, 3072, 16, dtype=np.int16).reshape(16, 16)


def test_linear_window_exact_values(tmp_path):
    path = make(tmp_path, np.array([[-161, -160, 40, 239, 240]], np.int16), WindowCenter=40, WindowWidth=400)
    got = fastdcm.render(path)
    # PS3.3 C.11.2.1.2.1: x <= c-0.5-(w-1)/2 -> 0; x > c-0.5+(w-1)/2 -> 255
    expected_mid = np.floor(((40 - 39.5) / 399 + 0.5) * 255 + 0.5)
    assert got.tolist() == [[0, 0, expected_mid, 255, 255]]


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(tmp_path, function):
    path = make(tmp_path, RAMP, RescaleSlope=1, RescaleIntercept=0, WindowCenter=300, WindowWidth=1200,
                VOILUTFunction=function)
    got = fastdcm.render(path)
    diff = np.abs(got.astype(int) - reference(path).astype(int))
    assert diff.max() <= 1
    assert len(np.unique(got)) > 50


def test_explicit_window_wins_and_is_recorded(tmp_path):
    path = make(tmp_path, RAMP, WindowCenter=300, WindowWidth=1200)
    a = fastdcm.render(path, window=(0, 100))
    assert a.min() == 0 and a.max() == 255 and (a == 255).sum() > (fastdcm.render(path) == 255).sum()
    assert fastdcm.inspect(path, window=(0, 100)).voi.startswith("explicit LINEAR c=0 w=100")
    assert fastdcm.inspect(path).voi.startswith("window[0] LINEAR c=300 w=1200")
    # an invalid explicit window is skipped: the file's window is used
    np.testing.assert_array_equal(fastdcm.render(path, window=(0, 0.5)), fastdcm.render(path))


def test_second_window_by_index(tmp_path):
    path = make(tmp_path, RAMP, WindowCenter=[300, 40], WindowWidth=[1200, 80])
    assert fastdcm.inspect(path, voi_index=1).voi.startswith("window[1] LINEAR c=40 w=80")


def test_invalid_file_window_falls_back_to_minmax(tmp_path):
    path = make(tmp_path, RAMP, WindowCenter=40, WindowWidth=0)
    info = fastdcm.inspect(path)
    assert info.voi.startswith("minmax")
    got = fastdcm.render(path)
    assert got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("option", [{}, {"window": (4242, 0)}], ids=["file", "explicit"])
def test_an_invalid_window_is_warned_once_a_render(tmp_path, caplog, option):
    """The plan is made twice for a min-max frame (before and after its values are known): the
    window it skips is said once, naming the file. Slices that share a fast-parsed header's values
    (a series) share its plan, so a second slice says nothing new (hence values no other test uses)."""
    attrs = {"WindowCenter": 4242, "WindowWidth": 0} if not option else {}  # (no window of its own: min-max)
    paths = [make(tmp_path, RAMP, "a.dcm", **attrs), make(tmp_path, RAMP + 16, "b.dcm", **attrs)]
    with caplog.at_level("WARNING", logger="fastdcm.plan"):
        fastdcm.render(paths[0], **option)
    warned = [r for r in caplog.records if "not valid" in r.getMessage()]
    assert len(warned) == 1 and paths[0] in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastdcm.plan"):
        fastdcm.render(paths[1], **option)
    assert len([r for r in caplog.records if "not valid" in r.getMessage()]) <= 1


def test_minmax_and_none(tmp_path):
    stored = np.array([[100, 200], [300, 400]], np.uint16)
    path = make(tmp_path, stored, bits_stored=12)
    assert fastdcm.render(path).tolist() == [[0, 85], [170, 255]]
    # none: the whole 12-bit range maps to 0..255
    none = fastdcm.render(path, voi="none")
    assert none.tolist() == np.floor(stored / 4095 * 255 + 0.5).astype(int).tolist()
    constant = make(tmp_path, np.full((4, 4), 7, np.uint16), "c.dcm")
    assert fastdcm.render(constant).max() == 0


def test_junk_above_bits_stored_is_masked(tmp_path):
    clean = np.array([[0, 1000, 2000, 4095]], np.uint16)
    dirty = clean | np.uint16(0xF000)
    a = fastdcm.render(make(tmp_path, clean, "a.dcm", bits_stored=12, WindowCenter=2048, WindowWidth=4096))
    b = fastdcm.render(make(tmp_path, dirty, "b.dcm", bits_stored=12, WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_array_equal(a, b)


def test_signed_12_bit_sign_extension(tmp_path):
    values = np.array([[-2048, -1, 0, 2047]], np.int16)
    stored = (values.view(np.uint16) & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, high bits clear
    ds_path = make(tmp_path, stored.view(np.int16), bits_stored=12)
    got = fastdcm.render(ds_path)
    assert got.tolist() == [[0, 128, 128, 255]] or got.tolist() == [[0, 127, 128, 255]]
    assert got[0, 0] == 0 and got[0, 3] == 255


def test_monochrome1_and_inverse_invert_once(tmp_path):
    m2 = fastdcm.render(make(tmp_path, RAMP, "m2.dcm"))
    m1 = fastdcm.render(make(tmp_path, RAMP, "m1.dcm", PhotometricInterpretation="MONOCHROME1"))
    inv = fastdcm.render(make(tmp_path, RAMP, "inv.dcm", PresentationLUTShape="INVERSE"))
    both = fastdcm.render(
        make(tmp_path, RAMP, "both.dcm", PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE")
    )
    np.testing.assert_array_equal(m1, 255 - m2)
    np.testing.assert_array_equal(inv, 255 - m2)
    np.testing.assert_array_equal(both, 255 - m2)
    np.testing.assert_array_equal(fastdcm.render(make(tmp_path, RAMP, "m2.dcm"), invert=True), 255 - m2)


def test_depth_16(tmp_path):
    path = make(tmp_path, RAMP, WindowCenter=300, WindowWidth=1200)
    a8, a16 = fastdcm.render(path), fastdcm.render(path, depth=16)
    assert a16.dtype == np.uint16 and a16.max() == 65535 and a16.min() == 0
    assert np.abs(a16 / 257.0 - a8).max() <= 1
    with pytest.raises(ValueError):
        fastdcm.render(path, depth=12)


def test_modality_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "HU"
    item.add_new(0x00283006, "US", [int(v) for v in (np.arange(256) ** 2 // 4)])  # LUT Data
    path = make(tmp_path, np.arange(256, dtype=np.uint16).reshape(16, 16) + 0, bits_stored=10,
                ModalityLUTSequence=Sequence([item]))
    got = fastdcm.render(path)
    ref = reference(path)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    # values above the LUT's last entry map to its last entry
    assert fastdcm.inspect(path).voi.startswith("minmax")


def test_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [512, -200, 12]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 4095, 512).astype(int)[::-1]])  # inverting
    path = make(tmp_path, RAMP, VOILUTSequence=Sequence([item]), WindowCenter=40, WindowWidth=400)
    got = fastdcm.render(path)
    assert fastdcm.inspect(path).voi == "voi_lut[0]"
    assert np.abs(got.astype(int) - reference(path).astype(int)).max() <= 1
    assert got[0, 0] == 255 and got[-1, -1] == 0  # below the first entry: first; above: last
    assert fastdcm.inspect(path, voi="window").voi.startswith("window[0]")


def test_per_frame_functional_groups(tmp_path):
    frames = np.stack([RAMP, RAMP // 2, RAMP // 4]).astype(np.int16)

    def group(slope, intercept, center, width):
        g = Dataset()
        pvt, voi = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        voi.WindowCenter, voi.WindowWidth = center, width
        g.PixelValueTransformationSequence = Sequence([pvt])
        g.FrameVOILUTSequence = Sequence([voi])
        return g

    shared = group(1, 0, 0, 2000)
    per_frame = [group(2, -10, 100, 500), Dataset(), group(1, 5, 40, 80)]
    path = make(
        tmp_path, frames, frames=3, WindowCenter=9999, WindowWidth=1,
        SharedFunctionalGroupsSequence=Sequence([shared]), PerFrameFunctionalGroupsSequence=Sequence(per_frame),
    )
    image = fastdcm.open_image(path)
    for i in range(3):
        got = image.render_frame(i)
        assert np.abs(got.array.astype(int) - reference(path, i).astype(int)).max() <= 1, i
    assert image.render_frame(0).voi.startswith("window[0] LINEAR c=100 w=500")
    assert image.render_frame(1).voi.startswith("window[0] LINEAR c=0 w=2000")
    rendered = list(fastdcm.iter_frames(path))
    assert len(rendered) == 3 and not np.array_equal(rendered[0], rendered[2])


def test_float_pixel_data(tmp_path):
    ds_path = make(tmp_path, RAMP)
    ds = pydicom.dcmread(ds_path)
    values = (RAMP.astype(np.float32) / 10.0)
    values[0, 0] = np.nan
    del ds.PixelData
    del ds.PixelRepresentation, ds.BitsStored, ds.HighBit
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    path = str(tmp_path / "float.dcm")
    ds.save_as(path)
    got = fastdcm.render(path)
    assert got[0, 0] == 0 and got.max() == 255 and got[0, 1] == 0
    windowed = fastdcm.render(path, window=(0, 100))
    assert windowed[-1, -1] == 255


def test_options_object_and_unknown_option(tmp_path):
    path = make(tmp_path, RAMP)
    opts = RenderOptions(window=(0, 100), invert=True)
    np.testing.assert_array_equal(fastdcm.render(path, options=opts), fastdcm.render(path, window=(0, 100), invert=True))
    with pytest.raises(TypeError):
        fastdcm.render(path, windw=(1, 2))
    assert RenderOptions(voi="minmax", window="40,400").window == (40.0, 400.0)


def test_keyword_options_are_made_once_and_mean_the_same(tmp_path):
    import importlib

    module = importlib.import_module("fastdcm.render")  # (fastdcm.render is the function)
    path = make(tmp_path, np.arange(64, dtype=np.uint16).reshape(8, 8) * 16)
    first = fastdcm.render(path, window=(300, 600), depth=16)
    made = dict(module._KWARGS_OPTIONS)
    again = fastdcm.render(path, window=(300, 600), depth=16)
    assert np.array_equal(first, again) and module._KWARGS_OPTIONS == made  # the same options, not a new entry
    assert np.array_equal(again, fastdcm.render(path, options=RenderOptions(window=(300, 600), depth=16)))
    # a window given as floats, or in another order, means the same picture
    assert np.array_equal(again, fastdcm.render(path, depth=16, window=(300.0, 600.0)))
    # other values are other entries: invert=True is not the cached invert=False
    assert not np.array_equal(fastdcm.render(path, invert=True), fastdcm.render(path, invert=False))
    # unhashable values (a dict) are checked every call, and bad options raise every time
    assert np.array_equal(fastdcm.render(path, decoder={"jpeg": "imagecodecs"}), fastdcm.render(path))
    for _ in range(2):
        with pytest.raises(fastdcm.InvalidOptionError):
            fastdcm.render(path, size=0)
        with pytest.raises(TypeError, match="unknown render option"):
            fastdcm.render(path, bogus=1)
