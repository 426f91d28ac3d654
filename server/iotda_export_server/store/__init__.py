"""State: SQLite under the data directory (the embedded default) or a shared PostgreSQL, both
keeping the store contract (store/contract.py)."""

from __future__ import annotations

import os
import pathlib

from .contract import Store


def is_postgres(database: str | None) -> bool:
    return bool(database) and database.startswith(("postgresql://", "postgres://"))


def open_store(data_dir: str | os.PathLike, database: str | None = None, migrate: bool = True) -> Store:
    """SQLite in `data_dir` (migrated on open: the embedded default needs no set-up step), or the
    PostgreSQL at `database`, whose schema `iotda-export migrate` applies and every process checks."""
    if is_postgres(database):
        from .postgres import PgStore
        store = PgStore(database)
        if migrate:
            store.migrate()
        else:
            store.check_schema()
        return store
    if database:
        raise ValueError(f"unsupported database {database!r}: give a postgresql:// URL, or none for SQLite")
    from .sqlite import DB_FILE_NAME, SqliteStore
    store = SqliteStore(pathlib.Path(data_dir) / DB_FILE_NAME)
    store.migrate()
    return store
