"""The RPC figures, against `iotda-export serve` in its own process (SQLite, no workers of its own;
the bench starts the export worker processes itself when a figure needs them):

- GetExportTask p99 at a fixed offered rate while 2 exports of 300,000 rows run, vs the same with
  no export running;
- saturated GetExportTask throughput vs a bare grpc.aio echo server, the same client;
- 5,000 WatchProgress streams held on the API process: all receive the final state, RSS per
  stream, lag of the final event behind the task's end_time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, median, seed, vmrss_kb
from bench.export_bench import Figure


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["IOTDA_EXPORT_LOG_LEVEL"] = "WARNING"
    env.pop("IOTDA_EXPORT_DATABASE", None)
    return env


def _popen(*args: str, log: str | None = None) -> subprocess.Popen:
    """A child process; with `log`, its output goes to that file (a pipe nobody reads would fill)."""
    if log is None:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


def _client(*args: str, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.rpc_client", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"rpc client {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"rpc client failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Api:
    """`iotda-export serve` with no workers, and the credentials it made on its first start. With
    `certs` (a `dev-certs` directory) both ports use TLS, and `address` is https://HOST:PORT (what
    bench.rpc_client reads as: TLS, trusting $BENCH_TLS_CA)."""

    def __init__(self, data_dir: str, http: bool = False, certs: str | None = None) -> None:
        self.data_dir = data_dir
        self.log = os.path.join(data_dir, "server.log")
        tls = ["--tls-cert", os.path.join(certs, "server.crt"), "--tls-key", os.path.join(certs, "server.key")] \
            if certs else []
        # One user holds every stream of the fan-out figure: lift the per-user cap (100) above them.
        self.proc = _popen("-m", "iotda_export_server.cli", "serve", "--data-dir", data_dir,
                           "--grpc-addr", "127.0.0.1:0", "--workers", "0", "--max-watch-streams-per-user", "100000",
                           *(["--http-addr", "127.0.0.1:0"] if http else []), *tls, log=self.log)
        deadline = time.monotonic() + 60
        while True:
            text = Path(self.log).read_text(errors="replace")
            if "(gRPC" in text and (not http or "(HTTP" in text):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc)
                raise RuntimeError(f"the server did not start:\n{text[-2000:]}")
            time.sleep(0.05)
        line = next(line for line in text.splitlines() if "(gRPC" in line)
        self.address = ("https://" if certs else "") + line.split("listening on ", 1)[1].split()[0]
        self.http_port = None
        if http:
            http_line = next(line for line in text.splitlines() if "(HTTP" in line)
            self.http_port = int(http_line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
        creds = json.loads((Path(data_dir) / "credentials.json").read_text())
        self.token, self.project = creds["token"], creds["project_id"]
        self.workers: list[subprocess.Popen] = []
        from bench.rpc_client import sync_channel
        from iotda.export.v1 import export_task_pb2_grpc
        self.channel = sync_channel(self.address)
        self.stub = export_task_pb2_grpc.ExportTaskServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {self.token}"),)

    def start_workers(self, count: int) -> None:
        # Export workers as the server would spawn them; they poll for queued exports every 0.25 s.
        from iotda_export_server.config import FilesConfig, LogConfig, StateConfig, WorkerConfig
        from iotda_export_server.runner.supervisor import spawn_worker
        config = WorkerConfig(StateConfig(self.data_dir), FilesConfig().resolved(self.data_dir), LogConfig("WARNING"))
        for i in range(count):
            with open(os.path.join(self.data_dir, f"worker-{i}.log"), "ab") as out:
                self.workers.append(spawn_worker(config, f"bench-{i}", cwd=ROOT, env=_env(), stdout=out,
                                                 stderr=subprocess.STDOUT))

    def create(self, task_id: str) -> str:
        from iotda.export.v1 import export_task_pb2 as epb
        return self.stub.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=self.project, resource_type="BatchTask",
            resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=self.metadata).export_task.export_task_id

    def status(self, export_id: str) -> str:
        from iotda.export.v1 import export_task_pb2 as epb
        return self.stub.GetExportTask(epb.GetExportTaskRequest(
            project_id=self.project, export_task_id=export_id), metadata=self.metadata).export_task.status

    def wait(self, export_id: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (status := self.status(export_id)) == "Processing":
            if time.monotonic() > deadline:
                raise RuntimeError(f"export {export_id} still running")
            time.sleep(0.1)
        if status != "Success":
            raise RuntimeError(f"export {export_id} ended {status}")

    def close(self) -> None:
        self.channel.close()
        for worker in self.workers:
            _stop(worker)
        _stop(self.proc)


def hold_streams(api: Api, task_id: str, streams: int, channels: int) -> tuple[str, int, int, int, float, dict]:
    """STREAMS WatchProgress streams on a new export of `task_id`, held while it is queued (the API's
    RSS measured before and while holding them), then two workers run it. Returns (export id,
    streams opened, RSS before and holding in KiB, KiB per stream, the watch client's result)."""
    watch_id = api.create(task_id)
    time.sleep(0.5)
    before = vmrss_kb(api.proc.pid)
    watcher = _popen("-m", "bench.rpc_client", "watch", api.address, api.token, api.project, watch_id,
                     str(streams), str(channels), "120")
    assert watcher.stdout is not None
    line = watcher.stdout.readline()
    if not line.startswith("OPEN"):
        raise RuntimeError(f"watch client: {line!r} {watcher.stderr.read()[-2000:] if watcher.stderr else ''}")
    opened = int(line.split()[1])
    time.sleep(1.0)
    held = vmrss_kb(api.proc.pid)
    api.start_workers(2)
    return watch_id, opened, before, held, (held - before) / max(opened, 1), _result(watcher, 900)


def _join(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def run(base: str, smoke: bool, runs: int) -> list[Figure]:
    rows = 3_000 if smoke else 300_000
    watch_rows = 1_000 if smoke else 30_000
    streams, channels = (50, 2) if smoke else (5_000, 50)
    rate_seconds = 0.5 if smoke else 8.0
    saturate_seconds = 0.3 if smoke else 5.0
    data_dir = os.path.join(base, "rpc")
    os.makedirs(data_dir, exist_ok=True)
    api = Api(data_dir)
    echo = None
    figures: list[Figure] = []
    try:
        big = [seed(data_dir, rows, seed_value=21 + i, project_id=api.project).task_id for i in range(2)]
        small = seed(data_dir, 10, seed_value=31, project_id=api.project).task_id
        watched = seed(data_dir, watch_rows, seed_value=41, project_id=api.project).task_id

        # -- WatchProgress streams: opened on a queued export (no worker runs yet) ----------------
        watch_id, opened, before, held, per_stream, watched_result = hold_streams(api, watched, streams, channels)
        all_final = watched_result["success"] == streams and not watched_result["errors"]
        figures.append(Figure(
            f"{streams:,} WatchProgress streams on one API process",
            f"{opened:,} held, {watched_result['success']:,}/{streams:,} got Success",
            f"API RSS {before / 1024:.0f} MB idle -> {held / 1024:.0f} MB holding them", f"{per_stream:.1f} KB/stream",
            "5,000 held, all final, <= 30 KB/stream", all_final and per_stream <= 30,
            [f"{opened:,} streams had their first event ({watched_result['open_seconds']:.1f} s; the rest none"
             f" within 10 s) over {channels} connections; {watched_result['events']:,} events received;"
             f" errors {watched_result['errors']} {watched_result.get('error_codes') or ''},"
             f" unfinished {watched_result['unfinished']}"]))
        # The floor: the same client and streams against a bare grpc.aio server that only sends
        # one pre-encoded final event to every stream.
        floor_server = _popen("-m", "bench.rpc_client", "fanout-server")
        try:
            assert floor_server.stdout is not None
            floor_address = f"127.0.0.1:{json.loads(floor_server.stdout.readline())['port']}"
            floor_watcher = _popen("-m", "bench.rpc_client", "watch", floor_address, api.token, api.project, watch_id,
                                   str(streams), str(channels), "120")
            assert floor_watcher.stdout is not None
            floor_watcher.stdout.readline()  # OPEN
            time.sleep(1.0)  # as for the API: the streams settle before the event
            floor_server.send_signal(signal.SIGUSR1)
            floor = _result(floor_watcher, 300)
        finally:
            _stop(floor_server)
        figures.append(Figure(
            "WatchProgress lag of the final event behind end_time", f"p99 {watched_result['lag_p99_ms']:.0f} ms",
            f"bare grpc.aio server sending one event to the same {floor['success']:,} streams: p99"
            f" {floor['lag_p99_ms']:.0f} ms", f"{watched_result['lag_p99_ms'] / floor['lag_p99_ms']:.2f}x the floor",
            "p99 <= 250 ms", watched_result["lag_p99_ms"] <= 250,
            [f"ours p50 {watched_result['lag_p50_ms']:.0f} ms, max {watched_result['lag_max_ms']:.0f} ms; floor p50"
             f" {floor['lag_p50_ms']:.0f} ms, max {floor['lag_max_ms']:.0f} ms; over the"
             f" {watched_result['success']:,} streams that got it; end_time has ms resolution and is set by the"
             " worker when it publishes; the worker's change notice wakes the API process (the 0.2 s poll is"
             " the backstop); the client is one grpc.aio process on the same 2 cores"]))

        # -- GetExportTask p99: idle vs 2 exports running; the same for a bare echo server -------
        # The echo server is the control: what the machine itself does to a trivial RPC's tail
        # while two export processes keep both cores busy.
        echo = _popen("-m", "bench.rpc_client", "echo-server")
        assert echo.stdout is not None
        echo_address = f"127.0.0.1:{json.loads(echo.stdout.readline())['port']}"
        target = api.create(small)
        api.wait(target)
        api.start_workers(2 - len(api.workers))
        p99: dict[tuple[str, str], list[dict]] = {(w, load): [] for w in ("api", "echo") for load in ("idle", "busy")}
        for _ in range(runs):
            for which, address in (("api", api.address), ("echo", echo_address)):
                p99[which, "idle"].append(_client("rate", address, api.token, api.project, target, "200",
                                                  str(rate_seconds), which))
                client = _popen("-m", "bench.rpc_client", "rate", address, api.token, api.project, target, "200",
                                str(rate_seconds), which)
                exports = [api.create(task_id) for task_id in big]
                while client.poll() is None:
                    for i, export_id in enumerate(exports):
                        if api.status(export_id) != "Processing":
                            exports[i] = api.create(big[i])  # keep two exports running the whole time
                    time.sleep(0.2)
                p99[which, "busy"].append(_result(client, 60))
                for export_id in exports:
                    api.wait(export_id)
        m = {key: median([r["p99_ms"] for r in values]) for key, values in p99.items()}
        ratio = m["api", "busy"] / m["api", "idle"]
        echo_ratio = m["echo", "busy"] / m["echo", "idle"]
        figures.append(Figure(
            f"GetExportTask p99 at 200 RPS, 2 exports of {rows:,} rows running", f"{m['api', 'busy']:.1f} ms",
            f"no export running: {m['api', 'idle']:.1f} ms", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5,
            [f"control, a bare grpc.aio echo server under the same load: p99 {m['echo', 'idle']:.1f} ms idle ->"
             f" {m['echo', 'busy']:.1f} ms busy ({echo_ratio:.2f}x); ours busy vs echo busy"
             f" {m['api', 'busy'] / m['echo', 'busy']:.2f}x;",
             f"p50 {median([r['p50_ms'] for r in p99['api', 'busy']]):.1f} ms vs"
             f" {median([r['p50_ms'] for r in p99['api', 'idle']]):.1f} ms;"
             f" per-run p99 busy {_join(r['p99_ms'] for r in p99['api', 'busy'])} / idle"
             f" {_join(r['p99_ms'] for r in p99['api', 'idle'])} ms; {rate_seconds:g} s per run; exports re-run"
             " as they finish so that two run throughout; client in its own process, one call in flight;"
             " the workers run at nice +10"]))

        # -- saturated GetExportTask vs a bare grpc.aio echo server ------------------------------
        api_rps, echo_rps = [], []
        for i in range(runs):
            order = ("api", "echo") if i % 2 == 0 else ("echo", "api")
            for which in order:
                address = api.address if which == "api" else echo_address
                result = _client("saturate", address, api.token, api.project, target, "32", str(saturate_seconds), which)
                (api_rps if which == "api" else echo_rps).append(result["rps"])
        ratio = median(api_rps) / median(echo_rps)
        figures.append(Figure(
            "GetExportTask throughput, saturated (32 in flight)", f"{median(api_rps):,.0f} RPS",
            f"bare grpc.aio echo server: {median(echo_rps):,.0f} RPS", f"{ratio:.2f}x", ">= 0.6x", ratio >= 0.6,
            [f"runs api {', '.join(f'{r:,.0f}' for r in api_rps)} / echo {', '.join(f'{r:,.0f}' for r in echo_rps)} RPS;"
             " the same grpc.aio client process, the same request bytes; the server answers from the store"]))
    finally:
        _stop(echo)
        api.close()
    return figures
