"""The house rules of the package layout: modules in pipeline order, lower floors never import higher ones (not
even inside a function), no import cycles, the propagator imports no extractor, a job imports no other job, and no
``Any`` for the cache, extractor or config of a public function."""
from __future__ import annotations

import ast
import inspect
import types
import typing
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "propagate"

# Floors in pipeline order (STYLE.md, "The house we want"); a module may import its own floor or lower ones.
FLOORS: list[list[str]] = [
    ["errors", "options", "config", "metrics", "pck", "io", "device", "lazy", "progress"],
    ["records", "results"],  # run records; results folders (checks, staging, the journal, recovery); no torch
    ["video"],
    ["features"],  # every module of the features package: extractors, shared noise, the stream, the fallback
    ["propagation", "candidates", "correspond"],  # candidates: the per-pair candidate store corrections reuse
    ["labels", "keypoints", "coco", "cvat"],
    ["render"],
    ["kinds", "writers"],  # a codec per label kind (masks, points); the table of result writers
    ["pipeline", "session"],
    ["runs"],
    ["batch"],  # the batch manifest over any runner: the cluster's Ray runner builds on it
    ["datasets", "cache", "demo", "cluster", "app", "matching", "edit", "fiftyone_io"],
    ["cli"],
    ["__init__"],  # the package facade re-exports the API; nothing imports it
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}

# Lower, yet not to be imported: the propagator sees tensors, never extractors (device and dtype resolution, which
# both need, is on the ground floor).
NEVER_IMPORTS: dict[str, set[str]] = {"propagation": {"features"}}
# Floors of separate jobs: a job imports its own modules and lower floors, never another job beside it (what two
# jobs share, such as the DIFT-or-baseline fallback of the demo and the app, goes down a floor).
JOB_FLOORS: set[int] = {FLOOR["datasets"]}
# Known exceptions (module -> the other jobs it imports), each to be moved down a floor: edit, SPair and HPatches
# build on the match job's image helpers (read_image, label_of, features_label, target_images); the synthetic SPair
# set cuts its images from the demo's clip (WALK_CLIP). No new entry: move what two jobs share instead.
JOBS_SHARING: dict[str, set[str]] = {
    "edit": {"matching"}, "datasets.spair": {"matching"}, "datasets.hpatches": {"matching"},
    "datasets.synthetic_spair": {"demo"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def floor_of(module: str) -> int:
    top = module.split(".")[0]
    if top not in FLOOR:
        raise AssertionError(f"propagate/{module} is on no floor of the layout: add it to FLOORS (and STYLE.md)")
    return FLOOR[top]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every ``propagate`` module imported anywhere in the file (top level, functions, TYPE_CHECKING blocks)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("propagate.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "propagate":
                found += [(f"propagate.{a.name}", node.lineno) for a in node.names]
            elif node.module.startswith("propagate."):
                found.append((node.module, node.lineno))
    return [(name.removeprefix("propagate."), line) for name, line in found]


def test_every_module_has_a_floor():
    for module in modules():
        floor_of(module)


def test_no_module_imports_from_a_floor_above_it():
    wrong = []
    for module, path in modules().items():
        for imported, line in imports_of(path):
            if module != "__init__" and imported == "__init__":
                wrong.append(f"propagate/{module}.py:{line} imports the package facade")
            elif floor_of(imported) > floor_of(module):
                wrong.append(f"propagate/{module}.py:{line} imports propagate.{imported} (a higher floor)")
    assert not wrong, "\n".join(wrong)


def rule_breaks(imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports (``module -> [(imported module, line)]``) that break :data:`NEVER_IMPORTS` or :data:`JOB_FLOORS`."""
    wrong = []
    for module, found in imports.items():
        top, path = module.split(".")[0], module.replace(".", "/") + ".py"
        for imported, line in found:
            other = imported.split(".")[0]
            if other in NEVER_IMPORTS.get(top, ()):
                wrong.append(f"propagate/{path}:{line} imports propagate.{imported} ({top} never imports {other})")
            elif (other != top and floor_of(module) in JOB_FLOORS and floor_of(imported) == floor_of(module)
                  and other not in JOBS_SHARING.get(module, ())):
                wrong.append(f"propagate/{path}:{line} imports propagate.{imported} (another job on its floor)")
    return wrong


def test_propagation_imports_no_features_and_no_job_imports_another():
    wrong = rule_breaks({module: imports_of(path) for module, path in modules().items()})
    assert not wrong, "\n".join(wrong)


def test_rule_breaks_are_found():
    """Known answers: each rule caught (at any depth of a package), and what the rules allow let through."""
    imports = {
        "propagation": [("features.common", 41), ("device", 42), ("config", 43)],
        "app.workspace": [("demo", 7), ("app.core", 8), ("features.fallback", 9), ("session", 10)],
        "datasets.davis": [("cache", 3), ("datasets.jhmdb", 4)],
        "edit": [("matching", 2), ("demo", 3)],
        "cli": [("demo", 5), ("app", 6)],
        "session": [("features", 1)],
    }
    assert rule_breaks(imports) == [
        "propagate/propagation.py:41 imports propagate.features.common (propagation never imports features)",
        "propagate/app/workspace.py:7 imports propagate.demo (another job on its floor)",
        "propagate/datasets/davis.py:3 imports propagate.cache (another job on its floor)",
        "propagate/edit.py:3 imports propagate.demo (another job on its floor)",
    ]


def test_no_import_cycles():
    graph = {m: {i for i, _ in imports_of(p) if i in modules() or f"{i}.__init__" in modules()}
             for m, p in modules().items()}
    graph = {m: {i if i in graph else f"{i}.__init__" for i in deps} - {m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def type_checking_names(module: types.ModuleType) -> dict[str, object]:
    """The names a module imports under ``if TYPE_CHECKING:`` (for its annotations only, so that importing it stays
    light), imported here so that its type hints can be resolved."""
    names: dict[str, object] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            exec(compile(ast.Module(body=node.body, type_ignores=[]), module.__name__, "exec"), names)
    return names


@pytest.mark.parametrize("module", ["pipeline", "records", "results", "runs", "batch", "cache", "datasets.davis",
                                    "datasets.jhmdb", "features.stream", "features", "propagation", "demo", "session",
                                    "cluster", "correspond", "matching", "edit", "datasets.spair", "datasets.hpatches"])
def test_public_functions_type_their_cache_extractor_and_config(module):
    import importlib

    mod = importlib.import_module(f"propagate.{module}")
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        functions = [obj] if inspect.isfunction(obj) else [
            f for f in vars(obj).values() if inspect.isfunction(f)] if inspect.isclass(obj) else []
        for function in functions:
            hints = typing.get_type_hints(function, {**vars(mod), **type_checking_names(mod)})
            for param in ("cache", "extractor", "config", "store"):
                if param in inspect.signature(function).parameters:
                    where = f"{module}.{function.__qualname__}({param})"
                    assert param in hints and hints[param] is not typing.Any, where


MAX_LINES = 600  # a module longer than this does more than one job: split it (STYLE.md)


def test_no_module_is_over_600_lines():
    long = {f"propagate/{m.replace('.', '/')}.py": n for m, p in modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_tree_passes_ruff():
    """The lint the test command runs (scripts/test.sh), here too so that a plain pytest catches it."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--quiet", str(PACKAGE.parent)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
