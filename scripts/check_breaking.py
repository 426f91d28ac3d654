"""Fail on wire/JSON-breaking changes of protos/ against the previous commit (one command: `make breaking`).

Runs `buf breaking` (rules of buf.yaml: WIRE_JSON) on the working tree of REPO (default: this
repository) against its commit HEAD~1, read straight from REPO/.git:

    buf breaking . --against 'REPO/.git#ref=<sha of HEAD~1>'

A deliberate break passes when HEAD's commit message carries the trailer

    Proto-Breaking-Change: <reason>

(a `Key: value` line in the message's last paragraph, as `git interpret-trailers` reads it); the
reason and buf's findings are printed. Nothing to compare (HEAD is the first commit, or HEAD~1 has no
buf.yaml) passes with a message; a shallow clone without HEAD~1 fails and says how to fetch it.
Uncommitted changes to buf.yaml or protos/ are included: the working tree is what is compared.

Exit codes: 0 no breaking change (or an accepted one, or nothing to compare); 1 breaking changes
without the trailer, or the check could not run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAILER = "Proto-Breaking-Change"
WATCHED = ("buf.yaml", "protos")  # what buf reads, relative to the repository root
BUF_FINDINGS = 100  # buf's exit code for "check ran and found violations"
TIMEOUT = 120.0


class CheckError(Exception):
    """The check cannot run (not a repository, no buf, a shallow clone, buf failed)."""


def find_buf(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [
        os.environ.get("BUF"),
        str(pathlib.Path(sys.executable).parent / "buf"),  # the venv's buf-bin, next to its python
        str(ROOT / ".venv" / "bin" / "buf"),
        shutil.which("buf"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise CheckError("buf not found: install the dev environment (`make venv`, it brings buf-bin) or pass --buf")


def git(repo: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # --no-optional-locks: `status` must not rewrite the index of a checkout others may be using.
    try:
        r = subprocess.run(["git", "--no-optional-locks", *args], cwd=repo, capture_output=True, text=True,
                           timeout=TIMEOUT)
    except FileNotFoundError:
        raise CheckError("git not found on PATH") from None
    if check and r.returncode != 0:
        raise CheckError(f"git {' '.join(args)} failed in {repo}: {r.stderr.strip()}")
    return r


def accepted_reason(repo: pathlib.Path) -> tuple[str | None, bool]:
    """(reason of HEAD's Proto-Breaking-Change trailer or None, whether a line with that key exists
    anywhere in the message - to explain a trailer that git does not read as one)."""
    values = git(repo, "log", "-1", f"--format=%(trailers:key={TRAILER},valueonly,unfold)").stdout
    reasons = [v.strip() for v in values.splitlines() if v.strip()]
    message = git(repo, "log", "-1", "--format=%B").stdout
    mentioned = any(line.lower().startswith(TRAILER.lower() + ":") for line in message.splitlines())
    return ("; ".join(reasons) or None), mentioned


def check(repo: pathlib.Path, buf: str) -> int:
    if not repo.is_dir():
        raise CheckError(f"no directory {repo}")
    if not (repo / "buf.yaml").is_file():
        raise CheckError(f"no buf.yaml in {repo}")
    inside = git(repo, "rev-parse", "--is-inside-work-tree", check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise CheckError(f"{repo} is not a git checkout: the check compares against the previous commit")
    top = pathlib.Path(git(repo, "rev-parse", "--show-toplevel").stdout.strip()).resolve()
    subdir = repo.resolve().relative_to(top).as_posix()
    head = git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False)
    if head.returncode != 0:
        print("breaking: no commit yet - nothing to compare against")
        return 0
    head_sha = head.stdout.strip()

    parent = git(repo, "rev-parse", "--verify", "-q", "HEAD~1^{commit}", check=False)
    if parent.returncode != 0:
        if git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
            raise CheckError(
                f"this is a shallow clone: HEAD ({head_sha[:12]}) is present but its parent is not, so there is"
                " nothing to compare against. Fetch the history and run again:\n"
                "    git fetch --unshallow    (or at least: git fetch --deepen=1)\n"
                "In CI, clone with full history (e.g. actions/checkout with fetch-depth: 0, or no --depth).")
        print(f"breaking: HEAD ({head_sha[:12]}) is the first commit - nothing to compare against, passing")
        return 0
    parent_sha = parent.stdout.strip()
    if git(repo, "cat-file", "-e", f"{parent_sha}:./buf.yaml", check=False).returncode != 0:
        print(f"breaking: HEAD~1 ({parent_sha[:12]}) has no buf.yaml here - nothing to compare against, passing")
        return 0

    dirty = git(repo, "status", "--porcelain", "--untracked-files=all", "--", *WATCHED).stdout.strip()
    if dirty:
        print(f"breaking: note: {' and '.join(WATCHED)} in the working tree differ from HEAD ({head_sha[:12]});"
              f" comparing the WORKING TREE against HEAD~1 ({parent_sha[:12]}):")
        for line in dirty.splitlines():
            print(f"    {line}")
    else:
        print(f"breaking: comparing HEAD ({head_sha[:12]}) against HEAD~1 ({parent_sha[:12]})")

    against = f"{top / '.git'}#ref={parent_sha}" + (f",subdir={subdir}" if subdir != "." else "")
    cmd = [buf, "breaking", ".", "--against", against]
    try:
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CheckError(f"buf breaking did not finish within {TIMEOUT:.0f} s") from None
    findings = (r.stdout + r.stderr).strip()
    if r.returncode == 0:
        print("breaking: no breaking changes")
        return 0
    if r.returncode != BUF_FINDINGS:  # a build error, a clone failure: not a verdict on compatibility
        raise CheckError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{findings}")

    reason, mentioned = accepted_reason(repo)
    print(findings, flush=True)
    if reason:
        print(f"breaking change accepted: {reason}")
        print(f"(the {TRAILER} trailer of HEAD {head_sha[:12]})")
        return 0
    print(f"breaking: the changes above break clients of HEAD~1 ({parent_sha[:12]}).", file=sys.stderr)
    if mentioned:
        print(f"breaking: HEAD's message has a '{TRAILER}:' line, but not as a trailer: it must be in the last"
              " paragraph of the message, in the block of 'Key: value' lines, with a reason after the colon.",
              file=sys.stderr)
    print("Either make the change compatible (add fields with new numbers; `reserved` the numbers and names"
          " of removed ones),\nor, if the break is deliberate, say why in the commit message's trailer:\n"
          f"    git commit --amend --trailer '{TRAILER}: <reason>'", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?", default=str(ROOT),
                        help="the directory holding buf.yaml, inside a git checkout (default: this repository)")
    parser.add_argument("--buf", default=None, help="the buf binary (default: the one next to this python)")
    args = parser.parse_args(argv)
    try:
        return check(pathlib.Path(args.repo).resolve(), find_buf(args.buf))
    except CheckError as e:
        sys.stdout.flush()
        print(f"breaking: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
