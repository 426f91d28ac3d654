"""The README's "A grpcurl session", executed as written: its sh block, taken from README.md, runs in ONE
bash process (state such as $TOKEN carries over) against a real `iotda-export serve` on port 0, in a
directory laid out like the repository folder: ./data (the server's data directory, holding the
credentials.json it writes on first start) and ./.venv (this repository's virtualenv).

Only the address differs from a newcomer's run: the block reads it from IOTDA_EXPORT_ADDRESS.

Every command must exit 0, except those followed by an expectation comment `#   → ERROR ...` or
`#   → {"code": ...}`: they must fail, and their output must hold every word of the comment."""

from __future__ import annotations

import io
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field

import pytest
import xlrd

from iotda_export_server.runner.xls import HEADER

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HEADING = "## A grpcurl session"
VENV = ROOT / ".venv"
CLI = VENV / "bin" / "iotda-export"
EXPECTATION = re.compile(r"^#\s*→\s*(?P<text>.+)$")
SESSION_TIMEOUT = 300.0  # seconds for the whole block; WatchProgress must end by itself well before


@dataclass
class Command:
    index: int
    text: str  # as written, continuation lines included
    line: int  # README line number of its first line
    expectation: str | None = None
    output: str = ""
    rc: int | None = None
    words: list[str] = field(default_factory=list)

    @property
    def expects_failure(self) -> bool:
        return self.expectation is not None and (self.expectation.startswith("ERROR")
                                                 or self.expectation.startswith('{"code"'))


def readme_block() -> tuple[list[str], int]:
    """The lines of the first ```sh block under HEADING, and the README line number of its first line."""
    lines = README.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        pytest.fail(f"README.md has no heading {HEADING!r}: update tests/test_readme_grpcurl.py with the README")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("## "):
            break
        if lines[i].strip() == "```sh":
            for j in range(i + 1, len(lines)):
                if lines[j].strip() == "```":
                    return lines[i + 1:j], i + 2
            pytest.fail(f"README.md: the ```sh block under {HEADING!r} (line {i + 1}) is never closed")
    pytest.fail(f"README.md: no ```sh block under {HEADING!r} (before the next '## ' heading)")


def is_complete(text: str) -> bool:
    """Whether bash parses text as whole commands (no open quote, $(, pipe, ...)."""
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True, timeout=10).returncode == 0


def split_commands(lines: list[str], first_line: int) -> list[Command]:
    """Logical commands (backslash continuations and multi-line quotes joined, as bash reads them) and the
    `#   → ...` expectation comment that follows each."""
    commands: list[Command] = []
    buffer: list[str] = []
    buffer_line = 0
    for n, line in enumerate(lines, first_line):
        if not buffer:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                m = EXPECTATION.match(stripped)
                if m:
                    assert commands, f"README.md:{n}: an expectation comment before any command"
                    assert commands[-1].expectation is None, f"README.md:{n}: a second expectation for one command"
                    commands[-1].expectation = m.group("text").strip()
                continue
            buffer_line = n
        buffer.append(line)
        if line.endswith("\\"):
            continue
        text = "\n".join(buffer)
        if is_complete(text):
            commands.append(Command(index=len(commands), text=text, line=buffer_line))
            buffer = []
    assert not buffer, f"README.md:{buffer_line}: the command starting here never ends (bash cannot parse it)"
    return commands


def session_script(commands: list[Command]) -> str:
    """The commands as written, each between markers that carry its index and exit status."""
    out = ["exec 2>&1", "set -o pipefail"]
    for c in commands:
        out += [f"printf '\\n::start::%d\\n' {c.index}", c.text, f"printf '\\n::rc=%d::%d\\n' \"$?\" {c.index}"]
    return "\n".join(out) + "\n"


def words_of(expectation: str) -> list[str]:
    """The key words of an expectation comment: its identifiers, codes and numbers."""
    return [w for w in (t.strip(".") for t in re.findall(r"[\w.]+", expectation)) if w]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTDA_EXPORT_") or k == "IOTDA_EXPORT_LOG_LEVEL"}
    env.setdefault("IOTDA_EXPORT_LOG_LEVEL", "WARNING")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    cwd = tmp_path_factory.mktemp("readme-session")
    assert (VENV / "bin" / "grpcurl").exists(), f"{VENV}/bin/grpcurl missing: install the dev extra"
    (cwd / ".venv").symlink_to(VENV, target_is_directory=True)
    return cwd


