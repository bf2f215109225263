"""Plain references, built from pydicom's own processing functions (not from fastdcm's code).

``reference(path, frame)`` renders a frame as RENDERING.md says, with pydicom's
``apply_modality_lut`` / ``apply_voi_lut`` / ``apply_color_lut`` and its decoders' colour
conversion, then scales to 0..255 as the contract says. fastdcm must be within 1 of it.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut


def frame_view(ds: Dataset, frame: int) -> Dataset:
    """A shallow copy of ``ds`` with the frame's functional-group values moved to the top
    level (per-frame > shared > top level), so pydicom's functions see them."""
    view = copy.copy(ds)
    for groups, idx in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        seq = ds.get(groups)
        if not seq or idx >= len(seq):
            continue
        for name, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            inner = seq[idx].get(name)
            if inner:
                for kw in keywords:
                    if kw in inner[0]:
                        setattr(view, kw, inner[0][kw].value)
    return view


def _round(y: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(y + 0.5), 0, 255)


def reference(path, frame: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:  # no preamble: a raw dataset
            ds = pydicom.dcmread(path, force=True)
            implicit, little = ds.original_encoding
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian if implicit
                else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
            )
        arr = pixel_array(ds, index=frame)
        view = frame_view(ds, frame)
        pi = ds.PhotometricInterpretation
        if pi in ("MONOCHROME1", "MONOCHROME2"):
            out = _grayscale(arr, view)
            inverse = pi == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
            if inverse:
                out = 255 - out
            return out.astype(np.uint8)
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds).astype(np.float64)
            bits = 8 if ds.RedPaletteColorLookupTableDescriptor[2] == 8 else 16
            return _round(rgb * 255.0 / (2**bits - 1)).astype(np.uint8)
        # RGB and YBR (pydicom's decoders convert to RGB)
        bits = ds.BitsStored
        return _round(arr.astype(np.float64) * 255.0 / (2**bits - 1)).astype(np.uint8)


def _grayscale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    modality = apply_modality_lut(arr, ds).astype(np.float64)
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        bits = item.LUTDescriptor[2]
        values = apply_voi_lut(np.floor(modality + 0.5).astype(np.int64), ds, index=0)
        return _round(values.astype(np.float64) * 255.0 / (2**bits - 1))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(modality, ds, index=0, prefer_lut=False)
        # apply_windowing's output range (see pydicom.pixels.processing.apply_windowing)
        if ds.get("ModalityLUTSequence"):
            y_min, y_max = 0, 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
        elif ds.PixelRepresentation == 0:
            y_min, y_max = 0, 2**ds.BitsStored - 1
        else:
            y_min, y_max = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
        if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
            y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        return _round((values - y_min) / (y_max - y_min) * 255.0)
    lo, hi = float(np.nanmin(modality)), float(np.nanmax(modality))
    if hi == lo:
        return np.zeros(modality.shape)
    return _round((modality - lo) / (hi - lo) * 255.0)


def naive_window(stored: np.ndarray, slope: float, intercept: float, center: float, width: float) -> np.ndarray:
    """The textbook float recipe (for benchmarks and kernel spot checks): LINEAR window to uint8."""
    m = stored.astype(np.float64) * slope + intercept
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = np.where(m <= lo, 0.0, np.where(m > hi, 255.0, ((m - (center - 0.5)) / (width - 1) + 0.5) * 255.0))
    return np.floor(y + 0.5).astype(np.uint8)
