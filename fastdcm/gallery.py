"""The gallery: ``OUT/gallery/index.html``, a static page to look at every result of a run.

Built from the manifest, the run's one record of every input (``convert --gallery`` at the end of
the run, ``fastdcm gallery OUT`` at any time after). A converted input made with ``--gallery``
has in its record the grouping attributes (Study/Series Instance UID, Modality, Series and
Instance Number, Body Part), the windows used, and where its thumbnails are: rectangles of a
JPEG sheet the worker wrote in the same pass (:mod:`fastdcm.run.thumbs`). An input converted
without them (a run made without ``--gallery``, or a sheet that is gone) gets its thumbnails
made here, from its output files, and its grouping from its source's header if it is still there.

What is written under ``OUT/gallery/`` (each file atomically, through the output root):

- ``index.html``: the page, the same bytes whatever the run (:data:`PAGE_FILE`); no server, no
  external URL: it loads its data with ``<script src>``, which works from ``file://``;
- ``data/summary.js``: counts by status and modality, the studies and series (one entry each,
  with their first page), and per page the statuses and modalities it holds: what the filters
  and the series index need, proportional to the number of series, not of images;
- ``data/p-N.js``: page N, :data:`PER_PAGE` images in study / series / instance order, loaded
  when shown; ``data/f-N.js``: the inputs not converted (status and reason),
  :data:`FAILURES_PER_PAGE` a file;
- ``sheets/``: the thumbnail sheets (sheets no record names any more are removed: by a run's own
  build, only its own; by ``fastdcm gallery``, all).

Privacy: the page shows output names (which carry no identifier unless ``--allow-phi``), source
paths and reasons of failed inputs (as the manifest does), UIDs as the records hold them (keyed
hashes with ``--pseudonymize``), modality, body part and numbers: no identifier of the Basic Profile.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from .errors import Status
from .run.sinks.manifest import loads

__all__ = [
    "build_gallery", "GalleryReport", "Entry", "entry_of", "latest_records", "GALLERY", "PER_PAGE",
    "FAILURES_PER_PAGE", "GALLERY_TAGS",
]

log = logging.getLogger(__name__)

GALLERY = "gallery"
PAGE_FILE = os.path.join(os.path.dirname(__file__), "gallery.html")
#: Images per page of the gallery.
PER_PAGE = 240
#: Failed inputs per data file of the failures list.
FAILURES_PER_PAGE = 500
#: The attributes a worker reads for the gallery (``convert --gallery``).
GALLERY_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "InstanceNumber", "BodyPartExamined")
#: Thumbnails per sheet made here from output files.
_REBUILT_PER_SHEET = 128
_REBUILT_PREFIX = "rebuilt-"
_IMAGE_STATUSES = (Status.CONVERTED.value, Status.SKIPPED.value)
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


@dataclass
class GalleryReport:
    """What a build did: images and failures shown, thumbnails made here from outputs, and the
    inputs whose thumbnails could not be made (their output missing or unreadable)."""

    path: str
    images: int = 0
    failures: int = 0
    pages: int = 0
    rebuilt: int = 0
    missing: int = 0
    elapsed: float = 0.0

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        text = (f"gallery: {self.path} ({n(self.images, 'image')} on {n(self.pages, 'page')}, "
                f"{n(self.failures, 'input')} not converted")
        if self.rebuilt:
            text += f"; {n(self.rebuilt, 'thumbnail')} made from the output files"
        if self.missing:
            text += f"; {n(self.missing, 'image')} without a thumbnail (output missing or unreadable)"
        return text + ")"


@dataclass(slots=True)
class _Image:
    study: str  # the group keys: the UIDs, else the output's folder
    series: str
    study_uid: str | None
    series_uid: str | None
    modality: str
    body_part: str
    series_number: float
    instance: float
    output: str
    thumb: tuple[str, list[int]] | None  # (sheet, [x, y, width, height])
    window: str
    status: str


def _sort_number(value: Any) -> float:
    try:
        number = float(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        return math.inf
    return number if math.isfinite(number) else math.inf


def _window_text(windows: list | None, i: int, voi: str | None) -> str:
    window = windows[i] if windows and i < len(windows) else None
    if window is not None:
        return f"C {window[0]:g} W {window[1]:g}"
    if not voi:
        return ""
    steps = voi.split(",")
    return steps[min(i, len(steps) - 1)]


class Entry(NamedTuple):
    """What the gallery keeps of an input's latest manifest record (:func:`entry_of`).

    A tuple whose repeated values (statuses, a series' attributes, sheet names, VOI texts, windows,
    rectangles) are shared between entries: a build holds one per input, 10^6 or 10^7 of them for a
    large archive. The record's parsed JSON object took about 3.5 KB an input in a build (200,000
    records: 739 MB at the peak), the dict of its gallery fields a run kept 2.2 KB."""

    source: str
    status: str
    reason: str
    outputs: tuple[str, ...]
    voi: str | None
    shard: str | None
    #: ((Study Instance UID, Series Instance UID, Modality, Series Number, Body Part Examined),
    #: Instance Number), the first shared by a series' entries; None: the record has none of them
    grouping: tuple[tuple[Any, ...], Any] | None
    sheet: str | None
    thumbs: tuple[tuple[int, ...], ...]  # per output, (x, y, width, height) on ``sheet``
    windows: tuple[Any, ...] | None  # per output, (center, width) or None


_SERIES_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "BodyPartExamined")
_NO_SERIES = (None,) * len(_SERIES_TAGS)
_new_entry = tuple.__new__  # (Entry's own __new__ takes keywords: 0.5 us more an entry)


def entry_of(record: dict[str, Any], shared: dict[Any, Any]) -> Entry:
    """The :class:`Entry` of a manifest record (a parsed line, or the object a run writes as one);
    ``shared``: the tuples seen so far (a series' attributes, rectangles, windows), so that equal
    ones are one object (the status, VOI text and sheet name are shared through ``sys.intern``)."""
    fields = record.get("gallery")
    grouping, sheet, thumbs, windows = None, None, (), None
    if fields:
        get = fields.get
        series = tuple(map(get, _SERIES_TAGS))
        instance = get("InstanceNumber")
        if instance is not None or series != _NO_SERIES:
            try:
                series = shared.setdefault(series, series)
            except TypeError:  # a list among the values (a record written by hand): kept as it is
                pass
            grouping = (series, instance)
        sheet = get("sheet")
        if sheet is not None:
            sheet = sys.intern(sheet)
        boxes = get("thumbs")
        if boxes:
            thumbs = tuple([shared.setdefault(box, box) for box in map(tuple, boxes)])
        windows = get("windows")
        if windows is not None:
            windows = tuple([w if w is None else tuple(w) for w in windows])
            windows = shared.setdefault(windows, windows)
    voi, shard = record.get("voi"), record.get("shard")
    return _new_entry(Entry, (
        record["source"], sys.intern(str(record["status"])), record.get("reason") or "",
        tuple(record.get("outputs") or ()), voi if voi is None else sys.intern(voi),
        shard if shard is None else sys.intern(shard), grouping, sheet, thumbs, windows,
    ))


def latest_records(lines: Iterable[bytes], manifest: str) -> dict[str, Entry]:
    """The latest record of every input among a manifest's ``lines`` (named ``manifest`` in
    warnings), as :class:`Entry` tuples, in the order of those latest records. Parsed with
    the manifest's JSON parser only (no Record objects: a build at the end of a run is a serial tail of it);
    lines that do not parse are skipped, as ``read_manifest`` skips them."""
    latest: dict[str, Entry] = {}
    shared: dict[Any, Any] = {}
    for number, raw in enumerate(lines, 1):
        try:
            entry = entry_of(loads(raw), shared)
        except (ValueError, TypeError, KeyError, AttributeError):
            if raw.strip():
                log.warning("%s:%d: skipping a bad manifest line", manifest, number)
            continue
        latest.pop(entry.source, None)  # the order of the latest records
        latest[entry.source] = entry
    return latest


def _grouping_from_source(path: str) -> tuple[tuple[Any, ...], Any]:
    """The grouping attributes from a source's header (an input converted without --gallery), as an
    :class:`Entry`'s grouping; all None when the source is gone or unreadable (it is grouped by its
    output folder)."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(GALLERY_TAGS))
        value = lambda k: str(ds.get(k)) if ds.get(k) not in (None, "") else None  # noqa: E731
        return tuple(map(value, _SERIES_TAGS)), value("InstanceNumber")
    except Exception:
        return _NO_SERIES, None


