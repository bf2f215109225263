"""The run's reporter: the :class:`Report` (counts by status, first failures, totals) and the
progress line.

While discovery is still walking the total is unknown: the line shows what is known (inputs
done, rate, failures) and no bar; once discovery has finished it shows the bar and an ETA.
Interrupted inputs are not failures: they are counted apart.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import Status
from .sinks.manifest import format_summary

__all__ = ["Report", "Progress", "OK_STATUSES", "MAX_SHOWN_FAILURES"]

log = logging.getLogger(__name__)

#: Statuses that do not make a run fail (exit code 0): nothing was wrong with the input
#: as far as converting images goes.
OK_STATUSES = frozenset({Status.CONVERTED, Status.SKIPPED, Status.NO_IMAGE})
#: Failures the summary names with their reasons (the manifest has them all).
MAX_SHOWN_FAILURES = 5


@dataclass
class Report:
    """What a run did. ``counts`` maps every :class:`Status` that occurred to its count."""

    out: str
    manifest: str
    counts: Counter = field(default_factory=Counter)
    discovered: int = 0
    frames: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    resume_command: str = ""
    manifest_error: str = ""  # the run stopped because a sink (the manifest) could not be written
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # the first (source, status, reason)
    ignored_non_dicom: int = 0
    phi_allowed: bool = False  # --allow-phi: names and the table may carry identifiers
    burned_in: int = 0  # inputs whose Burned In Annotation is YES (--burned-in skip or list)
    burned_in_shown: list[str] = field(default_factory=list)
    gallery: str = ""  # --gallery: where it is and what it shows, or why it could not be written

    def add(self, path: str, status: Status, reason: str = "", frames: int | None = None) -> None:
        """Count one input's final status."""
        self.counts[status] += 1
        if status not in OK_STATUSES and status is not Status.INTERRUPTED and len(self.failures) < MAX_SHOWN_FAILURES:
            self.failures.append((path, status.value, reason))
        if status is Status.CONVERTED:
            self.frames += frames or 0

    def add_burned_in(self, path: str) -> None:
        self.burned_in += 1
        if len(self.burned_in_shown) < MAX_SHOWN_FAILURES:
            self.burned_in_shown.append(path)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def converted(self) -> int:
        return self.counts.get(Status.CONVERTED, 0)

    @property
    def failed(self) -> int:
        """Inputs that failed (interrupted ones are not counted: they were not tried to the end)."""
        return sum(v for k, v in self.counts.items() if k not in OK_STATUSES and k is not Status.INTERRUPTED)

    @property
    def ok(self) -> bool:
        """True when no input failed and the run was not interrupted."""
        return not self.interrupted and self.failed == 0 and not self.counts.get(Status.INTERRUPTED)

    def summary(self) -> str:
        """The table by status, the first failures with their reasons, and the totals."""
        text = format_summary(self.counts, discovered=self.discovered)
        if self.failures:
            shown = len(self.failures)
            more = self.failed - shown
            text += f"\nfirst {'failure' if shown == 1 else f'{shown} failures'}" + (
                f" (of {self.failed}; all in the manifest)" if more > 0 else "") + ":"
            for source, status, reason in self.failures:
                text += f"\n  {status}: {source}: {reason}"
        rate = self.discovered / self.elapsed if self.elapsed > 0 else 0.0
        text += f"\n{self.discovered} inputs, {self.frames} images written in {self.elapsed:.1f} s ({rate:.1f} inputs/s)"
        if self.ignored_non_dicom:
            text += f"; ignored {self.ignored_non_dicom} non-DICOM files met in folders"
        if self.burned_in:
            more = "" if self.burned_in <= len(self.burned_in_shown) else f" (first {len(self.burned_in_shown)})"
            text += f"\n{self.burned_in} with burned-in annotation{more}:" + "".join(f"\n  {p}" for p in self.burned_in_shown)
        if self.phi_allowed:
            text += "\nidentifiers allowed (--allow-phi): output names and the metadata table may carry them"
        return text


class Progress:
    """A one-line status on a terminal (redrawn at most 5 times a second), else a log line
    every 10 s; nothing when disabled."""

    def __init__(self, enabled: bool, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.interval = 0.2 if self.tty else 10.0

    def line(self, report: Report, walking: bool, now: float | None = None) -> str:
        """The status text: ``done`` of the total once it is known (else ``done`` and the
        number found so far), rate, failures, interrupted; a bar and an ETA once the total is known."""
        now = time.monotonic() if now is None else now
        done = report.done
        rate = done / max(now - self.start, 1e-9)
        if walking:
            text = f"{done} inputs done ({report.discovered} found so far), {rate:.1f}/s, {report.failed} failed"
        else:
            total = report.discovered
            left = max(total - done, 0)
            eta = f", ETA {left / rate:.0f} s" if rate > 0 and left else ""
            text = f"{done}/{total} inputs, {rate:.1f}/s, {report.failed} failed{eta}"
            if self.tty:
                width = 24
                filled = int(min(done / total, 1.0) * width) if total else width
                text = f"[{'#' * filled}{'-' * (width - filled)}] " + text
        stopped = report.counts.get(Status.INTERRUPTED, 0)
        if stopped:
            text += f", {stopped} interrupted"
        return text

    def update(self, report: Report, walking: bool, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        text = self.line(report, walking, now)
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("progress: %s", text)
