"""Scale-out: the Dask executor against the local pool, and object storage through a local S3 server.

    python benchmarks/scaleout.py                      # both; benchmarks/results/scaleout.json
    python benchmarks/scaleout.py cluster --files 1000 --rounds 3
    python benchmarks/scaleout.py s3 --files 300

``cluster`` the ct workload (``make_corpus.py ct``: nested CT slices, 512x512), PNG, as a user runs it:
            the ``fastdcm convert`` command (its start-up counted, outputs written), ``--workers 2``
            (the local pool) against ``--cluster tcp://127.0.0.1:PORT`` on a ``dask scheduler`` and
            ``dask worker --nworkers 2 --nthreads 1`` started here, alternated round by round into
            fresh folders; the median of each and the cluster's throughput over the pool's (the
            issue's goal: at least 0.90). On a 2-core machine the driver and the scheduler share the
            two cores with the workers, as the pool's parent does.
``s3``      the same files uploaded to a bucket of moto's S3 server (``moto.server``, on 127.0.0.1), then
            ``fastdcm convert s3://bench/ct -o s3://bench/png --workers 2`` (and ``--workers 8``: the
            work waits on the store): files/s and MB/s, beside a
            local folder-to-folder run of the same files, and the server's own CPU time (moto is Python:
            on a 2-core machine it is the floor); then one run in this process with s3fs's calls counted:
            the bytes the reads returned per input file against the files' mean size, and the requests
            (GET, HEAD, LIST, PUT) per file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_io import machine, today, work_dir, write_result  # noqa: E402

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fastdcm(*args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "fastdcm"), "convert", *args, "--quiet"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fastdcm convert {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cluster(work: Path, files: int, rounds: int) -> dict:
    import distributed
    import make_corpus

    corpus = make_corpus.ensure_corpus("ct", count=files)
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    logs = work / "dask"
    logs.mkdir()
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=(logs / "scheduler.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    workers = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
                                "--no-dashboard", "--local-directory", str(logs)],
                               stdout=(logs / "workers.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, scheduler, "the dask scheduler")
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        variants = {"pool": ["--workers", "2"], "cluster": ["--cluster", address]}
        for name, extra in variants.items():  # warm: Numba caches, page cache, the workers' imports
            _fastdcm(str(corpus), "-o", str(work / f"warm-{name}"), *extra)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(rounds):
            for name, extra in (variants.items() if i % 2 == 0 else reversed(variants.items())):
                times[name].append(_fastdcm(str(corpus), "-o", str(work / f"{name}-{i}"), *extra))
    finally:
        _stop(workers)
        _stop(scheduler)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "files": files, "rounds": rounds, "format": "png",
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "files_per_s": {k: round(files / v, 1) for k, v in med.items()},
        "cluster_over_pool": round(med["pool"] / med["cluster"], 3),
    }



def s3(work: Path, files: int, rounds: int) -> dict:
    import s3fs
    import make_corpus

    corpus = make_corpus.ensure_corpus("ct", count=files)
    dcm = [Path(p) for p in make_corpus.corpus_files(corpus)]  # (some have no extension, as in archives)
    size = sum(p.stat().st_size for p in dcm)
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
    opts = work / "storage.json"
    opts.write_text(json.dumps(options))
    try:
        _wait_port(port, server, "moto's S3 server")
        fs = s3fs.S3FileSystem(use_listings_cache=False, **options)
        fs.call_s3("create_bucket", Bucket="bench")
        for p in dcm:
            fs.put_file(str(p), f"bench/ct/{p.relative_to(corpus).as_posix()}")
        _fastdcm(str(corpus), "-o", str(work / "warm"), "--workers", "2")
        local, remote, server_cpu, wide = [], [], [], []
        import psutil

        moto = psutil.Process(server.pid)
        for i in range(rounds):
            local.append(_fastdcm(str(corpus), "-o", str(work / f"local-{i}"), "--workers", "2"))
            before = sum(moto.cpu_times()[:2])
            remote.append(_fastdcm("s3://bench/ct", "-o", f"s3://bench/png-{i}", "--workers", "2",
                                   "--storage-options", f"@{opts}"))
            server_cpu.append(sum(moto.cpu_times()[:2]) - before)
            n = len([x for x in fs.find(f"bench/png-{i}") if x.endswith(".png")])
            assert n == len(dcm), f"{n} outputs in the bucket for {len(dcm)} inputs"
            # more workers than cores: a worker waiting on the store leaves the core to another
            wide.append(_fastdcm("s3://bench/ct", "-o", f"s3://bench/wide-{i}", "--workers", "8",
                                 "--storage-options", f"@{opts}"))
        requests = _counted_run(options, "s3://bench/ct", "s3://bench/png-counted")
        frames = _frames_first(work, fs, options)
    finally:
        _stop(server)
    med_local, med_remote = statistics.median(local), statistics.median(remote)
    return {
        "files": len(dcm), "rounds": rounds, "mean_file_bytes": round(size / len(dcm)),
        "seconds": {"folder_to_folder": [round(x, 3) for x in local], "bucket_to_bucket": [round(x, 3) for x in remote],
                    "bucket_to_bucket_8_workers": [round(x, 3) for x in wide]},
        "files_per_s": {"folder_to_folder": round(len(dcm) / med_local, 1), "bucket_to_bucket": round(len(dcm) / med_remote, 1),
                        "bucket_to_bucket_8_workers": round(len(dcm) / statistics.median(wide), 1)},
        "input_mb_per_s": {"bucket_to_bucket": round(size / med_remote / 1e6, 1)},
        "server_cpu_seconds": [round(x, 2) for x in server_cpu],
        "server_cpu_share_of_wall": round(statistics.median(server_cpu) / med_remote, 2),
        "bytes_read_per_file": round(requests["read_bytes"] / len(dcm)),
        "read_over_file_size": round(requests["read_bytes"] / size, 3),
        "requests_per_file": {k: round(v / len(dcm), 2) for k, v in requests.items() if k != "read_bytes"},
        "frames_first_of_a_multiframe_object": frames,
    }


def _frames_first(work: Path, fs, options: dict) -> dict:
    """``--frames first`` of one large native multi-frame object (64 frames of 512 x 512, 16-bit, made
    from pydicom's emri_small.dcm header): the bytes read against its size."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    import fastdcm
    from fastdcm.run import storage

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = 64
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (64, 512, 512), dtype=np.uint16).tobytes()
    path = work / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    fs.put_file(str(path), "bench/mf/multiframe.dcm")
    read = []
    original = storage.read_range, storage.read_object

    def counted_range(url, opts, start, end):
        data = original[0](url, opts, start, end)
        read.append(len(data))
        return data

    def counted_whole(url, opts, size=None):
        data = original[1](url, opts, size)
        read.append(len(data))
        return data

    from fastdcm.run import pipeline

    storage.read_range, pipeline.read_object = counted_range, counted_whole
    try:
        t0 = time.perf_counter()
        report = fastdcm.convert(["s3://bench/mf"], "s3://bench/mf-out", workers=0, quiet=True, storage_options=options,
                                 frames="first")
        elapsed = time.perf_counter() - t0
    finally:
        storage.read_range, pipeline.read_object = original[0], original[1]
    assert report.converted == 1, report.summary()
    size = path.stat().st_size
    return {"object_bytes": size, "bytes_read": sum(read), "reads": len(read),
            "read_over_size": round(sum(read) / size, 4), "seconds": round(elapsed, 3)}


