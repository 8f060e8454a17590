"""Render study results: a self-contained one-page HTML summary (inline SVG) and plain text.

No JavaScript and nothing fetched: the HTML opens offline, prints on one A4 page, and can be
attached to a manuscript's supplement. Its figures are the Results page's figures: the same
:class:`core.studies.figures.FigureSpec` each, drawn here as small SVGs (bars with confidence
intervals, stacked distributions, a forest plot), so no plotting library or browser engine is
needed to write them.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Sequence

from core.studies.figures import FigureSpec, summary_figures
from core.studies.results import StudyResults, on_keys


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}f}"


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else f"{100 * v:.1f}%"


def _p(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


# ---------------------------------------------------------------------------------------------
# SVG figures, drawn from the Results page's figure specs
# ---------------------------------------------------------------------------------------------
LEFT, RIGHT, WIDTH, TOP = 150, 20, 460, 28


def _x_of(spec: FigureSpec):
    x_min, x_max = spec.x_range

    def x(v: float) -> float:
        v = min(max(v, x_min), x_max)
        return LEFT + (v - x_min) / (x_max - x_min) * (WIDTH - LEFT - RIGHT)

    return x


def _open(spec: FigureSpec, height: float) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_esc(spec.title)}">',
            f'<text x="{LEFT}" y="16" font-size="12" font-weight="600">{_esc(spec.title)}</text>']


def _grid(spec: FigureSpec, x, y0: float, y1: float) -> list[str]:
    """Five vertical grid lines with tick labels below ``y1``, and the reference line."""
    parts = []
    x_min, x_max = spec.x_range
    for i in range(5):
        v = x_min + (x_max - x_min) * i / 4
        label = f"{100 * v:.0f}%" if spec.percent else f"{v:.2g}"
        parts.append(f'<line x1="{x(v):.1f}" y1="{y0}" x2="{x(v):.1f}" y2="{y1}" '
                     f'stroke="#eaecf0"/>')
        parts.append(f'<text x="{x(v):.1f}" y="{y1 + 14}" font-size="10" '
                     f'text-anchor="middle" fill="#475467">{label}</text>')
    if spec.ref is not None:
        parts.append(f'<line x1="{x(spec.ref):.1f}" y1="{y0}" x2="{x(spec.ref):.1f}" '
                     f'y2="{y1}" stroke="#475467" stroke-dasharray="3,3"/>')
    return parts


def _row_label(name: str, y: float) -> str:
    return f'<text x="{LEFT - 6}" y="{y:.1f}" font-size="11" text-anchor="end">{_esc(name)}</text>'


def _whisker(x, lo: float, hi: float, cy: float, caps: bool = True) -> list[str]:
    if math.isnan(lo) or math.isnan(hi):
        return []
    parts = [f'<line x1="{x(lo):.1f}" y1="{cy:.1f}" x2="{x(hi):.1f}" y2="{cy:.1f}" '
             f'stroke="#101828" stroke-width="1.5"/>']
    if caps:
        parts += [f'<line x1="{x(end):.1f}" y1="{cy - 5:.1f}" x2="{x(end):.1f}" '
                  f'y2="{cy + 5:.1f}" stroke="#101828" stroke-width="1.5"/>' for end in (lo, hi)]
    return parts


def _legend(series, y: float) -> list[str]:
    parts, lx = [], LEFT
    for s in series:
        parts.append(f'<rect x="{lx}" y="{y - 8}" width="9" height="9" fill="{s.color}"/>')
        parts.append(f'<text x="{lx + 12}" y="{y}" font-size="9.5">{_esc(s.name)}</text>')
        lx += 14 + 5.6 * len(str(s.name)) + 8
    return parts


def svg_intervals(spec: FigureSpec) -> str:
    """A bar (or, on a signed axis, a point) per row with its interval whiskers."""
    row_h = 22
    height = TOP + row_h * max(len(spec.rows), 1) + 26
    x = _x_of(spec)
    parts = _open(spec, height) + _grid(spec, x, TOP - 4, height - 22)
    s = spec.series[0]
    for i, name in enumerate(spec.rows):
        y = TOP + i * row_h
        cy = y + row_h / 2
        parts.append(_row_label(name, cy + 4))
        v = s.values[i]
        if math.isnan(v):
            continue
        if spec.signed:
            parts.append(f'<circle cx="{x(v):.1f}" cy="{cy:.1f}" r="4" fill="{s.color}"/>')
        else:
            x0 = x(spec.x_range[0])
            parts.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{x(v) - x0:.1f}" '
                         f'height="{row_h - 8}" fill="{s.color}" opacity="0.75"/>')
        if s.lo is not None and s.hi is not None:
            parts += _whisker(x, s.lo[i], s.hi[i], cy)
    parts.append("</svg>")
    return "".join(parts)


def svg_stacked(spec: FigureSpec) -> str:
    """100% stacked horizontal bars, one segment per series, with a legend."""
    row_h = 22
    height = TOP + row_h * max(len(spec.rows), 1) + 30
    plot_w = WIDTH - LEFT - RIGHT
    parts = _open(spec, height)
    for i, name in enumerate(spec.rows):
        y = TOP + i * row_h
        parts.append(_row_label(name, y + row_h / 2 + 4))
        x0 = float(LEFT)
        for s in spec.series:
            share = s.values[i] if not math.isnan(s.values[i]) else 0.0
            w = share * plot_w
            if w > 0:
                n = s.counts[i] if s.counts else ""
                parts.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" '
                             f'height="{row_h - 6}" fill="{s.color}"><title>{_esc(s.name)}: '
                             f'{n}</title></rect>')
            x0 += w
    parts += _legend(spec.series, height - 10)
    parts.append("</svg>")
    return "".join(parts)


def svg_grouped(spec: FigureSpec) -> str:
    """Per row, one thin bar per series with its interval, and a legend."""
    bar_h = 6
    row_h = bar_h * len(spec.series) + 8
    height = TOP + row_h * len(spec.rows) + 36
    axis_y = TOP + row_h * len(spec.rows)
    x = _x_of(spec)
    parts = _open(spec, height) + _grid(spec, x, TOP - 4, axis_y - 2)
    for i, name in enumerate(spec.rows):
        y0 = TOP + i * row_h
        parts.append(_row_label(name, y0 + row_h / 2 + 3))
        for j, s in enumerate(spec.series):
            v = s.values[i]
            if math.isnan(v):
                continue
            y = y0 + 4 + j * bar_h
            parts.append(f'<rect x="{LEFT}" y="{y}" width="{x(v) - LEFT:.1f}" '
                         f'height="{bar_h - 1}" fill="{s.color}"><title>{_esc(name)}, '
                         f'{_esc(s.name)}: {100 * v:.1f}%</title></rect>')
            if s.lo is not None and s.hi is not None:
                parts += _whisker(x, s.lo[i], s.hi[i], y + (bar_h - 1) / 2, caps=False)
    parts += _legend(spec.series, height - 6)
    parts.append("</svg>")
    return "".join(parts)


def svg_lines(spec: FigureSpec) -> str:
    """Each series as a line with markers over its ``x``; the y axis is ``spec.x_range``."""
    height, bottom = 276, 220
    xs = [v for s in spec.series for v in (s.x or ())] or [0.0, 1.0]
    x_min, x_max = min(xs), max(xs)
    y_min, y_max = spec.x_range

    def px(v: float) -> float:
        return LEFT + (v - x_min) / ((x_max - x_min) or 1) * (WIDTH - LEFT - RIGHT)

    def py(v: float) -> float:
        return bottom - (min(max(v, y_min), y_max) - y_min) / ((y_max - y_min) or 1) * (bottom - TOP)

    parts = _open(spec, height)
    for i in range(5):
        v = y_min + (y_max - y_min) * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{py(v):.1f}" x2="{WIDTH - RIGHT}" y2="{py(v):.1f}" '
                     f'stroke="#eaecf0"/>')
        parts.append(_row_label(f"{100 * v:.0f}%" if spec.percent else f"{v:.3g}", py(v) + 4))
    for v in sorted(set(xs)):
        parts.append(f'<text x="{px(v):.1f}" y="{bottom + 14}" font-size="10" '
                     f'text-anchor="middle" fill="#475467">{v:.3g}</text>')
    for s in spec.series:
        pts = [(px(x), py(y)) for x, y in zip(s.x or (), s.values) if not math.isnan(y)]
        parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{s.color}"/>' for a, b in pts]
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{bottom + 28}" font-size="10" '
                 f'text-anchor="middle">{_esc(spec.x_title)}</text>')
    parts += _legend(spec.series, height - 6)
    parts.append("</svg>")
    return "".join(parts)


SVG_RENDERERS = {"intervals": svg_intervals, "stacked": svg_stacked, "grouped": svg_grouped,
                 "lines": svg_lines}


def svg(spec: FigureSpec | None) -> str:
    """The spec as an inline ``<svg>`` element ("" for None)."""
    return SVG_RENDERERS[spec.kind](spec) if spec is not None else ""


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned), the rest numbers.
    Cells must already be escaped."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
@page { size: A4 landscape; margin: 10mm; }
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       font-size: 11px; color: #101828; margin: 12px; }
h1 { font-size: 17px; margin: 0 0 2px 0; } h2 { font-size: 12.5px; margin: 10px 0 4px 0; }
.meta { color: #475467; margin-bottom: 6px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 18px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #eaecf0; padding: 2px 5px; text-align: right; }
th:first-child, td:first-child, th.l, td.l { text-align: left; }
th { background: #f9fafb; font-weight: 600; }
.notes { color: #7a2e0e; } .small { color: #475467; font-size: 10px; }
svg { max-width: 100%; height: auto; }
@media print { html { zoom: 0.74; } .grid > div { break-inside: avoid; } }
"""

