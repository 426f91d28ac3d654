"""Writes sub-task result rows into an .xls workbook packed in a .zip.

The .xls (BIFF8) format has hard limits that xlwt enforces by raising mid-export, so this
module shapes the data to fit instead: cells are cut at 32,767 characters, characters the
format cannot hold are replaced or dropped, and rows spill over onto further sheets after
65,535 data rows. Every cell is written as a string record so that values such as "=1+1",
"0012" or "1e5" are never turned into formulas or numbers by a spreadsheet.

The output is byte-for-byte deterministic for the same rows (xlwt writes no timestamps and
the zip member gets a fixed date and attributes), which keeps retries and tests comparable.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import IO, Final

import xlwt
from xlwt import BIFFRecords
from xlwt.UnicodeUtils import upack2

__all__ = [
    "HEADER",
    "MAX_CELL_CHARS",
    "ROWS_PER_SHEET",
    "TRUNCATION_MARKER",
    "XlsZipWriter",
    "cell_text",
    "sheet_name",
]

HEADER: Final[tuple[str, ...]] = ("Target", "Status", "Output", "Error Code", "Error Message")
# The .xls format's limit per cell, counted (like the format does) in UTF-16 code units.
MAX_CELL_CHARS: Final = 32767
# Data rows per sheet; with the header row that is 65,536 rows, the format's maximum.
ROWS_PER_SHEET: Final = 65535
# Appended to a cut cell so the cut is visible; the result still fits in MAX_CELL_CHARS.
TRUNCATION_MARKER: Final = "…[truncated]"

_SHEET_BASE_NAME: Final = "task_details"
# xlwt keeps every row of a sheet in memory until it is flushed to a temporary file.
_FLUSH_EVERY_ROWS: Final = 1000
# The finished .xls is staged here before zipping (so the zip knows its size, see finish());
# small workbooks stay in memory, bigger ones spill to disk next to the output.
_SPOOL_MAX_BYTES: Final = 8 * 1024 * 1024
_COPY_CHUNK_BYTES: Final = 1024 * 1024
# Fixed zip member metadata: the earliest date a zip can hold, a regular 0600 file, Unix.
_ZIP_DATE_TIME: Final = (1980, 1, 1, 0, 0, 0)
_ZIP_EXTERNAL_ATTR: Final = (stat.S_IFREG | 0o600) << 16
_ZIP_CREATE_SYSTEM_UNIX: Final = 3
_FILE_MODE: Final = 0o600

# One search finds both kinds of bad input so clean text (the common case) costs one scan.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 control characters other than tab, line feed and carriage return.
_C0_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")

_COLUMNS: Final = len(HEADER)


def sheet_name(index: int) -> str:
    """Name of the sheet at `index`: "task_details", then "task_details_2", "task_details_3", ..."""
    if index < 0:
        raise ValueError(f"sheet index must be >= 0, got {index}")
    return _SHEET_BASE_NAME if index == 0 else f"{_SHEET_BASE_NAME}_{index + 1}"


def _utf16_len(text: str) -> int:
    # Characters outside the BMP take two UTF-16 code units; the format counts code units.
    return len(text.encode("utf-16-le")) // 2


def cell_text(value: object) -> str:
    """The text stored for `value`: sanitised for the .xls format and cut to fit one cell.

    None becomes "", strings are kept, anything else goes through str(). Lone surrogates
    (which cannot be encoded as UTF-16) become U+FFFD, and C0 control characters other than
    tab, line feed and carriage return are removed. Text longer than MAX_CELL_CHARS is cut so
    that the kept text plus TRUNCATION_MARKER is exactly MAX_CELL_CHARS long (one shorter if
    the cut falls inside a character outside the BMP, which is never split).
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if _UNSTORABLE.search(text):
        if _SURROGATE.search(text):
            # Re-pairs adjacent high+low surrogates into the real character; lone ones -> U+FFFD.
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        text = _C0_CONTROL.sub("", text)
    # Each character is at most two code units, so short text needs no exact count.
    if len(text) * 2 <= MAX_CELL_CHARS:
        return text
    # Count code units, not len(): xlwt only checks len() and would write an over-long
    # record for text outside the BMP.
    units = _utf16_len(text)
    if units <= MAX_CELL_CHARS:
        return text
    budget = MAX_CELL_CHARS - _utf16_len(TRUNCATION_MARKER)
    if units == len(text):  # all in the BMP: characters are code units
        return text[:budget] + TRUNCATION_MARKER
    # "ignore" drops a high surrogate left dangling by the cut (the text has no other strays).
    kept = text.encode("utf-16-le")[: budget * 2].decode("utf-16-le", "ignore")
    return kept + TRUNCATION_MARKER


