"""Result files in object storage (issue 16), on a real SeaweedFS started for the run
(tests/s3_support.py, the tests' own launcher):

- export throughput into the store (the worker's path, the zip streamed into a multipart upload) as a
  ratio to the same export into the local directory, in fresh processes, interleaved (goal >= 0.8x);
- peak RSS of a process exporting into the store (the 250 MB bound, at the rss figure's size);
- download throughput from the store: the object read as ShowExportTask reads it (ranged GETs, in
  64 KiB chunks, every byte through sha256) against the same file read from the local directory.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

from bench.common import ROOT, median, run_child, seed
from bench.export_bench import Figure

BUCKET_PREFIX = "bench"


def _store(base_dir: str):
    sys.path.insert(0, str(ROOT / "tests"))
    from s3_support import SeaweedS3
    return SeaweedS3(os.path.join(base_dir, "s3")).start()


def _read_all(f, chunk: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while data := f.read(chunk):
        digest.update(data)
        size += len(data)
    return size, digest.hexdigest()


def run(base_dir: str, smoke: bool, runs: int, rows: int, rss_rows: int, rss_limit_mb: float) -> list[Figure]:
    from iotda_export_server.config import FilesConfig
    from iotda_export_server.domain import rules
    from iotda_export_server.store.files import open_files

    store = _store(base_dir)
    saved = {k: os.environ.get(k) for k in store.env()}
    os.environ.update(store.env())  # this process and the children
    files_url = f"s3://{store.bucket}/{BUCKET_PREFIX}"
    try:
        data = seed(os.path.join(base_dir, "s3-throughput"), rows, seed_value=23)
        local, remote = [], []
        for i in range(runs):
            for mode in (("fast", "s3") if i % 2 == 0 else ("s3", "fast")):
                args = (data.data_dir, data.task_id) + ((files_url,) if mode == "s3" else ())
                (remote if mode == "s3" else local).append(run_child(mode, *args))
        local_rate = [r["rows"] / r["seconds"] for r in local]
        remote_rate = [r["rows"] / r["seconds"] for r in remote]
        ratios = [s / f for s, f in zip(remote_rate, local_rate)]
        ratio = median(ratios)
        export_figure = Figure(
            f"export throughput to object storage, {rows:,} rows", f"{median(remote_rate):,.0f} rows/s",
            f"to the local directory: {median(local_rate):,.0f} rows/s", f"{ratio:.2f}x (median of the runs' ratios)",
            ">= 0.8x", ratio >= 0.8,
            [f"per-run ratios {', '.join(f'{r:.2f}' for r in ratios)}; zip {remote[0]['zip_bytes']:,} B in"
             f" {rules.S3_PART_BYTES >> 20} MiB parts; SeaweedFS on this machine (loopback, its CPU shared with"
             f" the export's); peak RSS {median([r['vmhwm_kb'] for r in remote]) / 1024:.0f} MB vs"
             f" {median([r['vmhwm_kb'] for r in local]) / 1024:.0f} MB local"])

        rss_data = data if rss_rows == rows else seed(os.path.join(base_dir, "s3-rss"), rss_rows, seed_value=11)
        rss_runs = [run_child("s3", rss_data.data_dir, rss_data.task_id, files_url) for _ in range(1 if smoke else 2)]
        peak = median([r["vmhwm_kb"] for r in rss_runs]) / 1024
        idle = run_child("idle")["vmhwm_kb"] / 1024
        rss_figure = Figure(
            f"peak RSS, {rss_rows:,}-row export to object storage", f"{peak:.0f} MB",
            f"the same process idle: {idle:.0f} MB", f"{peak / idle:.1f}x idle", f"<= {rss_limit_mb:.0f} MB",
            peak <= rss_limit_mb,
            [f"runs: {', '.join(str(round(r['vmhwm_kb'] / 1024)) for r in rss_runs)} MB; zip"
             f" {rss_runs[0]['zip_bytes']:,} B; {median([r['rows'] / r['seconds'] for r in rss_runs]):,.0f} rows/s"])

        # Download: one object in the bucket and the same bytes in a local directory.
        files = open_files(FilesConfig(url=files_url), base_dir)
        local_files = open_files(FilesConfig(dir=os.path.join(base_dir, "s3-local-files")), base_dir)
        payload = os.urandom(1 << 20) * (4 if smoke else 64)
        upload = files.begin("e" * 24, "download")
        for i in range(0, len(payload), 1 << 20):
            upload.sink.write(payload[i:i + (1 << 20)])
        upload.complete()
        local_files.path("e" * 24).write_bytes(payload)
        s3_rates, local_rates = [], []
        for i in range(max(runs, 3)):
            for where in (("s3", "local") if i % 2 == 0 else ("local", "s3")):
                backend, key = (files, upload.key) if where == "s3" else (local_files, None)
                f, size = backend.open("e" * 24, key)
                start = time.perf_counter()
                got, sha = _read_all(f, rules.DOWNLOAD_CHUNK_BYTES)
                seconds = time.perf_counter() - start
                f.close()
                assert got == size == len(payload) and sha == hashlib.sha256(payload).hexdigest()
                (s3_rates if where == "s3" else local_rates).append(size / seconds / 1e6)
        files.discard(upload.key)
        download_figure = Figure(
            f"download throughput from object storage, {len(payload) >> 20} MiB object",
            f"{median(s3_rates):,.0f} MB/s", f"from the local directory: {median(local_rates):,.0f} MB/s",
            f"{median(s3_rates) / median(local_rates):.2f}x", "-", None,
            [f"the server's read path without gRPC: ranged GETs of {rules.S3_READ_WINDOW_BYTES >> 20} MiB read in"
             f" {rules.DOWNLOAD_CHUNK_BYTES >> 10} KiB chunks, every byte through sha256 (as ShowExportTask);"
             f" runs {', '.join(f'{r:,.0f}' for r in s3_rates)} MB/s (store) and"
             f" {', '.join(f'{r:,.0f}' for r in local_rates)} MB/s (local)"])
        return [export_figure, rss_figure, download_figure]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        store.stop()
