"""Writes sub-task result rows into an .xls workbook packed in a .zip.

The .xls (BIFF8) format has hard limits that xlwt enforces by raising mid-export, so this
module shapes the data to fit instead: cells are cut at 32,767 characters, characters the
format cannot hold are replaced or dropped, and rows spill over onto further sheets after
65,535 data rows. Every cell is written as a string record so that values such as "=1+1",
"0012" or "1e5" are never turned into formulas or numbers by a spreadsheet.

The output is byte-for-byte deterministic for the same rows (xlwt writes no timestamps and
the zip member gets a fixed date and attributes), which keeps retries and tests comparable.

How it is fast and small (bench/RESULTS.md has the figures). Driving xlwt cell by cell costs
~6 µs of Python per cell and keeps the whole workbook in memory until save(). XlsZipWriter lets
xlwt (pinned at 1.3.0, checked at import) make every record except the cells and the
shared-string table, and makes those two itself, laid out byte for byte as xlwt lays them out:

- a page of rows becomes its ROW + LABELSST/BLANK/MULBLANK records with C-level loops only
  (one `bytes %` template per pattern of empty cells), appended to a temporary file and
  deflated by a background thread (zlib runs without the GIL) into one segment per sheet;
- the shared-string table keeps one dict entry per distinct string (str -> packed index);
  the strings' bytes go to a second temporary file, and finish() cuts them into SST/CONTINUE
  records by xlwt's rules (plus the surrogate-pair fix), finding the cut points by bisection;
- finish() streams the compound document (header, globals, SST, sheets, allocation tables) into
  the zip member, splicing in the rows' deflate segments: the workbook is never in memory.

`reference_xls()` is the plain way (Worksheet.write() per cell, Workbook.save()); the tests
check that both give the same .xls bytes for the same rows. The zip around it is deflated at
level 1, in segments, so its bytes differ from a zip of the same .xls made by zipfile alone.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, compress, islice, repeat
from operator import is_
from types import TracebackType
from typing import IO, Final

import xlwt
from xlwt import BIFFRecords, CompoundDoc
from xlwt.UnicodeUtils import upack2

__all__ = [
    "HEADER",
    "MAX_CELL_CHARS",
    "ROWS_PER_SHEET",
    "TRUNCATION_MARKER",
    "XlsZipWriter",
    "cell_text",
    "reference_xls",
    "sheet_name",
]

HEADER: Final[tuple[str, ...]] = ("Target", "Status", "Output", "Error Code", "Error Message")
# The .xls format's limit per cell, counted (like the format does) in UTF-16 code units.
MAX_CELL_CHARS: Final = 32767
# Data rows per sheet; with the header row that is 65,536 rows, the format's maximum.
ROWS_PER_SHEET: Final = 65535
# Appended to a cut cell so the cut is visible; the result still fits in MAX_CELL_CHARS.
TRUNCATION_MARKER: Final = "…[truncated]"

# The records written here are laid out as xlwt 1.3.0 lays them out (its last release, pinned
# in pyproject.toml); another version could differ, so refuse it rather than write other bytes.
XLWT_VERSION: Final = "1.3.0"

_SHEET_BASE_NAME: Final = "task_details"
# Rows are turned into records this many at a time (bounded memory for any input size).
_CHUNK_ROWS: Final = 4096
_COPY_CHUNK_BYTES: Final = 1024 * 1024
# zlib level of the zip member. The default (6) deflates this data at ~20 MB/s, more time than
# everything else in an export; 1 runs ~6x faster for a zip ~8 % bigger (bench/RESULTS.md).
_ZIP_COMPRESS_LEVEL: Final = 1
# Splice the rows' background-deflated segments into the zip member (see _SplicingCompressor);
# without it (or without zipfile's hook) the member deflates everything itself at finish().
_SPLICE_ROWS = True
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


# -- xlwt's private surface used below: refuse any other version ----------------------------------

# Workbook.get_biff_data() of xlwt 1.3.0 writes these records, in this order, before BOUNDSHEET.
_BOOK_BEFORE: Final = (
    "bof", "intf_hdr", "intf_mms", "intf_end", "write_access", "codepage", "dsf", "tabid",
    "fngroupcount", "wnd_protect", "protect", "obj_protect", "password", "prot4rev",
    "prot4rev_pass", "backup", "hide_obj", "window1", "datemode", "precision", "refresh_all",
    "bookbool", "all_fonts_num_formats_xf_styles", "palette", "useselfs",
)
_BOOK_PRIVATE: Final = (*_BOOK_BEFORE, "country", "all_links", "ext_sst", "eof", "boundsheets")


def _check_xlwt() -> None:
    if xlwt.__VERSION__ != XLWT_VERSION:
        raise RuntimeError(f"xlwt {XLWT_VERSION} is required (its record layout is reproduced "
                           f"byte for byte), found {xlwt.__VERSION__}")
    missing = [name for name in _BOOK_PRIVATE if not hasattr(xlwt.Workbook, f"_Workbook__{name}_rec")]
    for cls, attr in ((xlwt.Workbook, "_Workbook__sst"), (xlwt.Worksheet, "_Worksheet__row_visible_levels")):
        if attr not in vars(cls).get("__init__").__code__.co_names:
            missing.append(attr)
    for name in ("_build_directory", "_build_sat", "_build_header"):
        if not hasattr(CompoundDoc.XlsDoc, name):
            missing.append(name)
    if missing:
        raise RuntimeError(f"unsupported xlwt: missing {missing}")


_check_xlwt()


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


# -- cell records -------------------------------------------------------------------------------

_pack_H = struct.Struct("<H").pack
_pack_I = struct.Struct("<I").pack
_pack_HB = struct.Struct("<HB").pack
_pack_HH = struct.Struct("<HH").pack
_pack_SST_HEAD = struct.Struct("<2HII").pack

_ROW_ID: Final = 0x0208
_LABELSST_ID: Final = 0x00FD
_BLANK_ID: Final = 0x0201
_MULBLANK_ID: Final = 0x00BE
_SST_ID: Final = 0x00FC
_CONTINUE_ID: Final = 0x003C
# xlwt fills each SST/CONTINUE record up to this many bytes of data.
_SST_PIECE_MAX: Final = 0x2020

# Row.get_row_biff_data() of a row with default height and format: height 0xFF (not the
# default-height flag), options "always 1" (bit 8) and the default XF 0x0F (bits 16-27).
_ROW_HEIGHT_OPTIONS: Final = 0x00FF
_ROW_OPTIONS: Final = 0x0100 | (0x0F << 16)

_row_index_bytes: list[bytes] = []


def _row_indexes(first: int, count: int) -> list[bytes]:
    """The little-endian 16-bit row numbers first .. first+count-1 (a table built once)."""
    if not _row_index_bytes:
        _row_index_bytes.extend(map(_pack_H, range(ROWS_PER_SHEET + 1)))
    return _row_index_bytes[first:first + count]


class _Latin1Headers(dict):  # type: ignore[type-arg]
    """upack2()'s header of an 8-bit string, by its length (each made once)."""

    def __missing__(self, length: int) -> bytes:
        header = self[length] = _pack_HB(length, 0)
        return header


