"""``glue`` for the notebooks: myst-nb's when it is installed, else an equivalent that writes the same output.

A notebook only *stores* values with ``glue``; the book build (myst-nb, in the ``[book]`` extra) reads them. myst-nb
brings Sphinx and its tree along, so the core install (Colab, ``pip install tdpm-dip``) runs the notebooks with
``_glue``, which writes the display output that myst-nb's ``glue`` writes (``tests/test_glue.py`` compares them).
"""

from __future__ import annotations

from typing import Any

from IPython.core.formatters import format_display_data
from IPython.display import display as _display

PREFIX = "application/papermill.record/"  # myst_nb.ext.glue.GLUE_PREFIX: a stored, not shown, value


def _glue(name: str, variable: Any, display: bool = True) -> None:
    """Store ``variable``'s display data under ``name`` in the cell's output (shown too when ``display``)."""
    bundle, metadata = format_display_data(variable)
    prefix = "" if display else PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    _display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


try:
    from myst_nb import glue
except ImportError:  # the core install: no Sphinx
    glue = _glue
