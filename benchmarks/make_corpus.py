"""Generate the benchmark archives from the real files of pydicom's test data.

Three workloads, each built only from files that ship with ``pydicom`` and
``pydicom-data`` (nothing is downloaded), each cached in its own folder:

``ct``
    N uncompressed (explicit VR little endian) 512x512 int16 CT slices. The
    header is the real one of ``693_UNCR.dcm``; the pixels come from the four
    real 512x512 CT slices in the test data (head, skull base, abdomen,
    spine), converted to HU and varied per slice (per-series flip, a smooth
    drift and blend along the series, CT-like noise) so no two files are
    identical and compression ratios stay realistic. New UIDs, realistic
    ``patient/study/series`` folders, some series with extension-less names,
    real CT window presets (some with two windows).
``mixed``
    A realistic archive mix: CT, MR, CR MONOCHROME1, US RGB / YBR / palette
    colour, multi-frame, JPEG 2000 (lossless and lossy), JPEG lossless,
    JPEG-LS, RLE, JPEG baseline. Native sources get varied pixels; sources we
    can re-encode (JPEG 2000 lossless, JPEG-LS, RLE) are varied then encoded
    with pydicom's encoders; the remaining compressed files (JPEG baseline and
    lossless, lossy JPEG 2000) keep their real bytes and only get new UIDs.
``mammo``
    A few 4096x3328 12-bit MONOCHROME2 digital mammograms, JPEG 2000
    lossless, built from the real CR chest ``RG1_UNCR.dcm`` (upscaled,
    breast-shaped mask, noise). Decode-bound.

Usage::

    python benchmarks/make_corpus.py {ct,mixed,mammo,all} [--count N] [--out DIR]

prints the folder(s). From Python::

    from benchmarks.make_corpus import ensure_corpus, corpus_files
    folder = ensure_corpus("ct", count=1000)
    files = corpus_files(folder)

A corpus is rebuilt only when its ``corpus.json`` is missing, lists a file
that is missing, or was made by another generator version, seed or count.
Files are streamed to disk one at a time: memory stays flat for any count.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

#: Bump whenever the output of any workload changes: cached corpora are rebuilt.
GENERATOR_VERSION = 1

DEFAULT_ROOT = Path(__file__).resolve().parent / ".cache"
DEFAULT_COUNTS = {"ct": 1000, "mixed": 300, "mammo": 4}
WORKLOADS = tuple(DEFAULT_COUNTS)
#: UID root for every generated UID (pydicom's; the suffix is a hash of
#: workload, seed and a per-entity key, so runs are reproducible).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
MANIFEST = "corpus.json"


# --------------------------------------------------------------------------- helpers
def _uid(*parts: object) -> str:
    """Deterministic UID from ``parts`` (sha512 of their text, see generate_uid)."""
    # one joined source: generate_uid concatenates its sources without a
    # separator, so ("sop", 2, 10) and ("sop", 21, 0) would collide
    return str(generate_uid(UID_PREFIX, ["|".join(str(p) for p in parts)]))


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(
            f"test file {name!r} not found: install pydicom-data (pip install pydicom-data)"
        )
    return str(path)


def _write(ds: FileDataset, path: Path) -> int:
    """Write ``ds`` as a DICOM file (preamble + meta) and return its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path.stat().st_size


def _set_identity(ds: FileDataset, *, patient: str, study_uid: str, series_uid: str,
                  sop_uid: str, study_no: int, series_no: int, instance_no: int,
                  frame_of_reference_uid: str | None = None) -> None:
    ds.PatientID = patient
    ds.PatientName = f"BENCH^{patient}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.StudyID = str(study_no)
    ds.AccessionNumber = f"A{zlib.crc32(study_uid.encode()) % 10**8:08d}"
    ds.SeriesNumber = series_no
    ds.InstanceNumber = instance_no
    # distinct study times keep tools that name outputs by date/time apart
    ds.StudyDate = "2024%02d%02d" % (1 + study_no % 12, 1 + study_no % 28)
    ds.StudyTime = "%02d%02d%02d" % (8 + study_no % 10, study_no % 60, series_no % 60)
    if frame_of_reference_uid is not None and "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = frame_of_reference_uid