class _Thumbnailer:
    """Thumbnails of outputs converted without ``--gallery``, read back from their files, on
    sheets of :data:`_REBUILT_PER_SHEET`."""

    def __init__(self, root: Any) -> None:
        from .run.thumbs import Sheet

        self.root = root
        self.sheet = Sheet()
        self.name = ""
        self.made = self.missing = 0
        self.shard: tuple[str, dict[str, bytes]] | None = None  # the last shard read: its members

    def _read(self, output: str, shard: str | None) -> bytes:
        if shard is None:
            with self.root.open_read(output) as f:
                return f.read()
        if self.shard is None or self.shard[0] != shard:
            from .run.sinks.shards import read_shard

            with self.root.open_read(shard) as f:
                self.shard = (shard, read_shard(f, shard))
        return self.shard[1][output]

    def thumb(self, output: str, shard: str | None = None, windows: bool = False) -> tuple[str, list[int]] | None:
        from .run.thumbs import SHEETS, read_thumbnail

        try:
            tile = read_thumbnail(self._read(output, shard), output)
        except Exception as exc:  # missing or unreadable: no thumbnail for it
            log.debug("no thumbnail for %s: %s", output, exc)
            self.missing += 1
            return None
        if not len(self.sheet):
            self.name = f"{SHEETS}/{_REBUILT_PREFIX}{time.time_ns():x}.jpg"
        box = self.sheet.add([tile], windows)[0]
        self.made += 1
        if len(self.sheet) >= _REBUILT_PER_SHEET:
            self.flush()
        return self.name, box

    def flush(self) -> None:
        if len(self.sheet):
            self.root.write(self.name, self.sheet.encode(), replace=True)
            self.sheet.clear()