def _share_table(res: StudyResults) -> str:
    return _table(
        ["Arm", "Ratings", "Items", f"Mean ({_esc(res.scale.mean_unit)})", "Neutral or better",
         "Wilson 95% CI", "Item bootstrap 95% CI"],
        [[_esc(r["arm"]), str(r["n_ratings"]), str(r["n_items"]), _num(r["mean"]),
          _pct(r["share"]), f"{_pct(r['lo'])} – {_pct(r['hi'])}",
          f"{_pct(r['boot_lo'])} – {_pct(r['boot_hi'])}"]
         for r in on_keys(res.scale, res.shares).to_dict("records")])


def _error_table(res: StudyResults) -> str:
    err = res.errors
    dims = list(dict.fromkeys(err["question"])) if len(err) else []
    if not dims:
        return "<p>No yes/no questions.</p>"
    rows = []
    for arm in res.study["arms"]:
        row = [_esc(arm)]
        for d in dims:
            e = err[(err["arm"] == arm) & (err["question"] == d)]
            row.append(f"{_pct(e['rate'].iloc[0])} ({_pct(e['lo'].iloc[0])}–"
                       f"{_pct(e['hi'].iloc[0])})" if len(e) else "–")
        rows.append(row)
    return _table(["Arm", *[err[err["question"] == d]["text"].iloc[0] for d in dims]], rows)


