"""Writes sub-task result rows into an .xls workbook packed in a .zip.

The .xls (BIFF8) format has hard limits that xlwt enforces by raising mid-export, so the data
is shaped to fit instead (cells.py): cells are cut at 32,767 characters, characters the format
cannot hold are replaced or dropped, and rows spill over onto further sheets after 65,535 data
rows. Every cell is written as a string record so that values such as "=1+1", "0012" or "1e5"
are never turned into formulas or numbers by a spreadsheet. The output is byte-for-byte
deterministic for the same rows (no timestamps, fixed zip member metadata), which keeps retries
and tests comparable.

How it is fast and small (bench/RESULTS.md has the figures): XlsZipWriter (writer.py) lets xlwt
(pinned at 1.3.0, checked at import in records.py) make every record except the cells and the
shared-string table, and makes those two itself, laid out byte for byte as xlwt lays them out:

- records.py: a page of rows becomes its ROW + LABELSST/BLANK/MULBLANK records with C-level
  loops only (one `bytes %` template per pattern of empty cells);
- shared_strings.py: the shared-string table keeps one dict entry per distinct string, its
  strings' bytes in a temporary file, cut into SST/CONTINUE records at finish() by xlwt's rules
  (plus the surrogate-pair fix);
- deflate.py: the rows are deflated by a background thread into one segment per sheet, which
  finish() splices into the zip member's deflate stream;
- writer.py: finish() streams the compound document into the zip member: the workbook is never
  in memory.

reference.py's `reference_xls()` is the plain way (Worksheet.write() per cell, Workbook.save()),
for tests and benchmarks only: the tests check that both give the same .xls bytes for the same
rows. The zip around the .xls is deflated at level 1, in segments, so its bytes differ from a zip
of the same .xls made by zipfile alone.
"""

from __future__ import annotations

from .cells import HEADER, MAX_CELL_CHARS, ROWS_PER_SHEET, TRUNCATION_MARKER, cell_text, sheet_name
from .writer import XlsZipWriter

__all__ = [
    "HEADER",
    "MAX_CELL_CHARS",
    "ROWS_PER_SHEET",
    "TRUNCATION_MARKER",
    "XlsZipWriter",
    "cell_text",
    "sheet_name",
]
