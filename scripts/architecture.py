"""The package's structure in numbers: modules, the largest, import cycles, function-level
imports, imports of another module's private names. ``python scripts/architecture.py`` prints
them; ``tests/test_architecture.py`` asserts on them.

Every ``import`` statement counts, wherever it stands (module level or inside a function), so
a dependency hidden in a function is still a dependency.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vlmnb"
MAX_LINES = 600
SKIP = ("checkpoint",)  # data folders inside the package


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: {dotted name: path}."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))
            if not any(s in p.parts for s in SKIP)}


@dataclass
class Imports:
    """The vlmnb imports of one module."""

    targets: set[str] = field(default_factory=set)   # modules it imports
    nested: int = 0                                  # import statements inside a function
    private: list[str] = field(default_factory=list)  # "line: what" for private names of others


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def scan(path: Path, here: str, modules: set[str]) -> Imports:
    """What module ``here`` (file ``path``) imports from the package, and how."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = Imports()
    is_package = path.name == "__init__.py"
    aliases: dict[str, str] = {}  # local name -> vlmnb module

    def visit(node, depth: int):
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        out.targets.add(alias.name)
                        out.nested += depth > 0
                        if alias.asname:
                            aliases[alias.asname] = alias.name
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(child, here, is_package)
                if source.split(".")[0] == PACKAGE:
                    out.nested += depth > 0
                    for alias in child.names:
                        sub = f"{source}.{alias.name}"
                        if sub in modules:
                            out.targets.add(sub)
                            aliases[alias.asname or alias.name] = sub
                        else:
                            out.targets.add(source)
                            if _is_private(alias.name) and source != here:
                                out.private.append(f"{child.lineno}: from {source} import {alias.name}")
            elif isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
                if child.value.id in aliases and _is_private(child.attr) and aliases[child.value.id] != here:
                    out.private.append(f"{child.lineno}: {aliases[child.value.id]}.{child.attr}")
            visit(child, inner)

    visit(tree, 0)
    out.targets.discard(here)
    return out


def private_attributes(files: dict[str, Path]) -> dict[str, set[str]]:
    """Per module, the private names it defines (functions, classes, attributes it assigns)."""
    defined: dict[str, set[str]] = {}
    for name, path in files.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        defined[name] = {n for n in names if _is_private(n)}
    return defined


def foreign_private_uses(files: dict[str, Path]) -> dict[str, list[str]]:
    """``obj._name`` where ``_name`` is defined by another vlmnb module and not by this one:
    reaching into another module's objects (``vlm._attention_modules()``)."""
    defined = private_attributes(files)
    uses: dict[str, list[str]] = {}
    for name, path in files.items():
        mine = defined[name]
        others = set().union(*(v for k, v in defined.items() if k != name)) - mine
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in others
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                uses.setdefault(name, []).append(f"{node.lineno}: .{node.attr}")
    return uses


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@dataclass
class Report:
    modules: int
    lines: dict[str, int]
    graph: dict[str, set[str]]
    nested_imports: int
    private_imports: dict[str, list[str]]
    foreign_private: dict[str, list[str]]

    @property
    def cycles(self) -> list[list[str]]:
        return cycles(self.graph)

    @property
    def too_long(self) -> dict[str, int]:
        return {m: n for m, n in self.lines.items() if n > MAX_LINES}


def report(root: Path = ROOT) -> Report:
    files = package_files(root)
    modules = set(files)
    scans = {name: scan(path, name, modules) for name, path in files.items()}
    # an import of a package counts as an import of its __init__ module only
    graph = {name: {t for t in s.targets if t in modules} for name, s in scans.items()}
    return Report(
        modules=len(files),
        lines={name: len(path.read_text().splitlines()) for name, path in files.items()},
        graph=graph,
        nested_imports=sum(s.nested for s in scans.values()),
        private_imports={n: s.private for n, s in scans.items() if s.private},
        foreign_private=foreign_private_uses(files),
    )