def build_gallery(
    out: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    root: Any = None,
    run_prefix: str | None = None,
    records: dict[str, Entry] | None = None,
) -> GalleryReport:
    """Write ``OUT/gallery/`` from the manifest (default ``OUT/manifest.jsonl``); return what was
    shown. ``records``: the manifest's latest records as :class:`Entry` tuples (:func:`latest_records`)
    where the caller has them (a run's own build), else the file is read.
    ``root``: the run's open :class:`~fastdcm.run.write.OutputRoot` (else one is opened).
    Sheets no record names any more are removed: all of them, or with ``run_prefix`` (a run's own
    build) only that run's and the ones builds made, never a sheet of another run that may still be
    going on. Raises :class:`~fastdcm.errors.InvalidOptionError` when there is no manifest to read."""
    from .errors import InvalidOptionError, UnsafePathError
    from .plan import STACK_VOI
    from .run.sinks.manifest import MANIFEST_NAME
    from .run.thumbs import SHEETS
    from .run.write import OutputRoot

    start = time.monotonic()
    out = os.path.abspath(os.fspath(out))
    manifest = os.path.abspath(os.fspath(manifest)) if manifest else os.path.join(out, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        raise InvalidOptionError(f"no manifest at {manifest}: a gallery shows a run's results (fastdcm convert SRC -o {out})")
    own = root is None
    if own:
        try:
            root = OutputRoot.create(out)
        except (OSError, UnsafePathError) as exc:
            reason = exc.reason if isinstance(exc, UnsafePathError) else (exc.strerror or str(exc))
            raise InvalidOptionError(f"output folder {out} cannot be used: {reason}") from None
    report = GalleryReport(path=os.path.join(out, GALLERY, "index.html"))
    try:
        sheets_there = {f"{SHEETS}/{n}" for n in root.listdir(SHEETS)}
        thumbnailer = _Thumbnailer(root)
        images: list[_Image] = []
        failures: list[list[str]] = []
        if records is None:
            with open(manifest, "rb") as stream:
                records = latest_records(stream, manifest)
        texts: dict[Any, Any] = {}  # what the page items share (_image)
        for entry in records.values():
            status, outputs = entry.status, entry.outputs
            if status not in _IMAGE_STATUSES or not outputs:
                failures.append([entry.source, status, entry.reason])
                continue
            grouping, shown = entry.grouping, True
            if grouping is None:
                # Grouped by the source's UIDs, which are not shown: a run made with
                # --pseudonymize has only keyed hashes in its records, and this build has no key.
                grouping, shown = _grouping_from_source(entry.source), False
            sheet, thumbs = entry.sheet, entry.thumbs
            for i, output in enumerate(outputs):
                box = thumbs[i] if i < len(thumbs) else None
                thumb = (sheet, box) if box and sheet in sheets_there else thumbnailer.thumb(
                    output, entry.shard, windows=str(entry.voi or "").startswith(STACK_VOI)
                )
                images.append(_image(entry, grouping, i, output, thumb, shown, texts))
        thumbnailer.flush()
        report.rebuilt, report.missing = thumbnailer.made, thumbnailer.missing
        _write(root, _ordered(images), failures, report)
        used = {image.thumb[0] for image in images if image.thumb}
        for name in sheets_there - used:  # sheets of inputs converted again since
            leaf = posixpath.basename(name)
            mine = run_prefix is None or leaf.startswith((run_prefix, _REBUILT_PREFIX))
            if leaf.endswith(".jpg") and mine:
                root.remove(name)
    finally:
        if own:
            root.remove_tmp()
            root.close()
    report.elapsed = time.monotonic() - start
    return report


def _image(entry: Entry, grouping: tuple[Any, ...], i: int, output: str, thumb: Any, shown: bool,
           texts: dict[Any, Any]) -> _Image:
    """The page item of ``entry``'s output ``i``. ``texts``: what the items made so far share (the
    group keys and window texts, one string each, and each series' fields, made once per series:
    a series' attribute tuple is one object for all its entries, see :func:`entry_of`)."""
    series_values, instance = grouping
    study_uid, series_uid = series_values[0], series_values[1]
    key = (series_values, shown) if study_uid and series_uid else None
    try:
        fields = texts.get(key) if key is not None else None
    except TypeError:  # a list among the values (a record written by hand): made for each image
        key, fields = None, None
    if fields is None:
        modality, body_part, series_number = series_values[2], series_values[4], series_values[3]
        if not (study_uid and series_uid):
            folder = posixpath.dirname(output) or "."
        study = f"uid:{study_uid}" if study_uid else f"folder:{folder}"
        series = f"uid:{series_uid}" if series_uid else f"folder:{folder}"
        fields = (
            texts.setdefault(study, study),
            texts.setdefault(series, series),
            study_uid if shown else None,
            series_uid if shown else None,
            modality if modality.__class__ is str else str(modality or ""),
            body_part if body_part.__class__ is str else str(body_part or ""),
            _sort_number(series_number),
        )
        if key is not None:
            texts[key] = fields
    windows, voi = entry.windows, entry.voi
    window_key = ("window", windows, i, voi)
    try:
        window = texts.get(window_key)
    except TypeError:  # (unhashable windows: a record written by hand)
        window_key, window = None, None
    if window is None:
        window = _window_text(windows, i, voi)
        window = texts.setdefault(window, window)
        if window_key is not None:
            texts[window_key] = window
    return _Image(*fields, instance=_sort_number(instance), output=output, thumb=thumb, window=window,
                  status=entry.status)


def _ordered(images: list[_Image]) -> list[list[list[_Image]]]:
    """Studies (in the order of their first output name), each a list of series (by series
    number, then first output), each a list of images (by instance number, then output)."""
    studies: dict[str, dict[str, list[_Image]]] = {}
    for image in images:
        studies.setdefault(image.study, {}).setdefault(image.series, []).append(image)
    ordered = []
    for series in studies.values():
        groups = [sorted(g, key=lambda im: (im.instance, im.output)) for g in series.values()]
        groups.sort(key=lambda g: (g[0].series_number, min(im.output for im in g)))
        ordered.append(groups)
    ordered.sort(key=lambda groups: min(im.output for g in groups for im in g))
    return ordered


def _js(call: str, *args: Any) -> bytes:
    return f"fastdcmGallery.{call}({','.join(_ENCODER.encode(a) for a in args)});\n".encode("ascii")


def _write(root: Any, studies: list[list[list[_Image]]], failures: list[list[str]], report: GalleryReport) -> None:
    data = f"{GALLERY}/data"
    statuses = list(_IMAGE_STATUSES)
    modalities = sorted({im.modality for groups in studies for g in groups for im in g})
    status_index = {v: i for i, v in enumerate(statuses)}
    modality_index = {v: i for i, v in enumerate(modalities)}
    study_rows, series_rows, pages = [], [], []
    page: list[list] = []
    page_sheets: dict[str, int] = {}
    page_info: list = []
    n_pages = 0

    def close_page() -> None:
        nonlocal page, page_sheets, n_pages
        n_pages += 1
        sheets = [name[len(GALLERY) + 1 :] for name in page_sheets]
        root.write(f"{data}/p-{n_pages}.js", _js("page", n_pages, {"sheets": sheets, "items": page}), replace=True)
        first, last, st, mo = page_info
        pages.append([first, last, sorted(st), sorted(mo)])
        page, page_sheets = [], {}

    for groups in studies:
        first = groups[0][0]
        study_mods = sorted({im.modality for g in groups for im in g if im.modality})
        study_rows.append([first.study_uid or "", len(groups), sum(len(g) for g in groups), study_mods])
        for g in groups:
            s = len(series_rows)
            head = g[0]
            number = None if head.series_number == math.inf else head.series_number
            series_rows.append([len(study_rows) - 1, number, head.series_uid or "", head.modality, head.body_part, len(g), n_pages + 1])
            for im in g:
                if not page:
                    page_info = [s, s, set(), set()]
                page_info[1] = s
                status = status_index[im.status]
                page_info[2].add(status)
                page_info[3].add(modality_index[im.modality])
                if im.thumb:
                    sheet = page_sheets.setdefault(im.thumb[0], len(page_sheets))
                    x, y, w, h = im.thumb[1]
                else:
                    sheet, x, y, w, h = -1, 0, 0, 0, 0
                page.append([s, im.output, sheet, x, y, w, h, im.window, status])
                if len(page) >= PER_PAGE:
                    close_page()
    if page:
        close_page()
    n_fail = 0
    for start in range(0, len(failures), FAILURES_PER_PAGE):
        n_fail += 1
        root.write(f"{data}/f-{n_fail}.js", _js("failures", n_fail, failures[start : start + FAILURES_PER_PAGE]), replace=True)
    by_status: dict[str, int] = {}
    for _, status, _ in failures:
        by_status[status] = by_status.get(status, 0) + 1
    image_counts = {s: 0 for s in statuses}
    for groups in studies:
        for g in groups:
            for im in g:
                image_counts[im.status] += 1
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "images": sum(image_counts.values()),
        "image_statuses": statuses,
        "image_counts": image_counts,
        "modalities": modalities,
        "studies": study_rows,
        "series": series_rows,
        "pages": pages,
        "per_page": PER_PAGE,
        "failures": {"count": len(failures), "pages": n_fail, "by_status": by_status, "per_page": FAILURES_PER_PAGE},
    }
    root.write(f"{data}/summary.js", _js("summary", summary), replace=True)
    for name in root.listdir(data):  # pages of an earlier, larger build
        kind, _, rest = name.partition("-")
        number = rest[:-3] if rest.endswith(".js") else ""
        if kind in ("p", "f") and number.isdigit() and int(number) > (n_pages if kind == "p" else n_fail):
            root.remove(f"{data}/{name}")
    with open(PAGE_FILE, "rb") as f:
        root.write(f"{GALLERY}/index.html", f.read(), replace=True)
    report.images, report.failures, report.pages = summary["images"], len(failures), n_pages
