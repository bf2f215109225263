"""The reporter: what the progress line shows while the total is unknown and once it is known,
and how the report counts interrupted inputs (not failures)."""

from __future__ import annotations

import io
import logging

from fastdcm.errors import Status
from fastdcm.run.progress import Progress, Report


class TTY(io.StringIO):
    def isatty(self):
        return True


def report(converted=0, failed=0, interrupted=0, discovered=None):
    r = Report(out="o", manifest="m")
    for i in range(converted):
        r.add(f"c{i}", Status.CONVERTED, frames=1)
    for i in range(failed):
        r.add(f"f{i}", Status.DECODE_ERROR, "bad")
    for i in range(interrupted):
        r.add(f"i{i}", Status.INTERRUPTED, "the run was interrupted")
    r.discovered = discovered if discovered is not None else converted + failed + interrupted
    return r


def test_while_discovery_walks_there_is_no_bar_and_no_made_up_total():
    tty = TTY()
    Progress(True, stream=tty).update(report(converted=4, failed=1, discovered=48), walking=True, final=True)
    text = tty.getvalue()
    assert "[#" not in text and "[-" not in text and "ETA" not in text
    assert "5 inputs done (48 found so far)" in text and "1 failed" in text and "/s" in text


def test_once_the_total_is_known_the_bar_and_eta_appear():
    tty = TTY()
    Progress(True, stream=tty).update(report(converted=5, failed=1, discovered=12), walking=False, final=True)
    text = tty.getvalue()
    assert text.startswith("\r[") and "6/12 inputs" in text and "1 failed" in text and "ETA" in text
    assert text.count("#") == 12  # half of the 24-character bar


def test_interrupted_inputs_are_not_failures():
    r = report(converted=3, failed=1, interrupted=4)
    assert r.failed == 1 and not r.ok
    assert [f[1] for f in r.failures] == ["decode_error"]
    tty = TTY()
    Progress(True, stream=tty).update(r, walking=False, final=True)
    assert "1 failed" in tty.getvalue() and "4 interrupted" in tty.getvalue()
    assert report(converted=2).ok


def test_log_lines_without_a_terminal_and_nothing_when_quiet(caplog):
    plain = io.StringIO()
    with caplog.at_level(logging.INFO, logger="fastdcm.run.progress"):
        Progress(True, stream=plain).update(report(converted=3, discovered=9), walking=False, final=True)
    assert plain.getvalue() == "" and "3/9 inputs" in caplog.text and "[" not in caplog.text
    quiet = TTY()
    Progress(False, stream=quiet).update(report(converted=3), walking=False, final=True)
    assert quiet.getvalue() == ""


def test_the_summary_names_failures_but_not_interrupted_inputs():
    text = report(converted=1, failed=2, interrupted=3).summary()
    assert "first 2 failures:" in text and "decode_error: f0: bad" in text and "i0" not in text
