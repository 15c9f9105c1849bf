"""The package's shape, as issue 27 measures it: the longest functions, the import picture
(module-level and function-level imports between the package's modules, the floors they make,
imports that run up between packages) and cycles. Static (``ast``): nothing is imported.

    python benchmarks/code_structure.py [--json benchmarks/results/code_structure.json]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PACKAGE = "logo_train"


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(node: ast.AST, module: str, known: set[str]) -> list[str]:
    """The package's modules an import statement names."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative
            package = module.split(".")[: -node.level] if node.level else []
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != PACKAGE and name != module:
            out.append(name)
    return sorted(set(out))


def analyse(root: Path) -> dict:
    mods = modules(root)
    known = set(mods)
    top: dict[str, set[str]] = {m: set() for m in mods}
    inner: dict[str, int] = {m: 0 for m in mods}
    full: dict[str, set[str]] = {m: set() for m in mods}
    functions = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                top[module].update(_target(node, module, known))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                code = node.end_lineno - body[0].lineno + 1 if body else 0
                functions.append((lines, f"{module}.{node.name}", code))
                for sub in ast.walk(node):
                    targets = (
                        _target(sub, module, known)
                        if isinstance(sub, (ast.Import, ast.ImportFrom))
                        else []
                    )
                    if targets:
                        inner[module] += 1
                        full[module].update(targets)
    # the function-level imports nested in other functions are counted once per statement
    floors = _floors(top)
    for m in mods:
        full[m] |= top[m]
    # an import that runs up: one (often hidden inside a function) that closes a cycle of
    # the whole graph, module-level and function-level imports together
    up = {f"{a} -> {b}" for a in full for b in full[a] - top[a] if a in _reach(full, b)}
    # or one between packages: ``a`` imports package P's module while P's modules import ``a``
    package_of = {m: m.rpartition(".")[0] if m.count(".") > 1 else PACKAGE for m in mods}
    for a in full:
        for b in full[a]:
            siblings = [
                m for m in mods if package_of[m] == package_of[b] not in (package_of[a], PACKAGE)
            ]
            if any(a in _reach(full, m) for m in siblings):
                up.add(f"{a} -> {b} (while {package_of[b]} imports {a.rpartition('.')[2]})")
    up = sorted(up)
    functions.sort(reverse=True)
    return {
        "modules": len(mods),
        "floors": max(floors.values()) + 1,
        "arrows": sum(len(t) for t in top.values()),
        "imports_inside_functions": sum(inner.values()),
        "imports_inside_functions_by_module": {m: n for m, n in inner.items() if n},
        "arrows_up": up,
        "cycles_module_level": _cycles(top),
        "cycles_with_function_imports": _cycles(full),
        "functions_over_60_lines": [
            f"{n:4d}  {name}  (body {code})" for n, name, code in functions if n > 60
        ],
        "bodies_over_60_lines": [f"{c:4d}  {name}" for n, name, c in functions if c > 60],
        "longest": [f"{n:4d}  {name}  (body {code})" for n, name, code in functions[:10]],
        "floor_of": floors,
    }


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    floors: dict[str, int] = {}

    def floor(m: str, stack: tuple = ()) -> int:
        if m not in floors:
            below = [floor(n, stack + (m,)) for n in graph[m] if n not in stack]
            floors[m] = 1 + max(below, default=-1)
        return floors[m]

    for m in graph:
        floor(m)
    return floors


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in _reach(graph, b)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    data = analyse(Path(args.root))
    for key in ("modules", "floors", "arrows", "imports_inside_functions"):
        print(f"{key:<28} {data[key]}")
    print("arrows up (function-level imports closing a cycle):")
    for line in data["arrows_up"]:
        print("  " + line)
    print("cycles, module level:", ", ".join(data["cycles_module_level"]) or "none")
    print("cycles with function-level imports:", len(data["cycles_with_function_imports"]))
    print(
        f"functions over 60 lines: {len(data['functions_over_60_lines'])} (bodies, without "
        f"signature and docstring, over 60: {len(data['bodies_over_60_lines'])})"
    )
    for line in data["functions_over_60_lines"]:
        print("  " + line)
    print("imports inside functions by module:")
    for m, n in sorted(data["imports_inside_functions_by_module"].items(), key=lambda x: -x[1]):
        print(f"  {n:3d}  {m}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
