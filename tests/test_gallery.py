"""The gallery (issue 10, requirement 4): thumbnails made in the same pass, a static page grouped by
study and series, failures with reasons, ``fastdcm gallery OUT`` for a run made without it, and the
page itself opened in a real headless browser."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import gallery as gallery_mod
from fastdcm.cli import main
from fastdcm.run.sinks.manifest import read_manifest
from fastdcm.run.thumbs import TILE, read_thumbnail, thumbnail

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb.dcm", "emri_small.dcm", "US1_J2KR.dcm", "MR_small_RLE.dcm"]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i, name in enumerate(FILES):
        shutil.copy(get_testdata_file(name), src / "a" / f"im{i}.dcm")
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (src / "a" / "cut.dcm").write_bytes(data[: len(data) // 3])  # truncated pixel data: a failure with a reason
    return src


def js_data(path: Path) -> list:
    """The arguments of the one call a data file makes (fastdcmGallery.page(n, {...}))."""
    text = path.read_text()
    start, end = text.index("(") + 1, text.rindex(")")
    return json.loads(f"[{text[start:end]}]")


def summary(out: Path) -> dict:
    return js_data(out / "gallery" / "data" / "summary.js")[0]


def page_items(out: Path) -> list[tuple[list, list]]:
    s = summary(out)
    items = []
    for n in range(1, len(s["pages"]) + 1):
        _, page = js_data(out / "gallery" / "data" / f"p-{n}.js")
        items += [(item, page["sheets"]) for item in page["items"]]
    return items


def test_thumbnail_is_the_image_in_block_means():
    image = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    small = thumbnail(image)
    k = -(-300 // TILE)
    assert small.shape == (-(-300 // k), -(-200 // k), 1) and small.dtype == np.uint8 and max(small.shape) <= TILE
    block = image[k : 2 * k, 2 * k : 3 * k].astype(np.int64)
    n = k * k
    assert small[1, 2, 0] == ((2 * block.sum() + n) // (2 * n)) >> 8
    assert thumbnail(np.zeros((10, 5, 3), np.uint8)).shape == (10, 5, 3)  # small images are not enlarged
    with pytest.raises(ValueError):
        thumbnail(np.zeros((4, 4), np.float32))


def test_convert_with_gallery_writes_the_page_from_the_same_pass(archive, tmp_path):
    out = tmp_path / "out"
    report = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    assert report.counts["converted"] == len(FILES) and report.failed == 1
    assert "gallery:" in report.gallery and "0 thumbnails made" not in report.gallery
    assert "made from the output files" not in report.gallery  # every thumbnail came from the run itself
    page = (out / "gallery" / "index.html").read_bytes()
    assert page == Path(gallery_mod.PAGE_FILE).read_bytes()  # the page is the same whatever the run
    assert b"http://" not in page and b"https://" not in page and b"//cdn" not in page
    assert f".frame {{ width: {TILE}px; height: {TILE}px;".encode() in page  # the page frames a thumbnail
    s = summary(out)
    records = [r for r in read_manifest(out / "manifest.jsonl") if r.status.value == "converted"]
    n_images = sum(len(r.outputs) for r in records)
    assert s["images"] == n_images and s["failures"]["count"] == 1
    assert s["failures"]["by_status"] == {"truncated": 1}
    assert len(s["studies"]) >= 2 and {m for m in s["modalities"] if m} >= {"CT", "MR"}
    fails = js_data(out / "gallery" / "data" / "f-1.js")[1]
    assert fails[0][0].endswith("cut.dcm") and fails[0][1] == "truncated" and fails[0][2]
    # every image is shown once, with its window, in study / series / instance order
    items = page_items(out)
    assert sorted(item[1] for item, _ in items) == sorted(o for r in records for o in r.outputs)
    ct = next(item for item, _ in items if s["series"][item[0]][3] == "CT")
    assert ct[7].startswith("C ") and " W " in ct[7]
    series_order = [item[0] for item, _ in items]
    assert series_order == sorted(series_order)  # grouped: a series' images are together
    # each thumbnail is the output image, shrunk (JPEG tolerance)
    for item, sheets in items:
        _, output, sheet, x, y, w, h = item[:7]
        assert sheet >= 0, output
        tile = np.asarray(Image.open(out / "gallery" / sheets[sheet]).convert("RGB"))[y : y + h, x : x + w]
        want = read_thumbnail((out / output).read_bytes(), output)
        assert tile.shape[:2] == want.shape[:2]
        diff = np.abs(tile.astype(int) - (want if want.shape[2] == 3 else np.repeat(want, 3, axis=2)).astype(int))
        # (colour: the sheet's JPEG halves the chroma resolution, which smears saturated colour bars)
        assert diff.mean() < (6 if want.shape[2] == 1 else 12), (output, diff.mean())


def test_the_manifest_records_what_the_gallery_shows(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=2, quiet=True, gallery=True)
    for record in read_manifest(out / "manifest.jsonl"):
        if record.status.value != "converted":
            assert record.gallery is None
            continue
        g = record.gallery
        assert (out / g["sheet"]).is_file() and len(g["thumbs"]) == len(record.outputs)
        assert g["StudyInstanceUID"] and g["SeriesInstanceUID"]


def test_gallery_command_for_a_run_made_without_it(archive, tmp_path, capsys):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, format="jpeg")
    assert not (out / "gallery").exists()
    assert main(["gallery", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "thumbnails made from the output files" in printed
    s = summary(out)
    items = page_items(out)
    assert s["images"] == len(items) and all(item[2] >= 0 for item, _ in items)
    assert len(s["studies"]) >= 2  # grouped by the sources' UIDs, read from their headers
    assert all(row[0] == "" for row in s["studies"])  # which are not shown (this build has no key)
    sheets = set((out / "gallery" / "sheets").iterdir())
    assert main(["gallery", str(out)]) == 0  # again: new sheets, the old ones removed
    assert len(set((out / "gallery" / "sheets").iterdir())) == len(sheets)


def test_gallery_without_a_manifest_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["gallery", str(tmp_path / "empty")]) == 2
    assert "no manifest" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "gallery").exists()


def test_pages_hold_a_fixed_number_of_images_and_stale_pages_go(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(gallery_mod, "PER_PAGE", 2)
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    s = summary(out)
    assert len(s["pages"]) == -(-s["images"] // 2) and len(s["pages"]) >= 4
    for n, (first, last, statuses, modalities) in enumerate(s["pages"], 1):
        _, page = js_data(out / "gallery" / "data" / f"p-{n}.js")
        assert len(page["items"]) <= 2 and page["items"][0][0] == first and page["items"][-1][0] == last
    for row in s["series"]:  # a series' first page holds its first image
        _, page = js_data(out / "gallery" / "data" / f"p-{row[6]}.js")
        assert s["series"].index(row) in [item[0] for item in page["items"]]
    monkeypatch.setattr(gallery_mod, "PER_PAGE", 1000)
    gallery_mod.build_gallery(out)
    assert sorted(p.name for p in (out / "gallery" / "data").iterdir()) == ["f-1.js", "p-1.js", "summary.js"]


def test_a_resumed_run_keeps_the_gallery_of_what_it_skips(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    before = summary(out)
    report = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True, resume=True)
    assert report.counts["skipped"] == len(FILES)
    after = summary(out)
    assert after["images"] == before["images"] and after["series"] == before["series"]
    assert "made from the output files" not in report.gallery


def test_a_gallery_that_cannot_be_written_costs_no_input_its_status(archive, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gallery_mod, "_write", full)
    report = fastdcm.convert([str(archive)], str(tmp_path / "out"), workers=0, quiet=True, gallery=True)
    assert report.counts["converted"] == len(FILES)
    assert report.gallery.startswith("gallery: not written: No space left")


# --------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000"]


def browser(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium)")
def test_the_page_in_a_headless_browser_shows_thumbnails_groups_and_failures(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    s = summary(out)
    url = (out / "gallery" / "index.html").as_uri()
    dom = browser(url, tmp_path / "profile", "--dump-dom").stdout.decode()
    body = dom[dom.index("<body"): dom.index(">", dom.index("<body"))]
    assert 'data-ready="1"' in body, body
    assert f'data-shown="{s["images"]}"' in body
    wanted = int(body.split('data-sheets-wanted="')[1].split('"')[0])
    assert wanted >= 1 and f'data-sheets-loaded="{wanted}"' in body  # every sheet it asked for loaded
    assert dom.count('class="study"') == len(s["studies"]) and dom.count('class="series"') == len(s["series"])
    assert dom.count('class="tile ') == s["images"]
    assert 'data-failures-shown="1"' in body and "cut.dcm" in dom and "truncated" in dom
    shot = tmp_path / "shot.png"
    browser(url, tmp_path / "profile", "--window-size=1280,900", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (900, 1280)
    # thumbnails drawn: the tiles' area has many gray levels (text and flat backgrounds have few)
    area = pixels[100:600, :700]
    assert len(np.unique(area)) > 120, len(np.unique(area))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium)")
def test_filters_and_paging_in_the_browser(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(gallery_mod, "PER_PAGE", 3)
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    s = summary(out)
    url = (out / "gallery" / "index.html").as_uri()
    ct_images = sum(1 for item, _ in page_items(out) if s["series"][item[0]][3] == "CT")
    dom = browser(url + "#s=all&m=CT&p=1", tmp_path / "p", "--dump-dom").stdout.decode()
    assert f'data-shown="{min(ct_images, 3)}"' in dom
    dom = browser(url + "#s=failed", tmp_path / "p", "--dump-dom").stdout.decode()
    assert 'data-shown=' not in dom and 'data-failures-shown="1"' in dom
    dom = browser(url + f"#s=all&m=all&p={len(s['pages'])}", tmp_path / "p", "--dump-dom").stdout.decode()
    last = s["images"] - 3 * (len(s["pages"]) - 1)
    assert f'data-shown="{last}"' in dom


def test_read_thumbnail_of_png_jpeg_and_npy():
    image = (np.arange(256 * 256) % 251).astype(np.uint8).reshape(256, 256)
    for fmt, name in (("PNG", "a.png"), ("JPEG", "a.jpg")):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, fmt)
        small = read_thumbnail(buf.getvalue(), name)
        assert max(small.shape[:2]) <= TILE and small.shape[0] == small.shape[1]
    buf = io.BytesIO()
    np.save(buf, image)
    np.testing.assert_array_equal(read_thumbnail(buf.getvalue(), "a.npy"), thumbnail(image))
    buf = io.BytesIO()
    np.save(buf, image.astype(np.uint16) << 8)  # 16 bits: the top 8 of the mean, within 1 of the 8-bit one
    assert np.abs(read_thumbnail(buf.getvalue(), "a.npy").astype(int) - thumbnail(image)).max() <= 1
    with pytest.raises(Exception):
        read_thumbnail(b"not an image", "a.png")


def test_a_runs_build_removes_only_its_own_unused_sheets(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    sheets = out / "gallery" / "sheets"
    other = sheets / "1-99999-0.jpg"  # a sheet of another run into OUT, whose records are not in yet
    rebuilt = sheets / "rebuilt-1.jpg"  # one an earlier build made
    for planted in (other, rebuilt):
        planted.write_bytes((next(sheets.glob("*.jpg"))).read_bytes())
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True, resume=True)
    assert other.exists() and not rebuilt.exists()
    assert main(["gallery", str(out)]) == 0  # asked for: every sheet no record names goes
    assert not other.exists() and len(list(sheets.iterdir())) >= 1
    assert all(item[2] >= 0 for item, _ in page_items(out))


def test_a_manifest_with_damaged_lines_still_gives_the_gallery_of_the_rest(archive, tmp_path):
    """The build reads the manifest line by line: a damaged line (a crash mid-write, then a
    resumed run's records) is skipped, the latest record of every input shown."""
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + b'{"source": "/x", "stat\n' + b"".join(lines[1:]) + lines[0] + b'{"sour')
    report = gallery_mod.build_gallery(out)
    assert report.images == summary(out)["images"] == len(page_items(out)) > 0