def _file_name(instance_no: int, with_extension: bool) -> str:
    return f"IM{instance_no:04d}" + (".dcm" if with_extension else "")


# --------------------------------------------------------------------------- ct
#: The real 512x512 CT slices of the test data (all in HU after the modality LUT).
CT_BASES = ("693_UNCR.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm")
CT_TEMPLATE = "693_UNCR.dcm"
#: (center, width) presets as scanners write them; tuples of two are multi-valued.
CT_WINDOWS = (
    ((40,), (400,)),            # soft tissue
    ((40,), (80,)),             # brain
    ((-600,), (1500,)),         # lung
    ((300,), (1500,)),          # bone
    ((40, -600), (400, 1500)),  # soft tissue + lung
    ((50, 400), (350, 2000)),   # abdomen + bone
)
CT_HU_MIN, CT_HU_MAX = -3024, 3071  # 12-bit CT range; stored = HU + 1024 fits 14 bits signed


def _ct_bases() -> list[np.ndarray]:
    out = []
    for name in CT_BASES:
        ds = pydicom.dcmread(_testdata(name))
        hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        if hu.shape != (512, 512):
            raise ValueError(f"{name}: expected a 512x512 CT slice, got {hu.shape}")
        out.append(np.clip(hu, CT_HU_MIN, CT_HU_MAX))
    return out


def _ct_template() -> FileDataset:
    ds = pydicom.dcmread(_testdata(CT_TEMPLATE))
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # the template's own padding / window values are replaced per series
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 1
    ds.PixelPaddingValue = CT_HU_MIN + 1024
    ds.SliceThickness = 1.25
    return ds


def _noise_bank(rng: np.random.Generator, n: int, shape: tuple[int, int], sigma: float) -> list[np.ndarray]:
    return [(rng.standard_normal(shape, dtype=np.float32) * sigma) for _ in range(n)]


def iter_ct(out_dir: Path, count: int, seed: int = 0) -> Iterator[tuple[str, int]]:
    """Write ``count`` CT slices below ``out_dir``; yield (relative path, size)."""
    rng = np.random.default_rng(seed)
    bases = _ct_bases()
    noise = _noise_bank(rng, 8, (512, 512), 12.0)  # ~12 HU: typical CT image noise
    ds = _ct_template()
    written = 0
    patient = study = series = 0
    while written < count:
        patient += 1
        pid = f"P{seed:02d}{patient:05d}"
        for _ in range(int(rng.integers(1, 3))):  # 1-2 studies per patient
            study += 1
            study_uid = _uid("ct", seed, "study", study)
            for series_in_study in range(int(rng.integers(1, 4))):  # 1-3 series per study
                if written >= count:
                    break
                series += 1
                series_uid = _uid("ct", seed, "series", series)
                for_uid = _uid("ct", seed, "for", study)
                base = bases[int(rng.integers(len(bases)))]
                other = bases[int(rng.integers(len(bases)))]
                if rng.random() < 0.5:
                    base = base[:, ::-1]
                centers, widths = CT_WINDOWS[int(rng.integers(len(CT_WINDOWS)))]
                ds.WindowCenter = list(centers) if len(centers) > 1 else centers[0]
                ds.WindowWidth = list(widths) if len(widths) > 1 else widths[0]
                ds.SeriesDescription = f"BENCH CT {series_in_study + 1}"
                with_ext = series % 3 != 0  # every third series: extension-less names
                n_slices = min(int(rng.integers(40, 161)), count - written)
                drift = rng.uniform(-0.15, 0.15, size=2)
                z0 = float(rng.uniform(-200, 0))
                folder = Path(f"patient_{patient:04d}") / f"study_{study}" / f"series_{series_in_study + 1}"
                for i in range(n_slices):
                    # smooth anatomy change along the series: drift + blend with a
                    # shifted copy of the same (or another) slice, plus fresh noise
                    dy, dx = int(drift[0] * i), int(drift[1] * i)
                    img = np.roll(base, (dy, dx), axis=(0, 1))
                    a = 0.15 + 0.15 * np.sin(i / 9.0 + series)
                    partner = other if other.shape == base.shape and rng.random() < 0.1 else base
                    img = img * (1 - a) + np.roll(partner, (i % 7 - 3, 2 - i % 5), axis=(0, 1)) * a
                    n = noise[i % len(noise)]
                    img += np.roll(n, (int(rng.integers(512)), int(rng.integers(512))), axis=(0, 1))
                    stored = np.clip(np.rint(img), CT_HU_MIN, CT_HU_MAX).astype(np.int16)
                    stored += 1024
                    sop_uid = _uid("ct", seed, "sop", series, i)
                    _set_identity(ds, patient=pid, study_uid=study_uid, series_uid=series_uid,
                                  sop_uid=sop_uid, study_no=study, series_no=series_in_study + 1,
                                  instance_no=i + 1, frame_of_reference_uid=for_uid)
                    z = z0 + 1.25 * i
                    ds.ImagePositionPatient = [-250.0, -250.0, z]
                    ds.SliceLocation = z
                    ds.PixelData = stored.tobytes()
                    rel = folder / _file_name(i + 1, with_ext)
                    size = _write(ds, out_dir / rel)
                    written += 1
                    yield rel.as_posix(), size


