"""The TLS figures (issue 15), against `iotda-export serve` processes as in bench/rpc_bench.py, each
TLS figure against the same thing over plaintext in the same run:

- saturated GetExportTask throughput over TLS vs plaintext (the same client, runs interleaved);
- 5,000 WatchProgress streams held over TLS: all receive the final state, the API's RSS per stream,
  vs the same streams over plaintext.
"""

from __future__ import annotations

import os

from bench.common import median, seed
from bench.export_bench import Figure
from bench.rpc_bench import Api, _client, hold_streams


def run(base: str, smoke: bool, runs: int) -> list[Figure]:
    from iotda_export_server.devcerts import dev_certs

    streams, channels = (50, 2) if smoke else (5_000, 50)
    watch_rows = 1_000 if smoke else 30_000
    saturate_seconds = 0.3 if smoke else 5.0
    certs = os.path.join(base, "tls-certs")
    dev_certs(certs)
    os.environ["BENCH_TLS_CA"] = os.path.join(certs, "ca.crt")  # read by bench.rpc_client's TLS channels
    figures: list[Figure] = []
    apis = {"tls": None, "plain": None}
    try:
        for kind in apis:
            data_dir = os.path.join(base, f"tls-bench-{kind}")
            os.makedirs(data_dir, exist_ok=True)
            apis[kind] = Api(data_dir, certs=certs if kind == "tls" else None)

        # -- saturated GetExportTask: TLS vs plaintext, the same client, runs interleaved ---------
        targets = {}
        for kind, api in apis.items():
            targets[kind] = api.create(seed(api.data_dir, 10, seed_value=51, project_id=api.project).task_id)
        rps: dict[str, list[float]] = {"tls": [], "plain": []}
        for i in range(runs):
            for kind in (("tls", "plain") if i % 2 == 0 else ("plain", "tls")):
                api = apis[kind]
                result = _client("saturate", api.address, api.token, api.project, targets[kind], "32",
                                 str(saturate_seconds), "api")
                rps[kind].append(result["rps"])
        # Each run's TLS figure against the plaintext one measured right next to it: the machine is
        # shared, and its load drifts more between runs than within a pair.
        ratios = [t / p for t, p in zip(rps["tls"], rps["plain"])]
        ratio = median(ratios)
        figures.append(Figure(
            "GetExportTask throughput over TLS, saturated (32 in flight)", f"{median(rps['tls']):,.0f} RPS",
            f"the same over plaintext: {median(rps['plain']):,.0f} RPS", f"{ratio:.2f}x (median of the runs' ratios)",
            ">= 0.8x", ratio >= 0.8,
            [f"per-run ratios {', '.join(f'{r:.2f}' for r in ratios)};"
             f" runs TLS {', '.join(f'{r:,.0f}' for r in rps['tls'])} / plaintext"
             f" {', '.join(f'{r:,.0f}' for r in rps['plain'])} RPS; one grpc.aio client process, one connection,"
             " the handshake before the timed part; ECDSA P-256 certificate from dev-certs; two API processes"
             " (one per transport), never loaded at the same time"]))

        # -- 5,000 WatchProgress streams: TLS vs plaintext -----------------------------------------
        held = {}
        for kind, api in apis.items():
            task_id = seed(api.data_dir, watch_rows, seed_value=61, project_id=api.project).task_id
            held[kind] = hold_streams(api, task_id, streams, channels)
        _, opened, before, holding, per_stream, result = held["tls"]
        plain_per_stream = held["plain"][4]
        all_final = result["success"] == streams and not result["errors"]
        figures.append(Figure(
            f"{streams:,} WatchProgress streams over TLS on one API process",
            f"{opened:,} held, {result['success']:,}/{streams:,} got Success; {per_stream:.1f} KB/stream",
            f"the same over plaintext: {plain_per_stream:.1f} KB/stream",
            f"{per_stream / plain_per_stream:.2f}x" if plain_per_stream > 0 else "-",
            "5,000 held, all final", all_final,
            [f"API RSS {before / 1024:.0f} MB idle -> {holding / 1024:.0f} MB holding them over {channels} TLS"
             f" connections (each connection's TLS state is per connection, not per stream);"
             f" final event p99 {result['lag_p99_ms']:.0f} ms after end_time (plaintext"
             f" {held['plain'][5]['lag_p99_ms']:.0f} ms); errors {result['errors']} {result.get('error_codes') or ''},"
             f" unfinished {result['unfinished']}"]))
    finally:
        for api in apis.values():
            if api is not None:
                api.close()
    return figures