_GENERATED = re.compile(rb'"generated": ?"[^"]*"')


def _gallery_files(out: Path) -> dict[str, bytes]:
    """The gallery's files, without the time each page was generated at (two builds a second apart
    differ there: the page the run made and the one rebuilt from its manifest)."""
    return {str(p.relative_to(out)): _GENERATED.sub(b'"generated":""', p.read_bytes())
            for p in sorted((out / "gallery").rglob("*")) if p.is_file()}


def test_a_runs_page_from_its_kept_records_is_the_page_the_manifest_gives(archive, tmp_path, monkeypatch):
    """A run builds its page from the records its manifest sink kept (no parse of the file at the
    end), merged with the records before it on a resume: the page equals the one
    ``fastdcm gallery OUT`` builds from the file, on a fresh run and on a resume that redoes some."""
    parsed = []
    real = gallery_mod.latest_records
    monkeypatch.setattr(gallery_mod, "latest_records", lambda lines, name: parsed.append(name) or real(lines, name))
    out = tmp_path / "out"
    first = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True)
    assert first.failed == 1 and not parsed  # nothing read back
    run_page = _gallery_files(out)
    gallery_mod.build_gallery(out)
    assert parsed and _gallery_files(out) == run_page
    # a resume that redoes two inputs (their outputs deleted): the older records are read back up to
    # where this run began, this run's kept, the order a reader of the whole file finds
    for name in ("a/im0.png", "a/im2.png"):
        (out / name).unlink()
    parsed.clear()
    again = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, gallery=True, resume=True)
    assert again.converted == 2 and len(parsed) == 1
    run_page = _gallery_files(out)
    gallery_mod.build_gallery(out)
    rebuilt = _gallery_files(out)
    sheets = lambda files: {k for k in files if k.startswith("gallery/sheets/")}  # noqa: E731
    assert {k: v for k, v in rebuilt.items() if k not in sheets(rebuilt)} == {
        k: v for k, v in run_page.items() if k not in sheets(run_page)}
    # The sheets: the run's own build leaves the earlier run's sheets (another run may still be
    # going on), `fastdcm gallery` removes those no record names any more (here the sheet of the
    # first run that held only a redone input's thumbnail, when the run took that input last).
    with open(out / "manifest.jsonl", "rb") as f:
        named = {r.sheet for r in gallery_mod.latest_records(f, "manifest").values()}
    assert sheets(rebuilt) == sheets(run_page) & named


