"""Mutation testing of the rule modules with cosmic-ray (`make mutate`; the CI subset runs in `make test`).

Why cosmic-ray: it writes each mutant into the source file on disk and runs an ordinary test command
as a subprocess, so every process a test starts -- in-process servers, `iotda-export serve`, the
export workers spawned as `python -m iotda_export_server.runner.worker` -- runs the mutant. (mutmut 3
switches mutants with a trampoline inside processes it forks: a fork is unsafe once gRPC has started,
and the workers we spawn would import the unmutated package.)

The run happens in a copy of the repository (server/, client/, tests/, pyproject.toml) imported
through PYTHONPATH, so the working tree is never left mutated, even by a killed run.

    python scripts/mutate.py                  # every target (make mutate): report, compare with the baseline
    python scripts/mutate.py --ci             # the CI subset (make test)
    python scripts/mutate.py --target auth    # one target
    python scripts/mutate.py --update-baseline  # after a full run: record what is killed now

TARGETS below is the one list of mutated modules (with the functions mutated, when not the whole
module, and the tests each needs). A mutant's id names the module, the function, the operator and
the text of its line (not its line number), so ids survive unrelated edits. The baseline
(mutation/baseline.json) holds the ids killed in the last full run and the surviving ids judged
equivalent (docs/testing.md explains each); a run fails when a mutant in the baseline's killed list
survives, and reports any other survivor.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mutation" / "baseline.json"
LAST_RUN = ROOT / "mutation" / "last-run.json"
PY = sys.executable


@dataclass(frozen=True)
class Group:
    functions: tuple[str, ...]  # qualified names (or module constants) mutated; ("*",): all not in another group
    tests: tuple[str, ...]  # pytest arguments for these mutants: fast, in-process, the tests that prove them
    ci: bool = True  # with its target, part of the CI subset


@dataclass(frozen=True)
class Target:
    name: str
    module: str  # path from the repository root
    groups: tuple[Group, ...]
    ci: bool = False  # part of the CI subset (make test)
    timeout: float = 90.0  # per mutant (a mutant that hangs the tests counts as killed; a clean run takes ~10 s)


BOTH = ("tests/test_mutation_rules.py", "tests/test_rule_races.py")
# -- the one list of mutated modules -----------------------------------------------------------
TARGETS: tuple[Target, ...] = (
    Target("exports", "server/iotda_export_server/domain/exports.py", ci=True, groups=(
        Group(("ExportService.create",),
              (*BOTH, "-k", "(create or rerun or request_id or unfinished_limit or eviction or conditions or"
                            " batch_task or scope or past_the_limits) and not postgresql and not download")),
        Group(("ExportService.admit_download", "_visible"),
              (*BOTH, "-k", "(admission or admitted or download or window or resume or missing_file or services or"
                            " visible) and not postgresql")),
        Group(("ExportService.validate_create",),
              ("tests/test_mutation_rules.py", "-k", "create_names or reports_every or validate_create"), ci=False),
        Group(("ExportService.cancel", "ExportService.delete"),
              ("tests/test_mutation_rules.py", "-k", "cancel or delete or visible"), ci=False),
    )),
    Target("jobs", "server/iotda_export_server/domain/jobs.py", groups=(
        # The run's transitions and lifecycle; test_requeue.py through a server with no workers.
        Group(("*",), ("tests/test_jobs.py", "tests/test_requeue.py", "tests/test_mutation_rules.py", "-k",
                       "test_jobs or test_requeue or rerun or cancel or makes_one_queued")),
    )),
    Target("rules", "server/iotda_export_server/domain/rules.py", ci=True, groups=(
        Group(("MAX_EXPORT_TASKS_PER_USER", "MAX_UNFINISHED_EXPORT_TASKS_PER_USER", "DOWNLOAD_INTERVAL_SECONDS",
               "DOWNLOAD_FREE_RESUMES", "DOWNLOAD_RESUME_WINDOW_SECONDS", "STATUS_PROCESSING", "STATUS_SUCCESS",
               "STATUS_FAILED", "APP_TYPE_GLOBAL", "APP_TYPE_APP", "DEFAULT_APP_ID", "PROGRESS_QUEUED"),
              (*BOTH, "-k", "not postgresql")),
        Group(("*",), ("tests/test_mutation_rules.py", "tests/test_validation.py", "tests/test_batch_tasks.py"),
              ci=False),
    )),
    Target("auth", "server/iotda_export_server/domain/auth.py", groups=(
        Group(("*",), ("tests/test_mutation_rules.py", "tests/test_auth.py", "-k",
                       "test_auth or credentials or statements or vouches or removal")),
    )),
    Target("validation", "server/iotda_export_server/domain/validation.py", groups=(
        Group(("*",), ("tests/test_mutation_rules.py", "tests/test_validation.py", "-k",
                       "test_validation or paging or instance_id or create_names or json_object")),
    )),
)


# Operators not run: they make mutants that say nothing about these modules (bit and power arithmetic
# on counters, decorators of dataclasses, inserting or swapping unrelated variables, unary +/-/~).
EXCLUDED_OPERATORS = (
    r"core/ReplaceBinaryOperator_.*_(Pow|RShift|LShift|BitOr|BitAnd|BitXor|Mod|FloorDiv)$",
    r"core/ReplaceBinaryOperator_(Pow|RShift|LShift|BitOr|BitAnd|BitXor|Mod|FloorDiv)_",
    r"core/ReplaceBinaryOperator_(Add|Sub)_(Mul|Div)$",
    r"core/ReplaceBinaryOperator_(Mul|Div)_(Add|Sub)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(?!(Is|IsNot)$)",
    r"core/ReplaceComparisonOperator_(?!(Is|IsNot)_)\w+_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(In|NotIn)_(?!(In|NotIn)$)",
    r"core/ReplaceComparisonOperator_(?!(In|NotIn)_)\w+_(In|NotIn)$",
    r"core/RemoveDecorator",
    r"core/VariableInserter",
    r"core/VariableReplacer",
    r"core/ReplaceUnaryOperator_(?!Not_Delete)",
)


@dataclass
class Mutant:
    id: str
    operator: str
    line: int
    outcome: str  # killed, survived, incompetent (counted as killed), skipped
    diff: str = ""


@dataclass
class TargetResult:
    target: Target
    mutants: list[Mutant] = field(default_factory=list)
    seconds: float = 0.0


def _qualnames(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function and method."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    tree = ast.parse(source)
    visit(tree, "")
    for node in tree.body:  # module-level constants are named by what they assign
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if names:
                out.append((node.lineno, node.end_lineno, ",".join(names)))
    return out


def _enclosing(spans, line: int) -> str:
    best = "<module>"
    best_size = None
    for first, last, name in spans:
        if first <= line <= last and (best_size is None or last - first < best_size):
            best, best_size = name, last - first
    return best


def _copy_tree(dest: pathlib.Path) -> None:
    for part in ("server", "api", "client", "tests"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                             "node_modules"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _env(copy: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "server"), str(copy / "api"), str(copy / "client"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant's bytecode must never outlive it
    return env


def _test_command(group: Group) -> str:
    return shlex.join([PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *group.tests])


def run_target(target: Target, lanes: list[pathlib.Path], work: pathlib.Path, ci_only: bool = False) -> TargetResult:
    started = time.monotonic()
    result = TargetResult(target)
    named = {f for g in target.groups for f in g.functions if f != "*"}
    for index, group in enumerate(target.groups):
        if ci_only and not group.ci:
            continue
        result.mutants += _run_group(target, index, group, named, lanes, work)
    result.seconds = time.monotonic() - started
    return result


def _run_group(target: Target, index: int, group: Group, named: set[str], lanes: list[pathlib.Path],
               work: pathlib.Path) -> list[Mutant]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    copy = lanes[0]
    env = _env(copy)
    command = _test_command(group)
    # The tests must pass on the unmutated code, or every mutant would look killed.
    clean = subprocess.run(shlex.split(command), cwd=copy, env=env, capture_output=True, text=True)
    if clean.returncode != 0 or " passed" not in clean.stdout:
        raise SystemExit(f"[mutate] {target.name}: the tests fail (or none ran) without any mutant:"
                         f" {command}\n{clean.stdout[-3000:]}")

    config = work / f"{target.name}-{index}.toml"
    session = work / f"{target.name}-{index}.sqlite"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(target.module)}\n"
        f"timeout = {target.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n')
    subprocess.run([PY, "-m", "cosmic_ray.cli", "init", str(config), str(session), "--force"], cwd=copy, env=env,
                   check=True, capture_output=True)

    source = (copy / target.module).read_text()
    lines = source.splitlines()
    spans = _qualnames(source)
    excluded = [re.compile(p) for p in EXCLUDED_OPERATORS]
    ids: dict[str, tuple[str, str, int]] = {}  # job id -> (mutant id, operator, line)
    seen: dict[str, int] = {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=lambda i: (i.mutations[0].start_pos, i.mutations[0].operator_name,
                                                     i.mutations[0].occurrence))
        for item in items:
            m = item.mutations[0]
            line = m.start_pos[0]
            where = _enclosing(spans, line)
            mine = where not in named if group.functions == ("*",) else where in group.functions
            if not mine or any(p.search(m.operator_name) for p in excluded):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                continue
            text = hashlib.sha1(lines[line - 1].strip().encode()).hexdigest()[:8]
            base = f"{target.name}:{where}:{m.operator_name.removeprefix('core/')}:{text}"
            seen[base] = seen.get(base, -1) + 1
            ids[item.job_id] = (f"{base}:{seen[base]}", m.operator_name, line)
    print(f"[mutate] {target.name} ({', '.join(group.functions)}): {len(ids)} mutants; tests: {command}", flush=True)
    if os.environ.get("IOTDA_MUTATE_COUNT_ONLY"):
        return []
    # Lanes: each a copy of the tree with a copy of the session holding its share of the mutants
    # (the others marked skipped), run at the same time (cosmic-ray mutates files in place, so two
    # mutants at once need two trees).
    jobs = sorted(ids)
    procs = []
    for k, lane in enumerate(lanes):
        lane_session = work / f"{target.name}-{index}-lane{k}.sqlite"
        shutil.copy2(session, lane_session)
        with use_db(str(lane_session), WorkDB.Mode.open) as db:
            db.set_multiple_results([j for n, j in enumerate(jobs) if n % len(lanes) != k],
                                    WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        procs.append((lane_session, subprocess.Popen(
            [PY, "-m", "cosmic_ray.cli", "exec", str(config), str(lane_session)], cwd=lane, env=_env(lane))))
    for _, p in procs:
        if p.wait() != 0:
            raise SystemExit(f"[mutate] {target.name}: cosmic-ray exec failed ({p.returncode})")

    mutants = []
    done = set()
    for lane_session, _ in procs:
        for job_id, r in _results(lane_session):
            if job_id not in ids or r.worker_outcome.value == "skipped":
                continue
            done.add(job_id)
            mutant_id, operator, line = ids[job_id]
            outcome = r.test_outcome.value if r.test_outcome is not None else r.worker_outcome.value
            mutants.append(Mutant(mutant_id, operator, line, outcome, r.diff or ""))
    if set(ids) - done:
        raise SystemExit(f"[mutate] {target.name}: {len(set(ids) - done)} mutants were not run")
    return mutants


def compare(survivors: list[Mutant], baseline: dict) -> tuple[list[Mutant], list[Mutant]]:
    """(regressions: survivors the baseline lists as killed, unexplained: survivors neither killed in
    the baseline nor listed as equivalent)."""
    killed_before = set(baseline.get("killed", ()))
    equivalent = baseline.get("equivalent", {})
    regressions = [m for m in survivors if m.id in killed_before]
    unexplained = [m for m in survivors if m.id not in killed_before and m.id not in equivalent]
    return regressions, unexplained


def _results(session: pathlib.Path):
    from cosmic_ray.work_db import WorkDB, use_db
    with use_db(str(session), WorkDB.Mode.open) as db:
        return list(db.results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ci", action="store_true", help="only the CI subset")
    ap.add_argument("--target", action="append", help="only these targets (names)")
    ap.add_argument("--update-baseline", action="store_true", help="record this run's killed ids as the baseline")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants run at once (default: cores)")
    args = ap.parse_args(argv)
    targets = [t for t in TARGETS if (not args.ci or t.ci) and (not args.target or t.name in args.target)]
    if not targets:
        raise SystemExit(f"no target selected (targets: {', '.join(t.name for t in TARGETS)})")
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {"killed": [], "equivalent": {}}
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="iotda-mutate-") as tmp:
        work = pathlib.Path(tmp) / "sessions"
        work.mkdir()
        lanes = [pathlib.Path(tmp) / f"lane{k}" for k in range(args.jobs)]
        for lane in lanes:
            _copy_tree(lane)
        for t in targets:
            results.append(run_target(t, lanes, work, args.ci))

    equivalent = baseline.get("equivalent", {})
    regressions, unexplained, report = [], [], {}
    total_killed = total = 0
    for r in results:
        k = [m for m in r.mutants if m.outcome in ("killed", "incompetent")]
        s = [m for m in r.mutants if m.outcome == "survived"]
        total_killed += len(k)
        total += len(k) + len(s)
        eq = [m for m in s if m.id in equivalent]
        score = len(k) / max(len(k) + len(s) - len(eq), 1)
        print(f"[mutate] {r.target.name}: {len(k)} killed, {len(s)} survived ({len(eq)} equivalent);"
              f" score {score:.1%} of non-equivalent; {r.seconds:.0f} s")
        regressed, new = compare(s, baseline)
        regressions += regressed
        unexplained += new
        report[r.target.name] = {"killed": sorted(m.id for m in k), "survived": sorted(m.id for m in s),
                                 "seconds": round(r.seconds, 1)}
    LAST_RUN.parent.mkdir(exist_ok=True)
    LAST_RUN.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for m in unexplained:
        print(f"[mutate] SURVIVED (not in the baseline, not known equivalent): {m.id} (line {m.line})\n{m.diff}")
    for m in regressions:
        print(f"[mutate] REGRESSION: killed in the baseline, survives now: {m.id} (line {m.line})\n{m.diff}")
    print(f"[mutate] {total_killed}/{total} killed over {len(results)} targets in {time.monotonic() - started:.0f} s")
    if args.update_baseline:
        names = {t.name for t in targets}
        kept = [i for i in baseline["killed"] if i.split(":", 1)[0] not in names]
        baseline["killed"] = sorted(kept + [i for r in report.values() for i in r["killed"]])
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
        print(f"[mutate] baseline written: {len(baseline['killed'])} killed ids")
        return 0
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
