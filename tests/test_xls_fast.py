"""The fast path of XlsZipWriter against plain xlwt: the same bytes for the same rows.

XlsZipWriter makes the cell records and the shared-string table itself and streams the file
into the zip (see the runner/xls package); reference_xls() is the plain way, Worksheet.write() per
cell and Workbook.save(). Every case here compares the two byte for byte and reads the fast
file back with xlrd, cell by cell.
"""

from __future__ import annotations

import io
import random
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
    XlsZipWriter,
    cell_text,
)
from iotda_export_server.runner.xls import records as xls_records
from iotda_export_server.runner.xls import writer as xls_writer_module
from iotda_export_server.runner.xls.reference import reference_xls

INNER = "export-fast.xls"


def fast_xls(tmp_path: Path, *pages: Sequence[Sequence[object]], columns: bool = False) -> bytes:
    path = tmp_path / f"fast-{random.random()}.zip"
    with XlsZipWriter(path, INNER) as writer:
        for page in pages:
            if columns:
                writer.write_columns(list(zip(*page)) if page else [(), (), (), (), ()])
            else:
                writer.write_rows(page)
        writer.finish()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # the spliced deflate stream decodes, CRC included
        return archive.read(INNER)


def plain_xls(rows: Sequence[Sequence[object]]) -> bytes:
    out = io.BytesIO()
    reference_xls(rows, out)
    return out.getvalue()


def assert_read_back(xls: bytes, rows: Sequence[Sequence[object]]) -> None:
    book = xlrd.open_workbook(file_contents=xls)
    expected = iter(rows)
    for sheet in book.sheets():
        assert sheet.row_values(0) == list(HEADER)
        for rowx in range(1, sheet.nrows):
            row = next(expected)
            values = sheet.row_values(rowx)
            values += [""] * (len(HEADER) - len(values))  # trailing empty cells are not stored
            assert values == [cell_text(v) for v in row], f"{sheet.name} row {rowx}"
    assert next(expected, None) is None


def varied_rows(n: int, seed: int = 5) -> list[tuple[object, ...]]:
    """Mixed rows: every pattern of empty cells, duplicates, non-Latin-1 text, emoji, "%" bytes,
    values cell_text() must convert (None, numbers, control characters, lone surrogates) and
    strings long enough to cross the shared-string table's 8 KiB records or to be cut."""
    rng = random.Random(seed)
    pool = ["Success", "Fail", "Stopped", "", "", "设备离线", "Ünïcødé ñ", "emoji 😀 ok", "100%", "%s%b%%",
            "=1+1", "0012", "tab\there", "line\nbreak", "IOTDA.014111", "device offline", " "]
    odd: list[object] = [None, 12, 4.5, True, "x\x00y", "lone \ud800 surrogate", "\x07bell", ["a", 1], b"raw"]
    rows: list[tuple[object, ...]] = []
    for i in range(n):
        mask = i % 32
        row = []
        for col in range(5):
            if not mask >> col & 1:
                row.append("")
            elif col == 0:
                row.append(f"device_{rng.getrandbits(40):010x}_{i:07d}" if i % 97 else f"device_dup_{i % 3}")
            elif i % 53 == 0:
                row.append(rng.choice(odd))
            elif i % 211 == 0:
                unit = rng.choice(["a", "é", "中", "😀"])
                row.append(unit * rng.choice([4000, 8190, 8211, 9000, 20000, 40000]))
            else:
                row.append(rng.choice(pool) + (str(rng.randint(0, 30)) if rng.random() < 0.3 else ""))
        rows.append(tuple(row))
    return rows


def test_byte_identical_to_plain_xlwt_and_read_back(tmp_path: Path) -> None:
    rows = varied_rows(6000)
    fast = fast_xls(tmp_path, rows)
    assert fast == plain_xls(rows)
    assert_read_back(fast, rows)


