"""naming.py: output names, sanitising, the output-root check and the conflict registry."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdcm.run.discover import Source
from fastdcm.run import write as writer
from fastdcm.errors import Status, UnsafePathError
from fastdcm.run.naming import (
    MAX_COMPONENT_BYTES,
    NameConflictError,
    NameRegistry,
    compile_template,
    output_name,
    sanitize_component,
    strip_dicom_extension,
)


def src(rel: str) -> Source:
    return Source(path="/in/" + rel, rel=rel, size=1, mtime_ns=1)


def name(template=None, *, rel="a/b/IM0001.dcm", frame=None, n_frames=1, ext="png", fields=None):
    return output_name(template, source=src(rel), frame=frame, n_frames=n_frames, extension=ext, fields=fields)


def assert_safe(result: str) -> None:
    parts = result.split("/")
    for part in parts:
        assert part and part not in (".", "..")
        assert not part.startswith(".")
        assert not part.endswith((".", " "))
        assert len(part.encode("utf-8")) <= 255
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in part)
        assert not set(part) & set('<>:"\\|?*')
        assert part.split(".")[0].upper() not in ("CON", "PRN", "AUX", "NUL", "COM1", "LPT1")


# --------------------------------------------------------------------------- default names


def test_default_mirrors_rel():
    assert name() == "a/b/IM0001.png"
    assert name(ext=".jpg") == "a/b/IM0001.jpg"


@pytest.mark.parametrize(
    "frame, n_frames, expected",
    [
        (None, 1, "a/b/IM0001.png"),
        (0, 1, "a/b/IM0001.png"),  # a single frame has no suffix
        (2, 3, "a/b/IM0001_f3.png"),
        (2, 120, "a/b/IM0001_f003.png"),
        (0, 10, "a/b/IM0001_f01.png"),
        (9, 10, "a/b/IM0001_f10.png"),
    ],
)
def test_frame_suffix_is_one_based_and_padded(frame, n_frames, expected):
    assert name(frame=frame, n_frames=n_frames) == expected


def test_frame_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        name(frame=3, n_frames=3)


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("IM0001", "IM0001.png"),
        ("x/MR1.IMA", "x/MR1.png"),
        ("x/MR1.ima", "x/MR1.png"),
        ("scan.dicom", "scan.png"),
        ("scan.DCM", "scan.png"),
        ("1.2.840.113619.2.55.3.1", "1.2.840.113619.2.55.3.1.png"),  # UID names keep their dots
        ("scan.001", "scan.001.png"),
        (".dcm", "_dcm.png"),
    ],
)
def test_extension_replacement(rel, expected):
    assert name(rel=rel) == expected


def test_strip_dicom_extension():
    assert strip_dicom_extension("a.Dcm") == "a"
    assert strip_dicom_extension("a.png") == "a.png"


def test_bad_extension():
    with pytest.raises(ValueError):
        name(ext="../png")


# --------------------------------------------------------------------------- templates


FIELDS = {"PatientID": "P01", "StudyInstanceUID": "1.2.3", "SeriesNumber": "4", "InstanceNumber": "17"}


def test_template_with_keywords():
    t = "{PatientID}/{StudyInstanceUID}/{SeriesNumber}_{InstanceNumber}"
    assert name(t, fields=FIELDS) == "P01/1.2.3/4_17.png"
    assert name(t, fields=FIELDS.get) == "P01/1.2.3/4_17.png"  # a callable works too
    assert compile_template(t).keywords == ("PatientID", "StudyInstanceUID", "SeriesNumber", "InstanceNumber")


def test_template_special_fields_and_padding():
    assert name("{stem}", rel="x/y/IM9.dcm") == "IM9.png"
    assert name("out/{rel}", rel="x/y/IM9.dcm") == "out/x/y/IM9.png"
    assert name("{InstanceNumber:04}", fields=FIELDS) == "0017.png"
    assert name("{InstanceNumber:04}", fields={"InstanceNumber": "n/a"}) == "n_a.png"
    assert name("{stem}_{frame}", frame=4, n_frames=12) == "IM0001_05.png"
    # no {frame} in the template: frames are told apart anyway
    assert name("{PatientID}", fields=FIELDS, frame=4, n_frames=12) == "P01_f05.png"


def test_template_missing_or_multivalued_fields():
    assert name("{PatientID}/{SeriesNumber}", fields={}) == "_/_.png"
    assert name("{ImageType}", fields={"ImageType": ["ORIGINAL", "PRIMARY"]}) == "ORIGINAL_PRIMARY.png"


@pytest.mark.parametrize(
    "template, message",
    [
        ("{PatientId}", "did you mean {PatientID}"),
        ("{NotAKeyword}", "neither a DICOM keyword"),
        ("{}", "empty placeholder"),
        ("{PatientID!r}", "conversions"),
        ("{PatientID:>30}", "only a zero-padding width"),
        ("{PatientID.x}", "neither a DICOM keyword"),
        ("/{PatientID}", "relative"),
        ("C:/{PatientID}", "relative"),
        ("{PatientID}/../{stem}", "'..'"),
        ("{PatientID", "literal braces"),
        ("", "empty"),
    ],
)
def test_template_validation(template, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        compile_template(template)


# --------------------------------------------------------------------------- attacks


ATTACKS = [
    "../../x",
    "..",
    ".",
    "/etc/passwd",
    "a\x00b",
    "x" * 300,
    "CON",
    "con.txt",
    "LPT1",
    "COM\u00b9",
    "Müller^Jürgen",
    "患者",
    "",
    "  ",
    "...",
    "trailing. . .",
    ".hidden",
    "a\\b\\..\\..\\c",
    "C:\\Windows",
    'a<b>c:"d|e?f*',
    "evil\u202etxt.exe",
    "line\nbreak\r\t",
    "\udcff\udcfe",  # undecodable bytes from a file name
    "😀" * 80,
]


@pytest.mark.parametrize("value", ATTACKS)
def test_tag_values_cannot_escape(value, tmp_path):
    result = name("{PatientID}/{SeriesDescription}_{InstanceNumber}", fields={
        "PatientID": value, "SeriesDescription": value, "InstanceNumber": value,
    })
    assert_safe(result)
    assert len(result.split("/")) == 2  # values never add folders
    root = writer.OutputRoot.create(str(tmp_path / "out"))
    root.write(result, b"x", replace=False)  # lands inside the root, nowhere else
    assert (tmp_path / "out" / result).read_bytes() == b"x"


@pytest.mark.parametrize("value", ATTACKS)
def test_rel_values_are_sanitised_too(value, tmp_path):
    result = name(rel=f"dir/{value}/IM1" if value else "IM1")
    assert_safe(result)
    writer._components(result)


def test_specific_sanitising():
    assert sanitize_component("../../x") == "___.._x"
    assert sanitize_component("/etc/passwd") == "_etc_passwd"
    assert sanitize_component("a\x00b") == "a_b"
    assert sanitize_component("CON") == "_CON"
    assert sanitize_component("con.txt") == "_con.txt"
    assert sanitize_component("CONSOLE") == "CONSOLE"
    assert sanitize_component("") == "_"
    assert sanitize_component("..") == "__"
    assert sanitize_component("Müller") == "Müller"
    assert sanitize_component("e\u0301") == "\u00e9"  # NFC


def test_long_values_are_cut_but_stay_distinct():
    a = sanitize_component("y" * 300 + "A")
    b = sanitize_component("y" * 300 + "B")
    assert a != b
    assert len(a.encode()) <= MAX_COMPONENT_BYTES and len(b.encode()) <= MAX_COMPONENT_BYTES
    assert a.startswith("y" * 50)
    wide = sanitize_component("😀" * 300)  # cut on a character boundary
    assert len(wide.encode()) <= MAX_COMPONENT_BYTES
    wide.encode("utf-8")  # no split character


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_sanitize_is_safe_and_idempotent(value):
    once = sanitize_component(value)
    assert_safe(once)
    assert "/" not in once
    assert sanitize_component(once) == once


@given(st.text(max_size=200), st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_values_stay_inside(tmp_path_factory, a, b):
    result = name("{PatientID}/{StudyID}_{frame}", fields={"PatientID": a, "StudyID": b}, frame=1, n_frames=2)
    assert_safe(result)
    writer._components(result)  # what the writer walks: plain components, no "..", no NUL


# --------------------------------------------------------------------------- names the writer refuses


@pytest.mark.parametrize("bad", ["../x.png", "/etc/passwd", "a/../../b.png", "", "a//b.png", "./a.png", "a\x00b"])
def test_the_writer_refuses_unsafe_names(bad, tmp_path):
    root = writer.OutputRoot.create(str(tmp_path / "out"))
    with pytest.raises(UnsafePathError) as info:
        root.write(bad, b"x", replace=False)
    assert info.value.status == Status.REFUSED
    root.remove_tmp()
    root.close()


def test_the_writer_refuses_symlinks_even_ones_that_stay_inside(tmp_path):
    """Stricter than a realpath check: a link is refused wherever it points (no race to win)."""
    out = tmp_path / "out"
    root = writer.OutputRoot.create(str(out))
    (out / "real").mkdir()
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="alias under the output folder is a symlink"):
        root.write("alias/IM1.png", b"x", replace=False)
    root.write("real/IM1.png", b"x", replace=False)
    assert (out / "real" / "IM1.png").read_bytes() == b"x"


def test_the_output_root_itself_may_be_a_symlink(tmp_path):
    """The path the user gives is theirs to choose; only what lies below it is walked without links."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    root = writer.OutputRoot.create(str(tmp_path / "link"))
    root.write("a/b.png", b"x", replace=False)
    assert (real / "a" / "b.png").read_bytes() == b"x"


