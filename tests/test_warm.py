"""The parent's warm-up before a process pool forks: a synthetic CT slice through the job's path."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import kernels
from fastdcm.options import RenderOptions
from fastdcm.run import pipeline
from fastdcm.run.pipeline import Job, warm
from fastdcm.run.tags import parse_tags


def test_the_warm_slice_is_a_ct_slice_that_pydicom_reads_and_fastdcm_renders_as_from_pydicom():
    data = pipeline._warm_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.Modality, ds.Rows, ds.Columns, ds.PixelRepresentation, ds.BitsStored) == ("CT", 512, 512, 1, 16)
    assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), float(ds.WindowCenter), float(ds.WindowWidth)) == (-1024, 1, 40, 400)
    stored = ds.pixel_array
    assert stored.dtype == np.int16 and stored.min() == 0 and stored.max() == 8176
    image = fastdcm.render(data)
    assert image.shape == (512, 512) and 0 < np.count_nonzero(image == 255) < image.size  # not one flat value
    np.testing.assert_array_equal(image, fastdcm.render(ds))  # the bytes path against pydicom's dataset


class _Spy:
    """The real encoder, with each encode's array shape and options recorded."""

    def __init__(self, real, calls):
        self.real, self.calls = real, calls
        self.name, self.extension = real.name, real.extension

    def encode(self, array, **options):
        self.calls.append(("encode", array.shape, array.dtype, options))
        return self.real.encode(array, **options)


@pytest.fixture
def calls(monkeypatch):
    import fastdcm.encoders as encoders

    calls = []
    real_get = encoders.get_encoder
    monkeypatch.setattr(encoders, "get_encoder", lambda name: _Spy(real_get(name), calls))
    real_thumbnail = pipeline.thumbnail

    def thumbnail(array):
        calls.append(("thumbnail", array.shape, array.dtype))
        return real_thumbnail(array)

    monkeypatch.setattr(pipeline, "thumbnail", thumbnail)
    return calls


def test_warm_takes_the_jobs_path_for_an_image(calls):
    warm(Job(out="/nonexistent", render=RenderOptions(), format="jpeg"))
    assert calls == [("encode", (512, 512), np.uint8, {"quality": 90})]
    calls.clear()
    warm(Job(out="/nonexistent", render=RenderOptions(size=256), format="png", gallery_tags=parse_tags("Modality")))
    assert calls == [("thumbnail", (256, 256), np.uint8), ("encode", (256, 256), np.uint8, {"quality": 90})]
    calls.clear()
    warm(Job(out="/nonexistent", render=RenderOptions(windows="brain,subdural,bone"), format="jpeg", quality=80))
    assert calls == [("encode", (512, 512, 3), np.uint8, {"quality": 80, "colorspace": "RGB"})]
    calls.clear()
    warm(Job(out="/nonexistent", render=RenderOptions(depth=16), format="png"))
    assert calls == [("encode", (512, 512), np.uint16, {"quality": 90})]


def test_warm_never_fails_a_run(calls, caplog):
    # 16-bit pixels in a JPEG: the encoder refuses them (a run would fail each input for it, not the warm-up)
    with caplog.at_level("DEBUG", logger="fastdcm.run.pipeline"):
        warm(Job(out="/nonexistent", render=RenderOptions(depth=16), format="jpeg"))
    assert [c[0] for c in calls] == ["encode"]
    assert "warm-up for this job skipped: EncodeError" in caplog.text


@pytest.mark.skipif(kernels.twins_active(), reason="the numpy twins load nothing")
def test_a_pooled_run_loads_the_jobs_kernels_in_the_parent_before_its_workers_fork(tmp_path):
    # a fresh process: this one may have made thumbnails already. The parent makes none itself, so the
    # thumbnail kernel is loaded there only by the warm-up (its workers, forked after it, inherit it).
    code = (
        "import sys, fastdcm; from fastdcm.kernels import jitted\n"
        "assert not jitted.box_shrink.signatures\n"
        "report = fastdcm.convert([sys.argv[1]], sys.argv[2], workers=int(sys.argv[3]), gallery=True, quiet=True)\n"
        "assert report.converted == 1, report.summary()\n"
        "print(len(jitted.box_shrink.signatures))\n"
    )
    ct = get_testdata_file("CT_small.dcm")
    env = {k: v for k, v in os.environ.items() if k != "FASTDCM_KERNELS"}
    pooled = subprocess.run([sys.executable, "-c", code, ct, str(tmp_path / "pooled"), "2"], capture_output=True, text=True, env=env)
    assert pooled.returncode == 0, pooled.stderr
    assert int(pooled.stdout) >= 1