def test_a_manifest_another_run_appended_to_is_read_whole(tmp_path):
    """The kept records stand for the file only while this run alone appended to it."""
    from types import SimpleNamespace

    from fastdcm.run.sinks.manifest import ManifestSink, ManifestWriter

    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"source":"/a","status":"converted"}\n{"source":"/b","status":"error"}')  # a torn tail
    sink = ManifestSink(ManifestWriter(path), keep=True)
    assert sink.writer.start_size == path.stat().st_size  # (after the newline that ends the torn tail)
    assert list(sink.writer.head_lines(chunk=7)) == [b'{"source":"/a","status":"converted"}', b'{"source":"/b","status":"error"}']
    result = SimpleNamespace(status="converted", reason=None, outputs=["a.png"], frames=1, transfer_syntax=None,
                             voi=None, decoder=None, shape=None, reduce=None, timings={}, windows=None)
    sink.accept(SimpleNamespace(path="/a"), result)
    sink.flush()
    sink.close()
    assert list(sink.latest()) == ["/b", "/a"] and sink.latest()["/a"].outputs == ("a.png",)

    other = ManifestSink(ManifestWriter(path), keep=True)
    with ManifestWriter(path) as intruder:
        intruder.write_lines(['{"source":"/c","status":"converted"}'])
    other.accept(SimpleNamespace(path="/b"), result)
    other.flush()
    other.close()
    assert other.latest() is None


