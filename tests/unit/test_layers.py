"""The tree is the architecture: each room imports only the rooms below it.

Read from the imports themselves (ast), so a back-import anywhere in hostagent/,
also one inside a function, fails here with the file and line that made it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hostagent"
VOCABULARY = frozenset({"errors", "exitcodes", "models", "connection_info", "config"})
ROOMS = ("host", "connectors", "node", "agent", "health", "api", "cli")
# What each room may not import. The vocabulary is open to all; host/ is the
# only door to the host, so the top rooms reach it through the ones in between.
FORBIDDEN: dict[str, frozenset[str]] = {
    "vocabulary": frozenset({"connectors", "node", "agent", "health", "api", "cli"}),
    "host": frozenset({"connectors", "node", "agent", "health", "api", "cli", "config",
                       "connection_info", "exitcodes"}),
    "connectors": frozenset({"node", "agent", "health", "api", "cli"}),
    "node": frozenset({"connectors", "agent", "health", "api", "cli"}),
    "agent": frozenset({"health", "api", "cli"}),
    "health": frozenset({"api", "cli", "node"}),
    "api": frozenset({"host", "cli"}),
    "cli": frozenset({"host", "agent", "health", "api"}),
}
WIRING = "agent/daemon.py"  # builds everything: the one module that may import any room
TEST_HOOK = "hostagent.agent.crashhook"
ENGINE_CLASSES = frozenset({"IscsiConnector", "FcConnector", "BrickConnector"})


def room_of(relative: str) -> str:
    top = relative.split("/", 1)[0]
    return top if top in ROOMS else "vocabulary"


def imports(tree: ast.AST) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import of a hostagent module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] == "hostagent":
            yield node.lineno, node.module, tuple(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hostagent":
                    yield node.lineno, alias.name, ()


def targets(module: str, names: tuple[str, ...]) -> set[str]:
    """The rooms (or vocabulary modules) an import reaches."""
    parts = module.split(".")[1:]
    if parts:
        return {parts[0]}
    return {n for n in names if n != "__version__"}  # from hostagent import x


def violations(relative: str, source: str) -> list[str]:
    room = room_of(relative)
    found = []
    for line, module, names in imports(ast.parse(source)):
        where = f"{relative}:{line}: {module}"
        if relative != WIRING:
            bad = targets(module, names) & FORBIDDEN[room]
            if bad:
                found.append(f"{where}: {room} imports {', '.join(sorted(bad))}")
            engines = set(names) & ENGINE_CLASSES
            if engines and room != "connectors":
                found.append(f"{where}: engine class {', '.join(sorted(engines))} "
                             "outside connectors/")
            hook = module == TEST_HOOK or (module == "hostagent.agent" and "crashhook" in names)
            if hook:
                found.append(f"{where}: only {WIRING} may import the test hook")
    return found


def test_no_room_imports_one_above_it() -> None:
    offenders = [v for path in sorted(PACKAGE.rglob("*.py"))
                 for v in violations(path.relative_to(PACKAGE).as_posix(), path.read_text())]
    assert offenders == []


@pytest.mark.parametrize(("relative", "source"), [
    ("host/scsi.py", "from hostagent.agent.service import Service"),
    ("host/scsi.py", "def f():\n    from hostagent.connectors import devices\n"),
    ("connectors/iscsi.py", "from hostagent.health import HealthMonitor"),
    ("api/app.py", "from hostagent.host.fs import HostFS"),
    ("cli/local.py", "import hostagent.host.net"),
    ("health/heal.py", "from hostagent.connectors.iscsi import IscsiConnector"),
    ("agent/service.py", "from hostagent.agent import crashhook"),
    ("models.py", "from hostagent import agent"),
])
def test_the_check_itself_catches_a_back_import(relative: str, source: str) -> None:
    assert violations(relative, source) != []


def test_the_wiring_may_import_any_room() -> None:
    assert violations(WIRING, "from hostagent.agent import crashhook\n"
                              "from hostagent.connectors.iscsi import IscsiConnector") == []
