"""Structure of the book's notebooks: one parameters cell first, no committed errors, validation before work."""

import ast
import json
import re
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
    # no hand-written badge: the book's Colab launch button comes from _config.yml's repository.url
    assert "colab-badge" not in "".join(first["source"])
    assert "remove-cell" in tagged[0]["metadata"]["tags"], f"{path.name}: the parameters cell shows in the book"


@pytest.mark.parametrize("path", NOTEBOOKS + DRAFTS, ids=lambda p: ("draft " if p in DRAFTS else "") + p.stem)
def test_install_cell_uses_the_configured_repository(path):
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    text = path.read_text()
    assert "git+https://" not in text.replace(f"git+{url}.git", ""), f"{path.name}: an install URL other than {url}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_error_outputs(path):
    nb = json.loads(path.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {len(errors)} error outputs"
    # the book shows stderr: no warning of the library's own (a table too wide for the page, say) may reach it
    warned = [line for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stderr"
              for line in "".join(o.get("text", "")).splitlines() if "Warning:" in line and "tdpmlib" in line
              or "pivot or split it" in line]
    assert not warned, f"{path.name}: {warned[:2]}"


# Notebooks whose code is the point and stays visible in the book (00 derives the formulas in code).
CODE_VISIBLE = {"00_theory"}
HIDDEN_TAGS = {"remove-input", "remove-cell", "hide-input", "hide-cell"}


def visible_code_cells(nb: dict) -> list[int]:
    """Code cells the built book shows: jupyter-book removes every code source (nb_remove_code_source in
    _config.yml) unless a notebook opts out in metadata.mystnb, and then shows those without a hiding tag."""
    conf = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]["config"]
    removed = nb.get("metadata", {}).get("mystnb", {}).get("remove_code_source", conf.get("nb_remove_code_source", False))
    if removed:
        return []
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and not HIDDEN_TAGS & set(c.get("metadata", {}).get("tags", []))]


def html_tables(nb: dict) -> list[str]:
    return ["".join(o["data"]["text/html"]) for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if "text/html" in o.get("data", {}) and "<table" in "".join(o["data"]["text/html"])]


def table_rows(table_html: str) -> list[list[tuple[str, str]]]:
    """The (tag, text) cells of every row of the HTML tables in a string (stdlib parser; no lxml here)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th") and self.rows:
                self.cell = [tag, ""]

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append((self.cell[0], self.cell[1].strip()))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell[1] += data

    parser = Rows()
    parser.feed(table_html)
    return [r for r in parser.rows if r]


def empty_columns(table_html: str) -> list[str]:
    """Headers of the columns of an HTML table whose every body cell is missing (None, NaN, empty, a dash)."""
    rows = table_rows(table_html)
    head = [r for r in rows if all(tag == "th" for tag, _ in r)]
    body = [[text for tag, text in r if tag == "td"] for r in rows if any(tag == "td" for tag, _ in r)]
    if not head or not body:
        return []
    names = [text for _, text in head[0]]
    width = max(len(r) for r in body)
    names = names[len(names) - width:] if len(names) >= width else names + [""] * (width - len(names))
    missing = {"None", "NaN", "nan", "", "–", "<NA>"}
    return [names[j] for j in range(width) if all((r[j] if j < len(r) else "") in missing for r in body)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_show_no_code_and_no_empty_column(path):
    nb = json.loads(path.read_text())
    if path.stem not in CODE_VISIBLE:
        assert not visible_code_cells(nb), f"{path.name}: code cells {visible_code_cells(nb)} show in the book"
    if (REPO / "notebooks" / "drafts" / path.name).exists():
        pytest.skip("superseded by its draft; its outputs are replaced by the next reference run")
    bad = [(i, cols) for i, t in enumerate(html_tables(nb)) if (cols := empty_columns(t))]
    assert not bad, f"{path.name}: tables with all-missing columns {bad}"


def test_the_checks_catch_what_they_look_for():
    nb = {"metadata": {"mystnb": {"remove_code_source": False}},
          "cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": []},
                    {"cell_type": "code", "metadata": {"tags": ["remove-input"]}, "source": "y", "outputs": []}]}
    assert visible_code_cells(nb) == [0]
    assert visible_code_cells({"metadata": {}, "cells": nb["cells"]}) == []  # the book's default removes code
    table = "<table><thead><tr><th>method</th><th>fid</th></tr></thead><tbody><tr><td>DIP</td><td>None</td></tr></tbody></table>"
    assert empty_columns(table) == ["fid"]


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


def shown_cells(nb: dict):
    """(index, cell) of the code cells whose outputs the book shows."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and not {"remove-cell", "remove-output"} & set(c.get("metadata", {}).get("tags", []))]


