"""The fastdcm command: flags generated from options.py, exit codes, stdout vs stderr."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
import subprocess
import sys
import warnings

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from fastdcm import cli
from fastdcm.options import ConvertOptions, RenderOptions, option_flag

CT = get_testdata_file("CT_small.dcm")


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastdcm", *args], capture_output=True, text=True, timeout=120, **kw)


def test_every_option_has_a_flag_with_its_help():
    text = cli._parser()._subparsers._group_actions[0].choices["convert"].format_help()
    for cls in (ConvertOptions, RenderOptions):
        for f in dataclasses.fields(cls):
            assert option_flag(f.name) in text, f.name
            assert f.metadata["help"].split()[0] in text
    assert "FAULTS" not in text  # test-only fault injection stays out of the help


def test_convert_exit_0_and_summary_on_stdout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(CT, src / "x.dcm")
    res = run("convert", str(src), "-o", str(tmp_path / "out"), "--workers", "1", "--format", "jpeg", "--quality", "80")
    assert res.returncode == 0, res.stderr
    assert "converted" in res.stdout and "total" in res.stdout
    assert (tmp_path / "out" / "x.jpg").exists() or (tmp_path / "out" / "x.jpeg").exists()


def test_convert_exit_1_when_an_input_fails(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    res = run("convert", str(bad), CT, "-o", str(tmp_path / "out"), "--workers", "0", "--quiet")
    assert res.returncode == 1, res.stderr
    assert "not_dicom" in res.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "-o", "x"],  # no source
        ["convert", CT, "-o", "OUT", "--format", "gif"],
        ["convert", CT, "-o", "OUT", "--on-exists", "maybe"],
        ["convert", CT, "-o", "OUT", "--window", "1,2,3"],
        ["convert", CT, "-o", "OUT", "--name", "{NotAKeyword}"],
        ["convert", CT, "-o", "OUT", "--memory-limit", "lots"],
        ["convert", CT, "-o", "OUT", "--memory-limit", "5"],  # 5 bytes: no worker could start
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(tmp_path, args):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    res = run(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_info_prints_dataset_and_inspection():
    res = run("info", CT)
    assert res.returncode == 0, res.stderr
    assert "(0010,0010)" in res.stdout  # pydicom's own printout
    assert "transfer syntax:" in res.stdout and "VOI" in res.stdout


def test_info_plugins():
    res = run("info", "--plugins")
    assert res.returncode == 0
    assert "1.2.840.10008.1.2.4.90" in res.stdout and "encoder png" in res.stdout


def test_render_one_file(tmp_path):
    import numpy as np

    import fastdcm

    res = run("render", CT, "-o", str(tmp_path / "ct.npy"), "--window", "40,400")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "ct.npy"), fastdcm.render(CT, window=(40, 400)))


# --------------------------------------------------------------------------- what a newcomer met


def _one_line_usage_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--depth", "16", "--format", "jpeg"], "8-bit samples only"),
        (["--window", "40,0"], "window width must be positive"),
        (["--window", "40,0.5"], "below 1"),
        (["--window", "a,b"], "two finite numbers"),
        (["--decoder", "jpeg=nonesuch"], "no decoder 'nonesuch'"),
    ],
)
def test_invalid_option_combinations_are_usage_errors_before_any_work(tmp_path, capsys, flags, says):
    out = tmp_path / "out"
    err = _one_line_usage_error(capsys, ["convert", CT, "-o", str(out), "--quiet", *flags])
    assert says in err
    assert not out.exists() or not list(out.rglob("*.png"))


def test_values_that_start_with_a_minus_are_values_not_options(tmp_path, capsys):
    """A lung window's negative centre (--window -600,1500), a stack of such windows, and --workers -1
    (refused by its own check, with the reason): argparse took each for an unknown option ("expected
    one argument"), since -0 (--null) is an option that looks like a negative number."""
    import fastdcm

    for flags, expected in [
        (["--window", "-600,1500"], fastdcm.render(CT, window=(-600, 1500))),
        (["--windows", "-600/1500,40/400,bone"], fastdcm.render(CT, windows="-600/1500,40/400,bone")),
    ]:
        out = tmp_path / flags[0].strip("-")
        assert cli.main(["convert", CT, "-o", str(out), "--quiet", "--workers", "0", "--format", "npy", *flags]) == 0
        np.testing.assert_array_equal(np.load(next(out.glob("*.npy"))), expected)
    out = tmp_path / "r.npy"
    assert cli.main(["render", CT, "-o", str(out), "--window", "-600.5,1500"]) == 0
    np.testing.assert_array_equal(np.load(out), fastdcm.render(CT, window=(-600.5, 1500)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # (argparse's usage error: the usage, then the reason)
        cli.main(["convert", CT, "-o", str(tmp_path / "w"), "--workers", "-1"])
    assert stop.value.code == 2 and "error: workers must be 0 or more, not -1" in capsys.readouterr().err
    # -0 itself stays the option (NUL-separated lists)
    args = cli._parser().parse_args(["convert", "-", "-0", "-o", str(tmp_path / "n")])
    assert args.null is True and args.sources == ["-"]


def test_a_narrow_window_is_fine_with_a_function_that_allows_it(tmp_path):
    assert cli.main(["convert", CT, "-o", str(tmp_path / "o"), "--quiet", "--workers", "0",
                     "--window", "40,0.5", "--voi-function", "LINEAR_EXACT"]) == 0


def test_render_api_raises_typed_errors_for_bad_options():
    import fastdcm

    with pytest.raises(fastdcm.InvalidOptionError, match="two finite numbers"):
        fastdcm.render(CT, window=(40,))
    with pytest.raises(fastdcm.InvalidOptionError):
        fastdcm.render(CT, depth=12)
    with pytest.raises(ValueError):  # InvalidOptionError is a ValueError, as before
        fastdcm.render(CT, voi="sometimes")


def test_version_and_verbose_after_the_subcommand(capsys, tmp_path):
    from fastdcm import __version__

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"fastdcm {__version__}"
    assert cli.main(["render", CT, "-o", str(tmp_path / "x.png"), "-v"]) == 0


def test_render_creates_the_output_folder_and_numbers_frames_from_1(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import fastdcm

    multi = get_testdata_file("emri_small.dcm")  # 10 frames
    target = tmp_path / "new" / "dir" / "f3.png"
    assert cli.main(["render", multi, "-o", str(target), "--frame", "3"]) == 0
    with Image.open(target) as im:
        assert np.array_equal(np.asarray(im), fastdcm.render(multi, frame=2))  # Python's frame= is an index
    assert not list(target.parent.glob("*.part"))
    _one_line_usage_error(capsys, ["render", multi, "-o", str(tmp_path / "a.jpg"), "--depth", "16"])
    with pytest.raises(SystemExit):
        cli.main(["render", multi, "-o", str(tmp_path / "z.png"), "--frame", "0"])
    capsys.readouterr()
    assert cli.main(["render", multi, "-o", str(tmp_path / "z.png"), "--frame", "11"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err  # told in the numbers the user gave: frame 11 of 10, not index 10
    assert "--frame 11" in err and "10 frame(s)" in err and "frame 10 " not in err


def test_a_window_is_center_and_width_with_a_comma_or_a_slash(tmp_path):
    """--window 40,400 as before, or 40/400 as --windows writes each of its windows."""
    import numpy as np

    import fastdcm

    assert fastdcm.RenderOptions(window="40/400").window == fastdcm.RenderOptions(window="40,400").window == (40.0, 400.0)
    for flag in ("40,400", "40/400", "=-600/1500"):  # (a negative center: --window=-600/1500, as argparse takes it)
        args = ["--window" + flag] if flag.startswith("=") else ["--window", flag]
        assert cli.main(["render", CT, "-o", str(tmp_path / "w.png"), *args]) == 0
    c, w = (-600.0, 1500.0)
    assert np.array_equal(fastdcm.render(CT, window=(c, w)), fastdcm.render(CT, window=f"{c:g}/{w:g}"))
    with pytest.raises(fastdcm.InvalidOptionError, match="CENTER/WIDTH"):
        fastdcm.RenderOptions(window="40/400/2")


def test_a_missing_path_or_an_empty_glob_is_a_usage_error_naming_it(tmp_path, capsys):
    err = _one_line_usage_error(capsys, ["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--quiet"])
    assert "no such file or folder" in err and "nope" in err
    err = _one_line_usage_error(capsys, ["convert", str(tmp_path / "*.dcm"), "-o", str(tmp_path / "o"), "--quiet"])
    assert "matches nothing" in err
    err = _one_line_usage_error(capsys, ["convert", f"@{tmp_path / 'list.txt'}", "-o", str(tmp_path / "o"), "--quiet"])
    assert "list file" in err


def test_nothing_found_warns_with_its_own_exit_code(tmp_path, capsys, monkeypatch):
    import io

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    assert cli.main(["convert", str(empty), "-o", str(tmp_path / "o"), "--quiet"]) == cli.EXIT_NOTHING == 4
    assert "nothing to convert" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["convert", "-", "-o", str(tmp_path / "o2"), "--quiet"]) == 4


def test_the_summary_names_the_first_failures_and_their_reasons(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(CT, src / "ct.dcm")
    (src / "broken.dcm").write_bytes(b"not a dicom file at all" * 10)
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0"]) == 1
    text = capsys.readouterr().out
    assert "first failure:" in text and "not_dicom" in text and "broken.dcm" in text
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0"]) == 1  # outputs exist now
    text = capsys.readouterr().out
    assert "write_error" in text and "exists (use --on-exists" in text  # the reason reaches the terminal


def test_find_print0_into_convert_with_dash_0(tmp_path):
    """`find SRC -type f -print0 | fastdcm convert -0 - -o OUT`: names mirrored from their common folder."""
    src = tmp_path / "archive" / "a b"
    src.mkdir(parents=True)
    shutil.copy(CT, src / "new\nline.dcm")
    shutil.copy(CT, src / "plain.dcm")
    find = subprocess.run(["find", str(tmp_path / "archive"), "-type", "f", "-print0"], capture_output=True, check=True)
    out = tmp_path / "out"
    proc = run("convert", "-0", "-", "-o", str(out), "--quiet", "--workers", "0", input=find.stdout.decode())
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["new_line.png", "plain.png"]  # control characters become _


ONE_IMAGE_FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "JPEG2000.dcm", "emri_small.dcm", "rtdose.dcm"]


@pytest.mark.parametrize("name", ONE_IMAGE_FILES)
def test_render_uses_the_numpy_twins_and_gives_the_same_bits(tmp_path, name, monkeypatch):
    """`fastdcm render` never loads Numba (its load costs ~0.8 s in a fresh process); the picture
    is the compiled kernels' picture, bit for bit."""
    import fastdcm
    from fastdcm import kernels

    path = get_testdata_file(name)
    assert cli.main(["render", path, "-o", str(tmp_path / "twins.npy")]) == 0
    assert not kernels.twins_active()  # only inside the command
    want = fastdcm.render(path)  # the compiled kernels
    assert np.array_equal(np.load(tmp_path / "twins.npy"), want)


def test_one_image_commands_start_without_numba(tmp_path):
    code = (
        "import sys; from fastdcm import cli; "
        f"rc = cli.main(['render', {CT!r}, '-o', {str(tmp_path / 'x.png')!r}]); "
        f"rc += cli.main(['info', {CT!r}]); "
        "assert rc == 0 and 'numba' not in sys.modules, sorted(m for m in sys.modules if 'numba' in m)[:3]"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fastdcm_kernels_numba_keeps_the_compiled_kernels(monkeypatch):
    from fastdcm import kernels

    monkeypatch.setattr(kernels._Choice, "env", "numba")  # FASTDCM_KERNELS=numba, read at import
    with kernels.using_twins():
        assert kernels.impl() is kernels.compiled()
    monkeypatch.setattr(kernels._Choice, "env", "numpy")
    assert kernels.impl().__name__ == "fastdcm.kernels.twins"
    env = dict(os.environ, FASTDCM_KERNELS="numpy")
    code = "from fastdcm import kernels; assert kernels.twins_active()"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_info_masks_identifiers_unless_allowed(capsys):
    import json

    import pydicom

    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    secrets = [str(ds.PatientName), str(ds.PatientID), str(ds.get("InstitutionName", "")), str(ds.PatientBirthDate)]
    secrets = [s for s in secrets if s]
    assert cli.main(["info", CT]) == 0
    text = capsys.readouterr().out
    assert "<masked>" in text and not [s for s in secrets if s in text]
    assert str(ds.SOPInstanceUID) in text and "Rows" in text
    # dates (Study, Series, Acquisition, Content, Instance Creation Date): the Basic Profile's too
    assert "Study Date                          DA: '<masked>'" in text and "DA: '2004" not in text and "DA: '1997" not in text
    # and times (Study, Series, Acquisition, Content, Instance Creation Time; the offset from UTC)
    assert "Study Time                          TM: '<masked>'" in text and "Timezone Offset From UTC            SH: '<masked>'" in text
    assert not [line for line in text.splitlines() if " TM: " in line and "<masked>" not in line]
    assert cli.main(["info", "--json", CT]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["00100010"]["Value"] == [{"Alphabetic": "<masked>"}] and data["00280010"]["Value"] == [128]
    assert not [s for s in secrets if s in json.dumps(data)]
    dates = [v for v in data.values() if v["vr"] in ("DA", "DT", "TM")]
    assert len(dates) >= 10 and all(v.get("Value") == ["<masked>"] for v in dates)
    assert cli.main(["info", "--json", "--allow-phi", CT]) == 0
    out = capsys.readouterr()
    assert str(ds.PatientName) in out.out and "--allow-phi" in out.err and "20040119" in out.out
    unchanged = pydicom.dcmread(CT, stop_before_pixels=True)
    assert str(unchanged.PatientName) == str(ds.PatientName)


def test_info_json_of_a_damaged_file_is_an_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 10)
    assert cli.main(["info", "--json", str(bad)]) == 1
    assert "bad.dcm" in capsys.readouterr().err


def test_info_of_another_format_shows_no_dataset_only_its_status(tmp_path, capsys):
    """pydicom's forced read makes elements of any bytes: a text file showed "(6F72,746F) UN:
    Array of 1339 elements" above its not_dicom line, with pydicom's warning on stderr."""
    text = tmp_path / "notes.txt"
    text.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (pydicom's "VR lookup failed" warning fails the test)
        assert cli.main(["info", str(text)]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "(no dataset shown: it does not look like DICOM (no preamble, no plausible first element))"
    assert "UN:" not in out and out.rstrip().endswith("does not begin as a raw dataset does")
    assert cli.main(["info", "--json", str(text)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == "" and "notes.txt: it does not look like DICOM" in captured.err


def test_info_on_a_dicomdir_prints_the_file_set_tree(tmp_path, capsys):
    import json

    fileset = Path(get_testdata_file("DICOMDIR")).parent
    copy = tmp_path / "fs"
    shutil.copytree(fileset, copy)
    (copy / "77654033" / "CR1" / "6154").unlink()  # a record whose file is gone
    assert cli.main(["info", str(copy / "DICOMDIR")]) == 0
    text = capsys.readouterr().out
    assert "31 image(s), 1 missing" in text and "77654033/CR1/6154 [missing]" in text
    assert "series" in text and "77654033" not in text.split("(ID ")[1].split(")")[0]  # the ID is masked
    assert "20010101" not in text  # and the study dates
    assert cli.main(["info", "--json", str(copy / "DICOMDIR")]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["counts"]["images"] == 31 and tree["counts"]["missing"] == 1
    assert all(p["PatientID"] == "<masked>" and p["PatientName"] == "<masked>" for p in tree["patients"])
    series = [se for p in tree["patients"] for st in p["studies"] for se in st["series"]]
    assert sum(len(se["images"]) for se in series) == 31 and all(se["Modality"] for se in series)
    assert cli.main(["info", "--json", "--allow-phi", str(copy / "DICOMDIR")]) == 0
    shown = json.loads(capsys.readouterr().out)["patients"]
    assert "77654033" in {p["PatientID"] for p in shown} and "20010101" in {st["StudyDate"] for p in shown for st in p["studies"]}


_EXIT_NOW = r"""
import atexit, sys, threading, time
from fastdcm import cli
out = sys.argv[1]
atexit.register(lambda: open(out, "a").write("atexit ran\n"))
if sys.argv[2] == "thread":  # a thread still running: the ordinary exit, which waits for it
    threading.Thread(target=lambda: (time.sleep(0.3), open(out, "a").write("thread done\n"))).start()
sys.stdout.write("no newline, unflushed")
sys.stderr.write("to stderr")
cli.exit_now(3)
raise AssertionError("exit_now returned")
"""


@pytest.mark.parametrize("case", ["plain", "thread"])
def test_exit_now_flushes_runs_atexit_and_keeps_the_code(case, tmp_path):
    """The command ends by os._exit after its work (the interpreter's teardown costs ~0.25 s once
    Numba is loaded): nothing written is lost, the atexit handlers run, the exit code is kept, and a
    thread still running is waited for."""
    out = tmp_path / "log.txt"
    proc = subprocess.run([sys.executable, "-c", _EXIT_NOW, str(out), case], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "no newline, unflushed" and proc.stderr.startswith("to stderr")
    want = ["atexit ran"] if case == "plain" else ["thread done", "atexit ran"]
    assert out.read_text().splitlines() == want


def test_the_command_keeps_its_exit_code_and_output_through_the_fast_exit(tmp_path):
    bad = tmp_path / "in" / "bad.dcm"
    bad.parent.mkdir()
    bad.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:-5000])  # pixel data cut short
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "in" / "ct.dcm")
    proc = run("convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "2")
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr
    assert "converted" in proc.stdout and "manifest:" in proc.stdout.splitlines()[-1]
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 2


_NO_PYDICOM = r"""
import sys
from fastdcm import cli
cli.main(sys.argv[1:])
assert "pydicom" not in sys.modules, [m for m in sys.modules if m.startswith("pydicom")][:5]
print("without pydicom")
"""


@pytest.mark.parametrize("command", ["render", "convert", "convert --metadata --gallery"])
def test_the_common_path_never_imports_pydicom(command, tmp_path):
    """A plain little-endian CT slice is read, rendered and written without importing pydicom
    (~0.17 s of every command's start-up, the common path never calls it), also with the default
    metadata table and the gallery."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CT, src / "ct.dcm")
    args = (["render", str(src / "ct.dcm"), "-o", str(tmp_path / "ct.png")] if command == "render"
            else ["convert", str(src), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet"])
    if "--metadata" in command:
        args += ["--metadata", "table.parquet", "--gallery"]
    proc = subprocess.run([sys.executable, "-c", _NO_PYDICOM, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "without pydicom" in proc.stdout
    if "--metadata" in command:
        assert (tmp_path / "out" / "table.parquet").is_file() and (tmp_path / "out" / "gallery" / "index.html").is_file()