def test_pages_columns_and_rows_give_the_same_file(tmp_path: Path) -> None:
    rows = varied_rows(3000, seed=9)
    expected = plain_xls(rows)
    assert fast_xls(tmp_path, rows[:1], rows[1:8], rows[8:2000], rows[2000:]) == expected
    assert fast_xls(tmp_path, rows[:4096], rows[4096:], columns=True) == expected
    assert fast_xls(tmp_path, *[rows[i:i + 7] for i in range(0, len(rows), 7)], columns=True) == expected


def test_rollover_to_further_sheets(tmp_path: Path) -> None:
    rows = [(f"d{i}", "Success" if i % 3 else "", "", str(i % 5) if i % 2 else "", "") for i in range(ROWS_PER_SHEET + 9)]
    fast = fast_xls(tmp_path, rows[:ROWS_PER_SHEET - 3], rows[ROWS_PER_SHEET - 3:])
    assert fast == plain_xls(rows)
    book = xlrd.open_workbook(file_contents=fast)
    assert book.sheet_names() == ["task_details", "task_details_2"]
    assert book.sheet_by_index(1).row_values(9) == ["d65543", "Success", "", "3", ""]


def test_exactly_full_sheet_and_header_only(tmp_path: Path) -> None:
    assert fast_xls(tmp_path) == plain_xls([])
    assert fast_xls(tmp_path, []) == plain_xls([])
    full = [(str(i), "", "", "", "") for i in range(ROWS_PER_SHEET)]
    book = xlrd.open_workbook(file_contents=fast_xls(tmp_path, full))
    assert book.sheet_names() == ["task_details"]  # no empty extra sheet
    assert book.sheet_by_index(0).nrows == ROWS_PER_SHEET + 1


def test_fresh_column_guess_undone_when_strings_repeat(tmp_path: Path) -> None:
    # Page 1 makes the first column look like distinct new strings (device ids); later pages
    # repeat one of them, repeat a string of another column, or repeat one within the page.
    first = [(f"t{i}", "Success", "", "", "") for i in range(50)]
    pages = [first, [("t7", "Success", "", "", ""), ("new", "", "", "", "")],
             [("Success", "x", "", "", ""), ("u1", "", "", "", "")],
             [("v1", "", "", "", ""), ("v1", "", "", "", "")],
             [(f"w{i}", "t3" if i == 5 else "", "", "", "") for i in range(20)],
             [(None, "", "", "", ""), ("z", "", "", "", "")]]
    rows = [row for page in pages for row in page]
    fast = fast_xls(tmp_path, *pages)
    assert fast == plain_xls(rows)
    assert_read_back(fast, rows)


