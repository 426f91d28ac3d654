"""The house's rooms and the doors between them (docs/architecture.md), checked on the source: each
module's imports of this project, read from its syntax tree (also those inside functions and under
TYPE_CHECKING), against what its layer may reach.

- domain/ (the rules) reaches nothing outside domain/: it is handed a store that keeps the contract.
- transport/ (gRPC, HTTP) reaches the domain and the process's logs and metrics, never a store,
  the runner or the wiring.
- store/ (state, result files) reaches the domain's records and errors and the typed config only.
- runner/ (supervisor, workers, the xls writer) reaches the domain, the config and the one
  assembly function (assembly.py), never a store module or the transport.
- The client distribution (client/iotda_export_client) and the stubs (api/iotda) import nothing of
  the server; the stubs import nothing of the client.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "server" / "iotda_export_server"

# Layer -> the top-level parts of iotda_export_server it may import besides its own.
ALLOWED = {
    "domain": set(),
    "transport": {"domain", "logs", "metrics"},
    "store": {"domain", "config"},
    "runner": {"domain", "config", "assembly", "logs"},
}


def _imports(path: pathlib.Path, package: str) -> set[str]:
    """Absolute names of the modules `path` (in `package`) imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    names.add(module)
                else:  # `from .. import store`: the names are modules
                    names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module or "")
    return names


def _modules(top: pathlib.Path, prefix: str):
    for path in sorted(top.rglob("*.py")):
        parts = path.relative_to(top).with_suffix("").parts
        package = ".".join((prefix, *parts[:-1]))
        yield path, package


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    crossings = []
    for path, package in _modules(SERVER / layer, f"iotda_export_server.{layer}"):
        for name in _imports(path, package):
            if not name.startswith("iotda_export_server."):
                continue
            part = name.split(".")[1]
            if part != layer and part not in ALLOWED[layer]:
                crossings.append(f"{path.relative_to(ROOT)} imports {name}")
    assert crossings == []


def test_the_client_and_the_stubs_import_nothing_of_the_server() -> None:
    crossings = []
    for top, prefix, forbidden in ((ROOT / "client" / "iotda_export_client", "iotda_export_client",
                                    ("iotda_export_server",)),
                                   (ROOT / "api" / "iotda", "iotda", ("iotda_export_server", "iotda_export_client"))):
        for path, package in _modules(top, prefix):
            crossings += [f"{path.relative_to(ROOT)} imports {name}" for name in _imports(path, package)
                          if name.startswith(forbidden)]
    assert crossings == []


def test_the_check_sees_a_crossing() -> None:
    # The walk above would pass vacuously if it read no imports: it must see the domain's own ones
    # and a transport module's import of the domain.
    assert "iotda_export_server.domain.rules" in _imports(SERVER / "domain" / "exports.py", "iotda_export_server.domain")
    assert any(n.startswith("iotda_export_server.domain")
               for n in _imports(SERVER / "transport" / "servicers.py", "iotda_export_server.transport"))
