"""The layering the README's Architecture section describes: imports point one way, in
the data package and across the project, with no import tucked inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("backend", "kernels", "captioning")
# captioning/data, bottom to top: a module may import only modules of lower rows.
DATA_LAYERS = [("layout",), ("reader", "vocab", "pca", "features"), ("writer",),
               ("shapes", "annotations"), ("default",), ("images",)]
DATA_MODULES = [name for row in DATA_LAYERS for name in row]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether the import statement sits inside a function) of a file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.extend((f"{child.module}.{alias.name}", inside) for alias in child.names)
                found.append((child.module, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_the_data_package_has_a_module_for_every_layer():
    present = {p.stem for p in (ROOT / "captioning" / "data").glob("*.py")} - {"__init__"}
    assert present == set(DATA_MODULES)
    assert _imports(ROOT / "captioning" / "data" / "__init__.py") == []


@pytest.mark.parametrize("name", DATA_MODULES)
def test_data_modules_import_only_lower_layers(name):
    level = next(i for i, row in enumerate(DATA_LAYERS) if name in row)
    below = {m for row in DATA_LAYERS[:level] for m in row}
    for module, _ in _imports(ROOT / "captioning" / "data" / f"{name}.py"):
        parts = module.split(".")
        if parts[:2] == ["captioning", "data"] and len(parts) > 2:
            assert parts[2] in below, f"captioning.data.{name} imports {module}"


@pytest.mark.parametrize("name", DATA_MODULES)
def test_each_data_module_imports_alone_in_a_fresh_interpreter(name):
    result = subprocess.run([sys.executable, "-c", f"import captioning.data.{name}"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_no_first_party_import_hides_inside_a_function():
    """A function-level import of our own code is how an import cycle hides."""
    hidden = []
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            hidden += [f"{path.relative_to(ROOT)}: {module}" for module, inside in
                       _imports(path) if inside and module.split(".")[0] in FIRST_PARTY]
    assert hidden == []


def test_backend_and_kernels_know_nothing_of_captioning():
    for package in ("backend", "kernels"):
        for path in (ROOT / package).rglob("*.py"):
            assert not [m for m, _ in _imports(path) if m.split(".")[0] == "captioning"], path
