"""One spec per study figure, drawn by both the Results page (plotly) and the offline HTML
summary (inline SVG, :mod:`core.studies.report`), so the two always show the same thing.

A :class:`FigureSpec` is plain data: rows (categories, top to bottom), series of values with
their interval, axis range, percent or not, a reference line. :func:`plotly_figure` draws any
spec; the SVG renderer draws the kinds the HTML summary uses (``intervals``, ``stacked``,
``grouped``) and ``lines`` (the personalization benchmark's learning curve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from core.studies.results import StudyResults, on_keys

PALETTE = ["#b42318", "#e17b54", "#d0d5dd", "#6ca6d9", "#175cd3"]  # worst .. best
ARM_COLOR = "#175cd3"
ERROR_DIMENSIONS = {"factual_error": ("factual error", "#b42318"),
                    "omission": ("omission", "#e17b54"), "style_issue": ("style", "#6ca6d9"),
                    "critical_missed": ("missed critical finding", "#6941c6")}


@dataclass(frozen=True)
class Series:
    """One series of a figure: a value per row (NaN: none), with an optional interval.

    ``counts``: the ratings behind each value (shown on hover); ``x``: a scatter's x values.
    """
    name: str
    values: tuple[float, ...]
    lo: tuple[float, ...] | None = None
    hi: tuple[float, ...] | None = None
    color: str = ARM_COLOR
    counts: tuple[int, ...] | None = None
    x: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FigureSpec:
    """What a figure shows, independent of how it is drawn.

    kind: ``intervals`` (a bar, or a point when the range is signed, per row with its
    interval), ``stacked`` (100% stacked bars per row), ``grouped`` (one thin bar per series
    in each row), ``heatmap`` (``matrix`` over rows x ``columns``), ``scatter``, or ``lines``
    (each series' values over its ``x``, e.g. a learning curve; ``x_range`` is the y axis).
    """
    key: str
    kind: str
    title: str
    rows: tuple[str, ...]
    series: tuple[Series, ...]
    x_range: tuple[float, float] = (0.0, 1.0)
    percent: bool = True
    ref: float | None = None
    columns: tuple[str, ...] = ()
    matrix: tuple[tuple[float, ...], ...] = ()
    x_title: str = ""
    y_title: str = ""

    @property
    def signed(self) -> bool:
        return self.x_range[0] < 0


def colors(n: int) -> list[str]:
    """``n`` colours from worst to best (a rating scale's labels)."""
    if n == len(PALETTE):
        return PALETTE
    if n == 3:
        return [PALETTE[0], PALETTE[2], PALETTE[4]]
    if n == 2:
        return [PALETTE[0], PALETTE[4]]
    return [PALETTE[min(len(PALETTE) - 1, round(i * (len(PALETTE) - 1) / max(n - 1, 1)))]
            for i in range(n)]


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _span(rows: Sequence[dict], keys: Sequence[str]) -> float:
    """A symmetric axis half-width for signed values: at least 0.5, at most 4, in halves."""
    span = max([abs(float(r[k])) for r in rows for k in keys if not math.isnan(float(r[k]))]
               + [0.5])
    return min(4.0, math.ceil(span * 2) / 2)


def shares(res: StudyResults) -> FigureSpec:
    """Share rated neutral or better per arm, with its Wilson interval."""
    f = res.shares
    return FigureSpec("shares", "intervals", "Neutral or better (Wilson 95% CI)",
                      tuple(f["arm"]) if len(f) else (),
                      (Series("neutral or better", _floats(f.get("share", [])),
                              _floats(f.get("lo", [])), _floats(f.get("hi", []))),))


def distribution(res: StudyResults) -> FigureSpec:
    """The rating distribution per arm, one stacked segment per label of the scale."""
    arms = tuple(res.study["arms"])
    labels = list(res.scale.labels)
    d = res.distribution
    series = []
    for label, color in zip(labels, colors(len(labels))):
        part = (d[d["label"] == label].set_index("arm").reindex(list(arms)) if len(d)
                else None)
        series.append(Series(label, _floats(part["share"]) if part is not None else (),
                             color=color, counts=tuple(0 if math.isnan(float(n)) else int(n)
                                                       for n in part["n"])
                             if part is not None else ()))
    return FigureSpec("distribution", "stacked", "Rating distribution", arms, tuple(series))


def error_rates(res: StudyResults) -> FigureSpec | None:
    """Per arm, the rate of each error dimension asked (None when none was asked)."""
    e = res.errors
    dims = [d for d in ERROR_DIMENSIONS if len(e) and d in set(e["question"])]
    if not dims:
        return None
    arms = tuple(res.study["arms"])
    top = max([float(v) for v in e["hi"] if not math.isnan(float(v))] + [0.1])
    x_max = min(1.0, math.ceil(top * 5) / 5)            # quarter ticks land on whole %
    by = {(r["arm"], r["question"]): r for r in e.to_dict("records")}
    series = []
    for d in dims:
        name, color = ERROR_DIMENSIONS[d]
        rows = [by.get((arm, d), {"rate": math.nan, "lo": math.nan, "hi": math.nan})
                for arm in arms]
        series.append(Series(name, _floats(r["rate"] for r in rows),
                             _floats(r["lo"] for r in rows), _floats(r["hi"] for r in rows),
                             color=color))
    return FigureSpec("errors", "grouped", "Error rates (Wilson 95% CI)", arms, tuple(series),
                      x_range=(0.0, x_max))


def differences(res: StudyResults) -> FigureSpec | None:
    """Mean rating difference of every pair of arms, with its bootstrap interval."""
    rows = res.paired.to_dict("records")
    if not rows:
        return None
    span = _span(rows, ("lo", "hi", "mean_diff"))
    return FigureSpec("paired", "intervals", "Mean rating difference (bootstrap 95% CI)",
                      tuple(f"{r['arm_a']} − {r['arm_b']}" for r in rows),
                      (Series("mean difference", _floats(r["mean_diff"] for r in rows),
                              _floats(r["lo"] for r in rows), _floats(r["hi"] for r in rows)),),
                      x_range=(-span, span), percent=False, ref=0.0)


def rater_offsets(res: StudyResults) -> FigureSpec | None:
    """Each rater's mean offset from the other raters of the same units."""
    rows = res.bias.to_dict("records")
    if not rows:
        return None
    span = _span(rows, ("lo", "hi", "mean_offset"))
    return FigureSpec("bias", "intervals", "Per-rater mean offset (95% CI)",
                      tuple(str(r["rater"]) for r in rows),
                      (Series("mean offset", _floats(r["mean_offset"] for r in rows),
                              _floats(r["lo"] for r in rows), _floats(r["hi"] for r in rows)),),
                      x_range=(-span, span), percent=False, ref=0.0)


def pairwise_kappa(res: StudyResults) -> FigureSpec | None:
    """Weighted Cohen's kappa of every pair of raters, as a symmetric matrix."""
    f = res.pairwise
    if f.empty:
        return None
    raters = sorted(set(f["rater_a"]) | set(f["rater_b"]))
    idx = {r: i for i, r in enumerate(raters)}
    z = [[math.nan] * len(raters) for _ in raters]
    for row in f.itertuples():
        z[idx[row.rater_a]][idx[row.rater_b]] = z[idx[row.rater_b]][idx[row.rater_a]] = row.kappa
    names = tuple(str(r) for r in raters)
    return FigureSpec("kappa", "heatmap", "Pairwise weighted Cohen's kappa", names, (),
                      x_range=(-1.0, 1.0), percent=False, columns=names,
                      matrix=tuple(tuple(row) for row in z))


def metric_scatter(res: StudyResults, metric: str) -> FigureSpec:
    """An automatic metric against the mean human rating, one point per text, by arm."""
    um = on_keys(res.scale, res.unit_metrics)
    series = tuple(Series(arm, _floats(part["mean_rating"]), x=_floats(part[metric]))
                   for arm in res.study["arms"]
                   if len(part := um[um["arm"] == arm]))
    return FigureSpec(f"metric_{metric}", "scatter", f"{metric} vs mean human rating (per text)",
                      (), series, percent=False, x_title=metric,
                      y_title=f"mean rating ({res.scale.mean_unit})")


def summary_figures(res: StudyResults) -> list[FigureSpec]:
    """The figures of the HTML summary, in its order (none for a study without ratings)."""
    if not res.study.get("n_ratings"):
        return []
    return [f for f in (shares(res), distribution(res), error_rates(res), differences(res),
                        rater_offsets(res)) if f is not None]


def plotly_figure(spec: FigureSpec):
    """The spec drawn with plotly (a ``plotly.graph_objects.Figure``) for the Results page."""
    import plotly.graph_objects as go  # deferred: only the Results page draws with plotly

    fig = go.Figure()
    rows = list(spec.rows)
    for s in spec.series:
        error = None
        if s.lo is not None and s.hi is not None:
            error = dict(type="data", symmetric=False,
                         array=[h - v for v, h in zip(s.values, s.hi)],
                         arrayminus=[v - lo for v, lo in zip(s.values, s.lo)])
        if spec.kind == "scatter":
            fig.add_scatter(x=list(s.x or ()), y=list(s.values), mode="markers", name=s.name,
                            opacity=0.7)
        elif spec.kind == "lines":
            fig.add_scatter(x=list(s.x or ()), y=list(s.values), mode="lines+markers",
                            name=s.name, line=dict(color=s.color))
        elif spec.kind == "intervals" and spec.signed:
            fig.add_scatter(x=list(s.values), y=rows, mode="markers", name=s.name,
                            marker=dict(size=10, color=s.color), error_x=error)
        else:
            fig.add_bar(x=list(s.values), y=rows, orientation="h", name=s.name,
                        marker_color=s.color, error_x=error,
                        customdata=list(s.counts) if s.counts else None)
    if spec.kind == "heatmap":
        fig.add_heatmap(z=[list(r) for r in spec.matrix], x=list(spec.columns), y=rows,
                        zmin=spec.x_range[0], zmax=spec.x_range[1], colorscale="RdBu")
    if spec.ref is not None:
        fig.add_vline(x=spec.ref, line_dash="dash", line_color="#475467")
    layout = dict(title=spec.title, margin=dict(t=50, b=30),
                  height=max(300, 120 + 32 * len(rows)),
                  barmode={"stacked": "stack", "grouped": "group"}.get(spec.kind),
                  showlegend=spec.kind in ("stacked", "grouped", "scatter", "lines"))
    if spec.kind in ("intervals", "stacked", "grouped"):
        layout["xaxis"] = dict(range=list(spec.x_range),
                               tickformat=".0%" if spec.percent else None)
        layout["yaxis"] = dict(autorange="reversed")
        layout["legend"] = dict(orientation="h", y=-0.15, traceorder="normal")
    else:
        layout["xaxis_title"], layout["yaxis_title"] = spec.x_title, spec.y_title
    fig.update_layout(**layout)
    return fig
