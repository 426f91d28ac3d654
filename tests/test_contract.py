"""`make breaking` (scripts/check_breaking.py): buf breaking of protos/ against the previous commit, on
throwaway git repositories holding a copy of this repository's buf.yaml and protos/.

Each case is one or two commits and one run of the script (a buf call takes well under a second)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_breaking.py"
BUF = pathlib.Path(sys.executable).parent / "buf"
PROTO = pathlib.Path("protos/iotda/export/v1/export_task.proto")
FIELD = "  string file_name = 3;\n"  # in message ShowExportTaskResponse
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}


def git(repo: pathlib.Path, *args: str) -> str:
    r = subprocess.run(["git", "-c", "user.name=Contract Test", "-c", "user.email=contract@example.invalid",
                        "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                       cwd=repo, env=GIT_ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout


def commit(repo: pathlib.Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def edit(repo: pathlib.Path, old: str, new: str) -> None:
    path = repo / PROTO
    text = path.read_text()
    assert text.count(old) == 1, f"{PROTO} no longer holds {old!r} exactly once: update this test"
    path.write_text(text.replace(old, new))


def check(repo: pathlib.Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(SCRIPT), str(repo)], env=GIT_ENV, capture_output=True, text=True,
                       timeout=120)
    r.output = r.stdout + r.stderr
    return r


@pytest.fixture(scope="module", autouse=True)
def _tools():
    assert BUF.exists(), f"{BUF} missing: install the dev extra (buf-bin)"
    assert shutil.which("git"), "git is not on PATH"


@pytest.fixture
def repo(tmp_path) -> pathlib.Path:
    """A repository whose first commit is this repository's buf.yaml and protos/."""
    r = tmp_path / "repo"
    r.mkdir()
    shutil.copy2(ROOT / "buf.yaml", r / "buf.yaml")
    shutil.copytree(ROOT / "protos", r / "protos")
    git(r, "init", "-q")
    commit(r, "protos as in iotda-export")
    return r


def test_single_commit_has_nothing_to_compare(repo):
    r = check(repo)
    assert r.returncode == 0, r.output
    assert "first commit" in r.output and "nothing to compare" in r.output


def test_unchanged_protos_pass(repo):
    (repo / "README").write_text("not a proto\n")
    commit(repo, "docs only")
    r = check(repo)
    assert r.returncode == 0, r.output
    assert "no breaking changes" in r.output


def test_removed_field_fails_and_names_it(repo):
    edit(repo, FIELD, "")
    commit(repo, "drop file_name")
    r = check(repo)
    assert r.returncode == 1, r.output
    assert 'field "3" with name "file_name" on message "ShowExportTaskResponse" was deleted' in r.output
    assert str(PROTO) in r.output
    assert "Proto-Breaking-Change: <reason>" in r.output  # how to document a deliberate break
    assert "accepted" not in r.output


def test_renumbered_field_fails_and_names_it(repo):
    edit(repo, FIELD, "  string file_name = 6;\n")
    commit(repo, "renumber file_name")
    r = check(repo)
    assert r.returncode == 1, r.output
    assert 'field "3" with name "file_name"' in r.output


def test_break_with_trailer_is_accepted_with_its_reason(repo):
    edit(repo, FIELD, "")
    reason = "clients read the name from Content-Disposition since v1.4"
    commit(repo, f"drop file_name\n\nThe name moved to the HTTP header.\n\nProto-Breaking-Change: {reason}\n")
    r = check(repo)
    assert r.returncode == 0, r.output
    assert f"breaking change accepted: {reason}" in r.stdout
    assert 'with name "file_name"' in r.stdout  # buf's findings are still shown


def test_trailer_outside_the_trailer_block_does_not_count(repo):
    edit(repo, FIELD, "")
    commit(repo, "drop file_name\n\nProto-Breaking-Change: buried in the body\n\nMore text after it.\n")
    r = check(repo)
    assert r.returncode == 1, r.output
    assert "not as a trailer" in r.output


def test_added_field_passes(repo):
    edit(repo, "  string sha256 = 5;\n", "  string sha256 = 5;\n  // Added later.\n  string etag = 6;\n")
    commit(repo, "add etag")
    r = check(repo)
    assert r.returncode == 0, r.output
    assert "no breaking changes" in r.output


def test_uncommitted_change_is_compared_and_said(repo):
    (repo / "README").write_text("second commit\n")
    commit(repo, "docs only")
    edit(repo, FIELD, "")  # not committed
    r = check(repo)
    assert r.returncode == 1, r.output
    assert "WORKING TREE" in r.output and str(PROTO) in r.output
    assert 'with name "file_name"' in r.output


def test_shallow_clone_fails_with_the_fix(repo, tmp_path):
    (repo / "README").write_text("second commit\n")
    commit(repo, "docs only")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", repo.as_uri(), str(shallow))
    r = check(shallow)
    assert r.returncode == 1, r.output
    assert "shallow" in r.output and "git fetch --unshallow" in r.output
