"""Record IDs and the platform's time formats."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """24 lowercase hex: 48-bit milliseconds, 16-bit per-process counter, 32 random bits.

    Newer records get larger IDs (the platform's lists sort by ID and page by marker), across
    processes to the millisecond and within one process strictly.
    """
    global _last_ms, _counter
    with _lock:
        now = int(time.time() * 1000)
        if now <= _last_ms:
            now = _last_ms
            _counter += 1
            if _counter > 0xFFFF:  # 65,536 ids in one millisecond: borrow the next millisecond
                now += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = now
        return f"{now:012x}{_counter:04x}{os.urandom(4).hex()}"


def is_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


def now_ms() -> int:
    return int(time.time() * 1000)


def format_export_time(epoch_ms: int) -> str:
    """yyyy-MM-dd'T'HH:mm:ss.SSS'Z' (export tasks)."""
    seconds, ms = divmod(epoch_ms, 1000)
    t = time.gmtime(seconds)  # on every rendered task: a quarter of datetime + strftime's cost
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
                                                    t.tm_sec, ms)


def format_batch_time(epoch_ms: int) -> str:
    """yyyyMMdd'T'HHmmss'Z' (batch tasks)."""
    return dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
