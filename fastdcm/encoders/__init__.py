"""Encoders: a rendered image array in, the bytes of one file out, chosen by name.

    >>> enc = get_encoder("png")
    >>> data = enc.encode(image)           # bytes; the caller writes them to name + enc.extension

Names: "png" (fast, the default), "png-small" (Pillow's best compression: smallest, slow),
"jpeg" (8-bit, lossy, ``quality``), "npy" (numpy's format). Inputs are (H, W) greyscale or
(H, W, 3) RGB arrays of uint8, or uint16 for "png" and "npy" ("png-small" takes 16-bit
greyscale only). This package is the only place in fastdcm that imports Pillow or an
image codec; each is imported on first use, and a missing one raises
:class:`~fastdcm.errors.MissingDependencyError` naming the ``pip install`` command.
"""

from __future__ import annotations

from fastdcm.encoders._base import Encoder
from fastdcm.encoders.jpeg import JpegEncoder
from fastdcm.encoders.npy import NpyEncoder
from fastdcm.encoders.png import FastPngEncoder, SmallPngEncoder
from fastdcm.errors import InvalidOptionError

__all__ = ["DEFAULT", "Encoder", "available", "get_encoder", "names"]

DEFAULT = "png"

_REGISTRY: dict[str, Encoder] = {
    enc.name: enc for enc in (FastPngEncoder(), SmallPngEncoder(), JpegEncoder(), NpyEncoder())
}


def names() -> tuple[str, ...]:
    """Every registered encoder name, available or not."""
    return tuple(_REGISTRY)


def get_encoder(name: str) -> Encoder:
    """The encoder registered as `name`, ready to use.

    Raises InvalidOptionError for an unknown name and MissingDependencyError (with the
    ``pip install`` command) if a package it needs is not installed.
    """
    try:
        encoder = _REGISTRY[str(name).lower()]
    except KeyError:
        raise InvalidOptionError(
            f"unknown image format {name!r}; choose one of {', '.join(_REGISTRY)}"
        ) from None
    encoder.load()
    return encoder


def available() -> dict[str, bool | str]:
    """{name: True, or the reason it is unavailable (with the ``pip install`` command)}."""
    return {name: enc.unavailable_reason() or True for name, enc in _REGISTRY.items()}


def check_depth(encoder: Encoder, depth: int) -> None:
    """InvalidOptionError, before any work, when ``encoder`` cannot hold samples of ``depth`` bits."""
    import numpy as np

    if np.dtype(np.uint16 if depth == 16 else np.uint8) not in encoder.dtypes:
        raise InvalidOptionError(
            f"{encoder.name} holds 8-bit samples only: use --depth 8, or --format png or npy for 16-bit images"
        )


def stack_options(encoder: Encoder, windows: int) -> dict:
    """The encoder's options for a window stack of ``windows`` channels in one image: a JPEG's
    three channels are windows, not colours, so each is coded as it is (no YCbCr transform, no
    chroma subsampling: encoders/jpeg.py)."""
    return {"colorspace": "RGB"} if encoder.name == "jpeg" and windows == 3 else {}
