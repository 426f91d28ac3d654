"""Shared helpers: the machine's description, medians, test data, child processes, memory."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "xlwt": version("xlwt"),
        "grpcio": version("grpcio"),
        "os": platform.platform(),
        "load average (1/5/15 min, at start)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def vmhwm_kb(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def vmrss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


def run_child(*args: str, timeout: float = 900) -> dict:
    """Runs `python -m bench.child ARGS` and returns the JSON it prints last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "bench.child", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Seeded:
    data_dir: str
    project_id: str
    task_id: str
    rows: int


def seed(data_dir: str | os.PathLike, rows: int, seed_value: int = 7, project_id: str | None = None) -> Seeded:
    """A finished batch task with `rows` sub-tasks of the platform's usual mix (the service's own
    seed_batch_task: unique device ids, ~85 % Success with a firmware version, ~10 % Fail with an
    error code and message, ~5 % Stopped), in the SQLite store of `data_dir`."""
    from iotda_export_server.domain.batches import seed_batch_task
    from iotda_export_server.store import open_store

    os.makedirs(data_dir, exist_ok=True)
    project_id = project_id or "b" * 32
    store = open_store(data_dir)
    try:
        task_id = seed_batch_task(store, project_id, "", rows, seed=seed_value)
    finally:
        store.close()
    return Seeded(str(data_dir), project_id, task_id, rows)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
