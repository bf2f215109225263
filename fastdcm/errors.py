"""FastDcmError and its subclasses, and the manifest's status names.

Every failure that can be expected from a file raises a subclass of :class:`FastDcmError`
carrying the file it came from and a one-line reason. Each class maps to one
:class:`Status`, which is what the manifest of ``fastdcm convert`` records.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Status(str, Enum):
    """The outcome of one input, as recorded in the manifest."""

    CONVERTED = "converted"
    SKIPPED = "skipped"  # output existed already (--on-exists skip / --resume)
    NOT_DICOM = "not_dicom"
    NO_IMAGE = "no_image"
    TRUNCATED = "truncated"
    INVALID_PIXEL_MODULE = "invalid_pixel_module"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    MISSING_DECODER = "missing_decoder"
    DECODE_ERROR = "decode_error"
    INVALID_OPTION = "invalid_option"
    ENCODE_ERROR = "encode_error"
    WRITE_ERROR = "write_error"
    NAME_CONFLICT = "name_conflict"
    REFUSED = "refused"
    IDENTIFIER_IN_NAME = "identifier_in_name"  # an output name would carry the file's patient name, ID, ...
    WORKER_CRASH = "worker_crash"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"
    ERROR = "error"  # an unexpected failure: a bug in fastdcm, reported, never hidden


class FastDcmError(Exception):
    """Base class: a failure tied to one input, with a reason a person can act on."""

    status: Status = Status.ERROR

    def __init__(self, reason: str, *, path: Any = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def with_path(self, path: Any) -> "FastDcmError":
        """Attach the source's name (used where the error is raised before it is known)."""
        if self.path is None and path is not None:
            self.path = str(path)
            self.args = (self._message(),)
        return self

    def __reduce__(self):  # picklable across process boundaries with its path
        return (_rebuild, (type(self), self.reason, self.path))


def _rebuild(cls: type, reason: str, path: str | None) -> FastDcmError:
    return cls(reason, path=path)


class NotDicomError(FastDcmError):
    """The input is not a DICOM file (no preamble, not parseable as a dataset)."""

    status = Status.NOT_DICOM


class NoImageError(FastDcmError):
    """A valid DICOM object that holds no pixel data (SR, RT plan, presentation state...)."""

    status = Status.NO_IMAGE


class TruncatedPixelDataError(FastDcmError):
    """The header says this is an image, but the pixel data is missing or shorter than promised."""

    status = Status.TRUNCATED


class InvalidPixelModuleError(FastDcmError):
    """Rows, Columns, Bits Allocated, ... out of range or inconsistent with each other."""

    status = Status.INVALID_PIXEL_MODULE


class UnsupportedTransferSyntaxError(FastDcmError):
    """No decoder for this transfer syntax exists in pydicom's plugins."""

    status = Status.UNSUPPORTED_TRANSFER_SYNTAX


class MissingDecoderError(UnsupportedTransferSyntaxError):
    """A decoder exists but its package is not installed; the reason names the pip command."""

    status = Status.MISSING_DECODER


class DecodeError(FastDcmError):
    """The decoder failed on this file's pixel data."""

    status = Status.DECODE_ERROR


class InvalidOptionError(FastDcmError, ValueError):
    """The options asked for something this file cannot give (a frame or VOI index out of range...)."""

    status = Status.INVALID_OPTION


class EncodeError(FastDcmError):
    """The image could not be encoded in the requested format."""

    status = Status.ENCODE_ERROR


class UnsafePathError(FastDcmError):
    """A path that would resolve outside the place it must stay in (output folder, file-set root)."""

    status = Status.REFUSED


class IdentifierInNameError(FastDcmError):
    """An output name would carry an identifier of the file (a folder named after the patient)."""

    status = Status.IDENTIFIER_IN_NAME


class MissingDependencyError(FastDcmError, ImportError):
    """An optional package is needed for what was asked; the reason names the pip command."""

    status = Status.ERROR


def raised_by_dependency(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside another package (pydicom, numpy, a codec) rather than in
    fastdcm's own code: on a damaged file that is the file's fault, not a bug of ours."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    own = os.path.dirname(os.path.abspath(__file__))
    return not os.path.abspath(frames[-1].filename).startswith(own + os.sep)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line, for a reason, a manifest field or a message:
    the first line of its text (pydicom appends a whole traceback to some, ``tag_in_exception``)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].rstrip() if lines else ''}"


def from_dependency(exc: Exception, kind: type[FastDcmError], what: str) -> FastDcmError | None:
    """``kind(reason)`` for an exception a dependency raised on damaged input (see
    :func:`raised_by_dependency`), or None when it came from fastdcm itself (a bug: status error)."""
    if isinstance(exc, FastDcmError) or not raised_by_dependency(exc):
        return None
    return kind(f"{what}: {describe(exc)}")
