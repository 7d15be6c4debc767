"""The package's shape: floors that import only downwards, no import circle, small modules.

Read from the source (``ast``), so function-level imports count too.
"""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dfx_keras"
MAX_LINES = 400
LONGER = {"data/demo.py"}  # the procedural demo renderer: one job, long by nature

# Lowest floor first. A module imports from lower floors, and within its own package (for
# example data.pipelines from data.corpus) as long as that makes no circle. ``dfx_keras``
# itself is the package's lazy API (it imports nothing at load).
FLOORS = (
    ("dfx_keras", "classes", "configs"),
    ("workdir", "optimizers", "contrastive", "kcv", "architectures", "input_residuals", "fused_batchnorm"),
    ("torchvision_weights",),
    ("backbones", "data"),
    ("models", "datasets"),
    ("config", "calibration", "thresholds"),
    ("training", "serving"),
    ("evaluation",),
    ("explain",),
    ("predict",),
    ("run",),
    ("cli",),
)
FLOOR = {group: i for i, groups in enumerate(FLOORS) for group in groups}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str:
    """The module an imported dotted name lives in (``dfx_keras.data.corpus.Sample`` -> ``dfx_keras.data.corpus``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> set[str]:
    """The dfx_keras modules ``module`` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(_target(a.name) for a in node.names if a.name.startswith("dfx_keras"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dfx_keras"):
            found.update(_target(f"{node.module}.{a.name}") for a in node.names)
    return found - {module}


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_is_on_a_floor():
    assert {group(m) for m in MODULES} <= set(FLOOR), "add the new package or module to FLOORS"


def test_imports_point_down_only():
    upward = [f"{m} -> {t}" for m in MODULES for t in imports(m)
              if FLOOR[group(t)] > FLOOR[group(m)] or (FLOOR[group(t)] == FLOOR[group(m)] and group(t) != group(m))]
    assert not upward


def test_no_import_circle():
    graph = {m: imports(m) for m in MODULES}
    done, path = set(), []

    def visit(module):
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONGER, long


def test_only_the_cli_reads_flags():
    readers = [m for m in MODULES if group(m) != "cli" and re.search(r"\bFLAGS\b", MODULES[m].read_text())]
    assert not readers