def no_comparison(res: StudyResults) -> str:
    """Why there is no comparison between arms: one arm, or too few arms with ratings."""
    arms = list(res.study["arms"])
    if len(arms) < 2:
        return "Only one arm: no comparisons."
    rated = set(res.ratings["arm"]) if len(res.ratings) and "arm" in res.ratings else set()
    return (f"No comparisons: {len(arms)} arms, {len(rated)} of them with ratings (a "
            f"comparison needs two arms with ratings of common items).")


def _pair_table(res: StudyResults) -> str:
    paired = on_keys(res.scale, res.paired).to_dict("records")
    if not paired:
        return f"<p>{_esc(no_comparison(res))}</p>"
    unit = _esc(res.scale.mean_unit)
    return _table(
        ["A", "B", "Test", "n", f"Mean A ({unit})", f"Mean B ({unit})", "Diff (95% CI)", "p",
         "p (Holm)", "Effect"],
        [[_esc(r["arm_a"]), _esc(r["arm_b"]), _esc(r["test"]), str(r["n"]), _num(r["mean_a"]),
          _num(r["mean_b"]), f"{_num(r['mean_diff'])} ({_num(r['lo'])}, {_num(r['hi'])})",
          _p(r["p_value"]), _p(r["p_holm"]), _num(r["effect"])] for r in paired], left=3)


