"""The HTTP port under anonymous abuse: gRPC health-check p99 while clients without credentials
POST 10 MB JSON bodies to the HTTP port (issue 11), vs the same with no such traffic.

The server answers those requests from their headers alone (no credentials: 401), closes, and never
reads, let alone parses, their bodies. The control sends the same flood to a bare socket server that
answers 401 without reading anything, while the health checks still go to our server: what the
clients and the kernel alone do to the machine.
"""

from __future__ import annotations

import json
import os

from bench.common import median
from bench.export_bench import Figure
from bench.rpc_bench import Api, _client, _join, _popen, _result, _stop

# 20 bodies of 10 MB a second is 1.7 Gbit/s: more than most links can carry to one server.
BODY_MB, PER_SECOND = 10, 20


def run(base: str, smoke: bool, runs: int) -> list[Figure]:
    seconds = 1.0 if smoke else 8.0
    body_mb = 1 if smoke else BODY_MB
    data_dir = os.path.join(base, "hostile")
    os.makedirs(data_dir, exist_ok=True)
    api = Api(data_dir, http=True)
    sink = _popen("-m", "bench.rpc_client", "sink-server")
    p99: dict[str, list[float]] = {"idle": [], "ours": [], "sink": []}
    statuses: dict[str, int] = {}
    sent, body_bytes = 0, 0
    try:
        assert sink.stdout is not None
        sink_port = json.loads(sink.stdout.readline())["port"]
        for i in range(runs):
            p99["idle"].append(_client("health", api.address, "200", str(seconds))["p99_ms"])
            order = ("ours", "sink") if i % 2 == 0 else ("sink", "ours")
            for target in order:
                port = api.http_port if target == "ours" else sink_port
                flood = _popen("-m", "bench.rpc_client", "flood", str(port), api.project, str(body_mb),
                               str(PER_SECOND), str(seconds + 1))
                p99[target].append(_client("health", api.address, "200", str(seconds))["p99_ms"])
                result = _result(flood, 120)
                if target == "ours":
                    sent, body_bytes = sent + result["sent"], result["body_bytes"]
                    for status, n in result["statuses"].items():
                        statuses[status] = statuses.get(status, 0) + n
    finally:
        _stop(sink)
        api.close()
    m = {k: median(v) for k, v in p99.items()}
    ratio = m["ours"] / m["idle"]
    return [Figure(
        f"gRPC health p99 while anonymous {body_mb} MB bodies arrive over HTTP ({PER_SECOND}/s)",
        f"{m['ours']:.1f} ms", f"no such traffic: {m['idle']:.1f} ms", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5,
        [f"control, the same flood sent to a bare socket server that answers 401 unread (health checks still to"
         f" ours): p99 {m['sink']:.1f} ms ({m['sink'] / m['idle']:.2f}x idle); ours vs control"
         f" {m['ours'] / m['sink']:.2f}x;",
         f"{sent:,} requests of {body_bytes / 1e6:.1f} MB sent to ours, answered {statuses}; health checks at"
         f" 200/s, one in flight, {seconds:g} s per run; p99 per run idle {_join(p99['idle'])} / ours"
         f" {_join(p99['ours'])} / control {_join(p99['sink'])} ms; the clients run on the same 2 cores"])]