_latin1_headers = _Latin1Headers()


def _literal(fmt: str, *values: int) -> bytes:
    # Constant bytes inside a `%` template: a 0x25 byte must be written "%%".
    return struct.pack("<" + fmt, *values).replace(b"%", b"%%")


def _row_template(filled: Sequence[bool], xf_index: int) -> bytes:
    """The records of one row as xlwt writes them, as a template for `bytes % args`.

    args are (row, row, sst_0, row, sst_1, ...): the row number (2 bytes) for the ROW record
    and then, per column, the row number and the packed SST index (4 bytes) or b"" for an
    empty cell. Text cells are LABELSST records; runs of empty cells become one BLANK (a
    single cell) or MULBLANK (adjacent cells) record, as xlwt's Row.get_cells_biff_data()
    merges them; the row numbers a MULBLANK does not need are consumed by "%.0b".
    """
    ncols = len(filled)
    parts = [_literal("HH", _ROW_ID, 16), b"%b",
             _literal("HHHHHL", 0, ncols, _ROW_HEIGHT_OPTIONS, 0, 0, _ROW_OPTIONS)]
    col = 0
    while col < ncols:
        if filled[col]:
            parts += [_literal("HH", _LABELSST_ID, 10), b"%b", _literal("HH", col, xf_index), b"%b"]
            col += 1
            continue
        last = col
        while last + 1 < ncols and not filled[last + 1]:
            last += 1
        if last == col:
            parts += [_literal("HH", _BLANK_ID, 6), b"%b", _literal("HH", col, xf_index), b"%b"]
        else:
            count = last - col + 1
            parts += [_literal("HH", _MULBLANK_ID, 2 * count + 6), b"%b",
                      _literal("H" * (count + 2), col, *[xf_index] * count, last), b"%b"]
            parts += [b"%.0b%b"] * (count - 1)
        col = last + 1
    return b"".join(parts)


