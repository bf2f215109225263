"""The only place that imports numba: the decorator policy, the kernels, their numpy twins.

Policy: every kernel is ``jit`` = ``numba.njit(cache=True, nogil=True, error_model="numpy")``
(numpy semantics for float division: a NaN pixel under a width-1 window gives NaN, never an exception). A kernel takes
arrays and scalars, writes a preallocated output, allocates nothing and reads no globals.
Numba does no bounds checks, so callers (render.py) validate every shape and index range
first; the table kernels index with ``(raw & mask) ^ flip``, which is below ``mask + 1``
by construction, and the plan makes every table exactly ``mask + 1`` long.

Two paths turn stored values into the output image in one pass:

* table path (integer data of up to 16 stored bits): the plan folds modality LUT, VOI,
  rounding and inversion into one table over all stored values; the kernel masks the bits
  above Bits Stored, sign-extends (via ``^ flip``) and gathers. When the plan has proven
  that the table equals a clamped float32 line over every index (``plan.fit_affine``: the
  common rescale + linear window, min-max), ``lut_affine`` computes that line instead of
  gathering: the same output bit for bit, in SIMD lanes, near memory speed on large frames;
* arithmetic path (float data, 32-bit integers): rescale, VOI function, rounding and
  inversion per pixel, with the same scalar formulas as the numpy twin in ``voi.py``.

Numba is imported on first use, not with this package: :func:`impl` gives the compiled kernels
(``jitted.py``) or, where compiling or loading them costs more than it saves, their numpy twins
(``twins.py``), which the tests hold to the kernels bit for bit, so the pictures are the same. The
twins are used when ``FASTDCM_KERNELS=numpy`` or inside :func:`using_twins` (the command line does that
for one-image commands such as ``fastdcm render``: loading the compiled kernels from the disk cache
takes about 0.8 s in a fresh process, rendering one CT slice with the twins about 2 ms).
``FASTDCM_KERNELS=numba`` keeps the compiled kernels even there.

``walk_header`` is the hot loop of ``fastheader``: it walks the top-level elements of a
file up to its pixel data (native or encapsulated); its twin is ``fastheader``'s plain-Python
walk. ``read_header`` reads the file meta, walks, and packs the values read into one key, in
one call (a call of a compiled function costs microseconds); its twin is
``fastheader.read_python``. Every read of the buffer is preceded by a check that the bytes are
there (fuzzed files reach it). ``walk_changed`` walks and then tells which of the values found
differ from the call before (``changed_values``): the metadata table's values of a series' files
are mostly the file before it's, decoded again only where they differ.

``ybr_full_to_rgb`` converts YBR_FULL frames a codec returns unconverted (RLE, JPEG-LS, JPEG 2000
without a colour transform), bit for bit as pydicom's conversion on this machine, 3.6-4x faster
(640 x 480: 2.6-3.0 ms against 10-11 ms).
``box_shrink`` makes the gallery's thumbnails in the worker, from the rendered image (block means);
``resample`` resizes the rendered image (``--size``: area weights when shrinking, bilinear when
enlarging; ``fastdcm.resize``), one input row of float32 scratch at a time; ``block_mean`` does it
for whole power-of-two factors (512 -> 256), the same numbers 2-3x faster.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType
from typing import Any, Iterator

__all__ = ["POLICY", "impl", "compiled", "using_twins", "twins_active", "warmup", "KERNEL_NAMES"]

#: THE decorator policy (``jitted.jit``). A test checks every kernel was built with it.
POLICY = {"cache": True, "nogil": True, "error_model": "numpy"}

#: The kernels, by name, in ``jitted`` (and, but for ``walk_header``, ``read_header`` and ``walk_changed``,
#: in ``twins``).
KERNEL_NAMES = (
    "lut_gather", "lut_gather_channels", "lut_affine", "lut_affine_stack", "stored_presence", "int_minmax", "float_minmax",
    "voi_int", "voi_float", "walk_header", "read_header", "changed_values", "walk_changed", "box_shrink",
    "ybr_full_to_rgb", "resample", "resample_affine", "block_mean",
)

_ENV = "FASTDCM_KERNELS"


class _Choice:
    twins: bool | None = None  # None: as FASTDCM_KERNELS says (default: compiled)
    env: str = os.environ.get(_ENV, "").strip().lower()  # read once: a start-up setting
    jitted: ModuleType | None = None


@contextlib.contextmanager
def using_twins() -> Iterator[None]:
    """Use the numpy twins inside the ``with`` block (unless ``FASTDCM_KERNELS=numba``)."""
    old, _Choice.twins = _Choice.twins, True
    try:
        yield
    finally:
        _Choice.twins = old


def twins_active() -> bool:
    env = _Choice.env
    if env == "numba":
        return False
    if env == "numpy":
        return True
    return bool(_Choice.twins)


def compiled() -> ModuleType:
    """The compiled kernels (imports numba on first call)."""
    module = _Choice.jitted
    if module is None:
        from . import jitted as module

        _Choice.jitted = module
    return module


def impl() -> ModuleType:
    """The kernels to call: ``compiled`` or ``twins`` (see the module docstring)."""
    if twins_active():
        from . import twins

        return twins
    return compiled()


def warmup(full: bool = False) -> None:
    """Compile (or load from the disk cache) the core signatures, those a native 8- or 16-bit
    frame needs (the header walks, the window's line, the min-max: 6); ``full=True``: every
    signature the renderer uses (~55), for timings that must not include a load. From the disk
    cache the first load costs ~0.18 s (Numba's one-time set-up), each further one ~3 ms. Nothing
    when the twins are in use. Any other signature loads (or compiles) where it is first called."""
    if twins_active():
        return
    from .twins import warmup_arrays

    for kernel, args in warmup_arrays(full):
        kernel(*args)


def __getattr__(name: str) -> Any:
    # ``kernels.lut_gather``, ``kernels.KERNELS``, ``kernels.jit``: the compiled ones, loaded on first use.
    if name in KERNEL_NAMES or name in ("KERNELS", "jit"):
        return getattr(compiled(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
