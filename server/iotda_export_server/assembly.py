"""The one assembly of what exports run on: the store, the result files and the jobs over them,
opened the same way by `serve`, `worker` and every export worker process (so they cannot drift
apart). It imports nothing of the transport: the worker processes use it.
"""

from __future__ import annotations

from typing import NamedTuple

from .config import WorkerConfig
from .domain.jobs import ExportJobs
from .store import is_postgres, open_store
from .store.files import open_files


class Backend(NamedTuple):
    store: object
    files: object
    jobs: ExportJobs


def open_backend(config: WorkerConfig, on_change=None, on_finished=None) -> Backend:
    """Opens the state and the files `config` names. SQLite migrates itself here (its process owns
    the data directory); PostgreSQL is migrated by `iotda-export migrate` before replicas start.
    `on_change`/`on_finished` are the jobs' notices (ExportJobs)."""
    store = open_store(config.state.data_dir, config.state.database, migrate=not is_postgres(config.state.database))
    files = open_files(config.files, config.state.data_dir)
    return Backend(store, files, ExportJobs(store, files, lease_seconds=config.lease_seconds, on_change=on_change,
                                            on_finished=on_finished))