def test_shared_string_records_at_every_boundary(tmp_path: Path) -> None:
    # Strings whose ends, headers and surrogate pairs fall on and around the 8,224-byte limit
    # of the SST and CONTINUE records, in 8-bit and UTF-16 form.
    rows = []
    for k in range(0, 40):
        rows.append(("a" * (8200 + k), "é" * (4100 + k), "😀" * (2050 + k // 2) + "x" * (k % 3), "", ""))
        rows.append(("b" * (k + 1), "中" * (k + 1), "😀", "", ""))
    rows.append(("z" * MAX_CELL_CHARS, "😀" * (MAX_CELL_CHARS // 2) + "a", "y" * (MAX_CELL_CHARS + 5), "", ""))
    fast = fast_xls(tmp_path, rows)
    assert fast == plain_xls(rows)
    assert_read_back(fast, rows)


def test_bad_rows_leave_the_rows_before(tmp_path: Path) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    path = tmp_path / "partial.zip"
    good = [("a", "b", "c", "d", "e"), ("f", None, 3, "", "")]
    with XlsZipWriter(path, INNER) as writer:
        with pytest.raises(RuntimeError, match="no text"):  # the cell's own error, not swallowed
            writer.write_rows([*good, ("g", Unprintable(), "", "", ""), ("never", "", "", "", "")])
        assert writer.rows_written == 2
        with pytest.raises(ValueError):  # a row of the wrong width
            writer.write_rows([("h", "", "", "", ""), ("short",)])
        assert writer.rows_written == 3
        with pytest.raises(ValueError):  # columns of unequal length
            writer.write_columns([("i",), ("j", "k"), (), (), ()])
        assert writer.rows_written == 3
        writer.finish()
    with zipfile.ZipFile(path) as archive:
        xls = archive.read(INNER)
    expected = [*good, ("h", "", "", "", "")]
    assert xls == plain_xls(expected)


# -- through the stores: the worker's read path on SQLite and on PostgreSQL ----------------------

# What PostgreSQL's COPY text form and its server-side cursor must carry unchanged: its escapes
# (backslash, tab, newline, carriage return), its NULL marker spelled as text, control characters.
COPY_ESCAPES = ["back\\slash", "\\N", "\\", "tab\there", "cr\rlf\n", "\\t not a tab", "\x07\x1b\x7f",
                "trailing\\"]


def stored_rows(n: int, seed: int) -> list[tuple[str, ...]]:
    """varied_rows as a store holds them: text only (PostgreSQL refuses NUL and lone surrogates,
    RecordSubtaskResults refuses NUL), unique targets, the COPY format's escapes in every column."""
    rows = []
    for i, row in enumerate(varied_rows(n, seed)):
        row = [cell_text(v) if not isinstance(v, str) or "\x00" in v or "\ud800" in v else v for v in row]
        if i % 41 == 0:
            row[i % 5] = COPY_ESCAPES[i % len(COPY_ESCAPES)]
        row[0] = f"{i:05d}{row[0]}"  # a task's targets are unique
        rows.append(tuple(row))
    return rows


def seed_rows(store, rows: Sequence[Sequence[str]], seed: int) -> str:
    """A batch task holding `rows` with ids in list order, inserted in a shuffled order (so a read
    in the table's physical order would not pass), through the store's own insert."""
    from iotda_export_server.domain.batches import seed_batch_task

    task_id = seed_batch_task(store, "p" * 32, "", 0, seed=seed)
    keyed = [(f"{seed:04x}{i + 1:020x}", *row) for i, row in enumerate(rows)]
    random.Random(seed).shuffle(keyed)
    with store.transaction() as tx:
        tx.insert_subtasks(task_id, keyed)
    return task_id


def export_from(store, task_id: str, path: Path, after_batch=None) -> bytes:
    from iotda_export_server.runner import worker

    with store.snapshot() as snap:
        with XlsZipWriter(path, INNER) as writer:
            worker.write_subtasks(snap.stream_subtask_columns(task_id, worker.READ_BATCH_ROWS), writer, after_batch)
            writer.finish()
    with zipfile.ZipFile(path) as archive:
        return archive.read(INNER)


def test_export_from_each_store_is_byte_identical_to_plain_xlwt(each_store, tmp_path: Path) -> None:
    from iotda_export_server.runner import worker

    rows = stored_rows(9000, seed=21)
    task_id = seed_rows(each_store, rows, seed=21)
    done: list[int] = []
    xls = export_from(each_store, task_id, tmp_path / "worker.zip", done.append)
    # The rows the test chose, not a read-back through the store: the same bytes as plain xlwt.
    assert xls == plain_xls(rows)
    assert_read_back(xls, rows)
    assert done == [min(k * worker.READ_BATCH_ROWS, 9000) for k in range(1, -(-9000 // worker.READ_BATCH_ROWS) + 1)]


def test_export_reads_one_snapshot_while_results_are_recorded(each_store, tmp_path: Path) -> None:
    # Rows updated and added after the export's first block do not reach its file.
    rows = stored_rows(9000, seed=22)
    task_id = seed_rows(each_store, rows, seed=22)
    late = [(f"ffff{i:020x}", f"late_{i}", "Success", "", "", "") for i in range(10)]
    changed = [(f"{22:04x}{i + 1:020x}", rows[i][0], "Fail", "changed", "E", "late") for i in (0, 5000, 8999)]

    def record_after_first_block(done: int) -> None:
        if done <= 4096:
            with each_store.transaction() as tx:
                tx.upsert_subtask_results(task_id, late + changed)

    xls = export_from(each_store, task_id, tmp_path / "snapshot.zip", record_after_first_block)
    assert xls == plain_xls(rows)
    with each_store.snapshot() as snap:  # the changes are there for the next export
        assert snap.count_subtasks(task_id) == 9010
        statuses = snap.subtask_statuses(task_id, [rows[5000][0], "late_3"])
    assert statuses == {rows[5000][0]: "Fail", "late_3": "Success"}


def test_empty_task_and_stopped_export_leave_no_cursor(each_store, tmp_path: Path) -> None:
    empty = seed_rows(each_store, [], seed=23)
    assert export_from(each_store, empty, tmp_path / "empty.zip") == plain_xls([])
    task_id = seed_rows(each_store, stored_rows(5000, seed=24), seed=24)

    class Stop(Exception):
        pass

    def stop(_done: int) -> None:
        raise Stop()

    from iotda_export_server.runner import worker
    from iotda_export_server.store.postgres import PgStore

    with each_store.snapshot() as snap:
        with XlsZipWriter(tmp_path / "stopped.zip", INNER) as writer:
            with pytest.raises(Stop):
                worker.write_subtasks(snap.stream_subtask_columns(task_id, worker.READ_BATCH_ROWS), writer, stop)
        # The same snapshot goes on after a stopped read: its cursor is gone, not left open.
        if isinstance(each_store, PgStore):
            assert snap.conn.execute("SELECT count(*) FROM pg_cursors").fetchone()[0] == 0
        assert snap.count_subtasks(task_id) == 5000


@pytest.mark.parametrize("each_store", ["postgresql"], indirect=True)
def test_postgres_snapshot_is_repeatable_read_and_read_only(each_store) -> None:
    with each_store.snapshot() as snap:
        settings = snap.conn.execute("SELECT current_setting('transaction_isolation'),"
                                  " current_setting('transaction_read_only')").fetchone()
        assert tuple(settings) == ("repeatable read", "on")


def test_zip_without_splicing_holds_the_same_xls(tmp_path: Path, monkeypatch) -> None:
    # The fallback when zipfile has no compressor hook to splice the rows' deflate segments into.
    rows = varied_rows(500, seed=13)
    spliced = fast_xls(tmp_path, rows)
    monkeypatch.setattr(xls_writer_module, "_SPLICE_ROWS", False)
    assert fast_xls(tmp_path, rows) == spliced == plain_xls(rows)


def test_only_xlwt_1_3_0() -> None:
    assert xlwt.__VERSION__ == xls_records.XLWT_VERSION == "1.3.0"
    real = xlwt.__VERSION__
    try:
        xlwt.__VERSION__ = "1.4.0"
        try:
            xls_records._check_xlwt()
        except RuntimeError as exc:
            assert "1.3.0" in str(exc)
        else:
            raise AssertionError("another xlwt version was accepted")
    finally:
        xlwt.__VERSION__ = real


@pytest.mark.parametrize("each_store", ["postgresql"], indirect=True)
def test_postgres_connection_lost_mid_read_is_store_unavailable(each_store, tmp_path: Path) -> None:
    # The export's snapshot backend terminated between blocks (a restart, a cut network): the read
    # raises StoreUnavailable (the driver's error chained to it), the one the worker leaves to the
    # lease for a retry; the read-ahead thread is gone with it.
    import threading

    import psycopg

    from iotda_export_server.domain.errors import StoreUnavailable
    from iotda_export_server.runner import worker

    import pg_support as ps

    task_id = seed_rows(each_store, stored_rows(20_000, seed=25), seed=25)
    with pytest.raises(StoreUnavailable) as raised:  # out of the snapshot, as in run_export
        with each_store.snapshot() as snap:
            pid = snap.conn.execute("SELECT pg_backend_pid()").fetchone()[0]

            def cut_after_first_block(done: int) -> None:
                if done == worker.READ_BATCH_ROWS:
                    with ps.admin_connect() as admin:
                        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]

            with XlsZipWriter(tmp_path / "cut.zip", INNER) as writer:
                worker.write_subtasks(snap.stream_subtask_columns(task_id, worker.READ_BATCH_ROWS), writer,
                                      cut_after_first_block)
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    assert not raised.value.busy
    assert not [t for t in threading.enumerate() if t.name == "subtask-read-ahead"]
