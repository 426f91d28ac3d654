"""Pages that always fit in one message.

The domain decides what a page holds: up to `limit` records (validation.paging), and no more than
rules.LIST_PAGE_BUDGET_BYTES of them once encoded. How many bytes a record takes is the caller's
(the transport renders it): it passes `item_size`. The page's marker is then its last record, so the
next call with that marker goes on exactly where this page stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from . import rules

T = TypeVar("T")


def fit(items: Sequence[T], item_size: Callable[[T], int] | None, used: int = 0,
        budget: int = rules.LIST_PAGE_BUDGET_BYTES) -> Sequence[T]:
    """The longest prefix of `items` whose sizes, after `used` bytes already in the response, stay
    within `budget`; always at least the first item (a page must move on)."""
    if item_size is None:
        return items
    total = used
    for n, item in enumerate(items):
        total += item_size(item)
        if total > budget and n > 0:
            return items[:n]
    return items
