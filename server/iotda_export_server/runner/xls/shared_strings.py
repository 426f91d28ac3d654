"""The shared-string table (SST): every distinct cell text once, cells refer to it by index.

Two tables live here, laid out alike. PairSafeSharedStringTable is xlwt's own table, except that
it never splits a surrogate pair between records; records.new_workbook() installs it in every
xlwt workbook (so reference.py's plain xlwt files use it). SharedStrings is the fast writer's:
it makes the same records without xlwt, with the strings' bytes in a temporary file and one dict
entry per distinct string in memory, since the table is the largest structure of an export.
"""

from __future__ import annotations

import os
import struct
import tempfile
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import is_
from typing import Final

from xlwt import BIFFRecords
from xlwt.UnicodeUtils import upack2

from .cells import all_clean
from .deflate import Sink

_pack_I = struct.Struct("<I").pack
_pack_HB = struct.Struct("<HB").pack
_pack_HH = struct.Struct("<HH").pack
_pack_SST_HEAD = struct.Struct("<2HII").pack

_SST_ID: Final = 0x00FC
_CONTINUE_ID: Final = 0x003C
# xlwt fills each SST/CONTINUE record up to this many bytes of data.
_SST_PIECE_MAX: Final = 0x2020


def _is_high_surrogate(utf16le: bytes, pos: int) -> bool:
    return 0xD8 <= utf16le[pos + 1] <= 0xDB


class PairSafeSharedStringTable(BIFFRecords.SharedStringTable):  # type: ignore[misc]
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


class _Latin1Headers(dict):  # type: ignore[type-arg]
    """upack2()'s header of an 8-bit string, by its length (each made once)."""

    def __missing__(self, length: int) -> bytes:
        header = self[length] = _pack_HB(length, 0)
        return header


_latin1_headers = _Latin1Headers()


class SharedStrings:
    """xlwt's shared-string table (SST), with its strings' bytes on disk.

    In memory: one dict entry per distinct string (str -> its packed 4-byte index) and an
    array of 8-byte offsets. The records are laid out as by PairSafeSharedStringTable (xlwt's
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
            if not converted and not all_clean(new):
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
        if not converted and not all_clean(column):  # type: ignore[arg-type]
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

    def write(self, out: Sink, records: list[tuple[bytes, int, int]]) -> None:
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