def unsourced_outputs(nb: dict) -> list[int]:
    """Shown cells with a figure or a table (not the folded run details) and no note naming the results file and
    the recompute command: neither in their own output (tables.show, tables.figure_note) nor in a markdown cell
    tagged ``source-note`` right after them. Consecutive code cells (no prose between them, e.g. one benchmark's
    three cost tables) share one such note, given once under any of them or right after the last."""
    cells, bad = nb["cells"], []

    def sourced(i):
        html = ["".join(o.get("data", {}).get("text/html", "")) for o in cells[i].get("outputs", [])]
        return any("tdpm-source" in h for h in html) or (
            i + 1 < len(cells) and "source-note" in cells[i + 1].get("metadata", {}).get("tags", []))

    def run_of(i):  # the consecutive code cells around cell i
        a = b = i
        while a > 0 and cells[a - 1]["cell_type"] == "code":
            a -= 1
        while b + 1 < len(cells) and cells[b + 1]["cell_type"] == "code":
            b += 1
        return range(a, b + 1)

    for i, c in shown_cells(nb):
        html = ["".join(o.get("data", {}).get("text/html", "")) for o in c.get("outputs", [])]
        has = any("image/png" in o.get("data", {}) for o in c.get("outputs", [])) or any(
            "<table" in h and "tdpm-run-details" not in h for h in html)
        if has and not any(sourced(j) for j in run_of(i)):
            bad.append(i)
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_and_table_says_how_to_regenerate_it(path):
    nb = json.loads(path.read_text())
    assert not unsourced_outputs(nb), f"{path.name}: cells {unsourced_outputs(nb)} show results without a source note"
    profile = next((ast.literal_eval(line.split("=", 1)[1].strip()) for c in nb["cells"]
                    if "injected-parameters" in c.get("metadata", {}).get("tags", [])
                    for line in "".join(c["source"]).splitlines() if line.startswith("profile")), "cpu")
    import re

    for c in nb["cells"]:
        if "source-note" in c.get("metadata", {}).get("tags", []):
            text = "".join(c["source"])
            first = re.search(r"`(results/[^`]+)`", text).group(1)
            assert first.startswith(f"results/{profile}/"), text
            assert f"--profile {profile}" in text or "scripts/" in text.split("recompute:")[1], text
            assert (REPO / first).exists(), f"{path.name}: the note names {first}, which is not committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_book_shows_no_warnings(path):
    """A warning printed by a shown cell (stderr) lands on the page as raw text."""
    nb = json.loads(path.read_text())
    shown = [i for i, c in shown_cells(nb) for o in c.get("outputs", [])
             if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not shown, f"{path.name}: cells {shown} print to stderr"


def test_the_source_checks_catch_a_missing_note():
    fig = {"output_type": "display_data", "data": {"image/png": "x"}, "metadata": {}}
    note = {"cell_type": "markdown", "metadata": {"tags": ["source-note"]}, "source": "Figure: `results/cpu/x`"}
    prose = {"cell_type": "markdown", "metadata": {}, "source": "Some prose."}
    code = {"cell_type": "code", "metadata": {}, "outputs": [fig]}
    nb = {"cells": [code, prose, code, note]}
    assert unsourced_outputs(nb) == [0]  # prose between: the note below the second figure is not the first's
    assert unsourced_outputs({"cells": [code, code, note]}) == []  # consecutive figures share the note below them
    assert unsourced_outputs({"cells": [code, code, prose]}) == [0, 1]


def test_runner_points_source_notes_at_the_run_profile(tmp_path):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "scripts" / "run_notebooks.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    nb = nbformat.v4.new_notebook()
    note = nbformat.v4.new_markdown_cell("Data: `results/cpu/03_tdpm_dip/x.csv` · recompute: "
                                         "`python scripts/run_notebooks.py --profile cpu --only 03_tdpm_dip`")
    note.metadata["tags"] = ["source-note"]
    other = nbformat.v4.new_markdown_cell("results/cpu/ stays in prose")
    nb.cells = [note, other]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, str(path))
    runner.fold_injected(path, "paper")
    cells = nbformat.read(str(path), as_version=4).cells
    assert cells[0].source == ("Data: `results/paper/03_tdpm_dip/x.csv` · recompute: "
                               "`python scripts/run_notebooks.py --profile paper --only 03_tdpm_dip`")
    assert cells[1].source == "results/cpu/ stays in prose"