@pytest.fixture(scope="module")
def served(workdir):
    """`iotda-export serve` with ./data as data directory, gRPC on a free port (read from its banner)."""
    log = open(workdir / "serve.log", "w")
    proc = subprocess.Popen([str(CLI), "serve", "--data-dir", "data", "--grpc-addr", "127.0.0.1:0", "--workers", "1"],
                            cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    address = None
    deadline = time.monotonic() + 30
    while address is None:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            proc.kill()
            proc.wait()
            log.close()
            pytest.fail(f"iotda-export serve printed no 'listening on' line within 30 s; log:\n"
                        f"{(workdir / 'serve.log').read_text()}")
        if "listening on " in line and "(gRPC)" in line:
            address = line.split("listening on ", 1)[1].split()[0]
    try:
        assert (workdir / "data" / "credentials.json").is_file(), "the server wrote no data/credentials.json"
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def run_session(workdir: pathlib.Path, address: str, commands: list[Command]) -> str:
    script = workdir / "session.sh"
    script.write_text(session_script(commands))
    out_path = workdir / "session.out"
    with open(out_path, "w") as out:
        # Own process group: on a timeout, grpcurl and python children are stopped with bash.
        proc = subprocess.Popen(["bash", str(script)], cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=clean_env(IOTDA_EXPORT_ADDRESS=address),
                                start_new_session=True)
        try:
            proc.wait(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the README session did not finish within {SESSION_TIMEOUT:.0f} s; output so far:\n"
                        f"{out_path.read_text()}")
    return out_path.read_text()


def test_readme_grpcurl_session_runs_as_written(workdir, served):
    lines, first_line = readme_block()
    assert lines[0].startswith("ADDR=${IOTDA_EXPORT_ADDRESS"), \
        f"README.md:{first_line}: the session must take its address from IOTDA_EXPORT_ADDRESS: {lines[0]!r}"
    commands = split_commands(lines, first_line)
    assert any("ShowExportTask" in c.text for c in commands), "the README session has no download step"

    started = time.monotonic()
    output = run_session(workdir, served, commands)
    elapsed = time.monotonic() - started

    found = {int(m.group(1)): m for m in
             re.finditer(r"\n::start::(\d+)\n(.*?)\n::rc=(\d+)::\1\n", "\n" + output, re.DOTALL)}
    problems = []
    for c in commands:
        m = found.get(c.index)
        if m is None:
            problems.append(f"README.md:{c.line}: never ran to its end:\n{c.text}")
            continue
        c.output, c.rc = m.group(2), int(m.group(3))
        if c.expectation is None:
            if c.rc != 0:
                problems.append(f"README.md:{c.line}: exit {c.rc}, expected 0:\n{c.text}\n--- output:\n{c.output}")
            continue
        c.words = words_of(c.expectation)
        missing = [w for w in c.words if w not in c.output]
        if c.expects_failure and c.rc == 0:
            problems.append(f"README.md:{c.line}: exit 0, but the README says it fails ({c.expectation}):\n"
                            f"{c.text}\n--- output:\n{c.output}")
        if not c.expects_failure and c.rc != 0:
            problems.append(f"README.md:{c.line}: exit {c.rc}, expected 0:\n{c.text}\n--- output:\n{c.output}")
        if missing:
            problems.append(f"README.md:{c.line}: the output lacks {missing} of the README's comment"
                            f" '→ {c.expectation}':\n{c.text}\n--- output:\n{c.output}")
    assert not problems, "\n\n".join(problems) + f"\n\n(session took {elapsed:.1f} s)"
    assert [c for c in commands if c.expects_failure], "no expectation comment was recognised in the block"

    # The session's files: the create response, and the downloaded zip holding the one .xls.
    assert (workdir / "created.json").is_file()
    with zipfile.ZipFile(io.BytesIO((workdir / "export.zip").read_bytes())) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert len(names) == 1 and names[0].endswith(".xls"), names
        sheets = xlrd.open_workbook(file_contents=z.read(names[0])).sheets()
    assert all(tuple(sheet.row_values(0)) == HEADER for sheet in sheets)
    seeded = int(re.search(r"--subtasks (\d+)", "\n".join(lines)).group(1))
    assert sum(sheet.nrows - 1 for sheet in sheets) == seeded  # a row per sub-task, under each sheet's header
    download = next(c for c in commands if "ShowExportTask" in c.text)
    assert names[0] in download.output  # the listing the README's python prints
    watch = next(c for c in commands if "WatchProgress" in c.text)
    assert '"status": "Success"' in watch.output and '"progress": 100' in watch.output
