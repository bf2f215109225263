"""fastdcm's 8-bit images held to an independent renderer: dcmtk's ``dcmj2pnm`` (OFFIS, C++), on
every image of pydicom's test files and pydicom-data that dcmtk renders, every frame (up to
:data:`FRAMES`), grey and colour (RENDERING.md: within 1, or a documented difference).

dcmj2pnm is told the VOI step fastdcm used (its result records it): ``+Wi N`` for Window Center /
Width N, ``+Wl N`` for VOI LUT N, ``+Wm`` for min-max; colour has none. JPEG-LS files are decoded by
dcmtk's ``dcmdjpls`` first (dcmj2pnm has no JPEG-LS codec of its own). dcmtk has no JPEG 2000 codec:
those files are held to their uncompressed originals in test_decoders.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest

import fastdcm

from .test_corpus_render import FILES, _classify

DCMJ2PNM = shutil.which("dcmj2pnm")
DCMDJPLS = shutil.which("dcmdjpls")
pytestmark = pytest.mark.skipif(
    DCMJ2PNM is None or DCMDJPLS is None, reason="dcmtk is not on PATH (apt-get install dcmtk)"
)

#: Frames compared per file (the first ones).
FRAMES = 8
J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
       "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")

#: Images dcmtk does not render (what dcmj2pnm 3.6.7 says), so there is nothing to compare.
DCMTK_CANNOT = {
    "SC_rgb_32bit.dcm": "Unsupported element value (32-bit RGB samples)",
    "SC_rgb_32bit_2frame.dcm": "Unsupported element value (32-bit RGB samples)",
    "SC_rgb_expb_32bit.dcm": "Unsupported element value (32-bit RGB samples)",
    "SC_rgb_expb_32bit_2frame.dcm": "Unsupported element value (32-bit RGB samples)",
    "gdcm-US-ALOKA-16.dcm": "Invalid element value (a 16-bit palette colour image)",
    "gdcm-US-ALOKA-16_big.dcm": "Invalid element value (a 16-bit palette colour image)",
    "SC_rgb_jpeg.dcm": "premature end of the JPEG stream",
    "eCT_Supplemental.dcm": "no window: dcmj2pnm does not read the per-frame VOI of an enhanced CT",
}

#: Where fastdcm and dcmtk differ by design, and fastdcm follows RENDERING.md (each checked here
#: against the standard's formula, or against the same data in another encoding).
DIFFERENT = {
    # dcmtk's min-max window spans all frames of the object; RENDERING 2.2.4 maps each frame's own
    # smallest and largest value (test_corpus_render holds every frame to that)
    "emri_small.dcm": "min-max over all frames",
    "emri_small_RLE.dcm": "min-max over all frames",
    "emri_small_big_endian.dcm": "min-max over all frames",
    "emri_small_jpeg_ls_lossless.dcm": "min-max over all frames",
    "rtdose.dcm": "min-max over all frames",
    "rtdose_rle.dcm": "min-max over all frames",
    # dcmtk's image of these big-endian 32-bit doses is not its image of the same doses in
    # little endian (rtdose.dcm): test_dcmtk_misreads_big_endian_32_bit_doses
    "rtdose_expb.dcm": "dcmtk misreads 32-bit big-endian values",
    "rtdose_expb_1frame.dcm": "dcmtk misreads 32-bit big-endian values",
    # 16-bit palette entries that all lie below 256 (the little-endian original's bytes left as they
    # were): dcmtk takes such a LUT as 8-bit; RENDERING 3 scales 16-bit entries to 8, as pydicom does
    "OBXXXX1A_expb.dcm": "16-bit palette entries below 256",
    "OBXXXX1A_expb_2frame.dcm": "16-bit palette entries below 256",
}

#: dcmtk's YBR_FULL to RGB is in integers (off by up to 2); fastdcm's is C.7.6.3.1.2's equations,
#: rounded (test_ybr_full_is_the_standards_equations).
YBR_TOLERANCE = 2


def _candidates() -> list[str]:
    out = []
    for path in FILES:
        name = os.path.basename(path)
        if name in DCMTK_CANNOT or name in DIFFERENT or _classify(path) != "image":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        if syntax not in J2K:
            out.append(path)
    return out


CANDIDATES = _candidates()
SPECS = {path: fastdcm.open_image(path).spec for path in CANDIDATES}  # (each file opened once to collect)


def _read_pnm(path: str) -> np.ndarray:
    data = open(path, "rb").read()
    m = re.match(rb"P([56])\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    assert m and int(m.group(4)) == 255, data[:32]
    width, height = int(m.group(2)), int(m.group(3))
    pixels = np.frombuffer(data[m.end():], np.uint8)
    return pixels.reshape(height, width, 3) if m.group(1) == b"6" else pixels.reshape(height, width)


def dcmtk_source(image, path: str, tmp_path) -> str:
    """The file dcmj2pnm reads: ``path``, or for JPEG-LS its copy decoded by ``dcmdjpls``."""
    if image.spec.transfer_syntax_uid not in JPEG_LS:
        return path
    source = str(tmp_path / "decoded.dcm")
    done = subprocess.run([DCMDJPLS, path, source], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return source


def dcmj2pnm(source: str, options: list[str], out) -> None:
    """One dcmj2pnm run (overlays never drawn), which must succeed."""
    done = subprocess.run([DCMJ2PNM, *options, "--no-overlays", source, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def dcmtk_frames(path: str, options: list[str], frames: int, tmp_path) -> list[np.ndarray]:
    """dcmj2pnm's 8-bit images of the first ``frames`` frames."""
    dcmj2pnm(path, [*options, "+Fr", "1", str(frames)], tmp_path / "dcmtk")
    written = sorted(tmp_path.glob("dcmtk.*"), key=lambda p: int(p.name.split(".")[1]) if p.name.count(".") > 1 else 0)
    assert len(written) == frames, [p.name for p in written]
    return [_read_pnm(str(p)) for p in written]