# --------------------------------------------------------------------------- the registry


def test_registry_detects_conflicts():
    reg = NameRegistry()
    reg.claim("a/IM1.png", path="/in/1")
    with pytest.raises(NameConflictError) as info:
        reg.claim("a/IM1.png", path="/in/2")
    assert info.value.status == Status.NAME_CONFLICT
    assert info.value.path == "/in/2" and "a/IM1.png" in info.value.reason
    assert len(reg) == 1


def test_registry_is_case_and_normalisation_insensitive():
    reg = NameRegistry()
    reg.claim("Study/IM1.PNG")
    with pytest.raises(NameConflictError):
        reg.claim("study/im1.png")
    reg.claim("caf\u00e9.png")
    with pytest.raises(NameConflictError):
        reg.claim("cafe\u0301.png")  # NFD, as macOS stores it


def test_registry_claims_all_or_nothing():
    reg = NameRegistry()
    reg.claim(["m_f1.png", "m_f2.png"])
    with pytest.raises(NameConflictError):
        reg.claim(["n_f1.png", "m_f2.png"])
    assert "n_f1.png" not in reg  # the failed claim took nothing
    reg.claim("n_f1.png")
    with pytest.raises(NameConflictError):
        reg.claim(["x.png", "X.png"])  # a conflict inside one input
    reg.release("n_f1.png")
    reg.claim("n_f1.png")


