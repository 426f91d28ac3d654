"""The benchmark suite's smoke run (`python -m bench --smoke`): tiny sizes, every figure measured
once next to its baseline. It must complete and print each ratio; timings are never judged here
(that is `make bench`, on a quiet machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_prints_ratios(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("IOTDA_EXPORT_DATABASE", None)
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = [line for line in proc.stdout.splitlines() if line.startswith("- ")]
    names = " | ".join(figures)
    for expected in ("export throughput", "xls == naive", "create -> Success", "peak RSS", "WatchProgress",
                     "GetExportTask p99", "GetExportTask throughput", "throughput over TLS",
                     "WatchProgress streams over TLS", "health p99 while anonymous",
                     "taken over after its worker's kill", "on the other replica", "to object storage",
                     "from object storage", "create -> Success, PostgreSQL vs SQLite",
                     "peak RSS of the PostgreSQL worker", "seeding", "RecordSubtaskResults ingest"):
        assert expected in names, proc.stdout
    for line in figures:
        assert re.search(r"\| ratio \S", line), line  # every figure states its ratio (or "-")
    assert re.search(r"ratio \d+(\.\d+)?x", proc.stdout)
    assert "identical" in proc.stdout and "DIFFERENT" not in proc.stdout  # the byte check is real
    assert "[NOT MET]" not in proc.stdout and "[met]" not in proc.stdout  # smoke judges no goal
    text = out.read_text()
    assert "## Machine" in text and "nproc" in text and "| figure |" in text