def _counted_run(options: dict, src: str, out: str) -> dict:
    """A bucket-to-bucket run in this process (``workers=0``) with s3fs's calls counted: the bytes
    the objects' reads returned and the requests of each kind."""
    import s3fs

    import fastdcm

    from fastdcm.run import pipeline

    counts: dict[str, int] = {"read_bytes": 0}
    fs_class = s3fs.S3FileSystem
    call_s3, read_object = fs_class._call_s3, pipeline.read_object

    async def counted_call(self, method, *args, **kwargs):  # every request s3fs makes goes through it
        name = getattr(method, "__name__", str(method))
        counts[name] = counts.get(name, 0) + 1
        return await call_s3(self, method, *args, **kwargs)

    def counted_read(url, options, size=None):  # what a worker's read of an input returned
        data = read_object(url, options, size)
        counts["read_bytes"] += len(data)
        return data

    fs_class._call_s3, pipeline.read_object = counted_call, counted_read
    try:
        report = fastdcm.convert([src], out, workers=0, quiet=True, storage_options=options)
        assert report.ok, report.summary()
    finally:
        fs_class._call_s3, pipeline.read_object = call_s3, read_object
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", metavar="cluster|s3", help="what to measure (default: both)")
    parser.add_argument("--files", type=int, default=None, help="ct files (default: cluster 1000, s3 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "scaleout.json"))
    args = parser.parse_args(argv)
    args.which = args.which or ["cluster", "s3"]
    unknown = set(args.which) - {"cluster", "s3"}
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))} (cluster, s3)")
    result = {"date": today(), "machine": machine()}
    with work_dir("scaleout-") as tmp:
        work = Path(tmp)
        if "cluster" in args.which:
            (work / "c").mkdir()
            result["cluster"] = r = cluster(work / "c", args.files or 1000, args.rounds)
            print(f"cluster: pool {r['files_per_s']['pool']} files/s, cluster {r['files_per_s']['cluster']} files/s, "
                  f"ratio {r['cluster_over_pool']}")
        if "s3" in args.which:
            (work / "s").mkdir()
            result["s3"] = r = s3(work / "s", args.files or 300, args.rounds)
            print(f"s3: folder {r['files_per_s']['folder_to_folder']} files/s, bucket {r['files_per_s']['bucket_to_bucket']} "
                  f"files/s, {r['files_per_s']['bucket_to_bucket_8_workers']} with 8 workers ({r['input_mb_per_s']['bucket_to_bucket']} MB/s in; the server busy "
                  f"{r['server_cpu_share_of_wall']} of a core); read {r['bytes_read_per_file']} B per file of "
                  f"{r['mean_file_bytes']} B ({r['read_over_file_size']}x), requests per file {r['requests_per_file']}; "
                  f"--frames first of a {r['frames_first_of_a_multiframe_object']['object_bytes']} B multi-frame object: "
                  f"{r['frames_first_of_a_multiframe_object']['bytes_read']} B read")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
