"""One measurement in a fresh process (so that its peak RSS is its own), printed as JSON.

    python -m bench.child fast  DATA_DIR TASK_ID   # the worker's path: SQLite -> finished zip
    python -m bench.child naive DATA_DIR TASK_ID   # plain xlwt, rows already in memory -> .xls
    python -m bench.child s3    DATA_DIR TASK_ID FILES_URL  # the worker's path into an object store
    python -m bench.child idle                     # the imports only (RSS floor)
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time
import zipfile

from bench.common import vmhwm_kb


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fast(data_dir: str, task_id: str) -> dict:
    from iotda_export_server.runner.worker import READ_BATCH_ROWS, _fixed_mmap_threshold, write_subtasks
    from iotda_export_server.store.files import LocalUpload
    from iotda_export_server.runner.xls import XlsZipWriter
    from iotda_export_server.store import open_store

    _fixed_mmap_threshold()  # as worker_main does
    store = open_store(data_dir)
    out = os.path.join(data_dir, f"bench-fast-{os.getpid()}.zip")
    cpu = time.process_time()
    start = time.perf_counter()
    # What run_export() does between the claim and the publish.
    with store.snapshot() as snap:
        total = snap.count_subtasks(task_id)
        with XlsZipWriter(out, "export.xls") as writer:
            write_subtasks(snap.stream_subtask_columns(task_id, READ_BATCH_ROWS), writer)
            rows = writer.finish()
    size, _ = LocalUpload(pathlib.Path(out)).complete()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = vmhwm_kb()
    with zipfile.ZipFile(out) as archive:
        with archive.open("export.xls") as member:
            h = hashlib.sha256()
            while chunk := member.read(1 << 20):
                h.update(chunk)
        xls_size = archive.getinfo("export.xls").file_size
    os.unlink(out)
    store.close()
    assert rows == total
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "vmhwm_kb": peak, "zip_bytes": size,
            "xls_bytes": xls_size,
            "xls_sha256": h.hexdigest()}


def s3(data_dir: str, task_id: str, files_url: str) -> dict:
    """The worker's path with the zip streamed into a multipart upload (store/s3files.py), completed;
    the object is deleted afterwards. Credentials and endpoint from the AWS_* variables."""
    from iotda_export_server.runner.worker import READ_BATCH_ROWS, write_subtasks
    from iotda_export_server.config import FilesConfig
    from iotda_export_server.runner.xls import XlsZipWriter
    from iotda_export_server.store import open_store
    from iotda_export_server.store.files import open_files

    store = open_store(data_dir)
    files = open_files(FilesConfig(url=files_url), data_dir)
    cpu = time.process_time()
    start = time.perf_counter()
    with store.snapshot() as snap:
        total = snap.count_subtasks(task_id)
        upload = files.begin("f" * 24, f"bench{os.getpid()}")
        try:
            with XlsZipWriter(None, "export.xls", sink=upload.sink, temp_dir=upload.temp_dir) as writer:
                write_subtasks(snap.stream_subtask_columns(task_id, READ_BATCH_ROWS), writer)
                rows = writer.finish()
            size, sha = upload.complete()
        except BaseException:
            upload.abort()
            raise
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = vmhwm_kb()
    files.discard(upload.key)
    store.close()
    assert rows == total
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "vmhwm_kb": peak, "zip_bytes": size,
            "zip_sha256": sha}


def naive(data_dir: str, task_id: str) -> dict:
    from iotda_export_server.runner.xls.reference import reference_xls
    from iotda_export_server.store import open_store

    store = open_store(data_dir)
    with store.snapshot() as snap:
        rows = [tuple(r[1:]) for r in snap.subtask_rows(task_id, "", 1 << 62)]
    store.close()
    out = os.path.join(data_dir, f"bench-naive-{os.getpid()}.xls")
    cpu = time.process_time()
    start = time.perf_counter()
    with open(out, "wb") as f:
        written = reference_xls(rows, f)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = vmhwm_kb()
    sha = _sha256_file(out)
    size = os.path.getsize(out)
    os.unlink(out)
    return {"rows": written, "seconds": seconds, "cpu_seconds": cpu, "vmhwm_kb": peak, "xls_bytes": size,
            "xls_sha256": sha}


def idle() -> dict:
    import iotda_export_server.runner.worker  # noqa: F401  (what a worker imports)
    import iotda_export_server.store.sqlite  # noqa: F401
    return {"vmhwm_kb": vmhwm_kb()}


def main(argv: list[str]) -> None:
    mode, *args = argv
    result = {"fast": fast, "naive": naive, "s3": s3, "idle": idle}[mode](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
