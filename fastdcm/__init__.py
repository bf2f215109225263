"""fastdcm: fast, correct DICOM to PNG/JPEG conversion at archive scale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .decoders import decoders
from .errors import (
    DecodeError,
    EncodeError,
    FastDcmError,
    InvalidOptionError,
    InvalidPixelModuleError,
    MissingDecoderError,
    MissingDependencyError,
    NoImageError,
    NotDicomError,
    Status,
    TruncatedPixelDataError,
    UnsafePathError,
    UnsupportedTransferSyntaxError,
)
from .header import PixelSpec
from .options import RenderOptions, VoiFunction, VoiPolicy
from .render import Image, Inspection, inspect, iter_frames, open_image, render

if TYPE_CHECKING:
    from .run.convert import Report, convert
    from .run.sinks.table import read_metadata

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The batch layer (multiprocessing, the executors, the sinks) is imported on first use, so a
    # program that only renders, or `fastdcm render`, does not pay for it at start-up.
    if name in ("convert", "Report"):
        from .run import convert as module

        return getattr(module, name)
    if name == "read_metadata":
        from .run.sinks.table import read_metadata

        return read_metadata
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "render",
    "convert",
    "Report",
    "read_metadata",
    "iter_frames",
    "inspect",
    "open_image",
    "decoders",
    "Image",
    "Inspection",
    "PixelSpec",
    "RenderOptions",
    "VoiFunction",
    "VoiPolicy",
    "Status",
    "FastDcmError",
    "NotDicomError",
    "NoImageError",
    "TruncatedPixelDataError",
    "InvalidPixelModuleError",
    "UnsupportedTransferSyntaxError",
    "MissingDecoderError",
    "DecodeError",
    "InvalidOptionError",
    "EncodeError",
    "UnsafePathError",
    "MissingDependencyError",
]