def _is_high_surrogate(utf16le: bytes, pos: int) -> bool:
    return 0xD8 <= utf16le[pos + 1] <= 0xDB


class _PairSafeSharedStringTable(BIFFRecords.SharedStringTable):  # type: ignore[misc]
    """xlwt's shared-string table, except that it never splits a UTF-16 surrogate pair.

    Why: the table continues in CONTINUE records every ~8 KiB and xlwt cuts UTF-16 text at any
    code unit, so a character outside the BMP (an emoji, say) can be split between two records.
    xlrd decodes each record's part separately and then fails on the whole workbook
    ("'utf-16-le' codec can't decode ... unexpected end of data"). Cutting one code unit
    earlier is equally valid BIFF8 and readable everywhere. Text without such characters is
    laid out exactly as by xlwt. Only the two methods used for plain strings are overridden.
    """

    def _add_to_sst(self, s: str) -> None:
        u_str = upack2(s, self.encoding)
        is_unicode_str = u_str[2] == 1
        # The string header must share a record with its first character (as in xlwt).
        if not is_unicode_str:
            atom_len = 4  # length (2), options (1), first character (1)
        elif len(u_str) >= 7 and _is_high_surrogate(u_str, 3):
            atom_len = 7  # length, options, and a whole surrogate pair
        else:
            atom_len = 5  # length, options, first code unit
        self._save_atom(u_str[:atom_len])
        self._save_splitted(u_str[atom_len:], is_unicode_str)

    def _save_splitted(self, s: bytes, is_unicode_str: bool) -> None:
        i, total = 0, len(s)
        while i < total:
            free_space = 0x2020 - len(self._current_piece)
            if free_space >= total - i:
                self._current_piece += s[i:]
                return
            if is_unicode_str:
                take = free_space & 0xFFFE
                if take and _is_high_surrogate(s, i + take - 2):
                    take -= 2
            else:
                take = free_space
            self._current_piece += s[i : i + take]
            self._new_piece()
            # A continued string restarts with its options byte (compressed or UTF-16).
            self._current_piece += b"\x01" if is_unicode_str else b"\x00"
            i += take


def _new_workbook() -> xlwt.Workbook:
    book = xlwt.Workbook()
    # The table is a private attribute of xlwt's Workbook (xlwt is pinned at 1.3.0, its last
    # release); fail loudly rather than silently write files xlrd cannot read.
    if type(getattr(book, "_Workbook__sst", None)) is not BIFFRecords.SharedStringTable:
        raise RuntimeError("unsupported xlwt version: cannot install the shared-string table")
    book._Workbook__sst = _PairSafeSharedStringTable(book.encoding)
    return book


def _text_style() -> xlwt.XFStyle:
    # The cells are string records anyway; the "@" (Text) number format also keeps a value
    # typed into the cell later in a spreadsheet as text.
    style = xlwt.XFStyle()
    style.num_format_str = "@"
    return style


def _check_inner_name(inner_name: str) -> None:
    if not inner_name or inner_name in (".", "..") or "/" in inner_name or "\\" in inner_name:
        raise ValueError(f"inner_name must be a plain file name, got {inner_name!r}")


