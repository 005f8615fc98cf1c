"""Structure of the book's notebooks: one parameters cell first, no committed errors, validation before work."""

import ast
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"profile", "data_source", "seed", "device", "results_dir"}


def toc_notebooks():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return [REPO / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


NOTEBOOKS = toc_notebooks()
# Rewritten chapters that replace their namesakes once their reference run exists: held to the same rules.
DRAFTS = sorted((REPO / "notebooks" / "drafts").glob("*.ipynb"))


def test_toc_lists_the_chapters_in_order():
    names = [p.stem for p in NOTEBOOKS]
    assert names == sorted(names) and names[0] == "00_theory" and "07_conclusions" in names


@pytest.mark.parametrize("path", NOTEBOOKS + DRAFTS, ids=lambda p: ("draft " if p in DRAFTS else "") + p.stem)
def test_one_parameters_cell_first_with_flat_literals(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} parameters cells"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell is not the first code cell"
    names = set()
    for node in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{path.name}: not a flat assignment"
        ast.literal_eval(node.value)  # raises if not a literal
        names.add(node.targets[0].id)
    assert REQUIRED <= names, f"{path.name}: missing {REQUIRED - names}"
    import papermill  # papermill silently skips lines it cannot parse (e.g. a comment holding '='): it must see all

    assert set(papermill.inspect_notebook(str(path))) == names, f"{path.name}: papermill does not see every parameter"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
    assert "colab-badge" in "".join(first["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_error_outputs(path):
    nb = json.loads(path.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {len(errors)} error outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_valid_nbformat(path):
    """Invalid JSON (e.g. `outputs` on a markdown cell) makes papermill and jupyter warn on every cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # raises ValidationError naming the offending property


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_figure_is_shown_twice(path):
    """A cell ending in a bare `fig` of a still-open figure shows it twice under the inline backend (its repr,
    then the open figure at the end of the cell); such cells end with plt.show() instead."""
    nb = json.loads(path.read_text())
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            continue
        pngs = ["".join(o["data"]["image/png"]) for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(pngs) == len(set(pngs)), f"{path.name} cell {i}: the same image is shown twice"


@pytest.mark.slow
def test_bad_parameter_fails_at_the_validation_cell(tmp_path):
    import papermill

    src = REPO / "notebooks" / "00_theory.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters={"profile": "bogus"},
                                   cwd=str(src.parent), progress_bar=False, kernel_name="python3")
    err = info.value
    assert err.ename == "ValueError" and "profile='bogus' is not allowed" in err.evalue
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    failed = [c for c in nb["cells"] if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "pipeline.setup(" in "".join(failed[0]["source"])


def test_every_draft_replaces_a_chapter():
    assert {p.name for p in DRAFTS} <= {p.name for p in NOTEBOOKS}
