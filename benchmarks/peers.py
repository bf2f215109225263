"""The tools fastdcm is compared against, run the same way on the same files.

Each peer is a ``convert_one(path, out_path_without_ext, fmt, quality=90) ->
list[str]`` that writes one image for the **first frame only** (every peer,
so they all do the same work; fastdcm's own default may differ) and returns
the paths it wrote. ``run_peer`` times a peer over a list of files with a
given number of worker processes and checks every output afterwards (it
exists, it decodes with Pillow, its size matches the DICOM's Rows x Columns),
so a fast wrong answer fails.

Peers
-----
``naive``      pydicom ``dcmread`` + ``pixel_array``, numpy float scaling (rescale,
               then the header's first window, else min-max) to uint8, Pillow
               ``save`` with its defaults (PNG ``compress_level=6``; JPEG at ``quality``).
``pydicom``    pydicom 3's ``apply_modality_lut`` + ``apply_voi_lut``, then a
               linear scale from the VOI output range to uint8, Pillow ``save``.
``dicom2jpg``  the ``dicom2jpg`` package with its own process pool (patched to
               ``workers`` processes; it only takes ``*.dcm`` names, so inputs are
               staged as ``NNNNNN.dcm`` symlinks before timing). JPEG quality is
               fixed at 90 by the package.
``fast``       a hand-assembled fast pipeline: dicomsdl reads pixels and the
               window/rescale tags, one Numba kernel does rescale + linear
               window + uint8, OpenCV ``imencode(".png")`` with its defaults, or
               ``simplejpeg.encode_jpeg`` at ``quality``.
``dcmj2pnm``   dcmtk's ``dcmj2pnm`` (``+Wi 1``: the file's first window, else
               ``+Wm`` min-max), one process per file, ``workers`` at a time.
``floor``      what no converter can avoid: read every file's bytes and encode
               the already rendered image (rendered once before timing with the
               ``naive`` recipe) with a given encoder; nothing else (writing the
               output is optional, ``write=True``).

Run ``python benchmarks/peers.py --workload ct --workers 2`` for a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numba import njit  # numba is a fastdcm dependency; the fast peer's kernel needs it

PEERS = ("naive", "pydicom", "dicom2jpg", "fast", "dcmj2pnm", "floor")
FORMATS = ("png", "jpeg")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
#: the packages each peer needs beyond fastdcm's own dependencies (the [bench] extra)
REQUIREMENTS = {
    "naive": ("pydicom", "PIL"),
    "pydicom": ("pydicom", "PIL"),
    "dicom2jpg": ("dicom2jpg", "cv2"),
    "fast": ("dicomsdl", "numba", "cv2", "simplejpeg"),
    "dcmj2pnm": (),
    "floor": ("cv2", "simplejpeg"),
}


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    return fmt


def unavailable_reason(name: str) -> str | None:
    """Why peer ``name`` cannot run here, or None when it can."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    import importlib.util

    for module in REQUIREMENTS[name]:
        if importlib.util.find_spec(module) is None:
            package = {"PIL": "pillow", "cv2": "opencv-python-headless"}.get(module, module)
            return f"peer {name!r} needs the {module!r} module: pip install {package}"
    if name == "dcmj2pnm" and shutil.which("dcmj2pnm") is None:
        return "dcmtk's dcmj2pnm is not on PATH (apt-get install dcmtk)"
    return None


def available_peers() -> list[str]:
    return [p for p in PEERS if unavailable_reason(p) is None]


# --------------------------------------------------------------------------- shared numpy steps
def _first_frame(ds, arr: np.ndarray) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return arr[0] if frames > 1 else arr