class XlsZipWriter:
    """Writes rows into an .xls workbook and packs it in a .zip at `path`.

    The file at `path` is created (mode 0600) at construction; finish() fills it, abort()
    removes it. As a context manager, leaving the block without finish() (by an exception or
    otherwise) aborts; a finished file is never removed.
    """

    def __init__(self, path: str | os.PathLike[str], inner_name: str) -> None:
        _check_inner_name(inner_name)
        self._path = os.fspath(path)
        self._inner_name = inner_name
        self._state = "open"  # -> "finished" | "aborted"
        self._total = 0
        self._sheet_rows = 0
        # One style for every cell: xlwt adds an XF record per distinct style object.
        self._style = _text_style()
        self._book: xlwt.Workbook | None = _new_workbook()
        self._sheets: list[xlwt.Worksheet] = []
        self._add_sheet()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._path, flags, _FILE_MODE)
        try:
            # os.open's mode only applies to a new file; a leftover from an earlier attempt
            # keeps its own mode otherwise.
            os.fchmod(fd, _FILE_MODE)
            self._file: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink_quietly(self._path)
            raise

    @property
    def path(self) -> str:
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
        """Appends rows of (target, status, output, error_code, error_msg); returns the total so far."""
        self._check_open()
        style = self._style
        for row in rows:
            if len(row) != _COLUMNS:
                raise ValueError(f"a row has {_COLUMNS} values, got {len(row)}: {row!r}")
            # Convert the whole row first so a failing str() leaves no half-written row.
            texts = [cell_text(value) for value in row]
            if self._sheet_rows == ROWS_PER_SHEET:
                self._sheets[-1].flush_row_data()
                self._add_sheet()
            xls_row = self._sheets[-1].row(self._sheet_rows + 1)  # row 0 is the header
            for col, text in enumerate(texts):
                # set_cell_text always makes a string record; Worksheet.write() would not.
                # "" becomes a blank (text-styled) cell, as spreadsheets store empty cells,
                # rather than a zero-length string record.
                if text:
                    xls_row.set_cell_text(col, text, style)
                else:
                    xls_row.set_cell_blank(col, style)
            self._sheet_rows += 1
            self._total += 1
            if self._sheet_rows % _FLUSH_EVERY_ROWS == 0:
                self._sheets[-1].flush_row_data()
        return self._total

    def finish(self) -> int:
        """Saves the workbook into the zip, flushes and fsyncs the file; returns the data rows."""
        self._check_open()
        assert self._book is not None
        try:
            spool_dir = os.path.dirname(os.path.abspath(self._path))
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX_BYTES, dir=spool_dir) as spool:
                self._book.save(spool)
                # Knowing the size up front lets zipfile use ZIP64 only when it is needed.
                size = spool.tell()
                spool.seek(0)
                with zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    with archive.open(self._zip_info(size), "w") as member:
                        shutil.copyfileobj(spool, member, _COPY_CHUNK_BYTES)
            self._file.flush()
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
            self._file.close()
        except OSError:
            pass  # e.g. a failed flush of buffered bytes: the file goes away anyway
        finally:
            _unlink_quietly(self._path)

    def _zip_info(self, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(self._inner_name, date_time=_ZIP_DATE_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        # ZipInfo's default depends on the platform, which would change the bytes.
        info.create_system = _ZIP_CREATE_SYSTEM_UNIX
        info.external_attr = _ZIP_EXTERNAL_ATTR
        info.file_size = size
        return info

    def _add_sheet(self) -> None:
        assert self._book is not None
        sheet = self._book.add_sheet(sheet_name(len(self._sheets)))
        header = sheet.row(0)
        for col, title in enumerate(HEADER):
            header.set_cell_text(col, title, self._style)
        self._sheets.append(sheet)
        self._sheet_rows = 0

    def _release_workbook(self) -> None:
        # Flushed rows sit in one temporary file per sheet; close them now rather than at GC.
        for sheet in self._sheets:
            if sheet.row_tempfile is not None:
                sheet.row_tempfile.close()
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
