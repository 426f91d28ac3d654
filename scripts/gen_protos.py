"""Generate the Python stubs of protos/iotda into api/, the iotda-export-api distribution that client
and server share (one command: `make protos`).

With --check, generate into a temporary folder and fail if api/ differs: CI runs it so that
stale stubs never land. The google/api modules come from googleapis-common-protos at run time.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "api"
PACKAGE_DIR = pathlib.Path("iotda/export/v1")


def generate(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE_DIR).glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Package markers so the generated tree imports as iotda.export.v1.
    for part in ("iotda", "iotda/export", "iotda/export/v1"):
        (out / part / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        fresh, committed = pathlib.Path(tmp) / PACKAGE_DIR, OUT / PACKAGE_DIR
        names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in committed.glob("*.py*")})
        stale = [n for n in names if not (committed / n).exists() or not (fresh / n).exists()
                 or not filecmp.cmp(fresh / n, committed / n, shallow=False)]
        if stale:
            print("stale generated stubs (run `make protos`):", ", ".join(stale), file=sys.stderr)
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
