"""fastdcm: fast, correct DICOM to PNG/JPEG conversion at archive scale."""

from __future__ import annotations

from .run.convert import Report, convert
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

__version__ = "0.1.0"

__all__ = [
    "render",
    "convert",
    "Report",
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
