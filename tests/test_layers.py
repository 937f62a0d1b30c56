"""The layering of DESIGN.md, checked on every module's imports.

LAYERS is the one place the order is written: each entry is one layer, bottom first; a module
may import its own package and packages of lower layers, never a higher layer. Packages that
share a layer may not import each other. Imports inside functions count the same as imports
at the top (a function-local import is not a way around the order); only imports guarded by
`if TYPE_CHECKING:` are left out, since they never run. On top of that no two modules may
import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p2pinfer"

#: bottom first; names are the first component under p2pinfer/ (a package or a module)
LAYERS: list[set[str]] = [
    {"errors"},
    {"wire", "config", "identity"},
    {"net"},
    {"models"},
    {"trust", "channel"},
    {"consensus", "zk"},
    {"services"},
    {"inference"},
    {"node"},
    {"api", "control"},
    {"testnet"},
    {"cli"},
    {"__main__", ""},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _guarded_by_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports() -> dict[str, set[str]]:
    """module -> the p2pinfer modules it imports (at run time)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: parent for parent in ast.walk(tree)
                   for child in ast.iter_child_nodes(parent)}
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
                # `from p2pinfer.x import y` may name the submodule p2pinfer.x.y
                targets += [f"{targets[0]}.{a.name}" for a in node.names]
            else:
                continue
            if _guarded_by_type_checking(node, parents):
                continue
            found.update(t for t in targets if t == "p2pinfer" or t.startswith("p2pinfer."))
        graph[name] = found
    known = set(graph)
    return {m: {t for t in ts if t in known and t != m} for m, ts in graph.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer_of(top: str) -> int:
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"p2pinfer.{top} is in no layer: add it to LAYERS in {__file__}")


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in _imports().items():
        a = _top(module)
        for target in targets:
            b = _top(target)
            if a == b or b == "":
                continue  # own package; the root's public re-exports
            if _layer_of(b) >= _layer_of(a):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    graph = _imports()
    # a package's __init__ re-exporting its own modules is not a cycle of ideas: drop the edges
    # from a package to its own submodules
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components, iterative enough
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
