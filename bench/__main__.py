"""`python -m bench` (make bench): every figure against its baseline measured in the same run.

    python -m bench            full run (several minutes), writes bench/RESULTS.md
    python -m bench --smoke    tiny sizes, one run, no goals judged, nothing written (CI)

Figures: export throughput (rows/s from SQLite to the finished zip vs plain xlwt writing the same
rows from memory), byte identity of the two files, a 30,000-row export from CreateExportTask to
the Success event vs plain xlwt writing those rows, the peak RSS of a process exporting 1,000,000
rows; the RPC figures (bench/rpc_bench.py); the TLS figures against plaintext (bench/tls_bench.py); the recovery figures on PostgreSQL (bench/recovery_bench.py:
a killed worker's takeover vs the lease it held, Success reaching another replica's watcher vs a
10 ms poll); result files in object storage on a real SeaweedFS (bench/s3_bench.py: export
throughput vs the local directory, peak RSS, download throughput); the stores side by side
(bench/store_bench.py: a 200,000-row export on PostgreSQL vs SQLite, 1,000,000 rows on both with the
PostgreSQL worker's peak RSS, seeding and RecordSubtaskResults ingest rows/s). Medians of --runs runs;
the machine is shared
and noisy, so the ratios (measured in one run, interleaved) are what to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import export_bench
from bench.common import ROOT, machine
from bench.export_bench import Figure

RESULTS = ROOT / "bench" / "RESULTS.md"
os.environ.setdefault("IOTDA_EXPORT_LOG_LEVEL", "WARNING")  # the `serve` commands the recovery figures start


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run, no goals judged (CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, smoke 1)")
    parser.add_argument("--only", default="",
                        help="comma-separated: throughput,create,rss,rpc,tls,hostile,recovery,s3,stores,"
                             "stores-1m,ingest,profile")
    parser.add_argument("--out", default=None, help=f"results file (default {RESULTS} in a full run)")
    return parser.parse_args(argv)


def show(figure: Figure, judged: bool) -> None:
    verdict = "" if not judged or figure.met is None else ("  [met]" if figure.met else "  [NOT MET]")
    print(f"- {figure.name}: {figure.value} | baseline {figure.baseline} | ratio {figure.ratio}"
          f" | goal {figure.goal}{verdict}", flush=True)
    for note in figure.notes:
        print(f"    {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    smoke = args.smoke
    runs = args.runs or (1 if smoke else 3)
    only = set(filter(None, args.only.split(","))) or {"throughput", "create", "rss", "rpc", "tls", "hostile",
                                                        "recovery", "s3", "stores", "stores-1m", "ingest",
                                                        "profile"}
    sizes = {
        "throughput": 3_000 if smoke else 200_000,
        "create": 2_000 if smoke else 30_000,
        "rss": 5_000 if smoke else 1_000_000,
        "stores": 3_000 if smoke else 200_000,
        "stores-1m": 5_000 if smoke else 1_000_000,
        "ingest": 3_000 if smoke else 200_000,
    }
    info = machine()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"mode: {'smoke' if smoke else 'full'}, {runs} run(s) per figure", flush=True)
    figures: list[Figure] = []
    profile_text = ""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iotda-bench-") as base:
        tput_data = None
        if "throughput" in only:
            tput, same, rss_pair, extra = export_bench.throughput(base, sizes["throughput"], runs)
            tput_data = extra["data"]
            for figure in (tput, same, rss_pair):
                figures.append(figure)
                show(figure, not smoke)
        if "create" in only:
            figure = export_bench.create_to_success(base, sizes["create"], runs)
            figures.append(figure)
            show(figure, not smoke)
        if "rss" in only:
            figure = export_bench.peak_rss(base, sizes["rss"], runs, 250)
            figures.append(figure)
            show(figure, not smoke)
        if "rpc" in only:
            from bench import rpc_bench
            for figure in rpc_bench.run(base, smoke, runs):
                figures.append(figure)
                show(figure, not smoke)
        if "tls" in only:
            from bench import tls_bench
            for figure in tls_bench.run(base, smoke, runs):
                figures.append(figure)
                show(figure, not smoke)
        if "hostile" in only:
            from bench import hostile_bench
            for figure in hostile_bench.run(base, smoke, runs):
                figures.append(figure)
                show(figure, not smoke)
        if "recovery" in only:
            from bench import recovery_bench
            for figure in recovery_bench.run(base, smoke, runs):
                figures.append(figure)
                show(figure, not smoke)
        if "s3" in only:
            from bench import s3_bench
            for figure in s3_bench.run(base, smoke, runs, sizes["throughput"], sizes["rss"], 250):
                figures.append(figure)
                show(figure, not smoke)
        from bench import store_bench
        for name, measure in (
                ("stores", lambda: store_bench.exports(base, sizes["stores"], runs, goal_ratio=0.8)),
                ("stores-1m", lambda: store_bench.exports(base, sizes["stores-1m"], runs, rss_limit_mb=220)),
                ("ingest", lambda: store_bench.ingest(base, sizes["ingest"], runs))):
            if name in only:
                for figure in measure():
                    figures.append(figure)
                    show(figure, not smoke)
        if "profile" in only:
            if tput_data is None:
                from bench.common import seed
                tput_data = seed(os.path.join(base, "profile"), sizes["throughput"])
            profile_text = export_bench.profile(tput_data)
            print(f"profile of one {tput_data.rows:,}-row export (DB -> zip, in-process):")
            print("\n".join("    " + line for line in profile_text.splitlines()[:40]), flush=True)
    elapsed = time.perf_counter() - started
    print(f"bench done in {elapsed:.0f} s", flush=True)
    out = Path(args.out) if args.out else (None if smoke else RESULTS)
    if out is not None:
        out.write_text(render(info, figures, profile_text, smoke, runs, elapsed))
        print(f"results written to {out}")
    return 0


def render(info: dict[str, str], figures: list[Figure], profile_text: str, smoke: bool, runs: int,
           elapsed: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m bench{' --smoke' if smoke else ''}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs} run(s) per figure, "
        f"{elapsed:.0f} s in all. Each ratio is measured against its baseline in the same run "
        "(runs interleaved); values are medians.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        "",
        "The machine is shared (other engineers' test suites run on the same 2 cores): absolute",
        "figures move by ±20-40 % from run to run; compare the ratios.",
        "",
        "## Figures",
        "",
        "| figure | value | baseline (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        met = "-" if f.met is None or smoke else ("yes" if f.met else "**no**")
        lines.append(f"| {f.name} | {f.value} | {f.baseline} | {f.ratio} | {f.goal} | {met} |")
    lines += ["", "### Notes per figure", ""]
    for f in figures:
        lines.append(f"- **{f.name}**: " + " ".join(f.notes))
    lines += ["", "## Where the time goes (after the work)", "", SUMMARY, "",
              "pyinstrument profile of one export (the worker's path, DB -> finished zip):", "",
              "```", profile_text, "```", ""]
    return "\n".join(lines)


SUMMARY = (Path(__file__).with_name("PROFILE_NOTES.md").read_text().strip()
           if Path(__file__).with_name("PROFILE_NOTES.md").exists() else "")


if __name__ == "__main__":
    raise SystemExit(main())
