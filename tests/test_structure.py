"""The layout holds: no import cycles, imports go one way, the CLI starts without torch or smdebug."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "localsage"

# The packages and what each may import (besides itself): foundations import nothing else of localsage; the
# debugger's rules and report read tensor and profile files (both sides run them); container code runs inside
# the training image and never imports host code; the front doors (cli, api) import everything below them.
LAYERS = {
    "localsage.core": (),
    "localsage.debugger": ("localsage.core",),
    "localsage.container": ("localsage.core", "localsage.debugger"),
    "localsage.host": ("localsage.core", "localsage.debugger", "localsage.container"),
    "localsage.api": ("localsage.core", "localsage.debugger", "localsage.container", "localsage.host"),
    "localsage.cli": ("localsage.core", "localsage.debugger", "localsage.container", "localsage.host",
                      "localsage.api"),
}

def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(name: str, path: Path, known: set) -> set:
    """Every localsage module `name` imports, at module level or inside functions (a lazy import is
    still a dependency). `from pkg import sub` counts as importing pkg.sub when that is a module."""
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            found.update(t for t in targets if t.startswith("localsage"))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            anchor = base.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            mod = ".".join(anchor + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if not mod.startswith("localsage"):
            continue
        subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
        found.update(subs)
        if len(subs) < len(node.names):
            found.add(mod)
    # a package importing its own submodules, or a module its own package, is not a dependency edge
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def graph() -> dict:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(g: dict):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not state.get(m):
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if not state.get(n):
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_import_graph_is_seen():
    g = graph()
    assert "localsage.host.runner" in g["localsage.cli.jobs"]  # lazy imports count
    assert "localsage.core.contract" in g["localsage.host.runner"]


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def layer_of(name: str):
    return next((layer for layer in LAYERS if under(name, (layer,))), None)


def test_every_module_lives_in_a_layer():
    loose = [name for name in modules() if layer_of(name) is None and name not in ("localsage", "localsage.__main__")]
    assert not loose, f"modules outside core/, debugger/, container/, host/, api/, cli/: {loose}"


def test_imports_go_one_way():
    g = graph()
    bad = [(a, b) for a, deps in g.items() for b in deps
           if (layer := layer_of(a)) and layer_of(b) != layer and layer_of(b) not in LAYERS[layer]]
    assert not bad, bad


def test_library_modules_have_no_argparse():
    offenders = [name for name, path in modules().items()
                 if not under(name, ("localsage.cli",)) and "argparse" in path.read_text()
                 and name not in ("localsage.container.train", "localsage.container.scriptmode",
                                  "localsage.container.entry")]
    assert not offenders, offenders


def test_cli_starts_without_torch_or_smdebug():
    probe = ("import sys, json; from localsage.cli import build_parser; build_parser(); "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'smdebug', 'optuna', 'boto3', 'sagemaker', 'numpy'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    assert loaded == [], loaded


def test_modules_stay_small():
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not big, big