def _agreement_tables(res: StudyResults) -> tuple[str, str]:
    agree = _table(
        ["Statistic", "Estimate", "95% CI (bootstrap over units)", "Units", "Raters"],
        [[_esc(r["statistic"]), _num(r["estimate"], 3), f"{_num(r['lo'], 3)} – "
          f"{_num(r['hi'], 3)}", str(r["n_units"]), str(r["n_raters"])]
         for r in res.agreement.to_dict("records")])
    bias = _table(
        ["Rater", "Ratings", "Mean offset", "95% CI"],
        [[_esc(r["rater"]), str(r["n"]), _num(r["mean_offset"]),
          f"{_num(r['lo'])} – {_num(r['hi'])}"] for r in res.bias.to_dict("records")])
    return agree, bias


def _metric_table(res: StudyResults) -> str:
    names = [c for c in res.unit_metrics.columns
             if c not in ("slot", "arm", "n_ratings", "mean_rating")]
    if not names:
        return "<p>Automatic metrics were not computed.</p>"
    rows = []
    for arm in res.study["arms"]:
        um = res.unit_metrics[res.unit_metrics["arm"] == arm]
        if len(um):
            rows.append([_esc(arm)] + [_num(um[m].astype(float).mean(), 3) for m in names])
    corr = {r["metric"]: r for r in res.correlations.to_dict("records")}
    rows.append(["<b>Spearman ρ with mean rating</b>"] + [
        f"{_num(corr[m]['rho'], 2)} (p {_p(corr[m]['p_value'])}, n {corr[m]['n']})"
        if m in corr else "–" for m in names])
    return _table(["Arm (vs original impression)", *names], rows)


NO_RATINGS = ("No ratings yet: this study was closed before any of its texts was rated, so "
              "there is nothing to summarise.")


def _body(res: StudyResults, fig: dict[str, str], notes: str) -> str:
    """The summary's tables and figures (a plain message for a study without ratings)."""
    if not res.study.get("n_ratings"):
        return f'<p class="notes"><b>{_esc(NO_RATINGS)}</b></p>'
    agree_table, bias_table = _agreement_tables(res)
    return f"""<div class="grid">
<div>{fig['shares']}</div><div>{fig['distribution']}</div>
<div><h2>Share rated neutral or better</h2>{_share_table(res)}
<p class="small">{_esc(res.scale.mean_note)}</p></div>
<div><h2>Error rates per dimension (Wilson 95% CI)</h2>{_error_table(res)}
{fig.get('errors', '')}</div>
<div><h2>Comparisons between arms</h2>{_pair_table(res)}
<p class="small">Paired arms: Wilcoxon signed-rank on per-item mean ratings, effect = rank-biserial
(positive: A rated higher). External arm: Mann-Whitney U, effect = rank-biserial.</p></div>
<div>{fig.get('paired', '')}</div>
<div><h2>Inter-rater agreement</h2>{agree_table}
<h2>Per-rater bias (mean offset from the other raters of the same unit)</h2>{bias_table}</div>
<div><h2>Automatic metrics beside human ratings</h2>{_metric_table(res)}
{fig.get('bias', '')}
{f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ''}</div>
</div>
"""


