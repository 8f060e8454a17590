"""A line figure (the personalization learning curve) is one spec drawn both ways."""

from __future__ import annotations

import re

from core.studies.figures import FigureSpec, Series, plotly_figure
from core.studies.report import svg


def test_a_lines_spec_draws_the_same_points_with_plotly_and_as_svg():
    xs = (8.0, 24.0, 48.0)
    spec = FigureSpec("curve", "lines", "ROUGE-L vs feedback items", (),
                      (Series("personal", (42.0, 46.0, 52.0), color="#175cd3", x=xs),
                       Series("shared", (38.0, 38.0, float("nan")), color="#b42318", x=xs)),
                      x_range=(30.0, 60.0), percent=False, x_title="feedback items")
    fig = plotly_figure(spec)
    assert [list(t.x) for t in fig.data] == [list(xs), list(xs)]
    assert list(fig.data[0].y) == [42.0, 46.0, 52.0]
    drawn = svg(spec)
    lines = re.findall(r'<polyline[^>]*points="([^"]*)"', drawn)
    assert [len(p.split()) for p in lines] == [3, 2]  # a missing value is left out, not drawn at 0
    ys = [float(pt.split(",")[1]) for pt in lines[0].split()]
    assert ys[0] > ys[1] > ys[2]  # higher ROUGE-L is drawn higher (smaller y)
    assert "personal" in drawn and "shared" in drawn and "feedback items" in drawn
