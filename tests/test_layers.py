"""The package's layers point down only, with no import cycle (the table in docs/design.md).

Imports inside ``if TYPE_CHECKING:`` are for annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "redisaq_core"

LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["errors"]),
    ("data", ["keys", "message", "signals", "_codec", "_checks", "_failures", "_assignment",
              "_compat", "_retry", "_tasks", "_once", "embedded.servers", "logs"]),
    ("redis", ["connection", "_scripts", "_reads", "_batching", "_appends", "embedded"]),
    ("parts", ["_job_events", "_job_index", "_cancellation", "_retention", "_growth",
               "_membership", "_delivery", "_give_back", "_read_ahead", "_delayed", "_settlement",
               "_handling", "_tracing", "_ticks", "dlq", "results", "metrics", "registry"]),
    ("components", ["producer", "consumer", "monitor", "schedule"]),
    ("bridges", ["fanout"]),
    ("gateway", ["web"]),
    ("commands", ["cli"]),
    ("package", [""]),
]  # fmt: skip
"""Bottom first. A name covers its module or package and everything under it."""

MAX_LINES = 800


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    best, found = -1, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            covers = module == name or module.startswith(name + ".") or name == ""
            if covers and len(name) > best:
                best, found = len(name), index
    assert found >= 0, f"{module} is in no layer of LAYERS"
    return found


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("redisaq_core"):
                target = node.module.removeprefix("redisaq_core").lstrip(".")
            else:
                return
            if node.module is None:  # from . import x
                found.update(f"{target}.{a.name}".lstrip(".") for a in node.names)
            else:
                found.add(target)

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != module}


def test_every_import_points_to_the_same_or_a_lower_layer() -> None:
    wrong = []
    for module in MODULES:
        for target in _imports(module):
            if _layer(target) > _layer(module):
                wrong.append(
                    f"{module or 'redisaq_core'} ({LAYERS[_layer(module)][0]}) imports "
                    f"{target} ({LAYERS[_layer(target)][0]})"
                )
    assert not wrong, "\n".join(sorted(wrong))


def test_there_is_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for target in _imports(module):
            visit(target, (*path, module))
        done.add(module)

    for module in MODULES:
        visit(module, ())


def test_modules_stay_readable() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_internal_modules_are_private() -> None:
    """What users import has a plain name; the parts of a component start with ``_``."""
    public = {m for m in MODULES if not any(p.startswith("_") for p in m.split("."))}
    internal = {"_assignment", "_batching", "_checks", "_codec", "_delivery", "_failures",
                "_give_back", "_handling", "_job_events", "_membership", "_reads", "_retention",
                "_retry", "_scripts", "_settlement", "_ticks"}  # fmt: skip
    assert internal <= set(MODULES)
    assert not public & {m.lstrip("_") for m in internal}
