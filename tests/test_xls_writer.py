"""Tests for the .xls-in-.zip writer, against real xlwt output read back with xlrd."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import xlrd
import xlwt

from iotda_export_server.runner.xls import (
    HEADER,
    MAX_CELL_CHARS,
    ROWS_PER_SHEET,
    TRUNCATION_MARKER,
    XlsZipWriter,
    cell_text,
    sheet_name,
)

INNER = "export-0123456789abcdef01234567.xls"


def write_export(path: Path, rows: Sequence[Sequence[object]], inner: str = INNER) -> int:
    with XlsZipWriter(path, inner) as writer:
        writer.write_rows(rows)
        return writer.finish()


def open_export(path: Path, inner: str = INNER, **kwargs: object) -> xlrd.book.Book:
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [inner]
        data = archive.read(inner)
    return xlrd.open_workbook(file_contents=data, **kwargs)


def assert_text_cell(cell: xlrd.sheet.Cell, expected: str) -> None:
    if expected:
        assert (cell.ctype, cell.value) == (xlrd.XL_CELL_TEXT, expected)
    else:
        # An empty string is written as a blank cell, not a zero-length string record (which
        # xlrd would read as XL_CELL_TEXT ""); without formatting_info xlrd skips blank
        # records, so it reads as an empty cell.
        assert (cell.ctype, cell.value) == (xlrd.XL_CELL_EMPTY, "")


def mixed_rows(n: int) -> list[tuple[object, ...]]:
    values: list[object] = [
        "=1+1", "0012", "1e5", "TRUE", "123", "-0", "", None, 123, 4.5, True,
        "设备离线", "Ünïcødé ñ", "emoji 😀 ok", "  padded  ", "tab\there\nline\r\nend",
        "'quoted", "@SUM(A1)", "+1", "#N/A",
    ]
    return [
        (f"device-{i:05d}", values[i % len(values)], values[(i * 7) % len(values)],
         values[(i * 3) % len(values)] if i % 5 else None, f"msg {i} {values[i % 11]}")
        for i in range(n)
    ]


def test_round_trip_every_cell_is_text(tmp_path: Path) -> None:
    rows = mixed_rows(2000)
    path = tmp_path / "out.zip"

    assert write_export(path, rows) == 2000

    book = open_export(path)
    assert book.sheet_names() == ["task_details"]
    sheet = book.sheet_by_index(0)
    assert sheet.nrows == 2001
    assert [(c.ctype, c.value) for c in sheet.row(0)] == [(xlrd.XL_CELL_TEXT, h) for h in HEADER]
    for rowx, row in enumerate(rows, start=1):
        cells = sheet.row(rowx)
        assert len(cells) == len(HEADER)
        for cell, value in zip(cells, row):
            assert_text_cell(cell, cell_text(value))
    # Spot checks that would break if values were typed by xlwt (numbers, booleans, None).
    assert sheet.cell(1, 1).value == "=1+1"
    assert sheet.cell(1 + 8, 1).value == "123"
    assert sheet.cell(1 + 10, 1).value == "True"


def test_one_text_style_for_all_cells(tmp_path: Path) -> None:
    path = tmp_path / "out.zip"
    write_export(path, mixed_rows(50))

    book = open_export(path, formatting_info=True)
    sheet = book.sheet_by_index(0)
    xf_indexes = {sheet.cell_xf_index(r, c) for r in range(sheet.nrows) for c in range(sheet.ncols)}
    assert len(xf_indexes) == 1
    (xf_index,) = xf_indexes
    assert book.format_map[book.xf_list[xf_index].format_key].format_str == "@"
    # With formatting_info, the empty strings show up as (text-styled) blank cells.
    assert sheet.cell(8, 1).ctype == xlrd.XL_CELL_BLANK


def test_zero_rows_gives_header_only_sheet(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    assert write_export(path, []) == 0

    book = open_export(path)
    assert book.sheet_names() == ["task_details"]
    sheet = book.sheet_by_index(0)
    assert sheet.nrows == 1
    assert sheet.row_values(0) == list(HEADER)


def test_rollover_to_second_sheet(tmp_path: Path) -> None:
    total = ROWS_PER_SHEET + 5
    path = tmp_path / "big.zip"
    with XlsZipWriter(path, INNER) as writer:
        # Several calls, one of them crossing the sheet boundary, to check the running total.
        assert writer.write_rows((str(i), "", "", "", "") for i in range(ROWS_PER_SHEET - 2)) == (
            ROWS_PER_SHEET - 2
        )
        assert writer.write_rows((str(i), "", "", "", "") for i in range(ROWS_PER_SHEET - 2, total)) == total
        assert writer.finish() == total

    book = open_export(path)
    assert book.sheet_names() == [sheet_name(0), sheet_name(1)] == ["task_details", "task_details_2"]
    first, second = book.sheet_by_index(0), book.sheet_by_index(1)
    assert first.nrows == 65536
    assert second.nrows == 1 + 5
    assert first.row_values(0) == second.row_values(0) == list(HEADER)
    assert first.col_values(0, 1) == [str(i) for i in range(ROWS_PER_SHEET)]
    assert second.col_values(0, 1) == [str(i) for i in range(ROWS_PER_SHEET, total)]
    assert all(ctype == xlrd.XL_CELL_TEXT for ctype in second.col_types(0))


def test_sheet_names() -> None:
    assert sheet_name(0) == "task_details"
    assert sheet_name(1) == "task_details_2"
    assert sheet_name(41) == "task_details_42"
    for index in (0, 1, 9, 10**6):
        assert len(sheet_name(index)) <= 31
        assert xlwt.Utils.valid_sheet_name(sheet_name(index))
    with pytest.raises(ValueError):
        sheet_name(-1)


def test_truncation(tmp_path: Path) -> None:
    long_text = "".join(chr(ord("a") + i % 26) for i in range(40_000))
    exact = "x" * MAX_CELL_CHARS
    path = tmp_path / "long.zip"
    write_export(path, [(long_text, exact, "y" * (MAX_CELL_CHARS + 1), "", "")])

    sheet = open_export(path).sheet_by_index(0)
    cut = sheet.cell_value(1, 0)
    assert len(cut) == MAX_CELL_CHARS
    assert cut.endswith(TRUNCATION_MARKER)
    assert cut == long_text[: MAX_CELL_CHARS - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    assert sheet.cell_value(1, 1) == exact
    assert len(sheet.cell_value(1, 2)) == MAX_CELL_CHARS
    assert sheet.cell_value(1, 2).endswith(TRUNCATION_MARKER)


def test_truncation_counts_utf16_units_and_keeps_pairs_whole() -> None:
    # The format's limit is in UTF-16 code units: an emoji is two of them.
    def units(text: str) -> int:
        return len(text.encode("utf-16-le")) // 2

    budget = MAX_CELL_CHARS - units(TRUNCATION_MARKER)
    assert budget % 2 == 1  # so all-emoji text cannot fill the budget exactly
    odd = cell_text("😀" * 20_000)  # the cut falls inside an emoji: it is dropped whole
    assert units(odd) == MAX_CELL_CHARS - 1
    assert odd == "😀" * (budget // 2) + TRUNCATION_MARKER

    even = cell_text("a" + "😀" * 20_000)
    assert units(even) == MAX_CELL_CHARS
    assert even == "a" + "😀" * (budget // 2) + TRUNCATION_MARKER
    assert even.encode("utf-16-le")  # no lone surrogate left

    fits = "😀" * (MAX_CELL_CHARS // 2) + "a"  # exactly 32,767 units
    assert cell_text(fits) == fits


def test_cell_text_conversions() -> None:
    assert cell_text(None) == ""
    assert cell_text("") == ""
    assert cell_text("=1+1") == "=1+1"
    assert cell_text(123) == "123"
    assert cell_text(1e5) == "100000.0"
    assert cell_text(False) == "False"
    assert cell_text("a\x00b\x01c\x08\x0b\x0c\x1fd\te\nf\rg\x7f") == "abcd\te\nf\rg\x7f"
    assert cell_text("x\ud800y\udfff") == "x\ufffdy\ufffd"
    assert cell_text("\ud83d\ude00") == "😀"  # a split pair is joined, not replaced
    assert cell_text("\ud83d\x00\ude00") == "\ufffd\ufffd"


def test_control_chars_and_lone_surrogates_are_sanitised(tmp_path: Path) -> None:
    dirty = ("dev\x00ice", "Fail\x1b", "out\ud800put", "\x07E01", "line1\nline2\ttab\r")
    path = tmp_path / "dirty.zip"
    write_export(path, [dirty])

    sheet = open_export(path).sheet_by_index(0)
    assert sheet.row_values(1) == ["device", "Fail", "out\ufffdput", "E01", "line1\nline2\ttab\r"]


def test_emoji_across_shared_string_records(tmp_path: Path) -> None:
    # Strings long enough to cross the shared-string table's ~8 KiB records at every
    # alignment; a surrogate pair split across two records makes xlrd reject the file.
    rows = [("x" * k + "😀" * 3000, "😀", "é" * k, "", "") for k in range(8)]
    path = tmp_path / "emoji.zip"
    write_export(path, rows)

    sheet = open_export(path).sheet_by_index(0)
    for rowx, row in enumerate(rows, start=1):
        for cell, value in zip(sheet.row(rowx), row):
            assert_text_cell(cell, cell_text(value))


def test_output_is_deterministic(tmp_path: Path) -> None:
    rows = mixed_rows(300)
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    write_export(first, rows)
    write_export(second, rows)
    assert first.read_bytes() == second.read_bytes()

    with zipfile.ZipFile(first) as archive:
        (info,) = archive.infolist()
        assert archive.testzip() is None  # CRC matches
    assert info.date_time == (1980, 1, 1, 0, 0, 0)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert info.create_system == 3
    assert stat.S_IMODE(info.external_attr >> 16) == 0o600


def test_exception_in_context_manager_removes_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.zip"
    with pytest.raises(RuntimeError, match="boom"):
        with XlsZipWriter(path, INNER) as writer:
            writer.write_rows(mixed_rows(10))
            assert path.exists()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            raise RuntimeError("boom")
    assert not path.exists()
    writer.abort()  # idempotent
    with pytest.raises(RuntimeError):
        writer.write_rows(mixed_rows(1))


def test_abort_and_leaving_without_finish(tmp_path: Path) -> None:
    path = tmp_path / "aborted.zip"
    writer = XlsZipWriter(path, INNER)
    writer.write_rows(mixed_rows(3))
    writer.abort()
    writer.abort()
    assert not path.exists()
    with pytest.raises(RuntimeError):
        writer.finish()

    with XlsZipWriter(path, INNER) as writer:
        writer.write_rows(mixed_rows(3))
    assert not path.exists()  # no finish(): nothing half-written is left behind


def test_finished_file_mode_and_kept_after_exception(tmp_path: Path) -> None:
    path = tmp_path / "done.zip"
    path.write_bytes(b"stale leftover")
    path.chmod(0o644)  # a leftover's mode must not survive
    with pytest.raises(KeyError):
        with XlsZipWriter(path, INNER) as writer:
            writer.write_rows(mixed_rows(5))
            writer.finish()
            raise KeyError("after finish")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert open_export(path).sheet_by_index(0).nrows == 6
    with pytest.raises(RuntimeError):
        writer.finish()


def test_bad_rows_and_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        XlsZipWriter(tmp_path / "x.zip", "dir/export.xls")
    assert not (tmp_path / "x.zip").exists()

    path = tmp_path / "short.zip"
    with XlsZipWriter(path, INNER) as writer:
        with pytest.raises(ValueError):
            writer.write_rows([("only", "four", "values", "here")])
        # The writer is still usable: the bad row wrote nothing.
        assert writer.write_rows([("a", "b", "c", "d", "e")]) == 1
        writer.finish()
    sheet = open_export(path).sheet_by_index(0)
    assert sheet.row_values(1) == ["a", "b", "c", "d", "e"]


def test_large_workbook_spools_to_disk_and_zips(tmp_path: Path) -> None:
    # Beyond the in-memory spool size the .xls is staged on disk; the zip must be the same.
    blob = "z" * 30_000
    rows = [(f"d{i}", blob + str(i), "", "", "") for i in range(400)]  # ~12 MB of text
    path = tmp_path / "spooled.zip"
    write_export(path, rows)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        xls = archive.read(INNER)
    sheet = xlrd.open_workbook(file_contents=xls).sheet_by_index(0)
    assert sheet.nrows == 401
    assert sheet.cell_value(400, 1) == blob + "399"
    assert io.BytesIO(xls).read(8) == bytes.fromhex("d0cf11e0a1b11ae1")  # OLE2 signature
    assert not [p for p in os.listdir(tmp_path) if p != "spooled.zip"]  # no staging leftovers
