"""The plain way to write the same .xls: xlwt's Worksheet.write() per cell, then Workbook.save().

For tests and benchmarks only; the server never imports it. XlsZipWriter reproduces its bytes (the
tests compare the two byte for byte) and the benchmarks measure it as the baseline; it holds the
whole workbook in memory and costs ~6 µs of Python per cell, which is why the server does not use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO

import xlwt

from .cells import COLUMNS, HEADER, ROWS_PER_SHEET, cell_text, sheet_name
from .records import new_workbook, text_style


def reference_xls(rows: Iterable[Sequence[object]], stream: IO[bytes]) -> int:
    """The plain way: xlwt's Worksheet.write() per cell, then Workbook.save(). The same sheets,
    header, style and cell values as XlsZipWriter (which must give the same bytes, see
    tests/test_xls_fast.py); its speed and memory are the benchmark's baseline."""
    book = new_workbook()
    style = text_style()
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
        if len(row) != COLUMNS:
            raise ValueError(f"a row has {COLUMNS} values, got {len(row)}: {row!r}")
        if rowx == ROWS_PER_SHEET:
            sheet, rowx = add_sheet(), 0
        rowx += 1
        for col, value in enumerate(row):
            sheet.write(rowx, col, cell_text(value), style)
        total += 1
    book.save(stream)
    return total
