"""The packages form layers whose imports point one way (README, "Layers").

Every import in the project's packages — at module level or inside a function — is read from the
source, mapped to the layer of the module it names, and must name the same layer or one below.
Importing the engine must not load the P4Runtime stack or the plotting and graph libraries, and a
reference-switch process must not load the plotting and graph libraries either.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first; a layer may import itself and the layers before it, and nothing else.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("p4src",),
    ("controller.base",),
    ("controller.engine",),
    ("controller.mud",),
    ("controller.store",),
    ("controller.ingest",),
    ("controller.distributed",),
    ("controller.p4rt",),
    ("controller.control",),
    ("controller.web",),
    ("refswitch",),
    ("topology",),
    ("svcfp",),
)
# The reference switch stands beside the controller, not on it: it may use the base only.
NARROWER = {"refswitch": ("p4src", "controller.base", "refswitch")}
PROJECT_ROOTS = ("p4src", "controller", "refswitch", "topology", "svcfp")


def layer_of(module: str) -> str | None:
    """The layer (package prefix) a dotted module name belongs to, or None outside the project."""
    if module == "controller":
        # The distribution's root package holds only its version: part of the base.
        return "controller.base"
    found = None
    for layer in LAYERS:
        for prefix in layer:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (found is None or len(prefix) > len(found)):
                found = prefix
    return found


def rank(layer: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if layer in names)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of the project."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, here: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, relative ones resolved; `here` is the
    file's module name (default: from its place in the project)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = module_name(path) if here is None else here
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from package import module` names a module too.
            found.extend(
                (node.lineno, f"{target}.{alias.name}")
                for alias in node.names
                if is_module(f"{target}.{alias.name}")
            )
    return found


def project_files() -> list[Path]:
    return sorted(p for root in PROJECT_ROOTS for p in (ROOT / root).rglob("*.py"))


def test_every_project_module_has_a_layer() -> None:
    unplaced = [str(p) for p in project_files() if layer_of(module_name(p)) is None]
    assert unplaced == []


def test_imports_point_down_the_layers() -> None:
    upward: list[str] = []
    for path in project_files():
        mine = layer_of(module_name(path))
        assert mine is not None
        allowed = NARROWER.get(mine)
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if theirs is None:
                continue
            if (theirs not in allowed) if allowed is not None else rank(theirs) > rank(mine):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target}")
    assert upward == []


def test_the_layer_graph_has_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for path in project_files():
        mine = layer_of(module_name(path))
        assert mine is not None
        for _, target in imports_of(path):
            theirs = layer_of(target)
            if theirs is not None and theirs != mine:
                edges.setdefault(mine, set()).add(theirs)
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        assert node not in visiting, " -> ".join([*visiting, node])
        if node in done:
            return
        visiting.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)


def test_the_walk_finds_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import numpy\n"
        "from . import exporter\n"
        "def f():\n"
        "    from topology.graph import hosts\n"
        "    return hosts\n"
    )
    found = imports_of(source, here="controller.engine.probe")
    assert (1, "numpy") in found
    assert (2, "controller.engine.exporter") in found
    assert (4, "topology.graph") in found
    assert rank(layer_of("topology.graph") or "") > rank("controller.engine")


def loaded_modules(code: str) -> set[str]:
    """The top-level packages loaded after running `code` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


HEAVY_FOR_THE_ENGINE = {"grpc", "finsy", "matplotlib", "networkx", "google", "tqdm"}


def test_the_engine_imports_with_numpy_alone() -> None:
    modules = [module_name(p) for p in sorted((ROOT / "controller" / "engine").rglob("*.py"))]
    loaded = loaded_modules("\n".join(f"import {m}" for m in modules))
    assert loaded & HEAVY_FOR_THE_ENGINE == set()
    # Nothing from outside the standard library but numpy (and the project itself, and what
    # the interpreter itself loads at start: the editable install's finder, sitecustomize).
    started = loaded_modules("")
    assert loaded - started - set(sys.stdlib_module_names) - {"controller", "numpy"} == set()


@pytest.mark.parametrize(
    "entry",
    [
        "import refswitch.cli",
        "import runpy, sys\nsys.argv = ['refswitch', '--help']\n"
        "try:\n    runpy.run_module('refswitch', run_name='__main__')\n"
        "except SystemExit:\n    pass",
    ],
    ids=["module", "process"],
)
def test_a_reference_switch_loads_no_plotting_or_graphs(entry: str) -> None:
    loaded = loaded_modules(entry)
    assert loaded & {"matplotlib", "networkx", "topology", "svcfp"} == set()