# ------------------------------------------------------------------ prose by people, numbers by code (issue 30)
GLUE_MAX_CHARS = 80
GLUE_REF = re.compile(r"\{glue(?::\w+)?\}`(?:([^`:]+\.ipynb)::)?([A-Za-z0-9_]+)")


def glued_values(nb: dict) -> dict:
    """{name: text} of every value a notebook glues (myst-nb's display data with a scrapbook name)."""
    out = {}
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                text = o.get("data", {}).get("application/papermill.record/text/plain", "")
                out[name] = "".join(text) if isinstance(text, list) else text
    return out


def long_glued_text(nb: dict, limit: int = GLUE_MAX_CHARS) -> list[str]:
    """Names of glued text values (strings, shown as their repr) longer than ``limit`` characters."""
    return [n for n, v in glued_values(nb).items() if v[:1] in "'\"" and len(v) - 2 > limit]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_glued_text_is_a_number_or_a_short_phrase(path):
    """Sentences live in the markdown; a glued string is at most a short phrase."""
    assert not long_glued_text(json.loads(path.read_text())), path.name


@pytest.mark.parametrize("path", [REPO / "intro.md", *NOTEBOOKS], ids=lambda p: p.stem)
def test_every_glue_reference_has_its_value(path):
    """Every {glue} reference in the markdown names a value its notebook (or the notebook it points at) glues."""
    if path.suffix == ".md":
        text, own = path.read_text(), {}
    else:
        nb = json.loads(path.read_text())
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        own = glued_values(nb)
    glued = {}
    for doc, name in GLUE_REF.findall(text):
        if doc:
            source = (path.parent / doc).resolve()
            glued.setdefault(source, glued_values(json.loads(source.read_text())))
            assert name in glued[source], f"{path.name}: {doc}::{name} is not glued"
        else:
            assert name in own, f"{path.name}: {name} is not glued"
    for d in re.findall(r"```\{glue(?::figure)?\} (\w+)\n(?::doc: (\S+))?", text):
        name, doc = d
        values = glued_values(json.loads((path.parent / doc).read_text())) if doc else own
        assert name in values, f"{path.name}: figure/table {name} is not glued"


def test_the_glue_checks_catch_a_sentence():
    out = {"output_type": "display_data", "metadata": {"scrapbook": {"name": "x"}},
           "data": {"application/papermill.record/text/plain": "'" + "word " * 20 + "'"}}
    num = {"output_type": "display_data", "metadata": {"scrapbook": {"name": "n"}},
           "data": {"application/papermill.record/text/plain": "1.2345678901234567"}}
    assert long_glued_text({"cells": [{"cell_type": "code", "outputs": [out, num]}]}) == ["x"]
