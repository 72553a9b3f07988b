"""The one-way data path: each folder of geomis imports only from its own stage or earlier ones (DEVELOPERS.md),
the modules import each other without cycles, and the layout stays readable (small modules, a short top level)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geomis"

# Units are the subpackages and the top-level modules; their order is the order of the data path.
STAGES: list[tuple[str, set[str]]] = [
    ("infrastructure", {"errors", "settings", "atomic_io", "stats", "provenance"}),
    ("models", {"models"}),
    ("toy models (Chapter 1)", {"toy"}),
    ("texts and tokens", {"chat"}),
    ("activations", {"activations"}),
    ("judges (score texts)", {"judges"}),
    ("SAEs and SAE codes", {"sae"}),
    ("feature sets and geometry", {"features"}),
    ("sample scores and filtered data", {"filter"}),
    ("fine-tune", {"direction_ablation", "finetune"}),
    ("evaluation", {"evaluation"}),
    ("experiments", {"experiments"}),
    ("exercises (the book's checks)", {"exercises"}),
    ("interface", {"cli", "__main__", "__init__"}),
]
STAGE_OF = {unit: index for index, (_, units) in enumerate(STAGES) for unit in units}
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 550
MAX_TOP_LEVEL_FILES = 10


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """The geomis modules (dotted names) that ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "geomis":
            found.add(node.module)
            for alias in node.names:  # ``from geomis.sae import loading`` imports the module geomis.sae.loading
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "geomis")
    return found


GRAPH = {_module_name(path): _imports(path) for path in MODULES}


def test_every_unit_has_a_stage() -> None:
    units = {_unit(module) for module in GRAPH}
    assert units - set(STAGE_OF) == set(), "add new folders or top-level modules to STAGES (and DEVELOPERS.md's table)"
    assert set(STAGE_OF) - units == set(), "STAGES names a unit that no longer exists"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_imports_never_reach_up_the_data_path(path: Path) -> None:
    module = _module_name(path)
    own = STAGE_OF[_unit(module)]
    later = {name: STAGES[STAGE_OF[_unit(name)]][0] for name in GRAPH[module]
             if name != "geomis" and STAGE_OF[_unit(name)] > own}
    assert not later, f"{module} ({STAGES[own][0]}) imports later stages: {later}"


def test_infrastructure_imports_only_the_errors() -> None:
    """Any stage may import the infrastructure, so it stands alone: it may raise geomis's errors, nothing more."""
    infrastructure = STAGES[0][1]
    for module, names in GRAPH.items():
        if _unit(module) in infrastructure:
            assert names <= {"geomis", "geomis.errors"}, f"{module} (infrastructure) imports {names - {'geomis'}}"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_only_the_interface_imports_the_package_root(path: Path) -> None:
    """``import geomis as gm`` is for readers; inside the package it would tie every module to every other."""
    module = _module_name(path)
    if _unit(module) in {"__init__", "__main__"}:
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    root_names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "geomis"
                  for alias in node.names}
    assert root_names <= {"__version__"}, f"{module} imports {root_names} from the package root"


def test_no_import_cycles() -> None:
    graph = {module: {name for name in names if name in GRAPH and name != module} for module, names in GRAPH.items()}
    graph["geomis"] = set()  # the root's public API imports lazily, on attribute access
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycle = trail[trail.index(name):] + [name] if name in trail else [module, name]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if name not in state:
                visit(name, trail + [name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_module_name(path)} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_top_level_stays_short() -> None:
    files = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(files) <= MAX_TOP_LEVEL_FILES, f"geomis/ holds {len(files)} modules besides its folders: {files}"
