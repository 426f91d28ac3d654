"""Named SQL queries, one file per dialect (sqlite.sql, postgres.sql), as procrastinate keeps its
own: each query a `-- name: <query_name>` block with a comment line of what it does. A store loads
its dialect's file once and runs queries by name, each written for that dialect (its own
placeholders): nothing is rewritten at run time."""

from __future__ import annotations

import functools
import pathlib

DIR = pathlib.Path(__file__).parent
NAME_PREFIX = "-- name: "


def parse(text: str) -> dict[str, str]:
    """The queries of a file's text by name (each without its comments and trailing semicolon).
    Raises ValueError for a block without a description, an empty one, or a name defined twice."""
    out: dict[str, str] = {}
    blocks = text.split("\n" + NAME_PREFIX)
    for block in blocks[1:]:
        name, _, rest = block.partition("\n")
        name = name.strip()
        lines = rest.splitlines()
        if not lines or not lines[0].startswith("-- ") or not lines[0][3:].strip():
            raise ValueError(f"query {name!r} has no description line")
        sql = "\n".join(ln for ln in lines if not ln.lstrip().startswith("--")).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        if name in out:
            raise ValueError(f"query {name!r} is defined twice")
        out[name] = sql
    return out


@functools.cache
def queries(dialect: str) -> dict[str, str]:
    """The queries of `dialect` ("sqlite" or "postgres") by name."""
    return parse((DIR / f"{dialect}.sql").read_text(encoding="utf-8"))
