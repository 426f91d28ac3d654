"""What fits in a cell of an .xls (BIFF8) workbook, and the sheets' names.

The format has hard limits that xlwt enforces by raising mid-export, so the data is shaped to fit
instead: cells are cut at 32,767 characters, characters the format cannot hold are replaced or
dropped, and rows spill over onto further sheets after 65,535 data rows. Both writers (the fast
one in writer.py and reference.py's plain xlwt) shape every cell here, so they store the same text.
"""

from __future__ import annotations

import re
from typing import Final

HEADER: Final[tuple[str, ...]] = ("Target", "Status", "Output", "Error Code", "Error Message")
COLUMNS: Final = len(HEADER)
# The .xls format's limit per cell, counted (like the format does) in UTF-16 code units.
MAX_CELL_CHARS: Final = 32767
# Data rows per sheet; with the header row that is 65,536 rows, the format's maximum.
ROWS_PER_SHEET: Final = 65535
# Appended to a cut cell so the cut is visible; the result still fits in MAX_CELL_CHARS.
TRUNCATION_MARKER: Final = "…[truncated]"

_SHEET_BASE_NAME: Final = "task_details"

# One search finds both kinds of bad input so clean text (the common case) costs one scan.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 control characters other than tab, line feed and carriage return.
_C0_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


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


def all_clean(cells: list[object]) -> bool:
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
