"""The benchmark tools: the corpus generator and the peers (benchmarks/)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
if pydicom.data.get_testdata_file("693_UNCR.dcm") is None:  # pragma: no cover
    pytest.skip("the corpus generator needs pydicom-data", allow_module_level=True)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import make_corpus  # noqa: E402
import peers  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # dicom2jpg imports old pydicom names
]


def _read_all(folder: Path):
    return [pydicom.dcmread(p) for p in make_corpus.corpus_files(folder)]


@pytest.fixture(scope="module")
def ct5(tmp_path_factory) -> Path:
    return make_corpus.ensure_corpus("ct", count=5, out=tmp_path_factory.mktemp("bench") / "ct")


def test_ct_corpus_is_valid_and_varied(ct5):
    meta = make_corpus.read_manifest(ct5)
    assert meta["files_count"] == meta["count"] == 5
    assert meta["generator_version"] == make_corpus.GENERATOR_VERSION
    assert meta["total_bytes"] == sum((ct5 / f).stat().st_size for f in meta["files"])
    datasets = _read_all(ct5)
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert len({ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets}) == 5
    pixels = [ds.pixel_array for ds in datasets]
    assert len({hashlib.sha1(a.tobytes()).hexdigest() for a in pixels}) == 5
    for ds, a in zip(datasets, pixels):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CT" and "WindowCenter" in ds and "WindowWidth" in ds
        assert a.shape == (512, 512) and a.dtype == np.int16
        hu = pydicom.pixels.apply_modality_lut(a, ds)
        assert -3100 < hu.min() < -900 and 500 < hu.max() < 3100  # air .. bone
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    # patient/study/series folders
    assert all(len(Path(f).parts) == 4 for f in meta["files"])


def test_ct_uids_are_deterministic(ct5, tmp_path):
    again = make_corpus.ensure_corpus("ct", count=5, out=tmp_path / "ct")
    assert [ds.SOPInstanceUID for ds in _read_all(again)] == [ds.SOPInstanceUID for ds in _read_all(ct5)]


def test_cache_is_reused_then_rebuilt_on_version_change(tmp_path, monkeypatch):
    folder = make_corpus.ensure_corpus("ct", count=2, out=tmp_path / "c")
    stamp = (folder / "corpus.json").stat().st_mtime_ns
    assert make_corpus.ensure_corpus("ct", count=2, out=folder) == folder
    assert (folder / "corpus.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(make_corpus, "GENERATOR_VERSION", make_corpus.GENERATOR_VERSION + 1)
    make_corpus.ensure_corpus("ct", count=2, out=folder)
    assert json.loads((folder / "corpus.json").read_text())["generator_version"] == make_corpus.GENERATOR_VERSION
    # a missing file also triggers a rebuild
    first = folder / make_corpus.read_manifest(folder)["files"][0]
    first.unlink()
    make_corpus.ensure_corpus("ct", count=2, out=folder)
    assert first.is_file()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_corpus.ensure_corpus("ct", count=1, out=tmp_path / "x")
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep me"


def test_mixed_corpus_decodes(tmp_path):
    folder = make_corpus.ensure_corpus("mixed", count=12, out=tmp_path / "mixed")
    datasets = _read_all(folder)
    assert len(datasets) == 12
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    for ds in datasets:
        assert ds.pixel_array.size > 0
    assert len({ds.file_meta.TransferSyntaxUID for ds in datasets}) >= 2


def test_mammo_is_jpeg2000_lossless_monochrome2(tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="the mammography generator draws with OpenCV: pip install -e '.[bench]'")
    monkeypatch.setattr(make_corpus, "MAMMO_SHAPE", (256, 208))  # the real size takes ~3 s
    folder = make_corpus.ensure_corpus("mammo", count=1, out=tmp_path / "mg")
    (ds,) = _read_all(folder)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert (ds.Modality, ds.PhotometricInterpretation, ds.BitsStored) == ("MG", "MONOCHROME2", 12)
    a = ds.pixel_array
    assert a.shape == (256, 208) and 0 < a.max() < 4096
    assert a[:, -1].mean() < 200 < a[:, :10].mean() or a[:, 0].mean() < 200 < a[:, -10:].mean()


# --------------------------------------------------------------------------- peers
SINGLE = [p for p in peers.PEERS if p != "floor"]


@pytest.mark.parametrize("fmt", peers.FORMATS)
@pytest.mark.parametrize("name", SINGLE)
def test_peer_converts_one_file(name, fmt, ct5, tmp_path):
    reason = peers.unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    src = make_corpus.corpus_files(ct5)[0]
    outs = peers.convert_one(name, src, str(tmp_path / "img"), fmt)
    assert outs == [str(tmp_path / "img") + peers.EXTENSIONS[fmt]]
    assert peers.check_image(outs[0], (512, 512)) is None
    if fmt == "png":  # every peer draws the same window: within rounding of the naive recipe
        from PIL import Image

        got = np.asarray(Image.open(outs[0]).convert("L")).astype(int)
        assert np.abs(got - peers.naive_render(src)).max() <= 2


def test_check_image_rejects_wrong_or_missing_output(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "a.png")
    assert peers.check_image(str(tmp_path / "a.png"), (6, 4)) is None
    assert "expected" in peers.check_image(str(tmp_path / "a.png"), (512, 512))
    assert "missing" in peers.check_image(str(tmp_path / "b.png"), (6, 4))


@pytest.mark.parametrize("name", ["naive", "fast", "floor", "dicom2jpg"])
def test_run_peer_over_a_few_files(name, ct5, tmp_path):
    reason = peers.unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    files = make_corpus.corpus_files(ct5)[:3]
    r = peers.run_peer(name, files, tmp_path / name, "png", workers=2)
    assert r["errors"] == 0, r["error_samples"]
    assert r["files"] == 3 and r["seconds"] > 0 and r["files_per_s"] > 0 and r["mb_per_s"] > 0


def test_floor_takes_an_encoder_callable(ct5, tmp_path):
    pytest.importorskip("cv2", reason="a benchmark peer: pip install -e '.[bench]'")
    calls = []

    def encode(img):
        calls.append(img.shape)
        return peers.encode_cv2_png(img)

    files = make_corpus.corpus_files(ct5)[:2]
    r = peers.run_peer("floor", files, tmp_path / "f", "png", workers=1, encoder=encode, write=True)
    assert r["errors"] == 0, r["error_samples"]
    assert r["writes_outputs"] and len(list((tmp_path / "f").glob("*.png"))) == 2
    assert calls  # the verification sample runs in this process


def test_run_peer_counts_a_failing_file(tmp_path, ct5):
    bad = tmp_path / "not.dcm"
    bad.write_bytes(b"not dicom at all")
    files = [make_corpus.corpus_files(ct5)[0], str(bad)]
    r = peers.run_peer("naive", files, tmp_path / "out", "jpeg", workers=1)
    assert r["errors"] == 1 and "not.dcm" in r["error_samples"][0]


def test_startup_benchmark_times_every_command_and_checks_their_pictures(tmp_path):
    import startup

    result = startup.measure(startup.default_file(), rounds=1)
    assert {"fastdcm", "recipe"} <= set(result["median_s"]) and result["ratio_fastdcm_over_recipe"] > 0


def test_dataset_benchmark_measures_table_and_gallery_cost_and_memory(tmp_path):
    pytest.importorskip("pyarrow")
    import dataset

    from fastdcm.run import pipeline, thumbs

    real = pipeline.thumbnail, thumbs.Sheet.encode
    result = dataset.cost(tmp_path, files=12, rounds=1, workers=1)
    variants = {"metadata", "gallery", "both", "both_images_free"}
    assert set(result["ratio_over_plain"]) == set(result["cpu_ratio_over_plain"]) == variants
    assert all(r > 0 for r in result["ratio_over_plain"].values()) and result["files_per_s"]["gallery"] > 0
    assert set(result["paired_ratio_over_plain"]) == set(result["paired_ratios"]) == variants
    assert all(len(v) == 1 and v[0] > 0 for v in result["paired_ratios"].values())
    assert set(result["serial_ratio_over_plain"]) == set(result["serial_added_us"]) == variants
    # the bound's stand-ins ran in its runs only (its sheets are BMPs, the others' JPEGs) and are gone after
    assert (pipeline.thumbnail, thumbs.Sheet.encode) == real
    for name, magic in (("both_images_free", b"BM"), ("both", b"\xff\xd8")):
        sheets = list((tmp_path / f"jpeg-{name}-0" / "gallery" / "sheets").iterdir())
        assert sheets and all(p.read_bytes()[:2] == magic for p in sheets), name
    assert all(len(v) >= 3 and min(v) > 0 for v in result["serial_cpu_us_per_file"].values())
    pieces = result["serial_both_pieces_us"]  # every piece was called in the "both" runs, and timed
    assert set(pieces) == {label for label, *_ in dataset.PIECES} and all(v > 0 for v in pieces.values())
    from fastdcm.run.sinks.manifest import Record

    assert isinstance(Record.__dict__["data_of"], staticmethod)  # (put back as it was)
    least = result["floor"]
    assert least["files"] == 12 and set(least["us_per_file"]) == {
        "header_walk", "thumbnail", "sheet_jpeg", "sheet_write", "arrow_parquet"}
    assert all(v > 0 for v in least["us_per_file"].values()) and 0 < least["ratio"] < 1
    scale = dataset.gallery_scale(tmp_path, 300)
    assert scale["pages"] == 2 and scale["index_html_bytes"] > 1000 and scale["build_s"] >= 0
    mem = dataset.memory(tmp_path, rows=[10, 30])
    assert mem["runs"]["30"]["rows"] == 30 and mem["runs"]["10"]["peak_rss_mib_with"] > 0


def test_training_benchmark_measures_window_stacks_in_png_and_jpeg(tmp_path):
    import training

    corpus = training._corpus(tmp_path, "ct", 4)
    result = training.stacks(tmp_path, corpus, files=4, rounds=1, workers=1, repeat=1)
    assert set(result["convert"]) == set(result["encode_us"]) == {"png", "jpeg"}
    for fmt in ("png", "jpeg"):
        assert result["convert"][fmt]["cost_three_over_one"] > 0
        assert result["encode_us"][fmt]["three"] > 0 and result["encode_us"][fmt]["one"] > 0
    assert result["render_us_three"] > 0 and result["kernel_us_three"] > 0


def test_training_benchmark_keeps_the_sections_a_run_did_not_measure(tmp_path):
    """``training.py --sections stacks`` rewrites the stacks' figures and keeps the others (with the
    date and settings they were measured with), instead of writing them as null."""
    import training

    path = tmp_path / "training.json"
    old = {"resize": {"ratio": 1.3}, "peer": None, "stacks": {"x": 1}, "mammo": {"added": 0.01},
           "files": 4000, "workers": 2, "rounds": 5, "date": "2026-12-01"}
    path.write_text(json.dumps(old))
    new = {"resize": None, "peer": None, "stacks": {"x": 2}, "mammo": None,
           "files": 2000, "workers": 2, "rounds": 3, "date": "2026-12-07"}
    training._keep_unmeasured(new, str(path), {"stacks"})
    assert new["stacks"] == {"x": 2} and new["resize"] == {"ratio": 1.3} and new["mammo"] == {"added": 0.01}
    assert new["peer"] is None  # never measured: nothing to keep
    assert new["kept"] == {name: {"date": "2026-12-01", "files": 4000, "rounds": 5, "workers": 2}
                           for name in ("resize", "mammo")}
    path.write_text(json.dumps(new))  # a later run of resize alone: the mammo figures keep their first date
    newer = {"resize": {"ratio": 1.2}, "peer": None, "stacks": None, "mammo": None,
             "files": 1000, "workers": 2, "rounds": 3, "date": "2026-12-08"}
    training._keep_unmeasured(newer, str(path), {"resize"})
    assert newer["stacks"] == {"x": 2} and newer["kept"]["stacks"]["date"] == "2026-12-07"
    assert newer["kept"]["mammo"]["date"] == "2026-12-01" and "resize" not in newer["kept"]


def test_report_clears_an_earlier_reports_outputs_before_timing(tmp_path):
    """With --work-dir, every entry writes into a folder that does not exist yet (a peer writing
    over its earlier run's files was timed slower, and fastdcm looked faster than it is)."""
    import report

    for name in ("ct-fast-jpeg-0", "ct-fastdcm-jpeg-0-warm", "ct-floor-jpeg-3", "ct-fast-png-0", "mixed-fast-jpeg-0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "000000.jpg").write_bytes(b"old")
    (tmp_path / "ct-notes.txt").write_text("kept")
    report.clear_outputs(tmp_path, "ct", "jpeg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct-fast-png-0", "ct-notes.txt", "mixed-fast-jpeg-0"]


@pytest.mark.parametrize("name", ["naive", "fast"])
def test_peer_script_mirrors_the_folder_as_a_users_script_would(name, ct5, tmp_path):
    """``peers.py --script``: the recipe as a user runs it (report.py --as-user), every DICOM file of
    the nested folder to its mirrored path, the corpus' own .json list left out."""
    reason = peers.unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    import subprocess

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--script", name, str(ct5), str(out), "jpeg", "2", "90"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    want = sorted(str(Path(f).relative_to(ct5)) + ".jpg" for f in make_corpus.corpus_files(ct5))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == want
    assert all(peers.check_image(str(out / w), (512, 512)) is None for w in want)


def test_report_as_user_times_the_command_line_and_the_script(ct5, tmp_path):
    import report

    files = make_corpus.corpus_files(ct5)[:5]
    rows = {name: report.run_as_user(name, ct5, files, tmp_path / name, "png", 1, 90) for name in ("fastdcm", "naive", "floor")}
    for name in ("fastdcm", "naive"):
        assert rows[name]["errors"] == 0, rows[name]["error_samples"]
        assert rows[name]["as_user"] and rows[name]["seconds"] > 0 and rows[name]["files"] == 5
    assert "no script form" in rows["floor"]["skipped"]
    # a run that writes no image for an input is an error of that entry, not a fast row
    (tmp_path / "fastdcm" / "x").mkdir()
    errors: list[str] = []
    report._check_outputs("x", tmp_path / "fastdcm", files + files[:1], "png", 0, errors)
    assert errors and "wrote 5 images for 6 inputs" in errors[0]


def test_report_as_user_counts_each_input_the_script_failed(ct5, tmp_path):
    import shutil

    import report

    src = tmp_path / "src"
    src.mkdir()
    files = [shutil.copy(f, src / f"{i}.dcm") for i, f in enumerate(make_corpus.corpus_files(ct5)[:2])]
    (src / "bad.dcm").write_bytes(b"not dicom at all")
    row = report.run_as_user("naive", src, [*map(str, files), str(src / "bad.dcm")], tmp_path / "out", "png", 1, 90)
    assert row["errors"] == 1 and "exit 1" in row["error_samples"][0]
