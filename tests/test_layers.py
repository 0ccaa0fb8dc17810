"""The layering of src/retinaseg: a module imports only from its own layer or below.

Layers, top to bottom (docs/architecture.md): ``cli`` → ``serving``, ``registry``, ``tracking``,
``evaluation`` → ``inference`` → ``training`` → ``models`` → ``data`` → ``core``. (``stages/``,
``app/`` and ``benchmarks/`` sit beside ``cli`` at the top, outside the package.) Every import
statement counts, including those inside functions and under ``if TYPE_CHECKING``; an import of a
higher layer is an "upward edge" and fails the test. A new top-level module or package must be
given a layer here before it can be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "retinaseg"

#: lowest first; each entry is a top-level module or subpackage of retinaseg
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("models",),
    ("training",),
    ("inference",),
    ("serving", "server", "registry", "tracking", "evaluation", "team"),
    ("cli",),
)
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}
LAYER_NAMES = {rank: "/".join(names) for rank, names in enumerate(LAYERS)}


def layer(module: str) -> int:
    """The layer of ``retinaseg.<top>...``; the bare package (``retinaseg/__init__``) is core."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(f"{module} is not part of {PACKAGE}")
    if len(parts) == 1:
        return LAYER_OF["core"]
    if parts[1] not in LAYER_OF:
        raise KeyError(f"{PACKAGE}.{parts[1]} has no layer: add it to LAYERS in tests/test_layers.py")
    return LAYER_OF[parts[1]]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` for every retinaseg module ``source`` imports, wherever the statement is.

    ``from retinaseg.x import y`` counts as importing ``retinaseg.x.y`` when that is a module, else
    ``retinaseg.x``; relative imports are resolved against ``module``.
    """
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if _ours(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not _ours(base):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else base))
    return found


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def upward_edges(source: str, module: str, is_package: bool = False) -> list[str]:
    """Human-readable upward edges of one module's source."""
    own = layer(module)
    edges = []
    for line, target in imported_modules(source, module, is_package):
        if layer(target) > own:
            edges.append(
                f"{module}:{line} imports {target} ({LAYER_NAMES[layer(target)]} is above {LAYER_NAMES[own]})"
            )
    return edges


def package_modules() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def test_every_module_has_a_layer():
    for path in package_modules():
        layer(module_name(path))


def test_no_module_imports_from_a_higher_layer():
    edges = []
    for path in package_modules():
        name = module_name(path)
        edges += upward_edges(path.read_text(), name, path.name == "__init__.py")
    assert not edges, "upward imports (see docs/architecture.md):\n" + "\n".join(edges)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("retinaseg.models.saved", "from retinaseg.serving import x"),
        ("retinaseg.models.saved", "def f():\n    from retinaseg.tracking import download\n"),
        ("retinaseg.training.engine", "import retinaseg.evaluation.metrics"),
        ("retinaseg.data.io", "from retinaseg import models"),
        ("retinaseg.core.fileio", "from ..data import io"),
        ("retinaseg.inference.predictor", "from . import files\nfrom ..registry import register"),
    ],
)
def test_an_upward_import_is_caught(module, source):
    assert upward_edges(source, module)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("retinaseg.evaluation.evaluate", "from retinaseg.inference.predictor import Predictor"),
        ("retinaseg.serving", "from retinaseg.tracking import use_store"),  # same layer
        ("retinaseg.cli", "from retinaseg.registry import register_champion"),
        ("retinaseg.models.saved", "import torch\nfrom retinaseg.core import fileio"),
        ("retinaseg.inference.files", "from .predictor import Predictor"),
    ],
)
def test_downward_and_sideways_imports_pass(module, source):
    assert upward_edges(source, module) == []


def test_an_unknown_top_level_module_must_be_placed():
    with pytest.raises(KeyError, match="no layer"):
        layer("retinaseg.helpers")
