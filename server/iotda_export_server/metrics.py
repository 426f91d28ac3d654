"""Prometheus metrics of one server process, served at /metrics on the HTTP port.

One registry per ExportServer (tests run several in one process). Names start with
`iotda_export_`; no label carries a user, project or task id (cardinality, and privacy).

- RPCs: counted by method and status code, timed by method (transport/servicers.py), under our
  names and under the conventional gRPC server names of go-grpc-prometheus (grpc_server_started_total,
  grpc_server_handled_total, grpc_server_handling_seconds; labels grpc_type unary|server_stream,
  grpc_service, grpc_method, grpc_code in its spelling: OK, InvalidArgument, Canceled, ...), so
  dashboards made for any gRPC server work here too.
- The process: memory, CPU, open fds (ProcessCollector), the Python version (PlatformCollector) and
  the garbage collector (GCCollector), on this server's own registry.
- Refusals: quota and rate limits by reason and quota id (the same place).
- Watchers: WatchProgress streams open in this process (read from the hub at scrape time).
- Exports queued and running: read from the store at scrape time, so every replica reports the
  fleet's figures, not its own share.
- Finished export runs: duration, rows and rows/s, observed by this process for the runs its own
  workers finished (they report each one over the change-notice socket, runner/notices.py).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the gateway
from prometheus_client.core import GaugeMetricFamily

RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EXPORT_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
EXPORT_ROWS_BUCKETS = (100, 1_000, 10_000, 30_000, 65_535, 100_000, 300_000, 1_000_000, 3_000_000)
ROWS_PER_SECOND_BUCKETS = (1_000, 10_000, 25_000, 50_000, 100_000, 150_000, 200_000, 300_000)


class _ExportQueue:
    """Exports queued and running, counted in the store when scraped."""

    def __init__(self, count: Callable[[], dict[str, int]]):
        self._count = count

    def collect(self):
        family = GaugeMetricFamily("iotda_export_exports", "Export runs by state (queued, running), from the store.",
                                   labels=["state"])
        counts = self._count()
        for state in ("queued", "running"):
            family.add_metric([state], counts.get(state, 0))
        yield family


def grpc_code_label(code_name: str) -> str:
    """go-grpc-prometheus's grpc_code: Go's codes.Code names (INVALID_ARGUMENT -> InvalidArgument;
    CANCELLED -> Canceled, Go's spelling)."""
    if code_name == "CANCELLED":
        return "Canceled"
    return "OK" if code_name == "OK" else "".join(w.capitalize() for w in code_name.split("_"))


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process's own figures, on this registry (the default one is shared by every server in a
        # process, and tests run several).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        grpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter("grpc_server_started", "Total number of RPCs started on the server.",
                                    grpc_labels, registry=r)
        self.grpc_handled = Counter("grpc_server_handled", "Total number of RPCs completed on the server,"
                                    " regardless of success or failure.", [*grpc_labels, "grpc_code"], registry=r)
        self.grpc_handling_seconds = Histogram("grpc_server_handling_seconds", "Histogram of response latency"
                                               " (seconds) of gRPC that had been application-level handled by"
                                               " the server.", grpc_labels, buckets=RPC_SECONDS_BUCKETS, registry=r)
        self.rpcs = Counter("iotda_export_rpcs", "RPCs handled, by method and gRPC status code.",
                            ["method", "code"], registry=r)
        self.rpc_seconds = Histogram("iotda_export_rpc_duration_seconds",
                                     "Time to answer a unary RPC (or to end a stream), by method.",
                                     ["method"], buckets=RPC_SECONDS_BUCKETS, registry=r)
        self.refusals = Counter("iotda_export_refusals", "Calls refused by a quota or rate limit.",
                                ["reason", "quota"], registry=r)
        self.watchers = Gauge("iotda_export_watchers", "WatchProgress streams open in this process.", registry=r)
        self.export_runs = Counter("iotda_export_runs_finished", "Export runs finished by this process's workers.",
                                   ["outcome"], registry=r)
        self.export_seconds = Histogram("iotda_export_run_duration_seconds",
                                        "Export run time, claim to finished zip (successful runs).",
                                        buckets=EXPORT_SECONDS_BUCKETS, registry=r)
        self.export_rows = Histogram("iotda_export_run_rows", "Rows written per successful export run.",
                                     buckets=EXPORT_ROWS_BUCKETS, registry=r)
        self.export_rows_per_second = Histogram("iotda_export_run_rows_per_second",
                                                "Rows per second of each successful export run.",
                                                buckets=ROWS_PER_SECOND_BUCKETS, registry=r)
        self._methods: dict[tuple, tuple] = {}  # (type, service, method) -> its labelled children
        self._per_code: dict[tuple, tuple] = {}  # (type, service, method, code) -> its two counters
        self.rows_written = Counter("iotda_export_rows_written", "Rows written by successful export runs"
                                    " (rate() of it is the rows/s being exported).", registry=r)

    def rpc_started(self, grpc_type: str, service: str, method: str) -> None:
        self._per_method(grpc_type, service, method)[0].inc()

    def rpc_done(self, grpc_type: str, service: str, method: str, code_name: str, seconds: float) -> None:
        """One finished RPC, under our names and the conventional gRPC ones."""
        _, rpc_seconds, handling_seconds = self._per_method(grpc_type, service, method)
        rpc_seconds.observe(seconds)
        handling_seconds.observe(seconds)
        key = (grpc_type, service, method, code_name)
        handled = self._per_code.get(key)
        if handled is None:
            handled = self._per_code[key] = (self.rpcs.labels(method, code_name),
                                             self.grpc_handled.labels(grpc_type, service, method,
                                                                      grpc_code_label(code_name)))
        handled[0].inc()
        handled[1].inc()

    def _per_method(self, grpc_type: str, service: str, method: str) -> tuple:
        # The labelled children, looked up once: `.labels()` costs a lock and a tuple per call, and
        # every RPC touches five of them (measured: ~6 % of saturated GetExportTask throughput).
        key = (grpc_type, service, method)
        children = self._methods.get(key)
        if children is None:
            children = self._methods[key] = (self.grpc_started.labels(grpc_type, service, method),
                                             self.rpc_seconds.labels(method),
                                             self.grpc_handling_seconds.labels(grpc_type, service, method))
        return children

    def watch_hub(self, count_watchers: Callable[[], int]) -> None:
        self.watchers.set_function(count_watchers)

    def watch_store(self, count_exports: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_ExportQueue(count_exports))

    def run_finished(self, outcome: str, rows: int = 0, seconds: float = 0.0) -> None:
        self.export_runs.labels(outcome).inc()
        if outcome == "success":
            self.export_seconds.observe(seconds)
            self.export_rows.observe(rows)
            self.rows_written.inc(rows)
            if seconds > 0:
                self.export_rows_per_second.observe(rows / seconds)

    def exposition(self) -> bytes:
        """The text format (blocking: it may read the store)."""
        return generate_latest(self.registry)
