"""The package's imports point one way: every import goes to a lower layer (docs/architecture.md), so there is no
import circle, and no import hides inside a function to dodge one."""
import ast
from pathlib import Path

from conftest import ROOT

# a unit is a module of sa_dist or one of its subpackages; a unit imports only units of lower layers
LAYERS = {
    1: ["utils"],
    2: ["data", "models", "surrogate", "runs", "resume", "runtime"],
    3: ["checkpoint", "config", "train", "fisher", "objective", "analysis"],
    4: ["cache", "amnesia", "evaluation", "sampling"],
    5: ["methods", "attacks"],
    6: ["pipeline", "sweeps"],
    7: ["api", "cli"],
}
LAYER = {unit: n for n, units in LAYERS.items() for unit in units}
LOCAL_IMPORTS = {("analysis/figures.py", "IPython"), ("analysis/figures.py", "IPython.display"),
                 ("analysis/figures.py", "matplotlib.pyplot")}  # optional or display-only, not to dodge a circle
PACKAGE = ROOT / "sa_dist"


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imports(path: Path):
    """(imported sa_dist unit, line, inside a function) for every import of a module of ``path``'s package."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).parent.parts
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[:len(here) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            names = [target] if node.module else [target + [a.name] for a in node.names]
            for t in names:
                yield (t[0] if t else unit_of(path)), node.lineno, id(node) in in_function
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in in_function:
            yield None, node.lineno, (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name)


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units == set(LAYER), units ^ set(LAYER)


def test_imports_point_down_and_none_hides_in_a_function():
    wrong, local = [], []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package's face re-exports the public names
        unit = unit_of(path)
        for target, line, inside in imports(path):
            where = f"{path.relative_to(PACKAGE)}:{line}"
            if target is None:  # a non-package import inside a function
                if (str(path.relative_to(PACKAGE)), inside) not in LOCAL_IMPORTS:
                    local.append(f"{where} {inside}")
            elif inside:
                local.append(f"{where} sa_dist.{target}")
            elif target != unit and LAYER[target] >= LAYER[unit]:
                wrong.append(f"{where}: {unit} (layer {LAYER[unit]}) imports {target} (layer {LAYER[target]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)
    assert not local, "imports inside functions:\n" + "\n".join(local)


def test_the_architecture_page_shows_these_layers():
    page = (ROOT / "docs" / "architecture.md").read_text()
    for n, units in LAYERS.items():
        row = f"| {n} | " + ", ".join(f"`{u}/`" if (PACKAGE / u / "__init__.py").is_file() else f"`{u}`"
                                      for u in units) + " |"
        assert row in page, row