# --------------------------------------------------------------------------- mixed
@dataclass(frozen=True)
class Recipe:
    """One kind of file in the mixed archive."""

    label: str
    source: str           # test file name
    weight: float         # relative frequency of series of this kind
    mode: str             # "vary" (native out), "encode" (vary, then re-encode), "copy" (real bytes)
    target: str = ExplicitVRLittleEndian  # transfer syntax for "encode"
    plugin: str = ""      # encoder plugin for "encode"
    series_size: tuple[int, int] = (3, 13)  # instances per series (low, high)


MIXED_RECIPES = (
    Recipe("ct", "693_UNCR.dcm", 12, "vary", series_size=(5, 15)),
    Recipe("ct-j2k", "explicit_VR-UN.dcm", 5, "encode", JPEG2000Lossless, "pylibjpeg", (4, 12)),
    Recipe("ct-jpeg-lossless", "bad_sequence.dcm", 4, "copy", series_size=(4, 12)),
    Recipe("mr", "MR-SIEMENS-DICOM-WithOverlays.dcm", 6, "vary", series_size=(5, 20)),
    Recipe("mr", "examples_overlay.dcm", 3, "vary", series_size=(5, 15)),
    Recipe("mr-1024", "MR2_UNCR.dcm", 3, "vary", series_size=(3, 8)),
    Recipe("mr-jls", "MR2_UNCR.dcm", 3, "encode", JPEGLSLossless, "pyjpegls", (3, 8)),
    Recipe("mr-rle", "MR-SIEMENS-DICOM-WithOverlays.dcm", 3, "encode", RLELossless, "", (4, 12)),
    Recipe("mr-j2k-lossy", "MR2_J2KI.dcm", 1, "copy", series_size=(1, 3)),
    Recipe("mr-multiframe", "emri_small.dcm", 2, "vary", series_size=(1, 3)),
    Recipe("mr-multiframe-j2k", "emri_small_jpeg_2k_lossless.dcm", 1, "copy", series_size=(1, 3)),
    Recipe("mr-multiframe-rle", "emri_small_RLE.dcm", 1, "copy", series_size=(1, 3)),
    Recipe("cr-mono1", "RG3_UNCR.dcm", 3, "vary", series_size=(1, 3)),
    Recipe("cr-mono1-j2k", "RG1_J2KR.dcm", 1, "copy", series_size=(1, 2)),
    Recipe("cr-mono1-j2k-lossy", "RG3_J2KI.dcm", 1, "copy", series_size=(1, 2)),
    Recipe("us-rgb", "US1_UNCR.dcm", 3, "vary", series_size=(2, 8)),
    Recipe("us-rgb", "examples_rgb_color.dcm", 2, "vary", series_size=(2, 8)),
    Recipe("us-ybr-j2k", "US1_J2KR.dcm", 2, "copy", series_size=(2, 6)),
    Recipe("us-ybr-jpeg-multiframe", "examples_ybr_color.dcm", 2, "copy", series_size=(1, 3)),
    Recipe("us-ybr-jpeg-cine", "color3d_jpeg_baseline.dcm", 0.5, "copy", series_size=(1, 2)),
    Recipe("us-palette", "OBXXXX1A.dcm", 2, "vary", series_size=(2, 6)),
    Recipe("us-palette-rle", "OBXXXX1A_rle.dcm", 1, "copy", series_size=(1, 4)),
    Recipe("us-palette", "examples_palette.dcm", 1, "copy", series_size=(1, 4)),
    Recipe("us-palette-multiframe", "OBXXXX1A_2frame.dcm", 1, "copy", series_size=(1, 3)),
    Recipe("us-jpeg-lossless", "JPGLosslessP14SV1_1s_1f_8b.dcm", 1, "copy", series_size=(1, 4)),
    Recipe("nm-jpeg-lossless", "JPEG-LL.dcm", 1, "copy", series_size=(1, 3)),
    Recipe("sc-rgb-jpeg", "SC_rgb_jpeg_gdcm.dcm", 0.5, "copy", series_size=(1, 3)),
)


