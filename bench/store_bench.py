"""The stores side by side (issue 14): the same export and the same ingest on PostgreSQL and on
SQLite, interleaved in one run, through the real server and its real worker process.

- exports, create -> Success: one server on each store (one worker process each), the same seeded
  rows in both; runs alternate between the stores (each run a re-run of the store's one export);
  the ratio is SQLite's time / PostgreSQL's (1.0x: as fast), the median of the pairs' ratios. The
  two stores' files must hold the same xls bytes.
- the peak RSS of the PostgreSQL worker process (VmHWM: the most it held over all its runs).
- ingest: seeding the batch task (domain/batches.py seed_batch_task, what `iotda-export seed` runs)
  and RecordSubtaskResults through the domain (BatchService.record_results, full calls of 10,000
  new results, then the same targets updated), in rows/s on each store.

PostgreSQL is the machine's (tests/pg_support.py: a database of its own, dropped at the end).
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import sys
import time
import zipfile
from dataclasses import dataclass

from bench.common import ROOT, median
from bench.export_bench import Figure

sys.path.insert(0, str(ROOT / "tests"))
import pg_support as ps  # noqa: E402

STORES = ("sqlite", "postgresql")


@dataclass
class _Side:
    name: str
    server: object
    client: object
    task_id: str
    seed_seconds: float
    export_task_id: str | None = None


def _open(base: str, name: str, rows: int, db) -> _Side:
    from iotda_export_server.config import FilesConfig
    from iotda_export_server.domain.batches import seed_batch_task
    from iotda_export_server.store import open_store

    from bench.server import Client, ServerThread

    data_dir = os.path.join(base, name)
    config = {}
    if db is not None:
        open_store(os.path.join(base, "migrate"), db.url, migrate=True).close()
        config = {"database": db.url, "files": FilesConfig(dir=os.path.join(base, f"{name}-files"))}
    server = ServerThread(data_dir, workers=1, **config)
    client = Client(server, project_id="c" * 32)
    started = time.perf_counter()
    task_id = seed_batch_task(server.store, client.project_id, "", rows, seed=41)  # the same rows in both
    return _Side(name, server, client, task_id, time.perf_counter() - started)


def _export_once(side: _Side) -> float:
    start = time.perf_counter()
    created = side.client.create(side.task_id)  # the same conditions each run: a re-run
    status = None
    for event in side.client.watch(created.export_task_id):
        status = event.export_task.status
        if status in ("Success", "Failed"):
            break
    wall = time.perf_counter() - start
    if status != "Success":
        raise RuntimeError(f"{side.name} export ended {status}")
    side.export_task_id = created.export_task_id
    return wall


def _xls_sha256(side: _Side) -> str:
    with zipfile.ZipFile(io.BytesIO(side.client.download(side.export_task_id))) as archive:
        return hashlib.sha256(archive.read(archive.namelist()[0])).hexdigest()


def _worker_vmhwm_mb(side: _Side) -> float:
    from bench.common import vmhwm_kb

    (process,) = side.server.server.supervisor.processes
    return vmhwm_kb(process.pid) / 1024


def exports(base: str, rows: int, runs: int, goal_ratio: float | None = None,
            rss_limit_mb: float | None = None) -> list[Figure]:
    """create -> Success of a `rows`-row export on each store, interleaved; with rss_limit_mb also
    the PostgreSQL worker's peak RSS against the SQLite worker's."""
    db = ps.TestDatabase().create()
    sides: dict[str, _Side] = {}
    try:
        for name in STORES:
            sides[name] = _open(os.path.join(base, f"stores-{rows}"), name, rows, db if name == "postgresql" else None)
        time.sleep(1.0)  # the worker processes are up and idle
        walls: dict[str, list[float]] = {name: [] for name in STORES}
        for i in range(runs):
            for name in (STORES if i % 2 == 0 else STORES[::-1]):
                walls[name].append(_export_once(sides[name]))
        same = _xls_sha256(sides["sqlite"]) == _xls_sha256(sides["postgresql"])
        rss = {name: _worker_vmhwm_mb(side) for name, side in sides.items()}
        seeds = {name: side.seed_seconds for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.client.close()
            side.server.stop()
        db.drop()
    ratios = [s / p for s, p in zip(walls["sqlite"], walls["postgresql"])]
    ratio = median(ratios)
    pg, sq = median(walls["postgresql"]), median(walls["sqlite"])
    notes = [f"per-run ratios {', '.join(f'{r:.2f}' for r in ratios)}; PostgreSQL walls"
             f" {', '.join(f'{w:.2f}' for w in walls['postgresql'])} s, SQLite walls"
             f" {', '.join(f'{w:.2f}' for w in walls['sqlite'])} s; runs alternate between the stores, one"
             f" server and one worker process each; the two files' xls {'identical' if same else 'DIFFERENT'}"]
    figures = [Figure(
        f"{rows:,}-row export, create -> Success, PostgreSQL vs SQLite", f"PostgreSQL {pg:.2f} s",
        f"SQLite: {sq:.2f} s", f"{ratio:.2f}x SQLite's speed (median of the runs' ratios)",
        f">= {goal_ratio}x" if goal_ratio else "-", (ratio >= goal_ratio and same) if goal_ratio else None, notes)]
    if rss_limit_mb is not None:
        figures.append(Figure(
            f"peak RSS of the PostgreSQL worker process, {rows:,}-row exports", f"{rss['postgresql']:.0f} MB",
            f"the SQLite worker, same exports: {rss['sqlite']:.0f} MB",
            f"{rss['postgresql'] / rss['sqlite']:.2f}x", f"<= {rss_limit_mb:.0f} MB", rss["postgresql"] <= rss_limit_mb,
            [f"VmHWM of the real worker process (spawned by the server) after {runs} exports; seeding these"
             f" {rows:,} rows in-process took {seeds['postgresql']:.1f} s on PostgreSQL, {seeds['sqlite']:.1f} s"
             " on SQLite"]))
    return figures


def _ingest_run(store, rows: int) -> tuple[float, float]:
    """Seconds of seeding `rows` sub-tasks, and rows/s of RecordSubtaskResults (new, then updated)."""
    from iotda_export_server.app import add_principal
    from iotda_export_server.domain import rules
    from iotda_export_server.domain.batches import BatchService, CreateBatchRequest, SubtaskResult, seed_batch_task
    from iotda_export_server.domain.model import Caller

    name = f"ingest-{secrets.token_hex(4)}"
    add_principal(store, name, secrets.token_hex(16))
    principal = store.reader().principal_by("user", name)
    caller = Caller(principal=principal, project_id=principal.project_id, instance_id="")
    started = time.perf_counter()
    seed_batch_task(store, caller.project_id, "", rows, seed=43)
    seed_seconds = time.perf_counter() - started
    service = BatchService(store)
    task_id = service.create(caller, CreateBatchRequest(
        app_id="", task_name="ingest", task_type="createCommands", task_mode="", need_confirm=False,
        task_ext_info=None, targets=[], targets_filter={"group_ids": ["g1"]}, document=None, task_policy=None,
        document_source="")).task_id
    per_call = rules.MAX_RECORDED_RESULTS_PER_CALL
    calls = [[SubtaskResult(f"device_{start + i:07d}", "Success", "upgrade finished, version 1.2.3", "", "")
              for i in range(per_call)] for start in range(0, rules.MAX_BATCH_TARGETS, per_call)]
    updates = [[SubtaskResult(r.target, "Fail", "", "IOTDA.014016", "Device is offline.") for r in call]
               for call in calls]
    started = time.perf_counter()
    for call in calls + updates:
        service.record_results(caller, task_id, call)
    recorded = sum(len(c) for c in calls + updates) / (time.perf_counter() - started)
    return seed_seconds, recorded


def ingest(base: str, seed_rows: int, runs: int) -> list[Figure]:
    from iotda_export_server.store import open_store

    seeded: dict[str, list[float]] = {name: [] for name in STORES}
    recorded: dict[str, list[float]] = {name: [] for name in STORES}
    os.makedirs(os.path.join(base, "ingest"))
    db = ps.TestDatabase().create()
    stores = {}
    try:
        stores["sqlite"] = open_store(os.path.join(base, "ingest"))
        stores["postgresql"] = open_store(os.path.join(base, "ingest"), db.url, migrate=True)
        for i in range(runs):
            for name in (STORES if i % 2 == 0 else STORES[::-1]):
                seconds, rate = _ingest_run(stores[name], seed_rows)
                seeded[name].append(seed_rows / seconds)
                recorded[name].append(rate)
    finally:
        for store in stores.values():
            store.close()
        db.drop()
    seed_ratios = [p / s for p, s in zip(seeded["postgresql"], seeded["sqlite"])]
    record_ratios = [p / s for p, s in zip(recorded["postgresql"], recorded["sqlite"])]

    def runs_of(values: dict[str, list[float]]) -> str:
        return "; ".join(f"{name} {', '.join(f'{v:,.0f}' for v in values[name])} rows/s" for name in STORES)

    return [
        Figure(f"seeding {seed_rows:,} sub-tasks (iotda-export seed), PostgreSQL vs SQLite",
               f"PostgreSQL {median(seeded['postgresql']):,.0f} rows/s",
               f"SQLite: {median(seeded['sqlite']):,.0f} rows/s",
               f"{median(seed_ratios):.2f}x (median of the runs' ratios)", ">= 1.0x (no slower)",
               median(seed_ratios) >= 1.0,
               [f"per-run ratios {', '.join(f'{r:.2f}' for r in seed_ratios)}; {runs_of(seeded)}; seed_batch_task"
                " in-process (rows generated in Python, the same for both), PostgreSQL through COPY"]),
        Figure("RecordSubtaskResults ingest, 30,000 new results then 30,000 updates in calls of 10,000",
               f"PostgreSQL {median(recorded['postgresql']):,.0f} rows/s",
               f"SQLite: {median(recorded['sqlite']):,.0f} rows/s",
               f"{median(record_ratios):.2f}x (median of the runs' ratios)", "-", None,
               [f"per-run ratios {', '.join(f'{r:.2f}' for r in record_ratios)}; {runs_of(recorded)}; through the"
                " domain (BatchService.record_results: validation, the target checks, the 30,000 cap), no RPC;"
                " PostgreSQL through COPY into a temporary table and one INSERT ... ON CONFLICT"]),
    ]
