"""The ``fastdcm`` command, built from :mod:`fastdcm.options`.

    fastdcm convert SRC... -o OUT [options]   every DICOM image below SRC -> OUT (calls fastdcm.convert)
    fastdcm info FILE                         the dataset as pydicom prints it, then fastdcm.inspect
    fastdcm info --plugins                    decoder plugins and how to install a missing one
    fastdcm render FILE -o out.png            one frame, the format chosen by the extension
    fastdcm gallery OUT                       OUT/gallery/index.html from a run's manifest (calls build_gallery)

Every option flag is generated from a field of ``ConvertOptions`` or ``RenderOptions``
(name, type, choices, help), so flags and keyword arguments cannot drift apart. Results go
to stdout, logs and progress to stderr. Exit codes: 0 every input converted (or had no
image), 1 some inputs failed, 2 usage error, 130 interrupted (the resume command is shown).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import typing
from enum import Enum
from typing import Any, Sequence

from .errors import FastDcmError, InvalidOptionError, describe
from .options import ConvertOptions, RenderOptions, explicit_window_problem, fit_problem, option_fields, option_flag

log = logging.getLogger("fastdcm")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_MANIFEST = 3  # the manifest could not be written (disk full, I/O error): the run stopped
EXIT_NOTHING = 4  # the inputs held no DICOM file (an empty folder, empty stdin)


def _unwrap(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


def add_option_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of the options dataclass ``cls``; unset flags are not passed on."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in option_fields(cls):
        tp = _unwrap(hints[f.name])
        meta = f.metadata
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta.get("help", "")}
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            if isinstance(tp, type) and issubclass(tp, Enum):
                kwargs["choices"] = [m.value for m in tp]
            elif tp in (int, float):
                kwargs["type"] = tp
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
            default = f.default if f.default is not dataclasses.MISSING else None
            if default is not None and not isinstance(default, bool):
                kwargs["help"] += f" (default: {getattr(default, 'value', default)})"
        flags = [meta["short"]] if "short" in meta else []
        group.add_argument(*flags, option_flag(f.name), **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse, with a value that starts with a minus and a digit taken as a value: ``--window
    -600,1500`` (a lung window), ``--windows -600/1500,40/400``, ``--workers -1`` (then refused by
    its check, with the reason). argparse takes such a word for an option unless it is a plain
    number (``-600``) and no option looks like one; ``-0`` (``--null``) does, so it refused even
    ``--workers -1`` with "expected one argument". Here only ``-0`` itself is the option."""

    _NEGATIVE = re.compile(r"^-(?!0$)\.?\d")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (read where arguments are added, also in groups, and parsed; subcommands' parsers are of this class)
        self._negative_number_matcher = self._NEGATIVE

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        group._negative_number_matcher = self._NEGATIVE
        return group


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="fastdcm", description="Fast, correct DICOM to PNG/JPEG conversion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("--version", action="version", version=f"fastdcm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert files, folders, globs, @lists, DICOMDIRs to images")
    conv.add_argument("sources", nargs="+", metavar="SRC", help="file, folder, glob, @list.txt, - (stdin) or DICOMDIR")
    conv.add_argument("-o", "--out", required=True, help="output folder (created if needed)")
    add_option_flags(conv, ConvertOptions, "conversion")
    add_option_flags(conv, RenderOptions, "rendering")

    info = sub.add_parser("info", help="print a file's dataset and what fastdcm will do with it")
    info.add_argument("file", nargs="?", help="a DICOM file")
    info.add_argument("--plugins", action="store_true", help="list decoder plugins and how to install missing ones")
    info.add_argument("--json", action="store_true", help="the dataset in the DICOM JSON model (PS3.18 F), bulk data left out")
    info.add_argument("--allow-phi", action="store_true",
                      help="show identifiers (patient, physician, institution names, IDs, birth dates, private tags) "
                           "and dates and times; masked by default")

    render = sub.add_parser("render", help="render one frame of one file to an image file")
    render.add_argument("file")
    render.add_argument("-o", "--out", required=True, help="output file; its extension picks the format")
    render.add_argument("--frame", type=int, default=1, help="frame number, 1-based as in output names and fastdcm info (default: 1)")
    add_option_flags(render, RenderOptions, "rendering")
    gallery = sub.add_parser("gallery", help="write OUT/gallery/index.html, a page of a run's thumbnails and failures")
    gallery.add_argument("out", metavar="OUT", help="a run's output folder")
    gallery.add_argument("--manifest", metavar="PATH", help="the run's manifest (default: OUT/manifest.jsonl)")
    for command in (conv, info, render, gallery):  # -v after the subcommand works too
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging on stderr")
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fastdcm: %(message)s"))
    root = logging.getLogger("fastdcm")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _options(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    names = {f.name for cls in classes for f in option_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _cmd_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .run.convert import convert
    from .run.executors.heap import keep_heap

    keep_heap()  # the command's own process (with --workers 0 it converts): buffers reused (heap.py)
    options = _options(args, ConvertOptions, RenderOptions)
    try:
        report = convert(args.sources, args.out, stdin=sys.stdin, **options)
    except FastDcmError as exc:  # an unusable output folder or manifest, a missing encoder package
        print(f"fastdcm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:  # invalid options: usage error, nothing written
        parser.error(str(exc))
    except RuntimeError as exc:  # the worker pool cannot start here
        print(f"fastdcm: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    print(f"manifest: {report.manifest}")
    if report.gallery:
        print(report.gallery)
    if report.manifest_error:
        print(f"fastdcm: {report.manifest_error}; the run stopped. To resume: {report.resume_command}", file=sys.stderr)
        return EXIT_MANIFEST
    if report.interrupted:
        print(f"fastdcm: interrupted. To resume: {report.resume_command}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if report.discovered == 0:
        ignored = f" ({report.ignored_non_dicom} other files ignored)" if report.ignored_non_dicom else ""
        print(f"fastdcm: nothing to convert: no DICOM file in {' '.join(args.sources)}{ignored}", file=sys.stderr)
        return EXIT_NOTHING
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import kernels

    with kernels.using_twins():  # one file: the numpy twins, the same bits, without loading Numba (~0.8 s)
        return _info(args, parser)


class _NotShown(Exception):
    """``info``: the file's bytes are not a dataset to show (the reason)."""


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import decoders, inspect

    if args.plugins:
        from .decoders import FAMILIES

        rows = decoders()
        width = max(len(r.backend) for r in rows)
        print("decoders per family, in the order fastdcm tries them (--decoder FAMILY=BACKEND chooses one):")
        for fam, syntaxes in FAMILIES.items():
            print(f"{fam}: {', '.join(syntaxes)}")
            first = True
            for r in (r for r in rows if r.transfer_syntax == syntaxes[0]):
                state = ("used" if first else "fallback") if r.available else f"MISSING: {r.install}"
                first = first and not r.available
                print(f"  {r.rank}. {r.backend:<{width}}  {state:<8}  {r.note}")
        from .encoders import available

        for name, state in available().items():
            print(f"encoder {name:<10} {'available' if state is True else state}")
        return EXIT_OK
    if not args.file:
        parser.error("info needs a FILE (or --plugins)")
    import pydicom

    from .run.discover import DICOMDIR, OTHER, sniff
    from .run.tags import masked

    try:
        kind = sniff(args.file)
    except OSError as exc:
        print(f"fastdcm: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if kind == DICOMDIR:
        from .fileset import fileset_tree, format_tree

        try:
            tree = fileset_tree(args.file, allow_phi=args.allow_phi)
        except Exception as exc:  # pydicom raises many types on a damaged DICOMDIR: name it, fail
            print(f"fastdcm: {args.file}: the DICOMDIR cannot be read: {describe(exc)}", file=sys.stderr)
            return EXIT_FAILED
        if args.json:
            import json

            print(json.dumps(tree, indent=1))
        else:
            print(format_tree(tree))
        return EXIT_OK

    try:
        if kind == OTHER:  # (pydicom's forced read would show bytes of another format as elements)
            raise _NotShown("it does not look like DICOM (no preamble, no plausible first element)")
        ds = pydicom.dcmread(args.file, force=True, stop_before_pixels=True)
        shown = ds if args.allow_phi else masked(ds, bulk_limit=1024 if args.json else None)
        if args.allow_phi:
            print("fastdcm: identifiers shown (--allow-phi)", file=sys.stderr)
        if args.json:
            import json

            print(json.dumps(shown.to_json_dict(bulk_data_threshold=1 << 30), indent=1))
            return EXIT_OK
        print(shown)
    except _NotShown as exc:
        if args.json:
            print(f"fastdcm: {args.file}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"(no dataset shown: {exc})")
    except Exception as exc:  # pydicom raises many types on a damaged file: show it, go on
        if args.json:
            print(f"fastdcm: pydicom cannot read the dataset of {args.file}: {describe(exc)}", file=sys.stderr)
            return EXIT_FAILED
        print(f"(pydicom cannot read the dataset: {describe(exc)})")
    print()
    try:
        print(inspect(args.file))
    except FastDcmError as exc:
        print(f"{exc.status.value}: {exc.reason}")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_render(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import kernels

    with kernels.using_twins():  # one image: the numpy twins, the same bits, without loading Numba (~0.8 s)
        return _render(args, parser)


def _render(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .encoders import check_depth, get_encoder, stack_options
    from .render import open_image

    ext = os.path.splitext(args.out)[1].lower().lstrip(".")
    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "npy": "npy"}.get(ext)
    if fmt is None:
        parser.error(f"cannot tell the format from {args.out!r}: use .png, .jpg or .npy")
    if args.frame < 1:
        parser.error(f"--frame is a frame number from 1, not {args.frame}")
    try:
        given = _options(args, RenderOptions)
        options = RenderOptions(**given)
        problem = fit_problem(given)
        if problem:
            raise InvalidOptionError(problem)
        encoder = get_encoder(fmt)
        check_depth(encoder, options.depth)
        problem = explicit_window_problem(options)
        if problem:
            raise InvalidOptionError(problem)
        stack = len(options.windows or ())
        if stack and stack != 3 and fmt != "npy":
            raise InvalidOptionError(f"{stack} windows make a {stack}-channel image: write it as .npy (3 windows: .png or .jpg)")
    except FastDcmError as exc:  # invalid options: usage error, before any work
        print(f"fastdcm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        image = open_image(args.file)
        if args.frame > image.n_frames:  # (said in the numbers given: from 1, as the flag takes them)
            raise InvalidOptionError(f"--frame {args.frame}: the object has {image.n_frames} frame(s)", path=args.file)
        array = image.render_frame(args.frame - 1, options).array
        data = encoder.encode(array, **(stack_options(encoder, stack) if stack else {}))
    except FastDcmError as exc:
        print(f"fastdcm: {exc}", file=sys.stderr)
        return EXIT_FAILED
    folder = os.path.dirname(os.path.abspath(args.out))
    tmp = f"{args.out}.{os.getpid()}.part"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, args.out)
    except OSError as exc:
        print(f"fastdcm: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return EXIT_FAILED
    print(args.out)
    return EXIT_OK


def _cmd_gallery(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .gallery import build_gallery

    try:
        report = build_gallery(args.out, manifest=args.manifest)
    except FastDcmError as exc:  # no manifest, an unusable output folder
        print(f"fastdcm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the disk is full, the folder is read-only
        print(f"fastdcm: the gallery in {args.out} cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    commands = {"convert": _cmd_convert, "info": _cmd_info, "render": _cmd_render, "gallery": _cmd_gallery}
    try:
        return commands[args.command](args, parser)
    except BrokenPipeError:
        # whoever read stdout went away (`fastdcm info --plugins | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    """The command's entry point (``fastdcm``, ``python -m fastdcm``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` once its work is done: flush stdout and stderr, run the atexit
    handlers (logging's, multiprocessing's), then ``os._exit``, skipping the interpreter's teardown of
    every module, which takes ~0.25 s once Numba is loaded (a 2-slice convert, the whole process:
    0.78-0.89 -> 0.63-0.67 s). Where another thread is still running, or a stream cannot be flushed, the
    ordinary exit (which joins threads and reports the stream's error) instead."""
    import atexit
    import threading

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None or threading.active_count() > 1:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