@pytest.mark.parametrize("in_pass", [True, False], ids=["same pass", "gallery command"])
def test_a_window_stacks_thumbnails_keep_each_windows_values(tmp_path, in_pass):
    """A stack's three channels are windows, not colours: its sheet is coded as RGB, not YCbCr
    4:2:0, so each channel of a thumbnail stays close to its window's block means (with chroma
    subsampling CT_small's bone channel was off by 17 levels on average)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    out = tmp_path / "out"
    fastdcm.convert([str(src)], str(out), workers=0, quiet=True, format="jpeg", windows="brain,subdural,bone",
                    gallery=in_pass)
    if not in_pass:
        assert main(["gallery", str(out)]) == 0
    expected = thumbnail(fastdcm.render(get_testdata_file("CT_small.dcm"), windows="brain,subdural,bone")).astype(int)
    ((item, sheets),) = page_items(out)
    x, y, w, h = item[3:7]
    assert (h, w) == expected.shape[:2]
    with Image.open(out / "gallery" / sheets[item[2]]) as im:
        got = np.asarray(im.convert("RGB"))[y : y + h, x : x + w].astype(int)
    errors = [np.abs(got[..., c] - expected[..., c]).mean() for c in range(3)]
    assert max(errors) < 5, errors


def test_entries_share_their_repeated_values_and_keep_what_the_page_needs():
    """A build holds one entry per input (10^6-10^7 for a large archive): the values records
    repeat (UIDs, statuses, sheets, VOI texts, rectangles, windows) are one object between entries;
    a record whose grouping values are not scalars (written by hand) is still read."""
    shared: dict = {}

    def record(i: int) -> dict:  # as parsed from a line: every value a new object
        return json.loads(json.dumps({
            "source": f"/d/im{i}.dcm", "status": "converted", "reason": "", "outputs": [f"im{i}.png"],
            "voi": "window[0] LINEAR c=40 w=400", "gallery": {
                "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "Modality": "CT", "SeriesNumber": 2,
                "InstanceNumber": i, "sheet": "gallery/sheets/a.jpg", "thumbs": [[0, 0, 86, 86]], "windows": [[40.0, 400.0]]},
        }))

    a, b = gallery_mod.entry_of(record(1), shared), gallery_mod.entry_of(record(2), shared)
    assert a.source == "/d/im1.dcm" and a.outputs == ("im1.png",) and a.grouping == (("1.2.3", "1.2.3.4", "CT", 2, None), 1)
    assert a.thumbs == ((0, 0, 86, 86),) and a.windows == ((40.0, 400.0),)
    for field in ("status", "voi", "sheet", "windows"):
        assert getattr(a, field) is getattr(b, field), field
    assert a.thumbs[0] is b.thumbs[0] and a.grouping[0] is b.grouping[0]  # (the series' attributes)
    odd = record(3)
    odd["gallery"]["SeriesNumber"] = [2, 3]
    assert gallery_mod.entry_of(odd, shared).grouping[0][3] == [2, 3]
    bare = gallery_mod.entry_of({"source": "/d/x.dcm", "status": "error", "reason": "cut"}, shared)
    assert bare.grouping is None and bare.outputs == () and bare.thumbs == () and bare.windows is None


def test_a_sheet_packs_tiles_in_rows_of_whole_jpeg_blocks():
    """Tiles of any shape go left to right in rows at most WIDTH wide, each at a multiple of 8 pixels
    (a JPEG block never holds two images), never overlapping; each decodes from its rectangle."""
    from fastdcm.run.thumbs import WIDTH, Sheet

    rng = np.random.default_rng(3)
    shapes = [(86, 86), (96, 64), (40, 96), (1, 1), (96, 96), (86, 86), (17, 90), (96, 33)] * 3
    tiles = [np.full((h, w, 1), rng.integers(20, 235), np.uint8) for h, w in shapes]
    sheet = Sheet()
    boxes = sheet.add(tiles[:5]) + sheet.add(tiles[5:])
    assert [b[2:] for b in boxes] == [[w, h] for h, w in shapes]
    for i, (x, y, w, h) in enumerate(boxes):
        assert x % 8 == 0 and y % 8 == 0 and x + w <= WIDTH
        for x2, y2, w2, h2 in boxes[:i]:
            assert x >= x2 + w2 or x2 >= x + w or y >= y2 + h2 or y2 >= y + h, (i, boxes[i])
    decoded = np.asarray(Image.open(io.BytesIO(sheet.encode())))
    for tile, (x, y, w, h) in zip(tiles, boxes):
        if min(w, h) >= 16:  # (a 1-pixel tile shares its block with black: JPEG blurs it, as on any sheet)
            assert abs(decoded[y : y + h, x : x + w].astype(int) - int(tile[0, 0, 0])).mean() < 3
    sheet.clear()
    assert sheet.add(tiles[:1]) == [[0, 0, 86, 86]]
