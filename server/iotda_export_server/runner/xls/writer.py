"""XlsZipWriter: rows in, a .zip holding one .xls (a compound document) out, streamed.

Rows become their cell records as they arrive (records.py, with the strings in
shared_strings.py) in a temporary file, deflated in the background (deflate.py). finish() then
streams the compound document into the zip member as xlwt's Workbook.save() would lay it out:
header, the workbook globals from xlwt, the shared-string table, each sheet's xlwt records around
its rows (whose deflated segments are spliced in), and the allocation tables. The workbook is
never in memory, and the file and its zip member get fixed metadata, so the same rows give the
same bytes.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from itertools import chain, islice, repeat
from types import TracebackType
from typing import IO, Final

import xlwt
from xlwt import CompoundDoc

from .cells import COLUMNS, HEADER, ROWS_PER_SHEET, cell_text, sheet_name
from .deflate import COPY_CHUNK_BYTES, ZIP_COMPRESS_LEVEL, RowsDeflater, Sink, SplicingCompressor
from .records import BOOK_BEFORE, new_workbook, row_indexes, row_templates, text_style
from .shared_strings import SharedStrings

# Rows are turned into records this many at a time (bounded memory for any input size).
_CHUNK_ROWS: Final = 4096
# Splice the rows' background-deflated segments into the zip member (see SplicingCompressor);
# without it (or without zipfile's hook) the member deflates everything itself at finish().
_SPLICE_ROWS = True
# Fixed zip member metadata: the earliest date a zip can hold, a regular 0600 file, Unix.
_ZIP_DATE_TIME: Final = (1980, 1, 1, 0, 0, 0)
_ZIP_EXTERNAL_ATTR: Final = (stat.S_IFREG | 0o600) << 16
_ZIP_CREATE_SYSTEM_UNIX: Final = 3
_FILE_MODE: Final = 0o600


def _check_inner_name(inner_name: str) -> None:
    if not inner_name or inner_name in (".", "..") or "/" in inner_name or "\\" in inner_name:
        raise ValueError(f"inner_name must be a plain file name, got {inner_name!r}")


class _Marker:
    """Stands in for a sheet's row temporary file so xlwt's own sheet records can be cut where
    the rows go (Worksheet.get_biff_data() reads that file in between)."""

    def __init__(self) -> None:
        self.token = b"\x00rows:" + os.urandom(16)

    def flush(self) -> None:
        pass

    def seek(self, *args: int) -> None:
        pass

    def read(self) -> bytes:
        return self.token


class _Sheet:
    __slots__ = ("sheet", "rows", "start", "end")

    def __init__(self, sheet: xlwt.Worksheet, start: int) -> None:
        self.sheet = sheet
        self.rows = 0  # data rows, the header not counted
        self.start = start  # its records in the rows file: [start, end)
        self.end = start

    def frame(self) -> tuple[bytes, bytes]:
        """xlwt's records of the sheet before and after its rows."""
        sheet = self.sheet
        # What writing the rows through xlwt would have left in the sheet.
        sheet.first_used_row, sheet.last_used_row = 0, self.rows
        sheet.first_used_col, sheet.last_used_col = 0, COLUMNS - 1
        sheet._Worksheet__row_visible_levels = 1
        marker = _Marker()
        sheet.row_tempfile = marker
        try:
            parts = sheet.get_biff_data().split(marker.token)
        finally:
            sheet.row_tempfile = None
        if len(parts) != 2:
            raise RuntimeError("unexpected sheet records from xlwt")
        return parts[0], parts[1]


# -- the writer ---------------------------------------------------------------------------------

