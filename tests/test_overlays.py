"""Overlay planes burned in when asked (RENDERING.md 4): held to dcmtk's dcmj2pnm, which draws them
by default, and to pydicom's unpacking of the bits; origins, frames, colour, resize, reduce,
damaged planes, and the command line."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pack_bits

import fastdcm
from fastdcm import cli
from fastdcm.errors import InvalidPixelModuleError
from fastdcm.run.sinks.manifest import read_manifest

OVERLAID = ["examples_overlay.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]  # one graphics plane each
DCMJ2PNM = shutil.which("dcmj2pnm")


def _with_overlay(src: str, bits: np.ndarray, path, group: int = 0x6000, origin=(1, 1), frames: int | None = None,
                  first: int | None = None, data: bytes | None = None):
    """``src`` with an overlay plane of ``bits`` ((rows, columns) or (frames, rows, columns) of 0/1) added."""
    ds = pydicom.dcmread(src)
    rows, cols = bits.shape[-2:]
    ds.add_new((group, 0x0010), "US", rows)
    ds.add_new((group, 0x0011), "US", cols)
    ds.add_new((group, 0x0040), "CS", "G")
    ds.add_new((group, 0x0050), "SS", list(origin))
    ds.add_new((group, 0x0100), "US", 1)
    ds.add_new((group, 0x0102), "US", 0)
    if frames is not None:
        ds.add_new((group, 0x0015), "IS", frames)
    if first is not None:
        ds.add_new((group, 0x0051), "US", first)
    ds.add_new((group, 0x3000), "OW", pack_bits(bits.astype(np.uint8).ravel()) if data is None else data)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _dcmtk(path: str, tmp_path, *flags: str) -> np.ndarray:
    out = tmp_path / "dcmtk.png"
    subprocess.run(["dcmj2pnm", "+on", "+Wi", "1", *flags, path, str(out)], check=True, capture_output=True)
    return np.asarray(Image.open(out)).astype(int)


@pytest.mark.parametrize("name", OVERLAID)
def test_overlay_pixels_are_white_and_the_rest_is_the_plain_render(name):
    path = get_testdata_file(name)
    plain, burned = fastdcm.render(path), fastdcm.render(path, overlays=True)
    bits = pydicom.dcmread(path).overlay_array(0x6000).astype(bool)
    assert bits.any() and (burned[bits] == 255).all()
    assert np.array_equal(burned[~bits], plain[~bits])
    assert not (plain[bits] == 255).all()  # (the plane shows: not already white there)


@pytest.mark.skipif(DCMJ2PNM is None, reason="dcmtk's dcmj2pnm is not on PATH (apt-get install dcmtk)")
@pytest.mark.parametrize("name", OVERLAID)
def test_with_and_without_overlays_as_dcmtk_draws_them(name, tmp_path):
    path = get_testdata_file(name)
    assert np.abs(fastdcm.render(path, overlays=True).astype(int) - _dcmtk(path, tmp_path)).max() <= 1
    assert np.abs(fastdcm.render(path).astype(int) - _dcmtk(path, tmp_path, "--no-overlays")).max() <= 1


def test_the_origin_places_the_plane_and_what_falls_outside_is_cut(tmp_path):
    bits = np.zeros((40, 50), np.uint8)
    bits[0, :] = bits[:, 0] = bits[-1, :] = bits[:, -1] = 1  # a frame around the plane
    path = _with_overlay(get_testdata_file("CT_small.dcm"), bits, tmp_path / "ct.dcm", origin=(101, -9))
    got = fastdcm.render(path, overlays=True)
    want = fastdcm.render(path)
    expected = np.zeros((128, 128), bool)
    expected[100:128, 0:40] = bits[0:28, 10:50].astype(bool)  # rows 100-139 and columns -10-39, clipped
    want[expected] = 255
    assert np.array_equal(got, want)


def test_a_multi_frame_overlay_covers_its_frames_only(tmp_path):
    src = get_testdata_file("emri_small.dcm")  # 10 frames, 64 x 64
    bits = np.zeros((2, 64, 64), np.uint8)
    bits[0, 10, :] = 1
    bits[1, :, 20] = 1
    path = _with_overlay(src, bits, tmp_path / "mf.dcm", frames=2, first=3)
    plain = list(fastdcm.iter_frames(path))
    burned = list(fastdcm.iter_frames(path, overlays=True))
    for i, (a, b) in enumerate(zip(plain, burned)):
        if i in (2, 3):  # frames 3 and 4
            mask = bits[i - 2].astype(bool)
            assert (b[mask] == 255).all() and np.array_equal(b[~mask], a[~mask]), i
        else:
            assert np.array_equal(a, b), i
    # a single-frame overlay covers the first frame only
    single = _with_overlay(src, bits[0], tmp_path / "sf.dcm")
    frames = list(fastdcm.iter_frames(single, overlays=True))
    assert (frames[0][10] == 255).all() and all(np.array_equal(f, p) for f, p in zip(frames[1:], plain[1:]))


def test_colour_window_stacks_and_16_bit_are_white_in_every_channel(tmp_path):
    bits = np.zeros((100, 100), np.uint8)
    bits[50, :] = 1
    rgb = _with_overlay(get_testdata_file("SC_rgb.dcm"), bits, tmp_path / "rgb.dcm")
    assert (fastdcm.render(rgb, overlays=True)[50] == 255).all()
    ct = _with_overlay(get_testdata_file("CT_small.dcm"), bits, tmp_path / "ct.dcm")
    stack = fastdcm.render(ct, overlays=True, windows="brain,subdural,bone")
    assert stack.shape == (128, 128, 3) and (stack[50, :100] == 255).all()
    deep = fastdcm.render(ct, overlays=True, depth=16)
    assert deep.dtype == np.uint16 and (deep[50, :100] == 65535).all()


def test_resized_outputs_are_the_burned_image_resized(tmp_path):
    path = get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm")  # 484 x 484
    burned = fastdcm.render(path, overlays=True)
    small = fastdcm.render(path, overlays=True, size=121)
    want = np.asarray(Image.fromarray(burned).resize((121, 121), Image.Resampling.BOX)).astype(int)
    assert small.shape == (121, 121) and np.abs(small.astype(int) - want).max() <= 1
    assert not np.array_equal(small, fastdcm.render(path, size=121))


def test_reduce_whitens_each_pixel_by_the_share_of_its_block_the_plane_covers(tmp_path):
    path = get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    bits = pydicom.dcmread(path).overlay_array(0x6000).astype(float)
    share = bits.reshape(242, 2, 242, 2).mean(axis=(1, 3))
    plain = fastdcm.render(path, reduce=1).astype(float)
    got = fastdcm.render(path, overlays=True, reduce=1).astype(int)
    assert np.array_equal(got, np.floor(plain * (1 - share) + 255 * share + 0.5).astype(int))
    assert (got[share == 1] == 255).all() and np.array_equal(got[share == 0], plain[share == 0])


def test_a_damaged_plane_is_a_typed_error_only_when_overlays_are_asked_for(tmp_path):
    bits = np.ones((64, 64), np.uint8)
    path = _with_overlay(get_testdata_file("CT_small.dcm"), bits, tmp_path / "short.dcm", data=b"\xff" * 100)
    fastdcm.render(path)  # not asked for: not read
    with pytest.raises(InvalidPixelModuleError, match="overlay plane 6000") as info:
        fastdcm.render(path, overlays=True)
    assert "short.dcm" in str(info.value)


def test_an_image_without_overlays_is_the_same_with_the_option():
    path = get_testdata_file("CT_small.dcm")
    assert np.array_equal(fastdcm.render(path, overlays=True), fastdcm.render(path))
    with pytest.raises(ValueError, match="overlays"):
        fastdcm.render(path, overlays="yes")


def test_convert_overlays_from_the_command_line_and_resume(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), src / "mr.dcm")
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0"]) == 0
    plain = np.asarray(Image.open(out / "mr.png"))
    # the same options resume (nothing to do); --overlays shapes the outputs: the input is redone
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0", "--resume"]) == 0
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0", "--resume", "--overlays"]) == 0
    burned = np.asarray(Image.open(out / "mr.png"))
    assert np.array_equal(burned, fastdcm.render(src / "mr.dcm", overlays=True)) and not np.array_equal(burned, plain)
    first, redone = read_manifest(out / "manifest.jsonl")  # (the resume that had nothing to do wrote no record)
    assert first.status.value == redone.status.value == "converted" and first.fingerprint != redone.fingerprint


def test_info_lists_the_overlay_planes(tmp_path, capsys):
    bits = np.zeros((2, 64, 64), np.uint8)
    path = _with_overlay(get_testdata_file("emri_small.dcm"), bits, tmp_path / "mf.dcm", origin=(3, 5), frames=2, first=4)
    assert fastdcm.inspect(path).overlays == ["6000: graphics, 64 x 64 at row 3, column 5, frames 4-5"]
    assert cli.main(["info", path]) == 0
    assert "overlays:        1 plane(s), drawn with --overlays: 6000: graphics" in capsys.readouterr().out
    assert fastdcm.inspect(get_testdata_file("CT_small.dcm")).overlays == []


def _embedded(tmp_path) -> tuple[str, str]:
    """examples_overlay.dcm (16 bits allocated, 12 stored) and the same with its plane embedded in bit 12
    of the pixel data (the retired encoding: no Overlay Data, Overlay Bits Allocated 16)."""
    src = get_testdata_file("examples_overlay.dcm")
    ds = pydicom.dcmread(src)
    bits = ds.overlay_array(0x6000).astype(np.uint16)
    pixels = ds.pixel_array.astype(np.uint16) | (bits << 12)
    ds.PixelData = pixels.tobytes()
    del ds[(0x6000, 0x3000)]
    ds[(0x6000, 0x0100)].value = 16
    ds[(0x6000, 0x0102)].value = 12
    path = tmp_path / "embedded.dcm"
    ds.save_as(path, enforce_file_format=True)
    return src, str(path)


def test_a_plane_embedded_in_the_pixel_data_is_drawn_as_its_overlay_data_would_be(tmp_path):
    src, path = _embedded(tmp_path)
    assert np.array_equal(fastdcm.render(path), fastdcm.render(src))  # (bit 12 is above Bits Stored: masked)
    assert np.array_equal(fastdcm.render(path, overlays=True), fastdcm.render(src, overlays=True))
    assert np.array_equal(fastdcm.render(path, overlays=True, reduce=1), fastdcm.render(src, overlays=True, reduce=1))
    assert fastdcm.inspect(path).overlays == ["6000: graphics, 484 x 300 in bit 12 of the pixel data (retired), every frame"]
    # a bit position inside Bits Stored is the image, not a plane
    ds = pydicom.dcmread(path)
    ds[(0x6000, 0x0102)].value = 4
    inside = tmp_path / "inside.dcm"
    ds.save_as(inside, enforce_file_format=True)
    assert np.array_equal(fastdcm.render(inside, overlays=True), fastdcm.render(inside))


@pytest.mark.skipif(DCMJ2PNM is None, reason="dcmtk's dcmj2pnm is not on PATH (apt-get install dcmtk)")
def test_an_embedded_plane_as_dcmtk_draws_it(tmp_path):
    _, path = _embedded(tmp_path)
    assert np.abs(fastdcm.render(path, overlays=True).astype(int) - _dcmtk(path, tmp_path)).max() <= 1


def test_big_endian_and_deflated_files_draw_their_planes_too(tmp_path):
    """The header search for a plane's tag must not miss planes where the bytes are not plain little
    endian: a big-endian file and a deflated one draw the same overlay as the original."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

    src = get_testdata_file("examples_overlay.dcm")
    want = fastdcm.render(src, overlays=True)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(src)
    pixels = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = pixels.astype(">u2").tobytes()
    pydicom.dcmwrite(tmp_path / "big.dcm", ds, implicit_vr=False, little_endian=False, force_encoding=True)
    for name in ("deflated.dcm", "big.dcm"):
        assert np.array_equal(fastdcm.render(tmp_path / name, overlays=True), want), name
