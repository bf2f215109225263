"""discover.py: inputs -> Source / Rejected records, streamed, DICOM recognised by content."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.fileset import FileSet

from fastdcm.run import discover
from fastdcm.run.discover import (
    DICOM,
    DICOMDIR,
    MISSING_STATUS,
    OTHER,
    DiscoveryStats,
    Rejected,
    Source,
    classify_head,
    iter_sources,
    sniff,
)
from fastdcm.errors import Status

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "dicom-fuzzing-corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpora/dicom-fuzzing-corpus")

CT = get_testdata_file("CT_small.dcm")  # preamble + DICM
MR = get_testdata_file("MR_small.dcm")
IMPLICIT_NO_META = get_testdata_file("rtstruct.dcm")  # no preamble, implicit VR LE
BIG_ENDIAN_NO_META = get_testdata_file("ExplVR_BigEndNoMeta.dcm")
DICOMDIR_PATH = get_testdata_file("DICOMDIR")


def sources(items, **kwargs):
    return [r for r in iter_sources(items, **kwargs) if isinstance(r, Source)]


def rejected(items, **kwargs):
    return [r for r in iter_sources(items, **kwargs) if isinstance(r, Rejected)]


def assert_rel_ok(rel: str) -> None:
    assert rel and not rel.startswith("/") and "\\" not in rel
    assert ".." not in rel.split("/") and "" not in rel.split("/")


# --------------------------------------------------------------------------- sniffing


def test_classify_head_by_content():
    assert sniff(CT) == DICOM
    assert sniff(IMPLICIT_NO_META) == DICOM
    assert sniff(BIG_ENDIAN_NO_META) == DICOM
    assert sniff(get_testdata_file("ExplVR_LitEndNoMeta.dcm")) == DICOM
    assert sniff(DICOMDIR_PATH) == DICOMDIR
    assert sniff(get_testdata_file("DICOMDIR-bigEnd")) == DICOMDIR
    assert classify_head(b"") == OTHER
    assert classify_head(b"\x08\x00") == OTHER
    assert classify_head(b"Test Files used for testing pydicom" * 10) == OTHER
    assert classify_head(b"\x89PNG\r\n\x1a\n" + bytes(200)) == OTHER
    assert classify_head(bytes(128) + b"DICM") == DICOM
    # a group 0008 element with an odd, huge implicit length is not plausible
    assert classify_head(b"\x08\x00\x05\x00\xff\xff\xff\x7f" + bytes(20)) == OTHER


def test_sniff_never_raises_on_real_and_malformed_files():
    files = [f for f in get_testdata_files() if os.path.isfile(f)]
    files += [str(p) for p in CORPUS.rglob("*") if p.is_file()]
    assert len(files) > 800
    kinds = {f: sniff(f) for f in files}
    assert set(kinds.values()) <= {DICOM, DICOMDIR, OTHER}
    assert kinds[CT] == DICOM


# --------------------------------------------------------------------------- directories


@pytest.fixture
def mixed_tree(tmp_path):
    """DICOM files under unusual names, plus files that are clearly not DICOM."""
    root = tmp_path / "archive"
    (root / "study" / "series").mkdir(parents=True)
    shutil.copy(CT, root / "study" / "series" / "IM0001")  # extension-less
    shutil.copy(MR, root / "study" / "series" / "MR0001.IMA")  # Siemens .IMA
    shutil.copy(IMPLICIT_NO_META, root / "study" / "noheader")  # no preamble
    shutil.copy(BIG_ENDIAN_NO_META, root / "bigendian")
    (root / "README.txt").write_text("not an image\n")
    (root / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (root / "empty").write_bytes(b"")
    (root / "claims.dcm").write_text("a .dcm that is not DICOM deserves a status\n")
    shutil.copy(DICOMDIR_PATH, root / "DICOMDIR")
    return root


def test_directory_walk_finds_dicom_by_content(mixed_tree):
    stats = DiscoveryStats()
    found = sources([str(mixed_tree)], stats=stats)
    rels = sorted(s.rel for s in found)
    assert rels == ["bigendian", "claims.dcm", "study/noheader", "study/series/IM0001", "study/series/MR0001.IMA"]
    assert stats.non_dicom == 3  # README.txt, thumb.png, empty
    assert stats.dicomdirs == 1
    assert stats.sources == 5 and stats.rejected == 0 and stats.discovered == 5
    for s in found:
        assert os.path.isabs(s.path) and s.root == str(mixed_tree)
        st = os.stat(s.path)
        assert (s.size, s.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_an_excluded_folder_is_not_walked(tmp_path):
    """``exclude``: a folder under an input that the walk does not enter (convert's output folder);
    told by device and inode, so another spelling of its path is the same folder. A named input is
    walked even when excluded (the output folder can be the input folder)."""
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "out" / "deep").mkdir(parents=True)
    shutil.copy(CT, data / "a" / "1.dcm")
    shutil.copy(CT, data / "out" / "copied.dcm")
    (data / "out" / "deep" / "1.png").write_bytes(b"\x89PNG")
    stats = DiscoveryStats()
    spelled = str(tmp_path / "data" / "a" / ".." / "out")
    assert [s.rel for s in sources([str(data)], stats=stats, exclude=[spelled])] == ["a/1.dcm"]
    assert stats.non_dicom == 0
    assert sorted(s.rel for s in sources([str(data)])) == ["a/1.dcm", "out/copied.dcm"]
    assert [s.rel for s in sources([str(data / "out")], exclude=[data / "out"])] == ["copied.dcm"]
    assert [s.rel for s in sources([str(data)], exclude=[tmp_path / "not-there"])] != []
    # a glob's matches under it are left out too (a re-run of convert 'data/**/*' -o data/out)
    found = iter_sources([str(data / "**" / "*")], exclude=[data / "out"])
    assert sorted(r.path for r in found) == [str(data / "a" / "1.dcm")]


def test_include_non_dicom_yields_them(mixed_tree):
    stats = DiscoveryStats()
    found = sources([str(mixed_tree)], include_non_dicom=True, stats=stats)
    rels = {s.rel for s in found}
    assert {"README.txt", "thumb.png", "empty"} <= rels
    assert "DICOMDIR" not in rels  # a DICOMDIR is never an image input of a walk
    assert stats.non_dicom == 0 and stats.discovered == len(found) == 8


def test_walk_is_sorted_depth_first_and_deterministic(mixed_tree):
    first = [s.rel for s in sources([str(mixed_tree)])]
    assert first == [s.rel for s in sources([str(mixed_tree)])]
    assert first == ["bigendian", "claims.dcm", "study/noheader", "study/series/IM0001", "study/series/MR0001.IMA"]


def test_walk_streams(tmp_path, monkeypatch):
    for i in range(30):
        d = tmp_path / f"d{i:02d}"
        d.mkdir()
        shutil.copy(CT, d / "IM1")
    calls = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(discover.os, "scandir", counting_scandir)
    gen = iter_sources([str(tmp_path)])
    first = next(gen)
    assert isinstance(first, Source) and first.rel == "d00/IM1"
    assert len(calls) <= 2  # the root and the first subdirectory, not the whole tree
    assert len([first, *gen]) == 30


def test_symlinked_directories_are_not_followed(tmp_path):
    (tmp_path / "real").mkdir()
    shutil.copy(CT, tmp_path / "real" / "IM1")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    stats = DiscoveryStats()
    assert [s.rel for s in sources([str(tmp_path)], stats=stats)] == ["real/IM1"]
    assert stats.other == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_unreadable_directory_is_reported_and_walk_goes_on(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(CT, tmp_path / "b" / "IM1")
    os.chmod(tmp_path / "a", 0)
    try:
        out = list(iter_sources([str(tmp_path)]))
    finally:
        os.chmod(tmp_path / "a", 0o755)
    assert [type(r) for r in out] == [Rejected, Source]
    assert out[0].status == MISSING_STATUS and "cannot list directory" in out[0].reason


# --------------------------------------------------------------------------- explicit files, missing inputs


def test_explicit_file_is_always_yielded(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    found = sources([str(txt)])
    assert [s.rel for s in found] == ["notes.txt"]
    assert found[0].path == str(txt)


def test_single_file_rel_is_its_name():
    (s,) = sources([CT])
    assert s.rel == "CT_small.dcm" and s.path == CT


def test_missing_input_is_rejected_not_raised(tmp_path):
    stats = DiscoveryStats()
    out = list(iter_sources([str(tmp_path / "nope"), CT, ""], stats=stats))
    assert [type(r) for r in out] == [Rejected, Source, Rejected]
    assert out[0].status == MISSING_STATUS == Status.NOT_DICOM
    assert "no such file" in out[0].reason
    assert stats.discovered == 3 and stats.rejected == 2


def test_records_are_small_and_picklable():
    (s,) = sources([CT])
    assert pickle.loads(pickle.dumps(s)) == s
    r = Rejected(path="x", status=Status.REFUSED, reason="why")
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(AttributeError):
        s.path = "other"  # frozen


def test_several_directories_are_prefixed_with_their_names(tmp_path):
    for name in ("site_a", "site_b"):
        (tmp_path / name).mkdir()
        shutil.copy(CT, tmp_path / name / "IM1")
    rels = [s.rel for s in sources([str(tmp_path / "site_a"), str(tmp_path / "site_b")])]
    assert rels == ["site_a/IM1", "site_b/IM1"]
    assert [s.rel for s in sources([str(tmp_path / "site_a")])] == ["IM1"]


# --------------------------------------------------------------------------- duplicates


def test_duplicates_through_overlapping_inputs_are_yielded_once(mixed_tree):
    stats = DiscoveryStats()
    pattern = str(mixed_tree / "study" / "**" / "*")
    found = sources([str(mixed_tree), pattern, str(mixed_tree / "bigendian")], stats=stats)
    paths = [s.path for s in found]
    assert len(paths) == len(set(paths)) == 5
    # the glob matches noheader, the folder series (walked: 2 files) and its 2 files again;
    # then bigendian explicitly: 6 duplicates, none yielded
    assert stats.duplicates == 6


def test_symlink_to_a_file_is_the_same_file(tmp_path):
    shutil.copy(CT, tmp_path / "IM1")
    (tmp_path / "link").symlink_to(tmp_path / "IM1")
    assert len(sources([str(tmp_path)], dedupe=True)) == 1
    # single directory input: no seen-set by default (memory stays flat), both names come
    assert len(sources([str(tmp_path)])) == 2


# --------------------------------------------------------------------------- globs


def test_glob_patterns(mixed_tree, monkeypatch):
    monkeypatch.chdir(mixed_tree.parent)
    found = sources(["archive/**/*"])  # recursive: every file, explicit, so non-DICOM too
    rels = {s.rel for s in found}
    assert {"study/series/IM0001", "study/series/MR0001.IMA", "README.txt"} <= rels
    assert all(os.path.isabs(s.path) for s in found)
    assert [s.rel for s in sources(["archive/study/series/*.IMA"])] == ["MR0001.IMA"]
    assert [s.rel for s in sources(["archive/study/series/IM000[0-9]"])] == ["IM0001"]
    assert [s.rel for s in sources(["archive/study/?oheader"])] == ["noheader"]
    for s in found:
        assert_rel_ok(s.rel)


def test_glob_matching_a_directory_walks_it(mixed_tree):
    rels = [s.rel for s in sources([str(mixed_tree / "stu*")])]
    assert rels == ["study/noheader", "study/series/IM0001", "study/series/MR0001.IMA"]


def test_glob_without_match_is_reported(tmp_path):
    (r,) = rejected([str(tmp_path / "*.dcm")])
    assert r.status == MISSING_STATUS and "no file matches" in r.reason


def test_literal_name_with_brackets_is_not_a_glob(tmp_path):
    odd = tmp_path / "IM[1].dcm"
    shutil.copy(CT, odd)
    assert [s.path for s in sources([str(odd)])] == [str(odd)]


# --------------------------------------------------------------------------- lists and stdin


def test_list_file(mixed_tree, tmp_path, monkeypatch):
    lst = mixed_tree / "list.txt"
    lst.write_text(
        "# a comment\n"
        "\n"
        "study/series/IM0001\n"
        "   study/series/MR0001.IMA   \n"
        f"{mixed_tree / 'bigendian'}\n"  # absolute
        "missing/file\n"
        "study\n"  # a directory: walked
    )
    monkeypatch.chdir(tmp_path)  # relative lines resolve against the list, not the cwd
    out = list(iter_sources([f"@{lst}"]))
    src = [r for r in out if isinstance(r, Source)]
    rej = [r for r in out if isinstance(r, Rejected)]
    assert [s.rel for s in src] == [  # mirrored from the folder the listed paths have in common
        "study/series/IM0001",
        "study/series/MR0001.IMA",
        "bigendian",
        "study/noheader",  # the directory line; its other files were listed already
    ]
    assert [r.path for r in rej] == [str(mixed_tree / "missing" / "file")]
    for s in src:
        assert_rel_ok(s.rel)


def test_absolute_paths_in_a_list_are_mirrored_from_their_common_folder(mixed_tree, tmp_path):
    """Not from the file system root (out/home/me/.../study/...), wherever the list is."""
    lst = tmp_path / "elsewhere" / "list.txt"
    lst.parent.mkdir()
    lst.write_text(f"{mixed_tree / 'study' / 'series' / 'IM0001'}\n{mixed_tree / 'study' / 'noheader'}\n")
    assert [s.rel for s in sources([f"@{lst}"])] == ["series/IM0001", "noheader"]
    one = tmp_path / "one.txt"
    one.write_text(f"{mixed_tree / 'study' / 'series' / 'IM0001'}\n")
    assert [s.rel for s in sources([f"@{one}"])] == ["IM0001"]
    mixed = tmp_path / "mixed.txt"  # far apart: mirrored from the folder they still share (maybe the root)
    mixed.write_text(f"{mixed_tree / 'bigendian'}\n{CT}\n")
    base = os.path.commonpath([str(mixed_tree), os.path.dirname(CT)])
    assert [s.rel for s in sources([f"@{mixed}"])] == [
        os.path.relpath(mixed_tree / "bigendian", base), os.path.relpath(CT, base)
    ]


def test_missing_list_file(tmp_path):
    (r,) = rejected([f"@{tmp_path / 'nope.txt'}"])
    assert "cannot open list file" in r.reason


def test_stdin(mixed_tree, monkeypatch):
    monkeypatch.chdir(mixed_tree)
    stream = io.StringIO("study/series/IM0001\n# skip\n\n" + str(mixed_tree / "bigendian") + "\n")
    assert [s.rel for s in sources(["-"], stdin=stream)] == ["study/series/IM0001", "bigendian"]


def test_stdin_absolute_paths_from_elsewhere_are_mirrored_from_their_common_folder(mixed_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO(f"{mixed_tree / 'study' / 'series' / 'IM0001'}\n{mixed_tree / 'study' / 'noheader'}\n")
    assert [s.rel for s in sources(["-"], stdin=stream)] == ["series/IM0001", "noheader"]


def test_stdin_lookahead_bounds_what_is_read_before_the_first_path(mixed_tree, monkeypatch):
    """Beyond the lookahead a path outside the common folder keeps its full path."""
    monkeypatch.setattr(discover, "STDIN_LOOKAHEAD", 1)
    stream = io.StringIO(f"{mixed_tree / 'study' / 'noheader'}\n{mixed_tree / 'bigendian'}\n")
    assert [s.rel for s in sources(["-"], stdin=stream)] == ["noheader", str(mixed_tree / "bigendian").lstrip("/")]


@pytest.mark.parametrize("binary", [True, False])
def test_nul_separated_paths_are_taken_exactly(mixed_tree, tmp_path, monkeypatch, binary):
    """find -print0 | fastdcm convert -0 -: names with spaces, newlines, '#' and non-UTF-8 bytes."""
    odd_names = [" lead and trail ", "new\nline", "#hash", os.fsdecode(b"latin\xe9")]
    data = (mixed_tree / "bigendian").read_bytes()
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in odd_names:
        (folder / name).write_bytes(data)
    payload = b"".join(os.fsencode(str(folder / n)) + b"\0" for n in odd_names)
    stream = io.TextIOWrapper(io.BytesIO(payload), encoding="utf-8", errors="surrogateescape") if binary else io.StringIO(os.fsdecode(payload))
    monkeypatch.chdir(tmp_path)
    assert [s.rel for s in sources(["-"], stdin=stream, null=True)] == odd_names
    lst = tmp_path / "list0"
    lst.write_bytes(payload[:-1])  # no final NUL: the last path still counts
    assert [s.rel for s in sources([f"@{lst}"], null=True)] == odd_names


# --------------------------------------------------------------------------- DICOMDIR


def test_real_dicomdir_yields_every_referenced_file():
    stats = DiscoveryStats()
    found = sources([DICOMDIR_PATH], stats=stats)
    fileset = FileSet(pydicom.dcmread(DICOMDIR_PATH))
    assert len(found) == len(fileset) == 31
    assert sorted(s.path for s in found) == sorted(str(i.path) for i in fileset)
    root = os.path.dirname(DICOMDIR_PATH)
    for s in found:
        assert s.root == root
        assert s.rel == os.path.relpath(s.path, root).replace(os.sep, "/")
        assert_rel_ok(s.rel)
    assert stats.discovered == 31 and stats.rejected == 0


def _copy_fileset(tmp_path: Path) -> Path:
    src = Path(DICOMDIR_PATH).parent
    dst = tmp_path / "cd"
    dst.mkdir()
    for sub in ("77654033", "98892001", "98892003"):
        shutil.copytree(src / sub, dst / sub)
    shutil.copy(DICOMDIR_PATH, dst / "DICOMDIR")
    return dst


def _rewrite_file_ids(dicomdir: Path, new_ids: dict[int, object]) -> list[list[str]]:
    """Set the ReferencedFileID of the n-th referencing record; return the original IDs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # '..' is not a valid CS value
        ds = pydicom.dcmread(dicomdir)
        referencing = [r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
        originals = [list(r.ReferencedFileID) for r in referencing]
        for index, value in new_ids.items():
            referencing[index].ReferencedFileID = value
        ds.save_as(dicomdir, enforce_file_format=True)
    return originals


def test_dicomdir_record_outside_the_root_is_refused_and_the_rest_converts(tmp_path):
    root = _copy_fileset(tmp_path)
    (tmp_path / "secret").write_bytes(Path(CT).read_bytes())
    (root / "77654033" / "escape").symlink_to(tmp_path / "secret")
    originals = _rewrite_file_ids(
        root / "DICOMDIR",
        {
            0: ["..", "secret"],  # parent directory
            1: "/etc/passwd",  # absolute
            2: ["77654033", "escape"],  # a symlink inside the root pointing outside
            3: ["..\\..\\etc", "passwd"],  # backslashes inside a component
        },
    )
    stats = DiscoveryStats()
    out = list(iter_sources([str(root / "DICOMDIR")], stats=stats))
    refused = [r for r in out if isinstance(r, Rejected)]
    found = [r for r in out if isinstance(r, Source)]
    assert len(refused) == 4
    assert all(r.status == Status.REFUSED for r in refused)
    assert all("outside the file-set root" in r.reason for r in refused)
    assert len(found) == 31 - 4  # every other record still comes through
    expected = sorted("/".join(ids) for ids in originals[4:])
    assert sorted(s.rel for s in found) == expected
    for s in found:
        assert os.path.realpath(s.path).startswith(str(root.resolve()) + os.sep)
    assert stats.discovered == len(out) == 31


def test_dicomdir_missing_file_is_reported(tmp_path):
    root = _copy_fileset(tmp_path)
    originals = _rewrite_file_ids(root / "DICOMDIR", {})
    (root.joinpath(*originals[0])).unlink()
    out = list(iter_sources([str(root / "DICOMDIR")]))
    assert isinstance(out[0], Rejected) and out[0].status == MISSING_STATUS
    assert "referenced by DICOMDIR" in out[0].reason
    assert sum(isinstance(r, Source) for r in out) == 30


def test_dicomdir_lower_case_copy_is_found(tmp_path):
    root = _copy_fileset(tmp_path)
    cr1 = root / "77654033" / "CR1"
    cr1.rename(root / "77654033" / "cr1")
    found = sources([str(root / "DICOMDIR")])
    assert len(found) == 31
    assert "77654033/cr1/6154" in {s.rel for s in found}


def test_corrupt_dicomdir_is_reported(tmp_path):
    bad = tmp_path / "DICOMDIR"
    data = Path(DICOMDIR_PATH).read_bytes()
    bad.write_bytes(data[:400])  # the file meta says DICOMDIR, the records are cut off
    (r,) = list(iter_sources([str(bad)]))
    assert isinstance(r, Rejected) and "cannot read DICOMDIR" in r.reason


def test_dicomdir_in_a_walk_is_not_expanded(tmp_path):
    root = _copy_fileset(tmp_path)
    stats = DiscoveryStats()
    found = sources([str(root)], stats=stats)
    assert len(found) == 31 and stats.dicomdirs == 1  # found by the walk itself, once


def test_dicomdir_with_another_input_is_prefixed(tmp_path):
    root = _copy_fileset(tmp_path)
    found = sources([str(root / "DICOMDIR"), CT])
    assert all(s.rel.startswith("cd/") for s in found[:-1])
    assert found[-1].rel == "CT_small.dcm"


# --------------------------------------------------------------------------- the corpus


def test_fuzzing_corpus_every_claimed_dicom_file_is_an_input():
    stats = DiscoveryStats()
    out = list(iter_sources([str(CORPUS)], stats=stats))
    dcm_files = [p for p in CORPUS.rglob("*.dcm") if p.is_file()]
    assert len(dcm_files) >= 594
    assert all(isinstance(r, Source) for r in out)
    assert {r.path for r in out} >= {str(p) for p in dcm_files}
    assert stats.discovered == len(out)
    for r in out:
        assert_rel_ok(r.rel)