def summary_html(res: StudyResults) -> str:
    """The one-page HTML summary of a closed study's results.

    Args:
        res: :class:`core.studies.results.StudyResults`.
    Returns:
        A complete, self-contained HTML document (no scripts, no external resources).
    """
    s = res.study
    arms = list(s["arms"])
    fig = {spec.key: svg(spec) for spec in summary_figures(res)}
    notes = "".join(f"<li>{_esc(n)}</li>" for n in res.notes)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {s['id']}: {_esc(s['name'])}</title><style>{_CSS}</style></head>
<body>
<h1>Study {s['id']}: {_esc(s['name'])}</h1>
<div class="meta">{len(arms)} arms ({_esc(', '.join(arms))}) · {s['n_items']} items ·
k = {_esc(s.get('k'))} raters per unit · {len(s['raters'])} raters · {s['n_ratings']} ratings ·
{_esc(res.scale.name)} scale ({_esc(' / '.join(res.scale.labels))}) · seed {s['seed']} ·
status {_esc(s['status'])} · summary written {when}</div>
{_body(res, fig, notes)}
</body></html>
"""


def summary_text(res: StudyResults) -> str:
    """The results as plain text for the terminal (``python -m core study report``)."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    s = res.study
    out = [f"Study {s['id']}: {s['name']}  [{s['status']}]",
           f"arms: {', '.join(s['arms'])} | items {s['n_items']} | k {s.get('k')} | raters "
           f"{len(s['raters'])} | ratings {s['n_ratings']} | scale {res.scale.name} | seed "
           f"{s['seed']}", ""]

    def block(title: str, frame: pd.DataFrame, cols: Sequence[str]) -> None:
        out.append(title)
        if frame is None or frame.empty:
            out.append("  (none)")
        else:
            shown = frame[list(cols)].copy()
            for col in ("p_value", "p_holm"):          # "<0.001", not a misleading 0.000
                if col in shown:
                    shown[col] = shown[col].map(_p)
            with pd.option_context("display.width", 160, "display.max_columns", 30):
                out.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        out.append("")

    if not s["n_ratings"]:
        return "\n".join(out + [NO_RATINGS])
    block(f"Share neutral-or-better (Wilson 95% CI; item-bootstrap CI; mean on "
          f"{res.scale.mean_unit})", on_keys(res.scale, res.shares),
          ["arm", "n_ratings", "n_items", "mean", "share", "lo", "hi", "boot_lo", "boot_hi"])
    dist = res.distribution.pivot(index="arm", columns="label", values="n") \
        if not res.distribution.empty else res.distribution
    if not res.distribution.empty:
        dist = dist.reindex(index=s["arms"], columns=list(res.scale.labels)).reset_index()
    block("Rating distribution (counts)", dist, list(dist.columns))
    block("Error rates per dimension", res.errors, ["arm", "question", "n", "n_yes", "rate", "lo",
                                                    "hi"])
    block("Comparisons between arms", res.paired,
          ["arm_a", "arm_b", "test", "n", "mean_diff", "lo", "hi", "p_value", "p_holm",
           "effect"])
    block("Agreement (bootstrap 95% CI over units)", res.agreement,
          ["statistic", "estimate", "lo", "hi", "n_units", "n_raters"])
    block("Pairwise weighted Cohen's kappa", res.pairwise, ["rater_a", "rater_b", "kappa",
                                                             "n_units"])
    block("Per-rater bias", res.bias, ["rater", "n", "mean_offset", "lo", "hi"])
    block("Automatic metrics vs human ratings (Spearman)", res.correlations,
          ["metric", "rho", "p_value", "n"])
    if res.notes:
        out += ["Notes:"] + [f"  - {n}" for n in res.notes]
    return "\n".join(out)