def voi_options(voi: str | None) -> list[str]:
    """dcmj2pnm's options for the VOI step fastdcm's result names."""
    if voi is None:  # colour
        return []
    found = re.match(r"window\[(\d+)\]", voi)
    if found:
        return ["+Wi", str(int(found.group(1)) + 1)]
    found = re.match(r"(?:voi_)?lut\[(\d+)\]", voi)
    if found:
        return ["+Wl", str(int(found.group(1)) + 1)]
    if voi.startswith("minmax"):
        return ["+Wm"]
    raise AssertionError(f"a VOI step this test does not know: {voi!r}")


@pytest.mark.parametrize("path", CANDIDATES, ids=os.path.basename)
def test_within_1_of_dcmtk(path, tmp_path):
    image = fastdcm.open_image(path)
    frames = min(image.n_frames, FRAMES)
    rendered = [image.render_frame(i) for i in range(frames)]
    source = dcmtk_source(image, path, tmp_path)
    options = voi_options(rendered[0].voi if image.spec.is_grayscale else None)
    limit = YBR_TOLERANCE if image.spec.photometric_interpretation == "YBR_FULL" else 1
    for i, (ours, theirs) in enumerate(zip(rendered, dcmtk_frames(source, options, frames, tmp_path))):
        if options[:1] in (["+Wi"], ["+Wl"]):  # (dcmj2pnm applies the one it is told to every frame)
            assert ours.voi == rendered[0].voi, (i, ours.voi, rendered[0].voi)
        got = ours.array.astype(np.int16)
        assert got.shape == theirs.shape, (i, got.shape, theirs.shape)
        diff = np.abs(got - theirs)
        assert diff.max() <= limit, (
            f"frame {i}: off by {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}, "
            f"{(diff > limit).mean():.2%} of the pixels ({ours.voi}; dcmj2pnm {' '.join(options)})"
        )


def _rescale(path: str) -> tuple[float, float] | None:
    """The first frame's Rescale Slope and Intercept (top level, or shared / per-frame functional
    groups), None when a Modality LUT Sequence maps the values instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "ModalityLUTSequence" in ds:
        return None
    holder = ds
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        item = ds[groups][0] if groups in ds and len(ds[groups].value) else None
        if item is not None and "PixelValueTransformationSequence" in item:
            holder = item.PixelValueTransformationSequence[0]
            break
    return float(holder.get("RescaleSlope", 1) or 1), float(holder.get("RescaleIntercept", 0) or 0)


def _grey(paths: list[str], rounded: bool) -> list[str]:
    """The grey images among ``paths`` whose rescale is (``rounded``) or is not a pair of integers:
    dcmtk rounds the modality values of a non-integer rescale to integers before the window, where
    fastdcm windows them as they are (test_explicit_window_is_the_standards_formula)."""
    out = []
    for path in paths:
        if not SPECS[path].is_grayscale:
            continue
        rescale = _rescale(path)
        if rescale is not None and rounded == any(v != int(v) for v in rescale):
            out.append(path)
    return out


GREY = _grey(CANDIDATES, rounded=False)
NOT_INTEGER_RESCALE = _grey(CANDIDATES, rounded=True)


def explicit_window(image) -> tuple[float, float]:
    """A window inside the first frame's modality range, off its middle (not a round number)."""
    found = re.match(r"minmax (\S+)\.\.(\S+)", image.render_frame(0, fastdcm.RenderOptions(voi="minmax")).voi)
    low, high = float(found.group(1)), float(found.group(2))
    return round((low + high) / 2 + (high - low) / 7, 1), round((high - low) / 3 + 1.5, 1)