def test_registry_stores_digests_not_names():
    reg = NameRegistry()
    reg.claim("a" * 200 + ".png")
    (key,) = reg._keys
    assert isinstance(key, bytes) and len(key) == 16


def test_frames_of_one_input_never_conflict():
    reg = NameRegistry()
    for template in (None, "{PatientID}", "{PatientID}_{frame}"):
        reg.claim([name(template, fields=FIELDS, frame=i, n_frames=30, rel=f"t{template}") for i in range(30)])


def test_frame_width_multi_values_and_the_extension_in_templates():
    from pydicom.multival import MultiValue

    assert name("{SOPInstanceUID}_{frame:03}", fields={"SOPInstanceUID": "1.2"}, frame=4, n_frames=10) == "1.2_005.png"
    image_type = MultiValue(str, ["ORIGINAL", "PRIMARY", "AXIAL"])  # what pydicom gives for a multi-valued CS
    assert name("{ImageType}/{stem}", fields={"ImageType": image_type}, rel="IM1") == "ORIGINAL_PRIMARY_AXIAL/IM1.png"
    # the output extension written into the template is not doubled, before or after a frame number
    assert name("{SOPInstanceUID}.png", fields={"SOPInstanceUID": "1.2.3"}) == "1.2.3.png"
    assert name("{SOPInstanceUID}.png", fields={"SOPInstanceUID": "1.2.3"}, frame=8, n_frames=10) == "1.2.3_f09.png"
