"""tdpmlib.book.sphinx_tables: a figure labelled tab-... is numbered and referred to as a table, other figures are not."""

import io

import pytest

sphinx_app = pytest.importorskip("sphinx.application")

SOURCE = """Doc
===

.. figure:: a.png
   :name: fig-a

   A figure.

.. figure:: b.png
   :name: tab-b

   A table's caption.

.. figure:: c.png
   :name: tab-c

   Another table.

.. captioned-table:: A table of any content.
   :name: tab-d

   Some text.

See :numref:`fig-a`, :numref:`tab-b`, :numref:`tab-c` and :numref:`tab-d`.
"""


def build(tmp_path, extensions, builder="html", extra="", warnings=None):
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(f"extensions = {extensions!r}\nnumfig = True\ntodo_include_todos = True\n")
    text = SOURCE if extensions else SOURCE[:SOURCE.index(".. captioned-table")] + SOURCE[SOURCE.index("See "):]
    (src / "index.rst").write_text((text.replace(" and :numref:`tab-d`", "") if not extensions else text) + extra)
    for name in ("a.png", "b.png", "c.png"):
        (src / name).write_bytes(b"")
    app = sphinx_app.Sphinx(str(src), str(src), str(tmp_path / "out"), str(tmp_path / "doctrees"), builder,
                            status=None, warning=warnings, freshenv=True)
    app.build()
    return (tmp_path / "out" / "index.html").read_text(), app.statuscode


def test_tab_labels_become_numbered_tables_with_the_caption_first(tmp_path):
    html, status = build(tmp_path, ["tdpmlib.book.sphinx_tables"])
    assert status == 0
    refs = html[html.index("See "):]
    assert "Fig. 1" in refs and "Table 1" in refs and "Table 2" in refs and "Table 3" in refs and "Fig. 2" not in refs
    assert html.index("Table 3") < html.index("Some text")
    table = html[html.index('id="tab-b"'):html.index('id="tab-c"')]
    assert table.index("Table 1") < table.index("b.png")  # the caption above the table
    assert "tdpm-table-figure" in html[html.rindex("<figure", 0, html.index('id="tab-b"')):html.index('id="tab-b"')]


def test_without_the_extension_they_are_figures(tmp_path):  # the property the extension exists for
    html, _ = build(tmp_path, [])
    refs = html[html.index("See "):]
    assert "Fig. 3" in refs and "Table" not in refs


def test_the_single_page_build_numbers_them_too(tmp_path):  # make pdf prints the singlehtml build
    # and other extensions' html nodes (here a todo) still render there: an unknown node would be an error
    warnings = io.StringIO()
    html, status = build(tmp_path, ["tdpmlib.book.sphinx_tables", "sphinx.ext.todo"], builder="singlehtml",
                         extra="\n.. todo:: Something left to do.\n", warnings=warnings)
    assert "unknown node type" not in warnings.getvalue()
    assert status == 0 and "Table 1" in html and "Table 3" in html and "Something left to do" in html