@pytest.mark.parametrize("path", GREY, ids=os.path.basename)
def test_explicit_window_within_1_of_dcmtk(path, tmp_path):
    """A window given by the caller (``window=(c, w)``, ``+Ww c w``): the LINEAR function over the
    modality values, then MONOCHROME1's inversion, with no window of the file's involved."""
    image = fastdcm.open_image(path)
    center, width = explicit_window(image)
    ours = image.render_frame(0, fastdcm.RenderOptions(window=(center, width))).array.astype(np.int16)
    source = dcmtk_source(image, path, tmp_path)
    theirs = dcmtk_frames(source, ["+Ww", str(center), str(width)], 1, tmp_path)[0]
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, f"off by {diff.max()}, {(diff > 1).mean():.2%} of the pixels (window {center}/{width})"


@pytest.mark.parametrize("path", NOT_INTEGER_RESCALE, ids=os.path.basename)
def test_explicit_window_is_the_standards_formula(path):
    """Images with a non-integer rescale, left out of the comparison with dcmtk (off by up to 3
    there): fastdcm is PS3.3 C.11.2.1.2.1's LINEAR function of the rescaled values, rounded half up,
    then inverted for MONOCHROME1, to the level."""
    ds = pydicom.dcmread(path)
    slope, intercept = _rescale(path)
    stored = ds.pixel_array
    x = (stored[0] if fastdcm.open_image(path).n_frames > 1 else stored).astype(np.float64) * slope + intercept
    center, width = explicit_window(fastdcm.open_image(path))
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, np.where(x > center - 0.5 + (width - 1) / 2, 255, y))
    want = np.floor(y + 0.5)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        want = 255 - want
    assert np.array_equal(fastdcm.render(path, window=(center, width)), want)


def test_most_images_are_compared():
    """The comparison covers the corpus (a change that made most files unrenderable for it, or the
    collection empty, fails here)."""
    assert len(CANDIDATES) >= 100 and len(GREY) >= 50 and len(NOT_INTEGER_RESCALE) >= 4, (
        len(CANDIDATES), len(GREY), len(NOT_INTEGER_RESCALE))
    kinds = {spec.photometric_interpretation for spec in SPECS.values()}
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL"} <= kinds, kinds


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def test_dcmtk_misreads_big_endian_32_bit_doses(tmp_path):
    """Why rtdose_expb is left out: the same doses in big and little endian are one image for
    fastdcm (and pydicom) and two different ones for dcmtk."""
    le, be = _testdata("rtdose.dcm"), _testdata("rtdose_expb.dcm")
    assert np.array_equal(fastdcm.render(le), fastdcm.render(be))
    theirs_le = dcmtk_frames(le, ["+Wm"], 1, tmp_path)[0]
    for p in tmp_path.glob("dcmtk*"):
        p.unlink()
    theirs_be = dcmtk_frames(be, ["+Wm"], 1, tmp_path)[0]
    assert np.abs(theirs_le.astype(int) - theirs_be).max() > 100


def test_min_max_is_each_frames_own():
    """Why the multi-frame min-max files are left out: dcmtk's +Wm spans the object; fastdcm maps
    each frame's own range (RENDERING 2.2.4), exactly."""
    path = _testdata("emri_small.dcm")
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert stored[0].max() != stored.max()  # (frame 0's range is not the object's)
    for i in (0, 5):
        frame = stored[i]
        lo, hi = frame.min(), frame.max()
        want = np.floor((frame - lo) / (hi - lo) * 255 + 0.5)
        assert np.array_equal(fastdcm.render(path, frame=i), want)


def test_sixteen_bit_palette_entries_are_scaled_as_written():
    """Why OBXXXX1A_expb is left out: its 16-bit LUT entries all lie below 256 (bytes of the
    little-endian original kept as they were); fastdcm scales 16-bit entries to 8 (RENDERING 3), as
    pydicom's apply_color_lut reads them; dcmtk would take the LUT as 8-bit."""
    from pydicom.pixels import apply_color_lut

    path = _testdata("OBXXXX1A_expb.dcm")
    ds = pydicom.dcmread(path)
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16
    lut_rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    assert lut_rgb.max() < 256
    want = np.floor(lut_rgb * 255 / 65535 + 0.5)
    assert np.array_equal(fastdcm.render(path), want)


