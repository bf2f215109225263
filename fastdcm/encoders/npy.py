"""NPY: numpy's own format (``np.save``), exact for any accepted array."""

from __future__ import annotations

import io

import numpy as np

from fastdcm.encoders._base import Encoder


class NpyEncoder(Encoder):
    """The array as a ``.npy`` file, as ``np.save`` writes it (no pickles)."""

    name = "npy"
    extension = ".npy"

    def channels_ok(self, channels: int) -> bool:
        return channels >= 1  # a window stack of any size

    def _encode(self, array: np.ndarray, quality: int) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