class XlsZipWriter:
    """Writes rows into an .xls workbook and packs it in a .zip at `path`.

    The file at `path` is created (mode 0600) at construction; finish() fills it, abort()
    removes it. As a context manager, leaving the block without finish() (by an exception or
    otherwise) aborts; a finished file is never removed. Memory stays bounded: rows become
    records in a temporary file next to `path` as they arrive.
    """

    def __init__(self, path: str | os.PathLike[str] | None, inner_name: str, sink: IO[bytes] | None = None,
                 temp_dir: str | os.PathLike[str] | None = None) -> None:
        """With `sink` (a write-only stream, e.g. an object store upload) the zip goes there instead
        of a file at `path`, and the working files go to `temp_dir`; the sink is the caller's to
        complete or abort."""
        _check_inner_name(inner_name)
        self._path = os.fspath(path) if path is not None else None
        self._inner_name = inner_name
        self._state = "open"  # -> "finished" | "aborted"
        self._total = 0
        # One style for every cell: xlwt adds an XF record per distinct style object.
        self._style = text_style()
        self._book: xlwt.Workbook | None = new_workbook()
        self._templates = row_templates(self._book.add_style(self._style))
        self._sheets: list[_Sheet] = []
        self._rows_size = 0
        self._sink = sink
        if sink is not None:
            self._file: IO[bytes] = sink
        else:
            assert self._path is not None
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self._path, flags, _FILE_MODE)
            try:
                # os.open's mode only applies to a new file; a leftover from an earlier attempt
                # keeps its own mode otherwise.
                os.fchmod(fd, _FILE_MODE)
                self._file = os.fdopen(fd, "wb")
            except BaseException:
                os.close(fd)
                _unlink_quietly(self._path)
                raise
        try:
            temp_dir = os.fspath(temp_dir) if temp_dir is not None else os.path.dirname(os.path.abspath(self._path))
            self._rows_file: IO[bytes] = tempfile.TemporaryFile(dir=temp_dir)
            self._sst = SharedStrings(temp_dir)
            self._deflater = RowsDeflater(temp_dir)
            self._add_sheet()
        except BaseException:
            self.abort()
            raise

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def rows_written(self) -> int:
        return self._total

    def __enter__(self) -> XlsZipWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.abort()

    def write_rows(self, rows: Iterable[Sequence[object]]) -> int:
        """Appends rows of (target, status, output, error_code, error_msg); returns the total so far.

        A row of the wrong length or whose value cannot be converted raises; the rows before it
        are written, nothing of it is."""
        self._check_open()
        it = iter(rows)
        while chunk := list(islice(it, _CHUNK_ROWS)):
            lengths = list(map(len, chunk))
            if lengths.count(COLUMNS) != len(lengths):
                bad = next(i for i, n in enumerate(lengths) if n != COLUMNS)
                self._write_chunk(chunk[:bad])
                raise ValueError(f"a row has {COLUMNS} values, got {lengths[bad]}: {chunk[bad]!r}")
            self._write_chunk(chunk)
        return self._total

    def write_columns(self, columns: Sequence[Sequence[object]]) -> int:
        """Appends rows given as columns: (targets, statuses, outputs, error_codes, error_msgs), all of
        one length; returns the total so far. The same as write_rows(zip(*columns)), without a
        tuple per row (the worker hands over its database pages this way)."""
        self._check_open()
        if len(columns) != COLUMNS:
            raise ValueError(f"rows have {COLUMNS} columns, got {len(columns)}")
        count = len(columns[0])
        if any(len(column) != count for column in columns):
            raise ValueError(f"columns of different lengths: {[len(column) for column in columns]}")
        for start in range(0, count, _CHUNK_ROWS):
            part = [column[start:start + _CHUNK_ROWS] for column in columns] if count > _CHUNK_ROWS else columns
            self._write_column_chunk(part)
        return self._total

    def finish(self) -> int:
        """Saves the workbook into the zip, flushes and fsyncs the file; returns the data rows."""
        self._check_open()
        try:
            self._save()
            self._file.flush()
            if self._sink is None:
                os.fsync(self._file.fileno())
                self._file.close()
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        self._release_workbook()
        return self._total

    def abort(self) -> None:
        """Closes and removes the partial file. Idempotent; does nothing after finish()."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._release_workbook()
            if self._sink is None:
                self._file.close()
        except OSError:
            pass  # e.g. a failed flush of buffered bytes: the file goes away anyway
        finally:
            if self._path is not None and self._sink is None:
                _unlink_quietly(self._path)

    # -- rows -> records ----------------------------------------------------------------------

    def _write_chunk(self, rows: list[Sequence[object]]) -> None:
        self._write_column_chunk(list(zip(*rows)))

    def _write_column_chunk(self, columns: Sequence[Sequence[object]]) -> None:
        packed = self._sst.indices(columns)
        if packed is None:  # some value needs cell_text()
            converted: list[list[str]] = []
            try:
                for row in zip(*columns):
                    # The whole row first, so a failing str() leaves no half-written row.
                    converted.append([cell_text(value) for value in row])
            except BaseException:
                if converted:
                    done = self._sst.indices(list(zip(*converted)), converted=True)
                    assert done is not None
                    self._write_packed(done)
                raise
            columns = list(zip(*converted))
            packed = self._sst.indices(columns, converted=True)
            assert packed is not None
        if packed:
            self._write_packed(packed)

    def _write_packed(self, packed: list[list[bytes]]) -> None:
        count = len(packed[0])
        done = 0
        while done < count:
            if self._sheets[-1].rows == ROWS_PER_SHEET:
                self._add_sheet()
            sheet = self._sheets[-1]
            take = min(count - done, ROWS_PER_SHEET - sheet.rows)
            part = packed if take == count else [column[done:done + take] for column in packed]
            self._write_records(part, sheet.rows + 1)  # row 0 is the header
            sheet.rows += take
            self._total += take
            done += take

    def _write_records(self, packed: list[list[bytes]], first_row: int) -> None:
        """Appends the ROW and cell records of rows numbered from first_row, given the cells' packed
        SST indexes by column."""
        rows = row_indexes(first_row, len(packed[0]))
        templates = map(self._templates.__getitem__, zip(*[map(len, column) for column in packed]))
        args = zip(rows, *chain.from_iterable(zip(repeat(rows), packed)))
        data = b"".join(map(bytes.__mod__, templates, args))
        self._rows_file.write(data)
        self._deflater.feed(data)
        self._rows_size += len(data)
        self._sheets[-1].end = self._rows_size

    def _add_sheet(self) -> None:
        assert self._book is not None
        if self._sheets:
            self._deflater.end_segment()
        sheet = self._book.add_sheet(sheet_name(len(self._sheets)))
        self._sheets.append(_Sheet(sheet, self._rows_size))
        header = self._sst.indices([(title,) for title in HEADER])
        assert header is not None
        self._write_records(header, 0)

    # -- the file -----------------------------------------------------------------------------

    def _save(self) -> None:
        """Streams the compound document into the zip, as xlwt's Workbook.save() would lay it out
        (Workbook.get_biff_data() and CompoundDoc.XlsDoc.save() of xlwt 1.3.0)."""
        book = self._book
        assert book is not None
        sst = self._sst
        sst.seal()
        book.get_sheet(book.active_sheet).selected = True
        frames = [sheet.frame() for sheet in self._sheets]
        sheet_sizes = [len(head) + sheet.end - sheet.start + len(tail)
                       for sheet, (head, tail) in zip(self._sheets, frames)]

        def record(name: str, *args: object) -> bytes:
            return getattr(book, f"_Workbook__{name}_rec")(*args)

        before = b"".join(record(name) for name in BOOK_BEFORE)
        country, links = record("country"), record("all_links")
        sst_records, sst_size = sst.plan()
        ext_sst, eof = record("ext_sst", 0), record("eof")
        boundsheets = record("boundsheets", len(before),
                             len(country) + len(links) + sst_size + len(ext_sst) + len(eof), sheet_sizes)
        stream_size = (len(before) + len(boundsheets) + len(country) + len(links) + sst_size
                       + len(ext_sst) + len(eof) + sum(sheet_sizes))

        doc = CompoundDoc.XlsDoc()
        padding = b"\x00" * (0x1000 - stream_size % 0x1000)
        doc.book_stream_len = stream_size + len(padding)
        doc._build_directory()
        doc._build_sat()
        doc._build_header()
        tail = [padding, doc.packed_MSAT_2nd, doc.packed_SAT, doc.dir_stream]
        size = len(doc.header) + len(doc.packed_MSAT_1st) + stream_size + sum(map(len, tail))

        self._deflater.end_segment()
        segments_file = self._deflater.finish()
        segments = self._deflater.segments
        if len(segments) != len(self._sheets):
            raise RuntimeError("the background deflate lost a sheet")
        with zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            # Knowing the size up front lets zipfile use ZIP64 only when it is needed.
            with archive.open(self._zip_info(size), "w") as member:
                splicer: SplicingCompressor | None = None
                if _SPLICE_ROWS and getattr(member, "_compressor", None) is not None:  # zipfile's private hook
                    splicer = member._compressor = SplicingCompressor()
                out = Sink(member)
                for data in (doc.header, doc.packed_MSAT_1st, before, boundsheets, country, links):
                    out.write(data)
                sst.write(out, sst_records)
                out.write(ext_sst)
                out.write(eof)
                self._rows_file.flush()
                self._rows_file.seek(0)
                read = self._rows_file.read
                for sheet, (head, tail_records), (offset, length) in zip(self._sheets, frames, segments):
                    out.write(head)
                    if splicer is not None:
                        # The rows, deflated while they were written; zipfile still reads them for
                        # the CRC and the size.
                        out.flush()
                        segments_file.seek(offset)
                        splicer.splice(segments_file.read(length))
                    left = sheet.end - sheet.start
                    while left:
                        data = read(min(left, COPY_CHUNK_BYTES))
                        if not data:
                            raise RuntimeError("the rows file is shorter than written")
                        out.write(data)
                        left -= len(data)
                    if splicer is not None:
                        out.flush()
                        splicer.end_splice()
                    out.write(tail_records)
                for data in tail:
                    out.write(data)
                out.flush()

    def _zip_info(self, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(self._inner_name, date_time=_ZIP_DATE_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info._compresslevel = ZIP_COMPRESS_LEVEL  # type: ignore[attr-defined]
        # ZipInfo's default depends on the platform, which would change the bytes.
        info.create_system = _ZIP_CREATE_SYSTEM_UNIX
        info.external_attr = _ZIP_EXTERNAL_ATTR
        info.file_size = size
        return info

    def _release_workbook(self) -> None:
        # The temporary files are unlinked already; close them now rather than at GC.
        for name in ("_deflater", "_rows_file", "_sst"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
        self._sheets = []
        self._book = None

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the writer for {self._path!r} is {self._state}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
