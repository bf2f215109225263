"""Privacy by default (issue 10, requirement 2, part): no identifier in names, the table, the manifest
or what the command prints, unless asked; keyed pseudonyms for Patient ID and UIDs."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm.errors import InvalidOptionError
from fastdcm.run.sinks.manifest import read_manifest

KEY = "a-long-enough-secret-key"
FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb.dcm", "emri_small.dcm", "US1_J2KR.dcm"]
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "ReferringPhysicianName", "OperatorsName", "InstitutionAddress")


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(FILES):
        shutil.copy(get_testdata_file(name), src / f"im{i}.dcm")
    return src


def identifiers() -> set[bytes]:
    """Every identifying value of the test files, as bytes (long enough not to match by chance)."""
    found, public = set(), ""
    for name in FILES:
        ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
        public += f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')} "
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword) or "").strip()
            if len(value) >= 6:
                found.add(value)
    # an institution named like the scanner's manufacturer ("TOSHIBA"): the manufacturer is not an identifier
    found = {v.encode() for v in found if v not in public}
    assert len(found) >= 4
    return found


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def expected_hash(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:20]


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_nothing_a_default_run_writes_or_prints_carries_an_identifier(archive, tmp_path, fmt):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fastdcm", "convert", str(archive), "-o", str(out), "--format", fmt,
         "--metadata", "m.parquet", "--gallery", "--workers", "2"],
        capture_output=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    produced = every_byte(out) + proc.stdout + proc.stderr
    for value in identifiers():
        assert value not in produced, value
    assert (out / "gallery" / "index.html").is_file() and list((out / "gallery" / "sheets").iterdir())
    images = [p for p in out.rglob(f"*.{'jpg' if fmt == 'jpeg' else 'png'}") if "gallery" not in p.parts]
    assert len(images) >= len(FILES)
    for image in images:  # no text chunks in the images (tEXt, zTXt, iTXt, COM)
        data = image.read_bytes()
        assert b"tEXt" not in data and b"zTXt" not in data and b"iTXt" not in data
        if fmt == "jpeg":
            assert b"\xff\xfe" not in data[: data.find(b"\xff\xda")]  # no COM segment before the scan


def test_identifiers_in_names_need_a_flag(archive, tmp_path):
    for template in ("{PatientID}/{stem}", "{PatientName}/{stem}", "{AccessionNumber}_{stem}", "{OperatorsName}"):
        with pytest.raises(InvalidOptionError, match="identifier"):
            fastdcm.convert([str(archive)], str(tmp_path / "no"), workers=0, quiet=True, name=template)
    assert not (tmp_path / "no").exists()
    report = fastdcm.convert([str(archive)], str(tmp_path / "phi"), workers=0, quiet=True,
                             name="{PatientID}/{stem}", allow_phi=True)
    assert report.ok and "--allow-phi" in report.summary()
    assert (tmp_path / "phi" / str(pydicom.dcmread(archive / "im0.dcm").PatientID)).is_dir()


def test_pseudonyms_replace_patient_ids_and_uids_in_names_and_the_table(archive, tmp_path):
    out = tmp_path / "out"
    report = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, pseudonymize=KEY,
                             name="{PatientID}/{SeriesInstanceUID}/{stem}", metadata="m.parquet", tags="+PatientID",
                             gallery=True)
    assert report.ok
    rows = fastdcm.read_metadata(out / "m.parquet").to_pylist()
    for row in rows:
        ds = pydicom.dcmread(row["source"], stop_before_pixels=True)
        pid, series = expected_hash(str(ds.PatientID)) if ds.PatientID else None, expected_hash(str(ds.SeriesInstanceUID))
        assert row["output"].startswith(f"{pid or '_'}/{series}/")  # an empty Patient ID stays empty: "_"
        assert row["PatientID"] == pid and row["SOPInstanceUID"] == expected_hash(str(ds.SOPInstanceUID))
        assert row["Modality"] == ds.Modality  # what is not identifying stays
    produced = every_byte(out)
    for value in identifiers():
        assert value not in produced
    for row in rows:  # the gallery groups by the pseudonyms, never the UIDs
        ds = pydicom.dcmread(row["source"], stop_before_pixels=True)
        assert str(ds.StudyInstanceUID).encode() not in produced and str(ds.SeriesInstanceUID).encode() not in produced
    summary = (out / "gallery" / "data" / "summary.js").read_text()
    assert expected_hash(str(pydicom.dcmread(archive / "im0.dcm").StudyInstanceUID)) in summary
    assert KEY.encode() not in produced and KEY not in report.resume_command
    assert "YOUR-KEY" in report.resume_command


def test_pseudonyms_are_stable_for_a_key_and_differ_between_keys(archive, tmp_path, monkeypatch):
    names = {}
    monkeypatch.setenv("FASTDCM_PSEUDONYM_KEY", "another-key-of-16-chars")
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(KEY + "\n")
    for label, key in (("a", KEY), ("b", f"@{keyfile}"), ("c", "env")):
        out = tmp_path / label
        fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, pseudonymize=key, name="{PatientID}/{stem}")
        names[label] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names["a"] == names["b"] != names["c"]


def test_a_new_key_is_a_new_fingerprint_for_resume(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, pseudonymize=KEY, name="{PatientID}/{stem}")
    again = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, pseudonymize=KEY,
                            name="{PatientID}/{stem}", resume=True)
    assert again.converted == 0
    other = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, pseudonymize="x" * 20,
                            name="{PatientID}/{stem}", resume=True)
    assert other.converted == len(FILES)
    assert KEY not in (out / "manifest.jsonl").read_text()
    assert all(r.fingerprint for r in read_manifest(out / "manifest.jsonl") if r.status.value == "converted")


@pytest.mark.parametrize("key, says", [("short", "at least 16"), ("env", "FASTDCM_PSEUDONYM_KEY"), ("@/nope/key", "cannot be read")])
def test_bad_keys_are_usage_errors(key, says, tmp_path, monkeypatch):
    monkeypatch.delenv("FASTDCM_PSEUDONYM_KEY", raising=False)
    with pytest.raises(InvalidOptionError, match=says):
        fastdcm.convert([get_testdata_file("CT_small.dcm")], str(tmp_path / "o"), workers=0, quiet=True, pseudonymize=key)
    assert not (tmp_path / "o").exists()


def test_the_key_is_not_in_what_the_command_prints(archive, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fastdcm", "convert", str(archive), "-o", str(out), "--pseudonymize", KEY,
         "--name", "{PatientID}/{stem}", "--workers", "0", "-v"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert KEY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("policy", ["keep", "skip", "list"])
def test_burned_in_annotation_keep_skip_or_list(archive, tmp_path, policy):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(archive / "burned.dcm")
    out = tmp_path / "out"
    report = fastdcm.convert([str(archive)], str(out), workers=0, quiet=True, burned_in=policy, metadata="m.parquet")
    rows = {Path(r["source"]).name: r for r in fastdcm.read_metadata(out / "m.parquet").to_pylist()}
    assert rows["burned.dcm"]["BurnedInAnnotation"] == "YES"  # listed in the table whatever the policy
    assert report.ok
    converted = rows["burned.dcm"]["status"] == "converted"
    assert converted is (policy != "skip")
    if policy == "skip":
        assert "burned-in" in rows["burned.dcm"]["reason"] and not list(out.glob("burned*"))
    assert ("burned-in annotation" in report.summary()) is (policy != "keep")
    assert ("burned.dcm" in report.summary()) is (policy != "keep")


def test_a_folder_named_after_the_patient_is_not_mirrored_into_the_names(tmp_path):
    from fastdcm.errors import Status

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "DOE^JOHN", "MRN12345", "ACC987654"
    src = tmp_path / "src"
    for folder in ("Doe_John", "mrn12345-ct", "x/acc987654", "clean"):
        (src / folder).mkdir(parents=True)
        ds.save_as(src / folder / "im.dcm")
    (src / "clean" / "john.dcm").write_bytes((src / "clean" / "im.dcm").read_bytes())  # a given name alone: kept
    out = tmp_path / "out"
    report = fastdcm.convert([str(src)], str(out), workers=0, quiet=True)
    assert report.counts[Status.IDENTIFIER_IN_NAME] == 3 and report.counts[Status.CONVERTED] == 2
    records = {Path(r.source).parent.name: r for r in read_manifest(out / "manifest.jsonl")}
    assert "PatientName" in records["Doe_John"].reason and "--pseudonymize" in records["Doe_John"].reason
    assert "PatientID" in records["mrn12345-ct"].reason and "AccessionNumber" in records["acc987654"].reason
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["clean/im.png", "clean/john.png"]
    # with a key: the folder is its keyed hash (the same folder, the same hash: a patient stays grouped)
    keyed = tmp_path / "keyed"
    report = fastdcm.convert([str(src)], str(keyed), workers=0, quiet=True, pseudonymize=KEY)
    assert report.ok
    names = sorted(p.relative_to(keyed).as_posix() for p in keyed.rglob("*.png"))
    assert f"{expected_hash('Doe_John')}/im.png" in names and f"x/{expected_hash('acc987654')}/im.png" in names
    assert not any("doe" in n.lower() or "12345" in n for n in names)
    # asked for: as they are
    report = fastdcm.convert([str(src)], str(tmp_path / "phi"), workers=0, quiet=True, allow_phi=True)
    assert report.ok and (tmp_path / "phi" / "Doe_John" / "im.png").is_file()


def test_an_identifier_a_name_template_brings_is_told_as_the_templates(tmp_path):
    """A --name field whose value shows the patient (a Series Description "DOE head") is caught
    too; the reason says the name --name makes carries it, not the input path."""
    from fastdcm.errors import Status

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.SeriesDescription = "DOE^JOHN", "DOE head"
    src = tmp_path / "src"
    src.mkdir()
    ds.save_as(src / "im.dcm")
    out = tmp_path / "out"
    report = fastdcm.convert([str(src)], str(out), workers=0, quiet=True, name="{SeriesDescription}/{stem}")
    assert report.counts[Status.IDENTIFIER_IN_NAME] == 1
    (record,) = read_manifest(out / "manifest.jsonl")
    assert "PatientName" in record.reason and "--name" in record.reason and "input path" not in record.reason


def test_shards_do_not_carry_the_source_path(tmp_path):
    """Shards are the dataset that gets shared: with --pseudonymize a folder named after the
    patient is a keyed hash in the keys, and no sample names its source path."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "DOE^JOHN", "MRN12345"
    src = tmp_path / "src"
    for folder in ("Doe_John", "mrn12345-ct"):
        (src / folder).mkdir(parents=True)
        ds.save_as(src / folder / "im.dcm")
    out = tmp_path / "out"
    for container in ("webdataset", "parquet"):
        report = fastdcm.convert([str(src)], str(out / container), workers=0, quiet=True, pseudonymize=KEY,
                                 container=container)
        assert report.ok and report.converted == 2
        shards = every_byte(out / container / "shards")
        if container == "parquet":  # (compressed: the decoded text columns are what a reader sees)
            import pyarrow.parquet as pq

            shards = b"".join(
                str(pq.read_table(p).drop_columns(["image"]).to_pylist()).encode()
                for p in sorted((out / container / "shards").iterdir())
            )
        shards = shards.lower()
        assert shards and b"doe" not in shards and b"mrn12345" not in shards and b"im.dcm" not in shards
        assert expected_hash("Doe_John").encode() in shards


def test_the_known_entries_are_pydicoms_dictionary():
    """The entries a default run parses without pydicom (privacy.KNOWN) are the data dictionary's."""
    from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

    from fastdcm.run.privacy import KNOWN, NAME_GUARD

    from fastdcm.gallery import GALLERY_TAGS
    from fastdcm.run.tags import DEFAULT_TAGS

    assert set(NAME_GUARD) | set(DEFAULT_TAGS) | set(GALLERY_TAGS) <= set(KNOWN)
    for keyword, (tag, vr, vm) in KNOWN.items():
        assert (tag, vr, vm) == (tag_for_keyword(keyword), dictionary_VR(tag), dictionary_VM(tag)), keyword