def main() -> int:
    args = sys.argv[1:]
    diagram = None
    if "--diagram" in args:
        i = args.index("--diagram")
        diagram = Path(args[i + 1])
        del args[i:i + 2]
    r = report(Path(args[0]).resolve() if args else ROOT)
    if diagram:
        draw_layers(r, diagram)
    largest = sorted(r.lines.items(), key=lambda kv: -kv[1])[:5]
    print(f"modules: {r.modules}")
    print("largest: " + ", ".join(f"{m} {n}" for m, n in largest))
    print(f"modules over {MAX_LINES} lines: {len(r.too_long)}")
    print(f"import cycles: {len(r.cycles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in r.cycles))
    print(f"function-level vlmnb imports: {r.nested_imports}")
    print(f"private names imported from other modules: {sum(map(len, r.private_imports.values()))}")
    for m, items in r.private_imports.items():
        print(f"  {m}: " + "; ".join(items))
    print(f"other modules' private attributes used: {sum(map(len, r.foreign_private.values()))}")
    for m, items in r.foreign_private.items():
        print(f"  {m}: " + "; ".join(items))
    return 0



LAYERS = ["cli", "views", "experiments", "judge | data", "engine", "toy", "core"]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for layer in LAYERS:
        if parts[1] in layer.split(" | "):
            return parts[1]
    return None


def layer_edges(r: Report) -> dict[tuple[str, str], int]:
    """How many module-to-module imports go from one layer (package) to another."""
    edges: dict[tuple[str, str], int] = {}
    for src, targets in r.graph.items():
        for dst in targets:
            a, b = layer_of(src), layer_of(dst)
            if a and b and a != b:
                edges[(a, b)] = edges.get((a, b), 0) + 1
    return edges


def draw_layers(r: Report, path: Path) -> None:
    """The layers top to bottom, each with its modules, and the imports between them (measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    rows = [layer.split(" | ") for layer in LAYERS]
    pos: dict[str, tuple[float, float]] = {}
    fig, ax = plt.subplots(figsize=(9.5, 9))
    height = 1.0
    for i, row in enumerate(rows):
        y = (len(rows) - 1 - i) * 1.45
        for j, name in enumerate(row):
            width = 7.6 / len(row) - (0.3 if len(row) > 1 else 0)
            x = j * (7.6 / len(row))
            pos[name] = (x + width / 2, y + height / 2)
            members = sorted(m.split(".")[2] for m in r.graph if len(m.split(".")) > 2 and m.split(".")[1] == name
                             and m.count(".") == 2)
            ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02", fc="#eef3fb", ec="#3b6ea8"))
            ax.text(x + 0.12, y + height - 0.2, f"vlmnb.{name}", fontsize=11, weight="bold", va="top")
            text = ", ".join(members)
            ax.text(x + 0.12, y + height - 0.52, "\n".join(_wrap(text, int(width * 11.5))), fontsize=9,
                    va="top", color="#333333")
    order = [name for row in rows for name in row]
    widths = {name: 7.6 / len(row) - (0.3 if len(row) > 1 else 0) for row in rows for name in row}
    for (a, b), n in sorted(layer_edges(r).items()):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        # spread the arrows: leave a box at a place that depends on the target, arrive at one
        # that depends on the source, so that no two arrows share a line
        start = xa + widths[a] * (order.index(b) / len(order) - 0.45)
        end = xb + widths[b] * (order.index(a) / len(order) - 0.45)
        ax.add_patch(FancyArrowPatch((start, ya - 0.5), (end, yb + 0.5), arrowstyle="-|>", mutation_scale=10,
                                     color="#3b6ea8" if yb < ya else "#c0392b", lw=0.6 + 0.1 * n, alpha=0.7))
    ax.set_xlim(-0.2, 7.8)
    ax.set_ylim(-0.3, len(rows) * 1.45)
    ax.axis("off")
    ax.set_title("vlmnb's layers: arrows are imports (width: how many), always downwards", fontsize=11)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


if __name__ == "__main__":
    raise SystemExit(main())
