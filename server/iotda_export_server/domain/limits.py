"""Per-user caps on things held open at once (WatchProgress streams, downloads), in one process.

A `ConcurrencyLimiter` counts the slots each owner holds; `acquire` refuses one more with
QuotaExceeded (RESOURCE_EXHAUSTED and a QuotaFailure on the wire) before anything is done for it.
The count lives in this process's memory: each replica caps its own streams.
"""

from __future__ import annotations

import threading

from .errors import QuotaExceeded


class Slot:
    """One held slot; `release()` gives it back (once, however often it is called)."""

    __slots__ = ("_limiter", "_owner")

    def __init__(self, limiter: "ConcurrencyLimiter", owner: str):
        self._limiter: ConcurrencyLimiter | None = limiter
        self._owner = owner

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self._owner)

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ConcurrencyLimiter:
    def __init__(self, limit: int, *, quota_id: str, what: str, error_code: str):
        if limit < 1:
            raise ValueError(f"{quota_id}: the limit must be at least 1, got {limit}")
        self.limit = limit
        self.quota_id = quota_id
        self.what = what  # e.g. "WatchProgress streams", in the refusal's message
        self.error_code = error_code
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, owner: str) -> Slot:
        with self._lock:
            held = self._held.get(owner, 0)
            if held >= self.limit:
                raise QuotaExceeded(
                    f"The user already has {self.limit} {self.what} open on this server; close one first.",
                    quota_id=self.quota_id, subject=f"user:{owner}", limit=self.limit, error_code=self.error_code)
            self._held[owner] = held + 1
        return Slot(self, owner)

    def _release(self, owner: str) -> None:
        with self._lock:
            held = self._held.get(owner, 0) - 1
            if held > 0:
                self._held[owner] = held
            else:
                self._held.pop(owner, None)

    def held(self, owner: str) -> int:
        with self._lock:
            return self._held.get(owner, 0)