def test_ybr_full_is_the_standards_equations():
    """Why YBR_FULL has a tolerance of 2 against dcmtk: fastdcm is PS3.3 C.7.6.3.1.2's equations,
    rounded half up, to the last level."""
    from pydicom.pixels import pixel_array

    path = _testdata("SC_ybr_full_uncompressed.dcm")
    ybr = pixel_array(path, as_rgb=False).astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.3441362862 * cb - 0.7141362862 * cr, y + 1.772 * cb], -1)
    want = np.clip(np.floor(rgb + 0.5), 0, 255)
    assert np.array_equal(fastdcm.render(path), want)


# --------------------------------------------------------------------------- the grey pipeline's steps


def _ct(**changes):
    """CT_small.dcm (signed 16-bit, rescale -1024) with ``changes``: attribute keywords to set
    (None deletes one), or "modality_lut" / "voi_lut" for a LUT sequence."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = copy.deepcopy(pydicom.dcmread(_testdata("CT_small.dcm")))
    for keyword, value in changes.items():
        if keyword == "modality_lut":  # a LUT over the stored range: 1.5 x + 100, in place of the rescale
            stored = ds.pixel_array
            first, entries = int(stored.min()), int(stored.max() - stored.min()) + 1
            item = Dataset()
            item.LUTDescriptor = [entries, first, 16]
            item.ModalityLUTType = "HU"
            item.add_new(0x00283006, "OW", (np.arange(entries) * 3 // 2 + 100).astype("<u2").tobytes())
            ds.ModalityLUTSequence = Sequence([item])
            del ds.RescaleSlope, ds.RescaleIntercept
        elif keyword == "voi_lut":  # 12-bit entries from modality value -1000, a ramp of slope 2
            item = Dataset()
            item.LUTDescriptor = [4096, -1000, 12]
            item.add_new(0x00283006, "OW", np.clip(np.arange(4096) * 2, 0, 4095).astype("<u2").tobytes())
            ds.VOILUTSequence = Sequence([item])
        elif value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


#: Each step of the grey pipeline on a CT slice (RENDERING 2), and the dcmj2pnm option for the VOI.
STEPS = {
    "linear": ({"WindowCenter": 40, "WindowWidth": 400}, ["+Wi", "1"]),
    "lung": ({"WindowCenter": -600, "WindowWidth": 1500}, ["+Wi", "1"]),
    "linear_width_1": ({"WindowCenter": 40.7, "WindowWidth": 1}, ["+Wi", "1"]),
    "sigmoid": ({"WindowCenter": 40, "WindowWidth": 400, "VOILUTFunction": "SIGMOID"}, ["+Wi", "1"]),
    "sigmoid_width_1": ({"WindowCenter": 40.7, "WindowWidth": 1, "VOILUTFunction": "SIGMOID"}, ["+Wi", "1"]),
    "linear_exact": ({"WindowCenter": 40, "WindowWidth": 400, "VOILUTFunction": "LINEAR_EXACT"}, ["+Wi", "1"]),
    "inverse": ({"WindowCenter": 40, "WindowWidth": 400, "PresentationLUTShape": "INVERSE"}, ["+Wi", "1"]),
    "monochrome1_window": ({"WindowCenter": 40, "WindowWidth": 400, "PhotometricInterpretation": "MONOCHROME1"}, ["+Wi", "1"]),
    "monochrome1_minmax": ({"PhotometricInterpretation": "MONOCHROME1"}, ["+Wm"]),
    "modality_lut_window": ({"modality_lut": True, "WindowCenter": 800, "WindowWidth": 900}, ["+Wi", "1"]),
    "modality_lut_minmax": ({"modality_lut": True}, ["+Wm"]),
    "voi_lut": ({"voi_lut": True, "WindowCenter": 40, "WindowWidth": 400}, ["+Wl", "1"]),
}


@pytest.mark.parametrize("step", STEPS)
def test_pipeline_step_within_1_of_dcmtk(step, tmp_path):
    changes, options = STEPS[step]
    path = tmp_path / "step.dcm"
    _ct(**changes).save_as(path, enforce_file_format=True)
    rendered = fastdcm.open_image(str(path)).render_frame(0)
    assert voi_options(rendered.voi) == options, rendered.voi  # (the step the file asks for was taken)
    theirs = dcmtk_frames(str(path), options, 1, tmp_path)[0]
    diff = np.abs(rendered.array.astype(np.int16) - theirs)
    assert diff.max() <= 1, f"off by {diff.max()}, {(diff > 1).mean():.2%} of the pixels ({rendered.voi})"


@pytest.mark.parametrize("center, width", [(40.7, 1), (40, 3), (40.5, 2), (100.25, 0.5)])
def test_narrow_linear_exact_is_the_standards_formula(center, width):
    """LINEAR_EXACT (C.11.2.1.3.2) of a narrow window, where dcmj2pnm is off by 50-130 levels (it does
    not follow the function's equations): fastdcm is them, in exact arithmetic, rounded half up."""
    from fractions import Fraction

    ds = _ct(WindowCenter=center, WindowWidth=width, VOILUTFunction="LINEAR_EXACT")
    x = ds.pixel_array.astype(np.int64) + int(ds.RescaleIntercept)  # (slope 1)
    assert float(ds.RescaleSlope) == 1
    c, w = Fraction(str(center)), Fraction(str(width))
    table = {}
    for value in np.unique(x).tolist():
        if value <= c - w / 2:
            table[value] = 0
        elif value > c + w / 2:
            table[value] = 255
        else:
            y = ((value - c) / w + Fraction(1, 2)) * 255
            table[value] = int(y + Fraction(1, 2)) if y >= 0 else 0  # floor(y + 1/2): round half up
    want = np.vectorize(table.__getitem__)(x)
    assert np.array_equal(fastdcm.render(ds, window=None), want)


@pytest.mark.parametrize("path", GREY, ids=os.path.basename)
def test_16_bit_within_1_of_dcmtk(path, tmp_path):
    """16-bit output (``depth=16``; dcmj2pnm ``+on2``): the same pipeline with y_max = 65535
    (RENDERING 4), the file's own VOI step, the first frame; within 1 of 65,535."""
    from PIL import Image

    image = fastdcm.open_image(path)
    rendered = image.render_frame(0, fastdcm.RenderOptions(depth=16))
    source = dcmtk_source(image, path, tmp_path)
    out = tmp_path / "dcmtk16.png"
    options = voi_options(rendered.voi)
    dcmj2pnm(source, [*options, "+on2"], out)
    with Image.open(out) as im:
        theirs = np.asarray(im).astype(np.int32)
    assert rendered.array.dtype == np.uint16 and theirs.max() <= 65535
    diff = np.abs(rendered.array.astype(np.int32) - theirs)
    assert diff.max() <= 1, f"off by {diff.max()}, {(diff > 1).mean():.2%} of the pixels ({rendered.voi}; {' '.join(options)})"


COLOUR = [p for p in CANDIDATES if not SPECS[p].is_grayscale]


def _read_ascii_pnm(path: str) -> np.ndarray:
    """A PGM/PPM in ASCII (P2/P3), any maximum value (dcmj2pnm's ``+opw``: 16 bits)."""
    with open(path) as f:
        kind, width, height, top, body = f.read().split(maxsplit=4)
    assert kind in ("P2", "P3") and int(top) == 65535, (kind, top)
    values = np.fromstring(body, dtype=np.int64, sep=" ")  # (text mode: any whitespace between values)
    shape = (int(height), int(width), 3) if kind == "P3" else (int(height), int(width))
    return values.reshape(shape)


@pytest.mark.parametrize("path", COLOUR, ids=os.path.basename)
def test_colour_16_bit_within_1_of_dcmtk(path, tmp_path):
    """Colour at 16 bits (``depth=16``; dcmj2pnm ``+opw``): RGB, YBR and palette images, the first
    frame. 8-bit samples come out times 257 (65535 / 255) on both sides, so one 8-bit level is 257
    there: YBR_FULL within 2 levels as at 8 bits (dcmtk's integer conversion), the rest within 1
    level (all but the two uncompressed YBR files identical when this test was written)."""
    image = fastdcm.open_image(path)
    ours = image.render_frame(0, fastdcm.RenderOptions(depth=16)).array
    source = dcmtk_source(image, path, tmp_path)
    out = tmp_path / "dcmtk16.ppm"
    dcmj2pnm(source, ["+opw"], out)
    theirs = _read_ascii_pnm(str(out))
    assert ours.dtype == np.uint16 and ours.shape == theirs.shape, (ours.dtype, ours.shape, theirs.shape)
    level = 257 if image.spec.bits_stored <= 8 else 1
    limit = level * (YBR_TOLERANCE if image.spec.photometric_interpretation == "YBR_FULL" else 1)
    diff = np.abs(ours.astype(np.int64) - theirs)
    assert diff.max() <= limit, f"off by {diff.max()} (limit {limit}), {(diff > limit).mean():.2%} of the pixels"
