"""xlwt, pinned, and the BIFF records the fast writer makes without it.

XlsZipWriter lets xlwt make every record except the cells and the shared-string table, and makes
those itself, laid out byte for byte as xlwt 1.3.0 lays them out (pyproject.toml pins it; it is
xlwt's last release). This module checks at import that the xlwt found is that version, with the
private surface used (refusing another rather than writing other bytes); sets up the workbook both
writers start from; and holds the row and cell records as `bytes %` templates, one per pattern
of empty cells, so that a page of rows becomes records in C-level loops only.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import xlwt
from xlwt import BIFFRecords, CompoundDoc

from .cells import COLUMNS, ROWS_PER_SHEET
from .shared_strings import PairSafeSharedStringTable

# The records written here are laid out as xlwt 1.3.0 lays them out (its last release, pinned
# in pyproject.toml); another version could differ, so refuse it rather than write other bytes.
XLWT_VERSION: Final = "1.3.0"


# -- xlwt's private surface used by the writer: refuse any other version --------------------------

# Workbook.get_biff_data() of xlwt 1.3.0 writes these records, in this order, before BOUNDSHEET.
BOOK_BEFORE: Final = (
    "bof", "intf_hdr", "intf_mms", "intf_end", "write_access", "codepage", "dsf", "tabid",
    "fngroupcount", "wnd_protect", "protect", "obj_protect", "password", "prot4rev",
    "prot4rev_pass", "backup", "hide_obj", "window1", "datemode", "precision", "refresh_all",
    "bookbool", "all_fonts_num_formats_xf_styles", "palette", "useselfs",
)
_BOOK_PRIVATE: Final = (*BOOK_BEFORE, "country", "all_links", "ext_sst", "eof", "boundsheets")


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


def new_workbook() -> xlwt.Workbook:
    """An xlwt workbook whose shared-string table never splits a surrogate pair."""
    book = xlwt.Workbook()
    # The table is a private attribute of xlwt's Workbook (xlwt is pinned at 1.3.0, its last
    # release); fail loudly rather than silently write files xlrd cannot read.
    if type(getattr(book, "_Workbook__sst", None)) is not BIFFRecords.SharedStringTable:
        raise RuntimeError("unsupported xlwt version: cannot install the shared-string table")
    book._Workbook__sst = PairSafeSharedStringTable(book.encoding)
    return book


def text_style() -> xlwt.XFStyle:
    """The one style of every cell (xlwt adds an XF record per distinct style object)."""
    # The cells are string records anyway; the "@" (Text) number format also keeps a value
    # typed into the cell later in a spreadsheet as text.
    style = xlwt.XFStyle()
    style.num_format_str = "@"
    return style


# -- cell records -------------------------------------------------------------------------------

_pack_H = struct.Struct("<H").pack

_ROW_ID: Final = 0x0208
_LABELSST_ID: Final = 0x00FD
_BLANK_ID: Final = 0x0201
_MULBLANK_ID: Final = 0x00BE

# Row.get_row_biff_data() of a row with default height and format: height 0xFF (not the
# default-height flag), options "always 1" (bit 8) and the default XF 0x0F (bits 16-27).
_ROW_HEIGHT_OPTIONS: Final = 0x00FF
_ROW_OPTIONS: Final = 0x0100 | (0x0F << 16)

_row_index_bytes: list[bytes] = []


def row_indexes(first: int, count: int) -> list[bytes]:
    """The little-endian 16-bit row numbers first .. first+count-1 (a table built once)."""
    if not _row_index_bytes:
        _row_index_bytes.extend(map(_pack_H, range(ROWS_PER_SHEET + 1)))
    return _row_index_bytes[first:first + count]


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


def row_templates(xf_index: int, ncols: int = COLUMNS) -> dict[tuple[int, ...], bytes]:
    """Templates keyed by the lengths of a row's packed SST indexes (4, or 0 when empty)."""
    out = {}
    for bits in range(1 << ncols):
        filled = [bool(bits >> col & 1) for col in range(ncols)]
        out[tuple(4 if f else 0 for f in filled)] = _row_template(filled, xf_index)
    return out
