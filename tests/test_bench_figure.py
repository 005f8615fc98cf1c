"""Chapter 08's speed-up figure (benchmarks.report.speedup_figure) is readable at the book's text width."""

import itertools
import sys
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repository root
from benchmarks import report  # noqa: E402


def fake_runs():
    """One full CPU run with the three kinds of bar chapter 08 shows: a DIP speed-up above its target and two
    sampling ratios near 1 (a span of less than a decade, where a log axis labels its minor ticks by default)."""
    def row(case, row, variant, ratio, target=""):
        return dict(case=case, row=row, variant=variant, baseline="base", status="measured", ratio=ratio,
                    target=target, target_value=float(target.split()[1].rstrip("x")) if target else float("nan"))

    table = pd.DataFrame([
        row("dip", "DIP fit, dip-cpu @32 px, B=16, 100 it.", "batched (vmap over stacked parameters)", 4.35, ">= 3x"),
        row("sampling", "DDPM sampling, cpu preset (ddpm-cpu @32 px), batch 64, on CPU",
            "fast path: bf16 autocast + channels_last", 0.96),
        row("sampling", "DDPM sampling, report's network (ddpm-paper @64 px), batch 2, on CPU",
            "fast path: bf16 autocast + channels_last", 1.11),
    ])
    return [dict(table=table, meta=dict(hardware_name="test CPU"), quick=False, slug="test-cpu")]


def visible_texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


def test_speedup_figure_text_is_large_enough_and_tick_labels_do_not_collide():
    fig = report.speedup_figure(fake_runs())
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = visible_texts(fig)
        assert texts and all(t.get_fontsize() >= report.FIG_FONT for t in texts), \
            sorted({(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < report.FIG_FONT})
        (ax,) = fig.axes
        ticks = [t for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
                 if t.get_visible() and t.get_text().strip() and ax.get_xlim()[0] <= t.get_position()[0]
                 <= ax.get_xlim()[1]]
        assert len(ticks) >= 2  # the axis is labelled at all
        boxes = [t.get_window_extent(renderer) for t in ticks]
        clashes = [(a.get_text(), b.get_text()) for (a, ba), (b, bb) in itertools.combinations(zip(ticks, boxes), 2)
                   if ba.overlaps(bb)]
        assert not clashes, clashes
        # each bar's label is wrapped so that the bars keep room: no line longer than LABEL_WIDTH characters
        lines = [line for t in ax.get_yticklabels() for line in t.get_text().split("\n")]
        assert lines and max(map(len, lines)) <= report.LABEL_WIDTH
    finally:
        plt.close(fig)
