"""The deflate pipeline: the zip member's bytes, with the rows deflated while they are made.

Deflating this data is most of an export's time, so the sheets' row records are deflated by a
background thread (zlib runs without the GIL) while later rows are still being made
(RowsDeflater), and XlsZipWriter.finish() splices those segments into the zip member's own
deflate stream (SplicingCompressor) instead of deflating the rows a second time. Sink gathers
the small writes of the rest of the file. Both deflate at ZIP_COMPRESS_LEVEL, the member's level.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import zlib
from typing import IO, Final

# Writes are gathered, and files copied, in pieces of about this size.
COPY_CHUNK_BYTES: Final = 1024 * 1024
# zlib level of the zip member. The default (6) deflates this data at ~20 MB/s, more time than
# everything else in an export; 1 runs ~6x faster for a zip ~8 % bigger (bench/RESULTS.md).
ZIP_COMPRESS_LEVEL: Final = 1


class Sink:
    """Gathers small writes into ~1 MiB ones (each write to a zip member is a deflate call)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= COPY_CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._out.write(b"".join(self._parts))
            self._parts, self._size = [], 0


class RowsDeflater:
    """Deflates each sheet's row records in a background thread while later rows are still being
    made (zlib runs without the GIL), into one independent deflate segment per sheet.

    The segments are spliced into the zip member's deflate stream by XlsZipWriter.finish(): a
    segment starts with no history and ends byte-aligned and not final (Z_SYNC_FLUSH), so it can
    follow any deflate data that was fully flushed (Z_FULL_FLUSH) and be followed by any."""

    _END = object()

    def __init__(self, temp_dir: str) -> None:
        self._file = tempfile.TemporaryFile(dir=temp_dir)
        self.segments: list[tuple[int, int]] = []  # per sheet: (offset, size) in the file
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=4)  # bounds the memory held
        self._thread = threading.Thread(target=self._run, name="xls-deflate", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= COPY_CHUNK_BYTES:
            self._submit()

    def end_segment(self) -> None:
        self._submit()
        self._queue.put(self._END)

    def finish(self) -> IO[bytes]:
        """Waits for the thread; the file of the segments (raises what the thread raised)."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._file

    def close(self) -> None:
        self._stop()
        self._file.close()

    def _submit(self) -> None:
        if self._pending:
            self._queue.put(b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        compressor = None
        start = position = 0
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking items so that the producer never blocks
            try:
                if item is self._END:
                    assert compressor is not None
                    out = compressor.flush(zlib.Z_SYNC_FLUSH)
                    compressor = None
                else:
                    if compressor is None:
                        compressor = zlib.compressobj(ZIP_COMPRESS_LEVEL, zlib.DEFLATED, -15)
                        start = position
                    out = compressor.compress(item)  # type: ignore[arg-type]
                self._file.write(out)
                position += len(out)
                if item is self._END:
                    self.segments.append((start, position - start))
            except BaseException as exc:  # noqa: BLE001 (raised again by finish())
                self._error = exc


class SplicingCompressor:
    """Takes the place of the zip member's compressor (zipfile still computes the CRC and sizes
    from the bytes written, and writes the headers): deflates what XlsZipWriter.finish() writes,
    except while splicing, when the bytes written are only counted and a pre-compressed segment
    goes out."""

    def __init__(self) -> None:
        self._main = zlib.compressobj(ZIP_COMPRESS_LEVEL, zlib.DEFLATED, -15)
        self._splicing = False
        self._pending = b""

    def splice(self, segment: bytes) -> None:
        # A full flush ends the data so far on a byte boundary and drops the history, so nothing
        # after the segment refers back across it.
        self._pending = self._main.flush(zlib.Z_FULL_FLUSH) + segment
        self._splicing = True

    def end_splice(self) -> None:
        if self._pending:
            raise RuntimeError("a spliced segment was not written")
        self._splicing = False

    def compress(self, data: bytes) -> bytes:
        if not self._splicing:
            return self._main.compress(data)
        out, self._pending = self._pending, b""
        return out

    def flush(self) -> bytes:
        return self._main.flush()