def _row_templates(xf_index: int, ncols: int = _COLUMNS) -> dict[tuple[int, ...], bytes]:
    """Templates keyed by the lengths of a row's packed SST indexes (4, or 0 when empty)."""
    out = {}
    for bits in range(1 << ncols):
        filled = [bool(bits >> col & 1) for col in range(ncols)]
        out[tuple(4 if f else 0 for f in filled)] = _row_template(filled, xf_index)
    return out


# -- the shared-string table --------------------------------------------------------------------

class _SharedStrings:
    """xlwt's shared-string table (SST), with its strings' bytes on disk.

    In memory: one dict entry per distinct string (str -> its packed 4-byte index) and an
    array of 8-byte offsets. The records are laid out as by _PairSafeSharedStringTable (xlwt's
    layout, except that a surrogate pair is never split between two records).
    """

    def __init__(self, temp_dir: str) -> None:
        # "" is never a string of the table: an empty cell is a blank record.
        self._index: dict[str, bytes] | None = {"": b""}
        self._count = 0  # string cells written: the SST's "total" field (xlwt's _add_calls)
        self._file = tempfile.TemporaryFile(dir=temp_dir)
        self._starts = array("q", [0])  # where each string's bytes start; the last entry is the end
        # A column whose last page held only new, distinct strings (the targets: device ids are
        # unique in a batch task), tried first as such on the next page.
        self._fresh: int | None = None
        self._last_added: list[bytes] = []

    @property
    def unique(self) -> int:
        return len(self._starts) - 1

    def indices(self, columns: Sequence[Sequence[object]], converted: bool = False) -> list[list[bytes]] | None:
        """The packed SST index of each cell (b"" for ""), by column, adding the new strings in
        the order xlwt numbers them: first appearance, row by row, left to right.

        None (and nothing added) when a new value might not be a str that cell_text() keeps as it
        is: the caller converts the cells first (and says so). Known strings need no such check:
        they were checked or converted when they were new."""
        try:
            return self._indices(columns, converted)
        except TypeError:  # an unhashable value (a list, say): cell_text() makes it a str
            if converted:
                raise
            return None

    def _indices(self, columns: Sequence[Sequence[object]], converted: bool) -> list[list[bytes]] | None:
        assert self._index is not None
        get = self._index.get
        fresh = self._fresh
        if fresh is not None and fresh < len(columns):
            found = [[] if col == fresh else list(map(get, column)) for col, column in enumerate(columns)]
            if not any(None in packed for packed in found) and self._add_fresh(columns[fresh], converted):
                found[fresh] = self._last_added
                self._count += sum(len(column) - column.count("") for column in columns)
                return found  # type: ignore[return-value]
            found[fresh] = list(map(get, columns[fresh]))
        else:
            found = [list(map(get, column)) for column in columns]
        self._fresh = None
        missing = [col for col, packed in enumerate(found) if None in packed]
        if missing:
            if len(missing) == 1:  # then every new string is in that column only
                cells: Iterable[object] = columns[missing[0]]
                hits: Iterable[bytes | None] = found[missing[0]]
            else:
                cells = chain.from_iterable(zip(*columns))
                hits = chain.from_iterable(zip(*found))
            new = list(dict.fromkeys(compress(cells, map(is_, hits, repeat(None)))))
            if not converted and not _all_clean(new):
                return None
            first = self.unique
            packed = list(map(_pack_I, range(first, first + len(new))))
            self._index.update(zip(new, packed))
            self._store(new)  # type: ignore[arg-type]
            if len(missing) == 1 and len(new) == len(found[missing[0]]):
                found[missing[0]] = packed  # a column of distinct new strings (device ids, say)
                self._fresh = missing[0]
            else:
                for col in missing:
                    found[col] = list(map(get, columns[col]))
        self._count += sum(len(column) - column.count("") for column in columns)
        return found  # type: ignore[return-value]

    def _add_fresh(self, column: Sequence[object], converted: bool) -> bool:
        """Adds a column that should hold only new, distinct strings (as the previous page's did: the
        device ids) with one dict operation per cell. False, with nothing added, when it does not."""
        assert self._index is not None
        if not converted and not _all_clean(column):  # type: ignore[arg-type]
            return False
        first = self.unique
        packed = list(map(_pack_I, range(first, first + len(column))))
        got = list(map(self._index.setdefault, column, packed))
        if got != packed:  # a known string, or one twice: undo, the caller numbers them
            index = self._index
            for value, mine, new in zip(column, got, packed):
                if mine is new:
                    del index[value]
            return False
        self._store(column)  # type: ignore[arg-type]
        self._last_added = packed
        return True

    def _store(self, strings: Sequence[str]) -> None:
        # upack2()'s layout: character count (2 bytes), options (0 = 8-bit, 1 = UTF-16LE), chars.
        try:
            bodies = list(map(str.encode, strings, repeat("latin-1")))
        except UnicodeEncodeError:
            encoded = list(map(upack2, strings))
            sizes = map(len, encoded)
            data = b"".join(encoded)
        else:
            lengths = list(map(len, bodies))
            sizes = map(int.__add__, lengths, repeat(3))
            data = b"".join(chain.from_iterable(zip(map(_latin1_headers.__getitem__, lengths), bodies)))
        ends = accumulate(sizes, initial=self._starts[-1])
        next(ends)
        self._starts.extend(ends)
        self._file.write(data)

    def seal(self) -> None:
        """No more strings: frees the index, the largest structure of an export."""
        self._index = None
        self._file.flush()

    def plan(self) -> tuple[list[tuple[bytes, int, int]], int]:
        """The SST record and its CONTINUE records, as (prefix, start, end): each record's data is
        `prefix` + the strings' bytes [start, end) (the first one also holds the two counts).
        Returns them and the size of all the records."""
        starts = self._starts
        total = starts[-1]
        fd = self._file.fileno()
        records: list[tuple[bytes, int, int]] = []
        pos, used, prefix = 0, 8, b""  # the SST record starts with its two 4-byte counts
        while True:
            end = pos + _SST_PIECE_MAX - used
            if end >= total:
                records.append((prefix, pos, total))
                break
            # The string that does not fit whole: starts[j] <= end < starts[j + 1].
            j = bisect_right(starts, end) - 1
            start, stop = starts[j], starts[j + 1]
            if start >= pos:
                # It starts in this record: its header and first character (a surrogate pair
                # whole) must fit, or the string moves on to the next record.
                head = os.pread(fd, 3, start + 2)
                unicode = head[0] == 1
                atom = (7 if len(head) == 3 and stop - start >= 7 and 0xD8 <= head[2] <= 0xDB else 5) if unicode else 4
                if end - start < min(atom, stop - start):
                    records.append((prefix, pos, start))
                    pos, used, prefix = start, 0, b""
                    continue
                body = start + atom
            else:  # the record continues the characters of a string cut before
                unicode = os.pread(fd, 1, starts[j] + 2)[0] == 1
                body = pos
            take = end - body
            if unicode:
                take &= ~1
                if take and 0xD8 <= os.pread(fd, 1, body + take - 1)[0] <= 0xDB:
                    take -= 2  # never part a surrogate pair
            cut = body + take
            records.append((prefix, pos, cut))
            # A continued string restarts with its options byte (8-bit or UTF-16).
            pos, used, prefix = cut, 1, (b"\x01" if unicode else b"\x00")
        size = 8 + sum(4 + len(p) + (b - a) for p, a, b in records)
        return records, size

    def write(self, out: _Sink, records: list[tuple[bytes, int, int]]) -> None:
        self._file.seek(0)
        read = self._file.read
        (_, start, end), *rest = records
        out.write(_pack_SST_HEAD(_SST_ID, 8 + end - start, self._count, self.unique))
        out.write(read(end - start))
        for prefix, start, end in rest:
            out.write(_pack_HH(_CONTINUE_ID, len(prefix) + end - start) + prefix)
            out.write(read(end - start))

    def close(self) -> None:
        self._index = None
        self._file.close()


