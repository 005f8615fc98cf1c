"""tdpmlib.workflow.glue writes what myst-nb's glue writes, so a notebook run without myst-nb builds the same book."""

import pytest

from tdpmlib.workflow import glue as G

import myst_nb.ext.glue as myst_glue  # noqa: E402  (in the [dev] extra)


@pytest.mark.parametrize("value, display", [(3.14159, False), ("better than", False), ([1, 2], True)])
def test_fallback_glue_writes_what_myst_nb_writes(monkeypatch, value, display):
    calls = {}
    monkeypatch.setattr(myst_glue, "ipy_display", lambda *a, **k: calls.setdefault("myst", (a, k)))
    monkeypatch.setattr(G, "_display", lambda *a, **k: calls.setdefault("ours", (a, k)))
    myst_glue.glue("x", value, display=display)
    G._glue("x", value, display=display)
    assert calls["ours"] == calls["myst"]
    assert G.PREFIX == myst_glue.GLUE_PREFIX
    (bundle,), kw = calls["ours"]
    assert kw["metadata"]["scrapbook"] == dict(name="x", mime_prefix="" if display else G.PREFIX)
    assert all(k.startswith(kw["metadata"]["scrapbook"]["mime_prefix"]) for k in bundle)