def _stored_range(ds: FileDataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


class _MixedSource:
    """A recipe's template dataset and (for vary/encode) its native stored pixels."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.ds = pydicom.dcmread(_testdata(recipe.source))
        self.pixels: np.ndarray | None = None
        if recipe.mode in ("vary", "encode"):
            ds = self.ds
            ds.pixel_array_options(as_rgb=False)  # keep stored values / colour space
            self.pixels = ds.pixel_array.copy()
            # native output: explicit VR little endian, a fresh (defined length)
            # PixelData element even when the source was encapsulated
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            del ds.PixelData
            ds.add_new(0x7FE00010, "OB" if int(ds.BitsAllocated) == 8 else "OW", self.pixels.tobytes())
            self.lo, self.hi = _stored_range(ds)
            self.bits8 = int(ds.BitsAllocated) == 8
            if recipe.mode == "encode":
                self.header = copy.deepcopy(ds)  # a copy without pixels for compress()
                del self.header.PixelData

    def varied(self, rng: np.random.Generator) -> np.ndarray:
        arr = self.pixels
        assert arr is not None
        frames = int(self.ds.get("NumberOfFrames", 1) or 1)
        ax = (1, 2) if frames > 1 else (0, 1)
        shift = (int(rng.integers(-20, 21)), int(rng.integers(-20, 21)))
        out = np.roll(arr, shift, axis=ax)
        if rng.random() < 0.5:
            out = np.flip(out, axis=ax[1])
        if self.bits8 or self.ds.PhotometricInterpretation == "PALETTE COLOR":
            return np.ascontiguousarray(out)  # colour / palette indices: geometry only
        span = float(arr.max()) - float(arr.min())
        noise = rng.standard_normal(out.shape, dtype=np.float32) * max(1.0, span * 0.004)
        return np.clip(np.rint(out + noise), self.lo, self.hi).astype(arr.dtype)

    def dataset_for(self, rng: np.random.Generator) -> FileDataset:
        r = self.recipe
        if r.mode == "copy":
            return self.ds
        arr = self.varied(rng)
        if r.mode == "vary":
            self.ds.PixelData = arr.tobytes()
            return self.ds
        ds = copy.deepcopy(self.header)  # compress() rewrites PixelData and the meta
        ds.compress(r.target, arr, encoding_plugin=r.plugin, generate_instance_uid=False)
        return ds


def iter_mixed(out_dir: Path, count: int, seed: int = 0) -> Iterator[tuple[str, int]]:
    """Write ``count`` files of the mixed archive below ``out_dir``."""
    rng = np.random.default_rng(seed + 1)
    sources: dict[int, _MixedSource] = {}
    weights = np.array([r.weight for r in MIXED_RECIPES], dtype=float)
    weights /= weights.sum()
    first = [int(k) for k in rng.permutation(len(MIXED_RECIPES))]
    written = 0
    patient = study = series = 0
    while written < count:
        patient += 1
        pid = f"M{seed:02d}{patient:05d}"
        study += 1
        study_uid = _uid("mixed", seed, "study", study)
        for series_in_study in range(int(rng.integers(1, 4))):
            if written >= count:
                break
            series += 1
            # every recipe once first (so small corpora hold every kind), then by weight
            k = first.pop() if first else int(rng.choice(len(MIXED_RECIPES), p=weights))
            recipe = MIXED_RECIPES[k]
            if k not in sources:
                sources[k] = _MixedSource(recipe)
            src = sources[k]
            lo, hi = recipe.series_size
            n = min(int(rng.integers(lo, hi)), count - written)
            with_ext = series % 4 != 0
            series_uid = _uid("mixed", seed, "series", series)
            folder = (Path(f"patient_{patient:04d}") / f"study_{study}"
                      / f"series_{series_in_study + 1}_{recipe.label}")
            for i in range(n):
                ds = src.dataset_for(rng)
                _set_identity(ds, patient=pid, study_uid=study_uid, series_uid=series_uid,
                              sop_uid=_uid("mixed", seed, "sop", series, i), study_no=study,
                              series_no=series_in_study + 1, instance_no=i + 1,
                              frame_of_reference_uid=_uid("mixed", seed, "for", study))
                rel = folder / _file_name(i + 1, with_ext)
                size = _write(ds, out_dir / rel)
                written += 1
                yield rel.as_posix(), size


# --------------------------------------------------------------------------- mammo
MAMMO_SHAPE = (4096, 3328)  # rows, columns (a full-field digital mammogram)
MAMMO_BITS = 12
MAMMO_SOURCE = "RG1_UNCR.dcm"
DIGITAL_MAMMO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def _mammo_pixels(texture: np.ndarray, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """A 12-bit breast on a dark background, chest wall on the left."""
    import cv2

    rows, cols = MAMMO_SHAPE
    # pick a crop of the chest texture, upscale it to the detector size
    h, w = texture.shape
    y0 = int(rng.integers(0, h // 6)); x0 = int(rng.integers(0, w // 6))
    crop = texture[y0:y0 + h * 5 // 6, x0:x0 + w * 5 // 6]
    tissue = cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.ogrid[:rows, :cols]
    cy = rows / 2 + rng.uniform(-200, 200)
    ry = rows * rng.uniform(0.40, 0.47)
    rx = cols * rng.uniform(0.62, 0.80)
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2
    mask = inside <= 1.0
    # skin line falloff towards the edge, brighter (denser) near the chest wall
    fall = np.clip(1.0 - inside, 0.0, 1.0) ** 0.25
    img = np.full(MAMMO_SHAPE, 60.0, dtype=np.float32)
    img += rng.standard_normal(MAMMO_SHAPE, dtype=np.float32) * 3.0
    breast = 700.0 + tissue * 2600.0 * fall
    breast += rng.standard_normal(MAMMO_SHAPE, dtype=np.float32) * 10.0
    img[mask] = breast[mask]
    img = np.clip(np.rint(img), 0, (1 << MAMMO_BITS) - 1).astype(np.uint16)
    return img[:, ::-1].copy() if flip else img


def iter_mammo(out_dir: Path, count: int, seed: int = 0) -> Iterator[tuple[str, int]]:
    """Write ``count`` JPEG 2000 lossless mammograms below ``out_dir``."""
    rng = np.random.default_rng(seed + 2)
    ds = pydicom.dcmread(_testdata(MAMMO_SOURCE))
    raw = ds.pixel_array.astype(np.float32)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    texture = np.clip((hi - raw) / (hi - lo), 0, 1)  # MONOCHROME1 -> dense is bright
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DIGITAL_MAMMO_PRESENTATION
    ds.Modality = "MG"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = MAMMO_SHAPE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, MAMMO_BITS, MAMMO_BITS - 1, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.PresentationLUTShape = "IDENTITY"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "BREAST"
    for kw in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if kw in ds:
            delattr(ds, kw)
    views = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
    study_uid = ""
    for i in range(count):
        if i % 4 == 0:
            study_uid = _uid("mammo", seed, "study", i // 4)
        laterality, view = views[i % 4]
        pixels = _mammo_pixels(texture, rng, flip=laterality == "R")
        tmpl = copy.deepcopy(ds)  # header only: compress() adds the pixels
        tmpl.ImageLaterality = laterality
        tmpl.ViewPosition = view
        tmpl.SeriesDescription = f"{laterality} {view}"
        _set_identity(tmpl, patient=f"G{seed:02d}{i // 4 + 1:05d}", study_uid=study_uid,
                      series_uid=_uid("mammo", seed, "series", i), sop_uid=_uid("mammo", seed, "sop", i),
                      study_no=i // 4 + 1, series_no=i % 4 + 1, instance_no=1)
        tmpl.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg",
                      generate_instance_uid=False)
        rel = Path(f"patient_{i // 4 + 1:04d}") / "study_1" / f"series_{i % 4 + 1}" / f"{laterality}_{view}.dcm"
        size = _write(tmpl, out_dir / rel)
        yield rel.as_posix(), size


# --------------------------------------------------------------------------- cache
GENERATORS: dict[str, Callable[[Path, int, int], Iterator[tuple[str, int]]]] = {
    "ct": iter_ct,
    "mixed": iter_mixed,
    "mammo": iter_mammo,
}


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's ``corpus.json``, or None when there is none (or it is unreadable)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, name: str, count: int, seed: int) -> bool:
    meta = read_manifest(folder)
    if not meta or meta.get("generator_version") != GENERATOR_VERSION:
        return False
    if (meta.get("workload"), meta.get("count"), meta.get("seed")) != (name, count, seed):
        return False
    return all((folder / rel).is_file() for rel in meta["files"])


def build_corpus(name: str, folder: Path, count: int, seed: int = 0, progress: bool = False) -> dict:
    """Build ``name`` into ``folder`` (replacing it) and return its manifest."""
    if name not in GENERATORS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and read_manifest(folder) is None:
        raise FileExistsError(f"{folder} exists, is not empty and is not a generated corpus; "
                              "refusing to replace it")
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    files: list[str] = []
    total = 0
    with warnings.catch_warnings():
        # the real test files carry a few invalid values (on purpose: they test
        # pydicom); pydicom warns when it parses them while we replace them
        warnings.filterwarnings("ignore", message=r"(Invalid value for VR|The value length)",
                                category=UserWarning)
        for rel, size in GENERATORS[name](tmp, count, seed):
            files.append(rel)
            total += size
            if progress and len(files) % 1000 == 0:
                print(f"  {name}: {len(files)}/{count}", file=sys.stderr)
    meta = {
        "workload": name,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "count": count,
        "files_count": len(files),
        "total_bytes": total,
        "mean_bytes": total / max(1, len(files)),
        "seconds_to_build": round(time.perf_counter() - t0, 2),
        "pydicom": pydicom.__version__,
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return meta


def ensure_corpus(name: str, count: int | None = None, out: str | os.PathLike | None = None,
                  seed: int = 0, progress: bool = False) -> Path:
    """Return the folder of workload ``name``, building it only when it is not current.

    ``out`` defaults to ``benchmarks/.cache/<name>`` (``<name>-<count>`` when the count
    is not the default, so a 10,000-file corpus does not evict the 1,000-file one).
    """
    count = DEFAULT_COUNTS[name] if count is None else int(count)
    if count < 1:
        raise ValueError("count must be at least 1")
    if out is None:
        suffix = "" if count == DEFAULT_COUNTS[name] else f"-{count}"
        out = DEFAULT_ROOT / f"{name}{suffix}"
    folder = Path(out).resolve()
    if not _is_current(folder, name, count, seed):
        build_corpus(name, folder, count, seed, progress=progress)
    return folder


def corpus_files(folder: str | os.PathLike) -> list[str]:
    """Absolute paths of the corpus' files, in generation order."""
    folder = Path(folder)
    meta = read_manifest(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder} has no {MANIFEST}; build it with make_corpus.py")
    return [str(folder / rel) for rel in meta["files"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=(*WORKLOADS, "all"))
    p.add_argument("--count", type=int, default=None, help="number of files (default per workload)")
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/.cache/<name>); with 'all', a parent folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = WORKLOADS if args.workload == "all" else (args.workload,)
    for name in names:
        out = args.out
        if out is not None and args.workload == "all":
            out = Path(out) / name
        folder = ensure_corpus(name, args.count, out, args.seed, progress=True)
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
