"""A Sphinx extension for the book: a figure whose label starts with ``tab-`` is numbered and referred to as a table.

A chapter prints its tables as HTML outputs, which MyST's ``{table}`` directive cannot wrap, so they reach Sphinx as
figures (a ``{glue:figure}`` or a cell's ``mystnb.figure`` metadata with a caption and a ``name``). Left as figures
they would be called "Fig. 4"; this turns each one labelled ``tab-...`` into a node that Sphinx numbers with the
tables ("Table 4", in the ``numref`` text and in the caption), with its caption above it, as tables have.
A table whose content comes from elsewhere (the intro's, glued from chapter 07 with ``:doc:``, which
``{glue:figure}`` does not take) gets the same with the ``captioned-table`` directive:
````{captioned-table} The caption.
:name: tab-x

```{glue} name
:doc: notebooks/07_conclusions.ipynb
```
````
Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.transforms import SphinxTransform
from sphinx.util.docutils import SphinxDirective

PREFIX = "tab-"


class captioned_table(nodes.General, nodes.Element):
    """A figure that holds a table: numbered as a table, caption first."""


class TablesFromFigures(SphinxTransform):
    # before the domains record their labels (SphinxDomains, priority 850), so that a label names the new node
    default_priority = 800

    def apply(self, **kwargs) -> None:
        for fig in list(self.document.findall(nodes.figure)):
            if not any(name.startswith(PREFIX) for name in fig["names"]):
                continue
            captions = [c for c in fig.children if isinstance(c, nodes.caption)]
            rest = [c for c in fig.children if not isinstance(c, nodes.caption)]
            table = captioned_table(fig.rawsource, *captions, *rest, **fig.attributes)
            table.source, table.line = fig.source, fig.line
            fig.replace_self(table)
            for node_id in table["ids"]:
                self.document.ids[node_id] = table


class CaptionedTable(SphinxDirective):
    """A numbered table around any content: the argument is the caption, ``:name:`` the label."""
    required_arguments = 1
    final_argument_whitespace = True
    has_content = True
    option_spec = {"name": directives.unchanged}

    def run(self):
        table = captioned_table()
        self.set_source_info(table)
        text, messages = self.state.inline_text(self.arguments[0], self.lineno)
        table += nodes.caption(self.arguments[0], "", *text)
        self.state.nested_parse(self.content, self.content_offset, table)
        self.add_name(table)
        return [table, *messages]


def visit_html(self, node) -> None:
    self.body.append(self.starttag(node, "figure", CLASS="align-default tdpm-table-figure"))


def depart_html(self, node) -> None:
    self.body.append("</figure>\n")


def setup(app):
    # html only: a handler for a builder's own name (singlehtml) would hide every html-format handler of other
    # extensions from that builder (Sphinx's registry looks up the name first, the format only without it)
    app.add_enumerable_node(captioned_table, "table", html=(visit_html, depart_html))
    app.add_transform(TablesFromFigures)
    app.add_directive("captioned-table", CaptionedTable)
    return dict(parallel_read_safe=True, parallel_write_safe=True)
