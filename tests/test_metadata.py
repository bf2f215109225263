"""The metadata table (issue 10, requirement 1): one typed row per output image, written in the same
pass, no identifiers, resumable without duplicates, parts that survive a crash."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import cli
from fastdcm.errors import InvalidOptionError, Status
from fastdcm.run.sinks import table as table_module
from fastdcm.run.sinks.manifest import read_manifest
from fastdcm.run.tags import DEFAULT_TAGS, parse_tags

pa = pytest.importorskip("pyarrow")

FILES = {  # name in the archive: pydicom test file
    "ct/CT_small.dcm": "CT_small.dcm",
    "mr/MR_small.dcm": "MR_small.dcm",
    "mr/emri_small.dcm": "emri_small.dcm",  # 10 frames
    "ct/liver.dcm": "liver.dcm",  # enhanced CT: spacing in the shared functional group
    "us/US1_J2KR.dcm": "US1_J2KR.dcm",
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for rel, name in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name), src / rel)
    (src / "ct" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\0")
    return src


def rows_by_output(table) -> dict:
    return {(r["source"], r["frame"]): r for r in table.to_pylist()}


@pytest.mark.parametrize("workers", [0, 2])
def test_one_typed_row_per_output_image_and_one_per_failed_input(archive, tmp_path, workers):
    out = tmp_path / "out"
    report = fastdcm.convert([str(archive)], str(out), workers=workers, quiet=True, metadata="metadata.parquet")
    table = fastdcm.read_metadata(out / "metadata.parquet")
    manifest = list(read_manifest(out / "manifest.jsonl"))
    images = sum(len(r.outputs) for r in manifest)
    failed = [r for r in manifest if not r.outputs]
    assert table.num_rows == images + len(failed) == report.frames + len(failed)
    assert len(failed) == 1 and failed[0].status is not Status.CONVERTED
    rows = table.to_pylist()
    [bad] = [r for r in rows if r["output"] is None]
    assert bad["source"].endswith("broken.dcm") and bad["status"] == failed[0].status.value and bad["reason"]
    # typed columns from the data dictionary, the same in every file of every run
    schema = table.schema
    assert schema.field("Rows").type == pa.int64() and schema.field("SliceThickness").type == pa.float64()
    assert schema.field("PixelSpacing").type == pa.list_(pa.float64())
    assert schema.field("WindowCenter").type == pa.list_(pa.float64()) and schema.field("Modality").type == pa.string()
    from fastdcm.run.sinks.table import base_schema

    assert [c for c in schema.names[len(base_schema()):]] == list(DEFAULT_TAGS)
    # values as pydicom reads them
    for r in rows:
        if r["output"] is None:
            continue
        ds = pydicom.dcmread(r["source"], stop_before_pixels=True)
        assert r["SOPInstanceUID"] == ds.SOPInstanceUID and r["Modality"] == ds.Modality
        assert r["Rows"] == ds.Rows and r["Columns"] == ds.Columns
        assert (out / r["output"]).is_file() and r["status"] == "converted" and r["decoder"]
    ct = next(r for r in rows if r["source"].endswith("CT_small.dcm"))
    assert ct["ImagePositionPatient"] == [float(v) for v in pydicom.dcmread(ct["source"]).ImagePositionPatient]
    mr = next(r for r in rows if r["source"].endswith("MR_small.dcm"))
    assert mr["window_center"] == 600.0 and mr["window_width"] == 1600.0 and mr["voi"].startswith("window")
    liver = next(r for r in rows if r["source"].endswith("liver.dcm"))
    assert liver["PixelSpacing"] == [0.810547, 0.810547] and liver["SliceThickness"] == 1.0  # shared group


def test_multi_frame_rows_are_numbered_from_1_with_their_outputs(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet")
    rows = [r for r in fastdcm.read_metadata(out / "m.parquet").to_pylist() if r["source"].endswith("emri_small.dcm")]
    assert [r["frame"] for r in rows] == list(range(1, 11))
    assert len({r["output"] for r in rows}) == 10 and all(r["window_width"] for r in rows)


def test_csv_holds_the_same_rows_with_lists_joined_as_dicom_does(archive, tmp_path):
    fastdcm.convert([str(archive)], str(tmp_path / "p"), workers=0, quiet=True, metadata="m.parquet")
    fastdcm.convert([str(archive)], str(tmp_path / "c"), workers=0, quiet=True, metadata="sub/m.csv")
    text = (tmp_path / "c" / "sub" / "m.csv").read_text()
    assert "0.810547\\0.810547" in text
    parquet = rows_by_output(fastdcm.read_metadata(tmp_path / "p" / "m.parquet"))
    csv = rows_by_output(fastdcm.read_metadata(tmp_path / "c" / "sub" / "m.csv"))
    strip = lambda r: {k: v for k, v in r.items() if k != "source"}  # noqa: E731
    assert {k[1]: 0 for k in parquet} == {k[1]: 0 for k in csv}
    a = sorted((r["output"] or "", repr(sorted(strip(r).items()))) for r in parquet.values())
    b = sorted((r["output"] or "", repr(sorted(strip(r).items()))) for r in csv.values())
    assert a == b


def test_chosen_tags_keywords_tags_paths_and_additions():
    specs = parse_tags("Modality,0018,0050,SharedFunctionalGroupsSequence/PixelMeasuresSequence/PixelSpacing")
    assert [s.column for s in specs] == [
        "Modality", "SliceThickness", "SharedFunctionalGroupsSequence/PixelMeasuresSequence/PixelSpacing"
    ]
    assert parse_tags("(0018,0050)")[0].column == "SliceThickness" and parse_tags("00180050")[0].kind == "float"
    added = parse_tags("+StudyDate,+EchoTime")
    assert [s.column for s in added] == list(DEFAULT_TAGS) + ["StudyDate", "EchoTime"]
    added = parse_tags("+StudyDate,+0018,0081,+(0018,0091)")  # a tag added by number, with its comma
    assert [s.column for s in added][-3:] == ["StudyDate", "EchoTime", "EchoTrainLength"]
    assert parse_tags("0019,1001")[0].kind == "str"  # private: text, only when named


@pytest.mark.parametrize(
    "tags, says",
    [
        ("PatientName", "identifier"),
        ("PatientID", "identifier"),
        ("+AccessionNumber", "identifier"),
        ("OperatorsName", "identifier"),
        ("InstitutionName", "identifier"),
        ("NoSuchKeyword", "neither a DICOM keyword"),
        ("Modality/Rows", "not a sequence"),
        ("SharedFunctionalGroupsSequence", "ends at a sequence"),
        ("Rows,,Columns", "empty item"),
        ("Rows,+Columns", "not both"),
    ],
)
def test_identifiers_and_bad_selections_are_refused_before_any_work(tags, says, tmp_path):
    with pytest.raises(InvalidOptionError, match=says):
        parse_tags(tags)
    out = tmp_path / "out"
    with pytest.raises(InvalidOptionError, match=says):
        fastdcm.convert([get_testdata_file("CT_small.dcm")], str(out), workers=0, quiet=True, metadata="m.parquet", tags=tags)
    assert not out.exists()


def test_no_identifier_reaches_the_table(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.csv")
    import csv

    with open(out / "m.csv", newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    for name in FILES.values():
        ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName",
                        "PatientBirthDate", "OperatorsName"):
            value = str(ds.get(keyword) or "")
            if value:
                assert value not in cells, (name, keyword)  # no cell holds an identifier
    assert not [c for c in cells[:40] if "Date" in c or "Time" in c]  # no date unless asked for
    fastdcm.convert([str(archive)], str(tmp_path / "dated"), workers=0, quiet=True, metadata="m.csv", tags="+StudyDate")
    assert fastdcm.read_metadata(tmp_path / "dated" / "m.csv").column_names[-1] == "StudyDate"


@pytest.mark.parametrize(
    "options, says",
    [
        ({"metadata": "../m.parquet"}, "inside the output folder"),
        ({"metadata": "/elsewhere/m.parquet"}, "inside the output folder"),
        ({"metadata": "m.xlsx"}, ".parquet or .csv"),
        ({"tags": "Modality"}, "add --metadata"),
    ],
)
def test_table_options_are_usage_errors(options, says, tmp_path):
    with pytest.raises(InvalidOptionError, match=says):
        fastdcm.convert([get_testdata_file("CT_small.dcm")], str(tmp_path / "o"), workers=0, quiet=True, **options)


def test_resume_and_reruns_never_duplicate_rows(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet")
    first = fastdcm.read_metadata(out / "m.parquet").num_rows
    shutil.copy(get_testdata_file("MR_small.dcm"), archive / "mr" / "new.dcm")
    report = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet", resume=True)
    assert report.converted == 1
    table = fastdcm.read_metadata(out / "m.parquet")
    assert table.num_rows == first + 1
    keys = [(r["source"], r["frame"]) for r in table.to_pylist()]
    assert len(keys) == len(set(keys))
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet", on_exists="overwrite")
    again = fastdcm.read_metadata(out / "m.parquet")
    assert sorted(map(str, again.to_pylist())) != [] and again.num_rows == first + 1
    assert not [n for n in os.listdir(out) if n.endswith(".parts")]


def test_a_crashed_run_keeps_its_parts_and_resume_restores_lost_rows(archive, tmp_path, monkeypatch):
    """A run killed before the merge: the parts it wrote stay and are merged by the next run; the
    inputs whose rows were still buffered are redone by --resume (their outputs are their own)."""
    out = tmp_path / "out"
    # The run takes its inputs largest first (US1 1 row, liver 3, emri 10, CT 1, MR 1, broken 1): parts
    # of 4 leave CT's, MR's and broken's rows in the buffer the "kill" loses.
    monkeypatch.setattr(table_module, "ROWS_PER_PART", 4)
    # "killed" at the end: the rows still buffered are lost, nothing is merged
    monkeypatch.setattr(table_module.MetadataSink, "close", lambda self: None)
    first = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet", batch_size=1)
    assert not (out / "m.parquet").exists() and os.listdir(out / ".m.parquet.parts")
    monkeypatch.undo()
    again = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.parquet", resume=True)
    assert 0 < again.converted < first.converted  # only the inputs without rows
    table = fastdcm.read_metadata(out / "m.parquet")
    manifest_images = sum(len(r.outputs) for r in read_manifest(out / "manifest.jsonl") if r.status is Status.CONVERTED)
    keys = [(r["source"], r["frame"]) for r in table.to_pylist() if r["output"]]
    assert len(keys) == len(set(keys)) == first.frames <= manifest_images
    assert not (out / ".m.parquet.parts").exists()


def test_the_worker_sends_only_the_chosen_values(tmp_path):
    from fastdcm.options import RenderOptions
    from fastdcm.run.discover import Source
    from fastdcm.run.pipeline import Job, Pipeline
    from fastdcm.run.write import OutputRoot

    root = OutputRoot.create(str(tmp_path / "out"))
    job = Job(out=str(tmp_path / "out"), render=RenderOptions(), tmp_name=root.tmp_name, tags=parse_tags("Modality,Rows"))
    path = get_testdata_file("CT_small.dcm")
    st = os.stat(path)
    with Pipeline(job) as pipeline:
        [result] = pipeline.run_batch([Source(path=path, rel="ct.dcm", size=st.st_size, mtime_ns=st.st_mtime_ns)])
    assert result.metadata == {"Modality": "CT", "Rows": 128} and result.windows and len(result.windows) == 1


def test_from_the_command_line(archive, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["convert", str(archive), "-o", str(out), "--quiet", "--workers", "0", "--metadata", "m.parquet",
                   "--tags", "+EchoTime"])
    assert rc == 0  # broken.dcm holds no image: recorded, not a failure
    assert "EchoTime" in fastdcm.read_metadata(out / "m.parquet").column_names
    assert cli.main(["convert", str(archive), "-o", str(tmp_path / "o2"), "--quiet", "--tags", "PatientID",
                     "--metadata", "m.csv"]) == cli.EXIT_USAGE
    assert "identifier" in capsys.readouterr().err


def _test_files():
    import glob

    import pydicom.data

    folders = [os.path.dirname(get_testdata_file("CT_small.dcm"))]
    extra = pydicom.data.get_testdata_file("693_UNCR.dcm")
    if extra:
        folders.append(os.path.dirname(extra))
    return sorted(p for folder in folders for p in glob.glob(os.path.join(folder, "*")) if os.path.isfile(p))


def test_the_fast_header_values_equal_pydicoms_on_every_test_file():
    """The metadata values read from the header bytes by the compiled walk are pydicom's values; so
    are the identifiers every output name is checked against (the values stay in the worker)."""
    import warnings

    from fastdcm.errors import FastDcmError
    from fastdcm.run.privacy import NAME_GUARD
    from fastdcm.run.tags import _fast, extract

    selections = [
        parse_tags("+SamplesPerPixel,+EchoTime,+LargestImagePixelValue,+StudyDate,+SeriesDescription,+ImageType,"
                   "+FrameOfReferenceUID,+ContentTime,+SpacingBetweenSlices,+KVP,+ConvolutionKernel,+Exposure"),
        parse_tags(list(NAME_GUARD), allow_phi=True),
    ]
    for specs in selections:
        compared = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in _test_files():
                try:
                    image = fastdcm.open_image(path)
                    want = extract(image.dataset, specs)
                except FastDcmError:
                    continue
                got = _fast(image.header_bytes, specs)
                if got is not None:
                    compared += 1
                    assert got == want, os.path.basename(path)
        assert compared >= 40


@pytest.mark.parametrize("text", [
    b"1.5\\2\\-3e2", b" 1.5 \\ 2\\3 ", b"1\\\\2", b"1.5\\2\x00", b"1\\x", b"\\", b"1_0\\2", b"nan\\1", b"+4\\ -5",
])
@pytest.mark.parametrize("item", ["ImagePositionPatient", "0018,1310"])  # float and int list columns
def test_numbers_of_a_multi_valued_text_element_read_as_the_general_path_reads_them(text, item):
    """The header path's shortcut for numbers (each value straight through float() / int()) gives
    what the general one (padding stripped, empty values dropped, a malformed number null) gives."""
    from fastdcm.run.tags import _raw_value, _typed

    spec = parse_tags([item])[0]
    vr = "DS" if spec.kind == "float" else "IS"
    items = [v.strip(" \0") for v in text.decode("ascii").split("\\")]
    assert repr(_raw_value(text, vr, spec)) == repr(_typed(items, spec))  # (repr: nan equals nan)


def test_a_csv_table_written_with_allow_phi_reads_back(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, metadata="m.csv", tags="+PatientID",
                    allow_phi=True)
    table = fastdcm.read_metadata(out / "m.csv")
    ids = {r["PatientID"] for r in table.to_pylist() if r["output"]}
    assert str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).PatientID) in ids


def test_each_files_fast_values_are_its_own_whatever_came_before(tmp_path):
    """The fast path decodes only the values whose bytes differ from the last file's
    (``kernels.changed_values``): over files that repeat, alternate, switch to implicit VR, lose and
    regain an attribute and carry a value longer than the bytes kept, each row is that file's own
    (pydicom's), with the compiled kernels and with their twins; a row's lists are its own."""
    from pydicom.uid import ImplicitVRLittleEndian

    from fastdcm import kernels
    from fastdcm.run.tags import _fast, extract

    specs = parse_tags("+ImageType,+SliceLocation")
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for i in range(5):
        ds = copy.deepcopy(base)
        ds.InstanceNumber, ds.SOPInstanceUID = i + 1, f"1.2.3.{i}"
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
        ds.SliceLocation = 2.5 * i
        if i == 1:
            del ds.SliceLocation
        if i == 2:
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL", "REFORMATTED", "MAXIMUM_INTENSITY", "PROJECTION"]  # 71 bytes
        if i == 3:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, implicit_vr=i == 3, little_endian=True, enforce_file_format=True)
        paths.append(str(path))
    order = [0, 0, 1, 0, 2, 2, 3, 0, 3, 4, 1, 1, 4, 2]
    for twins in (False, True):
        with kernels.using_twins() if twins else contextlib.nullcontext():
            for i in order:
                image = fastdcm.open_image(paths[i])
                got, want = _fast(image.header_bytes, specs), extract(image.dataset, specs)
                assert got == want, (twins, i)
                assert got["InstanceNumber"] == i + 1 and (got["SliceLocation"] is None) == (i == 1)
                got["ImagePositionPatient"].append(99.0)  # the next row's list is not this one


def test_the_tables_arrow_buffers_come_from_the_system_allocator(archive, tmp_path, monkeypatch):
    """The rows' Arrow buffers are the C library's malloc's, not pyarrow's default pool (mimalloc:
    in a parent with forked workers its memory is shared copy-on-write and a table's end cost up
    to ~100 ms more): while the run's table is held, the system pool holds at least its bytes."""
    system = pa.system_memory_pool()
    held: list[tuple[int, int]] = []
    take = table_module.MetadataSink._take_buffer

    def taking(self):
        table = take(self)
        if table is not None:
            held.append((system.bytes_allocated(), table.nbytes))
        return table

    monkeypatch.setattr(table_module.MetadataSink, "_take_buffer", taking)
    before = system.bytes_allocated()
    fastdcm.convert([str(archive)], str(tmp_path / "out"), workers=0, quiet=True, metadata="m.parquet")
    assert held and held[-1][1] > 0
    assert held[-1][0] - before >= held[-1][1]


@pytest.mark.parametrize("gallery", [False, True])
def test_rows_held_as_record_batches_and_parts_make_the_same_table(archive, tmp_path, monkeypatch, gallery):
    """Rows become Arrow record batches while the run goes on (ROWS_PER_BATCH) and parts
    (ROWS_PER_PART): the table is the one a run holding every row to the end writes (with
    --gallery, settled and written in a thread beside the page's build)."""
    whole = tmp_path / "whole"
    fastdcm.convert([str(archive)], str(whole), workers=0, quiet=True, metadata="m.parquet", batch_size=1)
    monkeypatch.setattr(table_module, "ROWS_PER_BATCH", 2)
    monkeypatch.setattr(table_module, "ROWS_PER_PART", 5)
    made: list[int] = []
    convert = table_module.MetadataSink._convert

    def counted(self):
        made.append(len(self.rows))
        convert(self)

    monkeypatch.setattr(table_module.MetadataSink, "_convert", counted)
    pieces = tmp_path / "pieces"
    fastdcm.convert([str(archive)], str(pieces), workers=0, quiet=True, metadata="m.parquet", batch_size=1,
                    gallery=gallery)
    assert len(made) > 3 and max(made) <= 10  # (one input's rows, up to 10 frames, arrive at once)

    def rows(out: Path) -> list[dict]:
        got = fastdcm.read_metadata(out / "m.parquet").to_pylist()
        for r in got:
            r["source"] = os.path.relpath(r["source"], archive)
        return sorted(got, key=lambda r: (r["source"], r["frame"] or 0))

    assert rows(pieces) == rows(whole) and len(rows(whole)) == 17
    assert not (pieces / ".m.parquet.parts").exists()


def test_the_tables_end_beside_the_gallery_reports_its_failure_and_raises_a_bug(archive, tmp_path, monkeypatch):
    """With --gallery the table is merged and written in a thread while the page is built: a table
    that cannot be written is the run's manifest error as before (the gallery still made), and an
    unexpected error there is raised by convert, not lost in the thread."""
    from fastdcm.run.sinks import SinkFailed

    def full(self, last=None):
        raise SinkFailed("the metadata table cannot be written: No space left on device")

    monkeypatch.setattr(table_module.MetadataSink, "_merge", full)
    report = fastdcm.convert([str(archive)], str(tmp_path / "a"), workers=0, quiet=True, metadata="m.parquet", gallery=True)
    assert "No space left" in report.manifest_error and (tmp_path / "a" / "gallery" / "index.html").is_file()

    def bug(self, last=None):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(table_module.MetadataSink, "_merge", bug)
    with pytest.raises(ZeroDivisionError):
        fastdcm.convert([str(archive)], str(tmp_path / "b"), workers=0, quiet=True, metadata="m.parquet", gallery=True)
