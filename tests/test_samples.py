"""python -m fastdcm.samples: the newcomer's sample archive, never downloaded."""

from __future__ import annotations

from pydicom.data import get_testdata_file

from fastdcm import samples


def test_samples_are_copied_and_all_present_with_the_test_extras(tmp_path):
    assert samples.main([str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").rglob("*"))) >= len(samples.SAMPLES)


def test_without_pydicom_data_nothing_is_downloaded_and_the_exit_code_says_so(tmp_path, monkeypatch, capsys):
    asked = []

    def local_only(name, read=False, download=True):
        asked.append(download)
        if name in ("emri_small.dcm", "US1_J2KR.dcm"):  # as if pydicom-data were not installed
            return None
        return get_testdata_file(name, download=False)

    monkeypatch.setattr(samples, "get_testdata_file", local_only)
    assert samples.main([str(tmp_path / "s")]) == 1
    assert asked and not any(asked)  # never allowed to download
    err = capsys.readouterr().err
    assert "2 not on this machine" in err and "pip install pydicom-data" in err
    assert len([p for p in (tmp_path / "s").rglob("*") if p.is_file()]) == len(samples.SAMPLES) - 2
