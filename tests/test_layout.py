"""The package's layout is the book's architecture: five packages that import only from those before them, no
import circles, and modules short enough to read top to bottom."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tdpmlib"
# Each package imports only from packages of a lower rank or its own (README: "How the code is organised").
RANK = {"connectivity": 0, "evaluation": 1, "methods": 2, "book": 3, "workflow": 4, "studies": 5}
MAX_LINES = 400


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted name: path} of every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known) -> set[str]:
    """The tdpmlib modules that module ``name`` imports anywhere in its body (lazy imports included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "tdpmlib":
                base = node.module.split(".")
            else:
                continue
            for alias in node.names:
                target = ".".join(base + [alias.name])
                found.add(target if target in known else ".".join(base))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tdpmlib"}
    return {f for f in found if f in known and f != name}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports(name, path, mods) for name, path in mods.items()}


def package_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_package_of_the_layout():
    loose = [m for m in modules() if package_of(m) not in RANK and m != "tdpmlib"]
    assert not loose, f"modules outside the layout's packages: {loose}"


def wrong_direction(g) -> list[str]:
    return [f"{a} -> {b}" for a, targets in g.items() for b in sorted(targets)
            if package_of(a) in RANK and package_of(b) in RANK and RANK[package_of(b)] > RANK[package_of(a)]]


def circles(g) -> list[str]:
    state, found = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_packages_import_only_from_the_packages_before_them():
    wrong = wrong_direction(graph())
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(wrong)


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(found)


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_are_short_enough_to_read(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_the_checks_see_a_wrong_import_and_a_circle(tmp_path):
    """The checks are not vacuous: a methods module that imports a study, which imports it back, is reported."""
    pkg = tmp_path / "tdpmlib"
    for sub in ("methods", "studies"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "dip.py").write_text("def f():\n    from ..studies import ablations\n")  # a lazy import counts
    (pkg / "studies" / "ablations.py").write_text("from ..methods import dip\nfrom tdpmlib.methods.dip import f\n")
    g = graph(pkg)
    assert g["tdpmlib.methods.dip"] == {"tdpmlib.studies.ablations"}
    assert g["tdpmlib.studies.ablations"] == {"tdpmlib.methods.dip"}
    assert wrong_direction(g) == ["tdpmlib.methods.dip -> tdpmlib.studies.ablations"]
    assert circles(g) == ["tdpmlib.methods.dip -> tdpmlib.studies.ablations -> tdpmlib.methods.dip"]
