"""The documentation stays true to the code: docs/configuration.md is what scripts/gen_config_docs.py
makes of the code now, every IOTDA_EXPORT_* variable the code reads is documented (and no other),
every flag of every sub-command is on the page, and every relative link in the docs and the README
leads to a file (and heading) that exists.

The checks of the environment variables and of the flags walk the code themselves rather than trust
the generator, so a bug in the generator cannot hide a gap in the page.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
GENERATOR = ROOT / "scripts" / "gen_config_docs.py"
# A whole string literal naming a variable: "IOTDA_EXPORT_X" or 'IOTDA_EXPORT_X' (not prose mentions).
ENV_LITERAL = re.compile(r"""(?<![\w])(?:[rbuRBU]{0,2})(["'])(IOTDA_EXPORT_[A-Z0-9_]+)\1""")


def markdown_files() -> list[pathlib.Path]:
    return sorted(DOCS.glob("*.md")) + sorted((DOCS / "how-to").glob("*.md")) + [ROOT / "README.md"]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def env_vars_read_in_code() -> set[str]:
    """IOTDA_EXPORT_* names held as whole string literals in the Python source of server/ and client/."""
    names: set[str] = set()
    for top in ("server", "client"):
        for path in (ROOT / top).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            names |= {m.group(2) for m in ENV_LITERAL.finditer(path.read_text(encoding="utf-8"))}
    return names


def section(text: str, heading: str) -> str:
    """The lines after `heading` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines))
                if re.match(rf"#{{1,{level}}} ", lines[i])), len(lines))
    return "\n".join(lines[start:end])


# -- 1. the generated page is fresh ---------------------------------------------------------------

def test_configuration_page_is_generated_from_the_current_code():
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("IOTDA_EXPORT_")})
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


def test_check_mode_fails_with_a_diff_when_the_page_is_stale(tmp_path, monkeypatch, capsys):
    gen = load_generator()
    stale = tmp_path / "configuration.md"
    stale.write_text(CONFIGURATION.read_text(encoding="utf-8").replace("## Environment variables",
                                                                       "## Environment"), encoding="utf-8")
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "+## Environment variables" in err and "gen_config_docs.py" in err


# -- 2. environment variables: documented == read -------------------------------------------------

def test_documented_environment_variables_are_exactly_those_the_code_reads():
    in_code = env_vars_read_in_code()
    assert in_code, "the scan found no IOTDA_EXPORT_* variable at all: is the pattern broken?"
    table = set(load_generator().ENV_VARS)
    assert table == in_code, (f"undocumented (add to ENV_VARS in scripts/gen_config_docs.py): "
                              f"{sorted(in_code - table)}; documented but never read: {sorted(table - in_code)}")
    page = section(CONFIGURATION.read_text(encoding="utf-8"), "## Environment variables")
    on_page = set(re.findall(r"^\| `(IOTDA_EXPORT_[A-Z0-9_]+)` \|", page, re.M))
    assert on_page == in_code


def test_the_environment_scan_sees_literals_not_prose(tmp_path):
    text = ('x = os.environ.get("IOTDA_EXPORT_A")\nENV_B = \'IOTDA_EXPORT_B\'\n'
            '"""docs mention IOTDA_EXPORT_C in prose"""\nprint(f"set IOTDA_EXPORT_D first")\n')
    assert {m.group(2) for m in ENV_LITERAL.finditer(text)} == {"IOTDA_EXPORT_A", "IOTDA_EXPORT_B"}


# -- 3. links -------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in FENCE.sub("", markdown).splitlines():
        m = re.match(r"#{1,6} +(.*?) *#*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(path: pathlib.Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page):
    assert page.exists(), f"{page} is missing"
    broken = []
    for target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in github_anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    pages = {p.relative_to(DOCS).as_posix() for p in markdown_files() if DOCS in p.parents} - {"README.md"}
    pages.add("contract-checks.md")  # written separately; linked from the index all the same
    assert {p for p in pages if f"]({p})" not in index} == set()


# -- 4. every flag of every sub-command is on the page --------------------------------------------

def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not sub:
        yield path, parser
    for action in sub:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


def test_every_flag_of_every_subcommand_is_documented_in_its_section():
    from iotda_export_server.cli import build_parser
    page = CONFIGURATION.read_text(encoding="utf-8")
    parser = build_parser()
    leaves = list(commands(parser))
    assert len(leaves) >= 10
    missing = []
    for path, sub in leaves:
        heading = f"### `{' '.join(('iotda-export', *path))}`"
        if heading not in page.splitlines():
            missing.append(f"no section {heading}")
            continue
        body = section(page, heading)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            missing += [f"{' '.join(path)} {n}" for n in names if f"`{n}`" not in body]
    top = section(page, "### Connection flags")
    missing += [f"(connection) {s}" for a in parser._actions if not isinstance(
        a, (argparse._HelpAction, argparse._SubParsersAction)) for s in a.option_strings if f"`{s}`" not in top]
    assert not missing, "undocumented in docs/configuration.md: " + ", ".join(missing)


# -- 5. credentials the docs create stay private and out of git ------------------------------------

def test_the_docs_write_credentials_with_output_and_git_ignores_them():
    """`principal add ... > FILE` would leave the secret key in a file of the shell's umask: the docs
    use --output (0600), and every credentials file they name is ignored by git."""
    named = set()
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"principal add[^\n`]*>\s*\S", text), f"{path.name}: principal add redirected to a file"
        named |= set(re.findall(r"principal add [^\n`]*--output ([\w./-]+\.json)", text))
        named |= set(re.findall(r"--credentials ([\w./-]+\.json)", text))
    assert "alice.credentials.json" in named
    r = subprocess.run(["git", "check-ignore", "--no-index", *sorted(named)], cwd=ROOT, capture_output=True,
                       text=True)
    assert sorted(r.stdout.split()) == sorted(named), f"not ignored: {sorted(named - set(r.stdout.split()))}"


def test_every_path_the_architecture_page_names_exists():
    # The page names modules in backticks (`domain/jobs.py`, `runner/xls/`, `api/`): relative to the
    # server package, or to the repository when they start with a top folder. A move that forgets the
    # page fails here.
    text = (DOCS / "architecture.md").read_text()
    package = ROOT / "server" / "iotda_export_server"
    named = set(re.findall(r"`([A-Za-z_][\w./-]*(?:\.py|\.sql|\.proto|/))`", text))
    assert len(named) > 30  # the pattern reads the page's paths
    missing = sorted(p for p in named if not (package / p).exists() and not (ROOT / p).exists())
    assert missing == []