class _Sink:
    """Gathers small writes into ~1 MiB ones (each write to a zip member is a deflate call)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _COPY_CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._out.write(b"".join(self._parts))
            self._parts, self._size = [], 0


class _RowsDeflater:
    """Deflates each sheet's row records in a background thread while later rows are still being
    made (zlib runs without the GIL), into one independent deflate segment per sheet.

    The segments are spliced into the zip member's deflate stream by finish(): a segment starts
    with no history and ends byte-aligned and not final (Z_SYNC_FLUSH), so it can follow any
    deflate data that was fully flushed (Z_FULL_FLUSH) and be followed by any."""

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
        if self._pending_size >= _COPY_CHUNK_BYTES:
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
                        compressor = zlib.compressobj(_ZIP_COMPRESS_LEVEL, zlib.DEFLATED, -15)
                        start = position
                    out = compressor.compress(item)  # type: ignore[arg-type]
                self._file.write(out)
                position += len(out)
                if item is self._END:
                    self.segments.append((start, position - start))
            except BaseException as exc:  # noqa: BLE001 (raised again by finish())
                self._error = exc


class _SplicingCompressor:
    """Takes the place of the zip member's compressor (zipfile still computes the CRC and sizes
    from the bytes written, and writes the headers): deflates what finish() writes, except while
    splicing, when the bytes written are only counted and a pre-compressed segment goes out."""

    def __init__(self) -> None:
        self._main = zlib.compressobj(_ZIP_COMPRESS_LEVEL, zlib.DEFLATED, -15)
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
        sheet.first_used_col, sheet.last_used_col = 0, _COLUMNS - 1
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
        self._style = _text_style()
        self._book: xlwt.Workbook | None = _new_workbook()
        self._templates = _row_templates(self._book.add_style(self._style))
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
            self._sst = _SharedStrings(temp_dir)
            self._deflater = _RowsDeflater(temp_dir)
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
            if lengths.count(_COLUMNS) != len(lengths):
                bad = next(i for i, n in enumerate(lengths) if n != _COLUMNS)
                self._write_chunk(chunk[:bad])
                raise ValueError(f"a row has {_COLUMNS} values, got {lengths[bad]}: {chunk[bad]!r}")
            self._write_chunk(chunk)
        return self._total

    def write_columns(self, columns: Sequence[Sequence[object]]) -> int:
        """Appends rows given as columns: (targets, statuses, outputs, error_codes, error_msgs), all of
        one length; returns the total so far. The same as write_rows(zip(*columns)), without a
        tuple per row (the worker hands over its database pages this way)."""
        self._check_open()
        if len(columns) != _COLUMNS:
            raise ValueError(f"rows have {_COLUMNS} columns, got {len(columns)}")
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
        rows = _row_indexes(first_row, len(packed[0]))
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

        before = b"".join(record(name) for name in _BOOK_BEFORE)
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
                splicer: _SplicingCompressor | None = None
                if _SPLICE_ROWS and getattr(member, "_compressor", None) is not None:  # zipfile's private hook
                    splicer = member._compressor = _SplicingCompressor()
                out = _Sink(member)
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
                        data = read(min(left, _COPY_CHUNK_BYTES))
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
        info._compresslevel = _ZIP_COMPRESS_LEVEL  # type: ignore[attr-defined]
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


def _all_clean(cells: list[object]) -> bool:
    """True when every cell is a str that cell_text() would keep as it is (checked in bulk)."""
    try:
        joined = "".join(cells)  # type: ignore[arg-type]
    except TypeError:  # None, numbers, ...: convert them one by one
        return False
    # Printable text has no control characters and no surrogates (the common case, and faster
    # to check than the pattern).
    if not joined.isprintable() and _UNSTORABLE.search(joined):
        return False
    # cell_text() keeps any text of at most MAX_CELL_CHARS // 2 characters without counting.
    return len(joined) * 2 <= MAX_CELL_CHARS or max(map(len, cells)) * 2 <= MAX_CELL_CHARS  # type: ignore[arg-type]


def reference_xls(rows: Iterable[Sequence[object]], stream: IO[bytes]) -> int:
    """The plain way: xlwt's Worksheet.write() per cell, then Workbook.save(). The same sheets,
    header, style and cell values as XlsZipWriter (which must give the same bytes, see
    tests/test_xls_fast.py); its speed and memory are the benchmark's baseline."""
    book = _new_workbook()
    style = _text_style()
    sheets = 0
    total = 0

    def add_sheet() -> xlwt.Worksheet:
        nonlocal sheets
        sheet = book.add_sheet(sheet_name(sheets))
        sheets += 1
        for col, title in enumerate(HEADER):
            sheet.write(0, col, title, style)
        return sheet

    sheet, rowx = add_sheet(), 0
    for row in rows:
        if len(row) != _COLUMNS:
            raise ValueError(f"a row has {_COLUMNS} values, got {len(row)}: {row!r}")
        if rowx == ROWS_PER_SHEET:
            sheet, rowx = add_sheet(), 0
        rowx += 1
        for col, value in enumerate(row):
            sheet.write(rowx, col, cell_text(value), style)
        total += 1
    book.save(stream)
    return total


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