def _to_u8_linear(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        hi = lo + 1.0
    y = (x.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _colour_u8(ds, arr: np.ndarray) -> np.ndarray:
    """RGB (pydicom already converted YBR) or palette colour, to uint8 RGB."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        bits = 8 if arr.dtype == np.uint8 else 16
    else:
        bits = int(ds.BitsStored)
    if arr.dtype == np.uint8:
        return arr
    return (arr.astype(np.uint32) >> max(0, bits - 8)).clip(0, 255).astype(np.uint8)


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _save_pillow(img: np.ndarray, out_base: str, fmt: str, quality: int) -> str:
    from PIL import Image

    path = out_base + EXTENSIONS[fmt]
    if fmt == "png":
        Image.fromarray(img).save(path)  # Pillow's defaults: compress_level 6
    else:
        Image.fromarray(img).save(path, quality=quality)
    return path


# --------------------------------------------------------------------------- naive
def naive_render(path: str) -> np.ndarray:
    """The naive recipe's uint8 image of the first frame (also the floor's renderer)."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = _first_frame(ds, ds.pixel_array)
    if int(ds.get("SamplesPerPixel", 1)) > 1 or ds.PhotometricInterpretation == "PALETTE COLOR":
        return _colour_u8(ds, arr)
    x = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = float(x.min()), float(x.max())
    img = _to_u8_linear(x, lo, hi)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 255 - img
    return img


def naive_convert_one(path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    return [_save_pillow(naive_render(path), out_base, _check_fmt(fmt), quality)]


# --------------------------------------------------------------------------- pydicom
def _voi_output_range(ds) -> tuple[float, float] | None:
    """The range apply_voi_lut maps onto, or None when it returns its input unchanged."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # as pydicom.pixels.processing.apply_windowing computes it
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        if int(ds.PixelRepresentation) == 0:
            y_min, y_max = 0.0, float(2**bits - 1)
        else:
            y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
            s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            y_min, y_max = y_min * s + i, y_max * s + i
        return y_min, y_max
    return None


def pydicom_render(path: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    arr = _first_frame(ds, ds.pixel_array)
    if int(ds.get("SamplesPerPixel", 1)) > 1 or ds.PhotometricInterpretation == "PALETTE COLOR":
        return _colour_u8(ds, arr)
    y_range = _voi_output_range(ds)
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    lo, hi = y_range if y_range is not None else (float(arr.min()), float(arr.max()))
    img = _to_u8_linear(arr, lo, hi)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 255 - img
    return img


def pydicom_convert_one(path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    return [_save_pillow(pydicom_render(path), out_base, _check_fmt(fmt), quality)]


# --------------------------------------------------------------------------- fast
# Module-level kernels (closures built at run time do not cache); this is the peer's
# own kernel, deliberately not fastdcm's.
@njit(cache=True, nogil=True)
def window_u8(src, slope, intercept, lo, hi, invert, out):  # pragma: no cover - jitted
    """out = uint8(clip((src * slope + intercept - lo) * 255 / (hi - lo), 0, 255) + 0.5)."""
    rows, cols = src.shape
    scale = 255.0 / (hi - lo)
    for r in range(rows):
        for c in range(cols):
            y = (src[r, c] * slope + intercept - lo) * scale
            if y < 0.0:
                y = 0.0
            elif y > 255.0:
                y = 255.0
            if invert:
                y = 255.0 - y
            out[r, c] = np.uint8(y + 0.5)


@njit(cache=True, nogil=True)
def min_max(src):  # pragma: no cover - jitted
    lo = src[0, 0]
    hi = src[0, 0]
    rows, cols = src.shape
    for r in range(rows):
        for c in range(cols):
            v = src[r, c]
            if v < lo:
                lo = v
            elif v > hi:
                hi = v
    return float(lo), float(hi)


def warm_fast() -> None:
    """Compile (or load from the disk cache) the fast peer's kernels for the usual dtypes."""
    out = np.empty((2, 2), np.uint8)
    for dt in (np.int16, np.uint16, np.uint8, np.int8, np.int32, np.uint32, np.float32):
        src = np.zeros((2, 2), dt)
        window_u8(src, 1.0, 0.0, -1.0, 1.0, False, out)
        min_max(src)


def _sdl_first(v, default):
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        return float(v[0]) if len(v) else default
    return float(v)


def fast_render(path: str) -> np.ndarray:
    import dicomsdl

    dcm = dicomsdl.open(path)
    info = dcm.getPixelDataInfo()
    rows, cols, spp = info["Rows"], info["Cols"], info["SamplesPerPixel"]
    if spp > 1:
        planar = info["PlanarConfiguration"] == "RRRGGGBBB"
        arr = np.empty((3, rows, cols) if planar else (rows, cols, 3), dtype=info["dtype"])
        dcm.copyFrameData(0, arr)  # first frame only
        if planar:
            arr = arr.transpose(1, 2, 0)
        if arr.dtype != np.uint8:
            arr = (arr >> max(0, info["BitsStored"] - 8)).astype(np.uint8)
        return np.ascontiguousarray(arr)
    arr = np.empty((rows, cols), dtype=info["dtype"])
    dcm.copyFrameData(0, arr)  # first frame only; palette colour stays as gray indices
    slope = _sdl_first(info.get("RescaleSlope"), 1.0)
    intercept = _sdl_first(info.get("RescaleIntercept"), 0.0)
    center = _sdl_first(info.get("WindowCenter"), None)
    width = _sdl_first(info.get("WindowWidth"), None)
    if center is not None and width is not None and width > 0:
        lo, hi = center - width / 2, center + width / 2
    else:
        smin, smax = min_max(arr)
        lo, hi = sorted((smin * slope + intercept, smax * slope + intercept))
        if hi <= lo:
            hi = lo + 1.0
    out = np.empty((rows, cols), np.uint8)
    window_u8(arr, slope, intercept, lo, hi, info["PhotometricInterpretation"] == "MONOCHROME1", out)
    return out


def encode_cv2_png(img: np.ndarray) -> bytes:
    """OpenCV PNG with its default settings (RGB input)."""
    import cv2

    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("cv2.imencode('.png') failed")
    return buf.tobytes()


def encode_simplejpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """simplejpeg (libjpeg-turbo) with its defaults except quality (RGB or gray input)."""
    import simplejpeg

    if img.ndim == 2:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(img[:, :, None]), quality=quality,
                                      colorspace="GRAY")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB")


def fast_convert_one(path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    img = fast_render(path)
    data = encode_cv2_png(img) if _check_fmt(fmt) == "png" else encode_simplejpeg(img, quality)
    out = out_base + EXTENSIONS[fmt]
    with open(out, "wb") as f:
        f.write(data)
    return [out]


# --------------------------------------------------------------------------- dicom2jpg
def _stage_dcm_names(files: Sequence[str], stage: Path) -> list[str]:
    """dicom2jpg only accepts names ending in .dcm: symlink every input as NNNNNN.dcm."""
    stage.mkdir(parents=True, exist_ok=True)
    staged = []
    for i, f in enumerate(files):
        link = stage / f"{i:06d}.dcm"
        if not link.exists():
            link.symlink_to(os.path.abspath(f))
        staged.append(str(link))
    return staged


def _dicom2jpg_run(sources: list[str] | str, target_root: str, fmt: str, workers: int | None) -> None:
    import dicom2jpg
    import dicom2jpg.utils as d2j_utils

    func = dicom2jpg.dicom2png if fmt == "png" else dicom2jpg.dicom2jpg
    if workers is None:
        func(sources, target_root=target_root, multiprocessing=False)
        return
    # dicom2jpg calls concurrent.futures.ProcessPoolExecutor() with no arguments
    # (os.cpu_count() workers); give it exactly `workers`, for this call only
    saved = d2j_utils.concurrent
    pool = functools.partial(cf.ProcessPoolExecutor, max_workers=workers)
    d2j_utils.concurrent = types.SimpleNamespace(futures=types.SimpleNamespace(ProcessPoolExecutor=pool))
    try:
        func(sources, target_root=target_root, multiprocessing=True)
    finally:
        d2j_utils.concurrent = saved


def dicom2jpg_convert_one(path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    """dicom2jpg on one file (serial); its output is moved to ``out_base + ext``.

    ``quality`` is not used: dicom2jpg always writes JPEG at quality 90.
    """
    _check_fmt(fmt)
    with tempfile.TemporaryDirectory(prefix="d2j-") as tmp:
        src = path if path.lower().endswith(".dcm") else _stage_dcm_names([path], Path(tmp, "in"))[0]
        out_root = Path(tmp, "out")
        with _quiet_stdout():
            _dicom2jpg_run(src, str(out_root), fmt, None)
        produced = sorted(p for p in out_root.rglob("*") if p.is_file())
        if len(produced) != 1:
            raise RuntimeError(f"dicom2jpg wrote {len(produced)} files for {path}")
        out = out_base + EXTENSIONS[fmt]
        shutil.move(str(produced[0]), out)
    return [out]


class _quiet_stdout:
    """dicom2jpg prints its failures; keep them out of the report (they are counted)."""

    def __enter__(self):
        self._saved = sys.stdout
        sys.stdout = open(os.devnull, "w")

    def __exit__(self, *exc):
        sys.stdout.close()
        sys.stdout = self._saved


# --------------------------------------------------------------------------- dcmj2pnm
def dcmj2pnm_convert_one(path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    out = out_base + EXTENSIONS[_check_fmt(fmt)]
    fmt_opts = ["--write-png"] if fmt == "png" else ["--write-jpeg", "+Jq", str(quality)]
    cmd = ["dcmj2pnm", *fmt_opts, "+Wi", "1", path, out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "cannot select VOI window" in proc.stderr:
        cmd[cmd.index("+Wi"):cmd.index("+Wi") + 2] = ["+Wm"]  # no window in the file: min-max
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dcmj2pnm exit {proc.returncode}: {proc.stderr.strip()[:200]}")
    return [out]


# --------------------------------------------------------------------------- floor
def get_floor_encoder(fmt: str, encoder: str | Callable | None = None, quality: int = 90) -> Callable:
    """The floor's ``encode(uint8 array) -> bytes``.

    ``encoder``: None (OpenCV PNG defaults / simplejpeg at ``quality``), ``"fastdcm"``
    (``fastdcm.encoders.get_encoder(fmt).encode(a, quality=quality)``, the same settings
    fastdcm uses), or any callable taking the array and returning bytes.
    """
    _check_fmt(fmt)
    if callable(encoder):
        return encoder
    if encoder is None:
        return encode_cv2_png if fmt == "png" else functools.partial(encode_simplejpeg, quality=quality)
    if encoder == "fastdcm":
        from fastdcm.encoders import get_encoder

        enc = get_encoder(fmt)
        return functools.partial(enc.encode, quality=quality)
    raise ValueError(f"unknown floor encoder {encoder!r}")


_FLOOR: dict = {}  # set in the parent before the pool forks: files, images, encode, out


def _floor_task(i: int) -> tuple[int, str | None]:
    files, images, encode, out = _FLOOR["files"], _FLOOR["images"], _FLOOR["encode"], _FLOOR["out"]
    try:
        with open(files[i], "rb") as f:
            f.read()
        data = encode(images[i])
        if out is not None:
            with open(out[i], "wb") as f:
                f.write(data)
        return len(data), None
    except Exception as exc:  # a worker reports, never raises
        return 0, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- runner
CONVERTERS: dict[str, Callable[..., list[str]]] = {
    "naive": naive_convert_one,
    "pydicom": pydicom_convert_one,
    "dicom2jpg": dicom2jpg_convert_one,
    "fast": fast_convert_one,
    "dcmj2pnm": dcmj2pnm_convert_one,
}


def convert_one(name: str, path: str, out_base: str, fmt: str, quality: int = 90) -> list[str]:
    """Run peer ``name`` on one file (the floor has no single-file form)."""
    reason = unavailable_reason(name)
    if reason:
        raise RuntimeError(reason)
    if name == "fast":
        warm_fast()
    return CONVERTERS[name](path, out_base, fmt, quality)


def _init_worker(name: str) -> None:
    warnings.simplefilter("ignore")  # test files warn; the warnings cost the same everywhere
    if name == "fast":
        warm_fast()
    elif name in ("naive", "pydicom"):
        import PIL.Image  # noqa: F401
        import pydicom  # noqa: F401
        from pydicom.pixels import apply_voi_lut  # noqa: F401


def _convert_task(args: tuple[str, str, str, str, int]) -> tuple[list[str], str | None]:
    name, path, out_base, fmt, quality = args
    try:
        return CONVERTERS[name](path, out_base, fmt, quality), None
    except Exception as exc:  # a worker reports, never raises
        return [], f"{type(exc).__name__}: {exc}"


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _pool(workers: int, name: str) -> cf.ProcessPoolExecutor:
    """A fork pool whose workers are all started and initialised (warm) before timing."""
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                initializer=_init_worker, initargs=(name,))
    # one sleeping task per worker forces every worker to start and run its initializer
    list(ex.map(_sleep, [0.3] * workers))
    return ex


def _expected_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the DICOM's frames, as Pillow reports image sizes."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:
        return None


def check_image(path: str, expected: tuple[int, int] | None) -> str | None:
    """None when ``path`` decodes with Pillow to ``expected`` (width, height), else why not."""
    from PIL import Image

    if not os.path.isfile(path):
        return f"missing output {path}"
    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
    except Exception as exc:
        return f"{path} does not decode: {exc}"
    if expected is not None and size != expected:
        return f"{path} is {size}, expected {expected}"
    return None


def _chunksize(n: int, workers: int) -> int:
    return max(1, min(32, n // (workers * 8) or 1))


def run_peer(name: str, files: Sequence[str], out_dir: str | os.PathLike, fmt: str, workers: int,
             quality: int = 90, verify: bool = True, encoder: str | Callable | None = None,
             write: bool = False) -> dict:
    """Run peer ``name`` over ``files`` with ``workers`` processes and time it end to end.

    Returns ``dict(peer, fmt, workers, files, seconds, files_per_s, mb_per_s, errors,
    error_samples, output_bytes)``; ``mb_per_s`` counts input bytes (MB = 1e6 bytes).
    Worker start-up (and Numba warm-up) happens before the clock starts for the
    Python peers; dicom2jpg's and dcmj2pnm's own start-up costs are part of their time.
    ``encoder`` and ``write`` apply to the floor only. ``verify`` checks every output.
    """
    _check_fmt(fmt)
    reason = unavailable_reason(name)
    if reason:
        return {"peer": name, "fmt": fmt, "workers": workers, "skipped": reason}
    files = [str(f) for f in files]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_bytes = sum(os.path.getsize(f) for f in files)
    bases = [str(out_dir / f"{i:06d}") for i in range(len(files))]
    errors: list[str] = []
    outputs: list[list[str]] = []
    extra: dict = {}

    if name == "floor":
        encode = get_floor_encoder(fmt, encoder, quality)
        images = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in files:  # rendered once, outside the timing
                try:
                    images.append(naive_render(f))
                except Exception as exc:
                    images.append(np.zeros((1, 1), np.uint8))
                    errors.append(f"{f}: not renderable for the floor: {exc}")
        outs = [b + EXTENSIONS[fmt] for b in bases] if write else None
        _FLOOR.update(files=files, images=images, encode=encode, out=outs)
        try:
            with _pool(workers, name) as ex:
                t0 = time.perf_counter()
                results = list(ex.map(_floor_task, range(len(files)), chunksize=_chunksize(len(files), workers)))
                seconds = time.perf_counter() - t0
        finally:
            _FLOOR.clear()
        errors += [e for _, e in results if e]
        extra["output_bytes"] = sum(n for n, _ in results)
        extra["writes_outputs"] = write
        if verify:
            # the encoder's output must decode to the rendered image (sample of 5)
            import io

            from PIL import Image

            for img in images[:: max(1, len(images) // 5)][:5]:
                with Image.open(io.BytesIO(encode(img))) as im:
                    im.load()
                    if im.size != (img.shape[1], img.shape[0]):
                        errors.append(f"floor encoder output is {im.size}, expected {img.shape[1::-1]}")
                    elif fmt == "png" and not np.array_equal(np.asarray(im), img):
                        errors.append("floor PNG does not decode to the rendered image")
            outputs = [[o] for o in outs] if outs else []
        del images
    elif name == "dicom2jpg":
        stage = out_dir / ".staged-inputs"
        staged = _stage_dcm_names(files, stage)
        target = out_dir / "dicom2jpg"
        with _quiet_stdout():
            t0 = time.perf_counter()
            try:
                _dicom2jpg_run(staged, str(target), fmt, workers)
            except Exception as exc:
                # one file raising in a dicom2jpg worker aborts its whole call (after
                # its pool has finished every other file): count it, keep the rest
                errors.append(f"dicom2jpg raised {type(exc).__name__}: {exc}")
            seconds = time.perf_counter() - t0
        shutil.rmtree(stage)
        produced = sorted(str(p) for p in target.rglob("*") if p.is_file())
        missing = len(files) - len(produced)
        if missing > 0:
            # it prints and skips what it cannot convert (e.g. multi-frame): one error each
            errors.extend([f"dicom2jpg wrote {len(produced)} images for {len(files)} inputs"]
                          * (missing - len(errors)))
        outputs = []  # its own names: checked against the set of input sizes below
        if verify:
            sizes = {_expected_size(f) for f in files}
            for p in produced:
                problem = check_image(p, None)
                if problem is None:
                    from PIL import Image

                    with Image.open(p) as im:
                        if im.size not in sizes:
                            problem = f"{p} is {im.size}, not the size of any input"
                if problem:
                    errors.append(problem)
        extra["output_bytes"] = sum(os.path.getsize(p) for p in produced)
    else:
        tasks = [(name, f, b, fmt, quality) for f, b in zip(files, bases)]
        if name == "fast":
            warm_fast()  # fill the disk cache once, before the workers load it
        if name == "dcmj2pnm":
            # one dcmj2pnm process per file, `workers` at a time (threads only wait)
            with cf.ThreadPoolExecutor(max_workers=workers) as ex:
                t0 = time.perf_counter()
                results = list(ex.map(_convert_task, tasks))
                seconds = time.perf_counter() - t0
        else:
            with _pool(workers, name) as ex:
                t0 = time.perf_counter()
                results = list(ex.map(_convert_task, tasks, chunksize=_chunksize(len(tasks), workers)))
                seconds = time.perf_counter() - t0
        outputs = [o for o, _ in results]
        errors += [f"{t[1]}: {e}" for t, (_, e) in zip(tasks, results) if e]
        if verify:
            for f, outs, (_, e) in zip(files, outputs, results):
                if e:
                    continue
                expected = _expected_size(f)
                for o in outs:
                    problem = check_image(o, expected)
                    if problem:
                        errors.append(problem)
        extra["output_bytes"] = sum(os.path.getsize(o) for outs in outputs for o in outs if os.path.isfile(o))

    n = len(files)
    return {
        "peer": name,
        "fmt": fmt,
        "workers": workers,
        "files": n,
        "seconds": seconds,
        "files_per_s": n / seconds if seconds > 0 else float("inf"),
        "mb_per_s": in_bytes / 1e6 / seconds if seconds > 0 else float("inf"),
        "errors": len(errors),
        "error_samples": errors[:5],
        **extra,
    }


# --------------------------------------------------------------------------- as a user runs it
#: the peers whose recipe runs as a script of its own (``python peers.py --script NAME ...``)
SCRIPTS = ("naive", "pydicom", "fast")


def script(name: str, src: str, out: str, fmt: str, workers: int, quality: int = 90) -> int:
    """Peer ``name`` as a user's script runs it, for ``report.py --as-user``: walk ``src`` (every
    file but ``.json``, the corpus' own list), make the mirrored output folders, start a pool of
    ``workers`` (fork) and convert every file to ``out/<relative path><ext>``; the errors are
    printed, one a line. Start-up (interpreter, imports, the pool, Numba's kernels) is the
    script's own, as fastdcm's command line pays its own."""
    if name not in SCRIPTS:
        raise SystemExit(f"no script form for {name!r} (one of {', '.join(SCRIPTS)})")
    tasks = []
    for folder, dirs, names in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(folder, src)
        for n in sorted(names):
            if not n.endswith(".json"):
                tasks.append((name, os.path.join(folder, n), os.path.normpath(os.path.join(out, rel, n)), fmt, quality))
    for d in {os.path.dirname(t[2]) for t in tasks}:
        os.makedirs(d, exist_ok=True)
    # The recipe's imports and kernels, once in the parent, inherited by the forked workers (as a
    # script importing them at its top would have them), not paid again by each worker's first file
    _init_worker(name)
    if name == "fast":
        import dicomsdl  # noqa: F401
        import simplejpeg  # noqa: F401
        if fmt == "png":
            import cv2  # noqa: F401
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                initializer=_init_worker, initargs=(name,)) as ex:
        results = list(ex.map(_convert_task, tasks, chunksize=_chunksize(len(tasks), workers)))
    errors = [f"{t[1]}: {e}" for t, (_, e) in zip(tasks, results) if e]
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--script"]:
        if len(argv) != 7:
            raise SystemExit("usage: peers.py --script NAME SRC OUT FMT WORKERS QUALITY")
        return script(argv[1], argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_corpus import corpus_files, ensure_corpus

    p = argparse.ArgumentParser(description="Time the peers on a generated corpus.")
    p.add_argument("--workload", default="ct", choices=("ct", "mixed", "mammo"))
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--floor-encoder", default=None, help="'fastdcm' to use fastdcm's encoders")
    p.add_argument("--floor-write", action="store_true", help="the floor also writes its outputs")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--keep", default=None, help="keep the outputs in this folder")
    args = p.parse_args(argv)

    folder = ensure_corpus(args.workload, args.count, progress=True)
    files = corpus_files(folder)
    print(f"{args.workload}: {len(files)} files in {folder}; {args.workers} workers", file=sys.stderr)
    rows = []
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastdcm-peers-"))
    try:
        for fmt in args.formats:
            for name in args.peers:
                out = root / f"{name}-{fmt}"
                if out.exists():
                    shutil.rmtree(out)
                r = run_peer(name, files, out, fmt, args.workers, quality=args.quality,
                             encoder=args.floor_encoder, write=args.floor_write)
                rows.append(r)
                if "skipped" in r:
                    print(f"{fmt:5} {name:10} skipped: {r['skipped']}", flush=True)
                else:
                    print(f"{fmt:5} {name:10} {r['files_per_s']:9.1f} files/s {r['mb_per_s']:8.1f} MB/s "
                          f"{r['seconds']:7.2f} s  errors={r['errors']} {r['error_samples'][:1]}", flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
