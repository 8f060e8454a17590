"""Render study results: a self-contained one-page HTML summary (inline SVG) and plain text.

No JavaScript and nothing fetched: the HTML opens offline, prints on one A4 page, and can be
attached to a manuscript's supplement. Figures are drawn here as small SVGs (bars with
confidence intervals, stacked distributions, a forest plot), so no plotting library or
browser engine is needed to write them.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from core.studies.results import StudyResults

PALETTE = ["#b42318", "#e17b54", "#d0d5dd", "#6ca6d9", "#175cd3"]  # worst .. best
ARM_COLOR = "#175cd3"


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


def _colors(n: int) -> list[str]:
    if n == len(PALETTE):
        return PALETTE
    if n == 3:
        return [PALETTE[0], PALETTE[2], PALETTE[4]]
    if n == 2:
        return [PALETTE[0], PALETTE[4]]
    return [PALETTE[min(len(PALETTE) - 1, round(i * (len(PALETTE) - 1) / max(n - 1, 1)))]
            for i in range(n)]


# ---------------------------------------------------------------------------------------------
# SVG figures
# ---------------------------------------------------------------------------------------------
def svg_interval_bars(rows: Sequence[dict], title: str, lo_key: str = "lo", hi_key: str = "hi",
                      value_key: str = "share", x_min: float = 0.0, x_max: float = 1.0,
                      percent: bool = True, ref: float | None = None) -> str:
    """Horizontal bars (or points for signed values) with interval whiskers, one row each.

    Args:
        rows: dicts with "name", value_key, lo_key, hi_key.
        title: figure title.
        x_min, x_max: axis range.
        percent: label ticks as percentages.
        ref: draw a dashed reference line at this x (e.g. 0 for differences).
    Returns:
        An ``<svg>`` element as text.
    """
    left, right, row_h, top = 150, 20, 22, 28
    width = 460
    plot_w = width - left - right
    height = top + row_h * max(len(rows), 1) + 26

    def x(v: float) -> float:
        v = min(max(v, x_min), x_max)
        return left + (v - x_min) / (x_max - x_min) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="12" font-weight="600">{_esc(title)}</text>']
    for i in range(5):
        v = x_min + (x_max - x_min) * i / 4
        xx = x(v)
        label = f"{100 * v:.0f}%" if percent else f"{v:.2g}"
        parts.append(f'<line x1="{xx:.1f}" y1="{top - 4}" x2="{xx:.1f}" '
                     f'y2="{height - 22}" stroke="#eaecf0"/>')
        parts.append(f'<text x="{xx:.1f}" y="{height - 8}" font-size="10" '
                     f'text-anchor="middle" fill="#475467">{label}</text>')
    if ref is not None:
        xr = x(ref)
        parts.append(f'<line x1="{xr:.1f}" y1="{top - 4}" x2="{xr:.1f}" y2="{height - 22}" '
                     f'stroke="#475467" stroke-dasharray="3,3"/>')
    signed = x_min < 0
    for i, row in enumerate(rows):
        y = top + i * row_h
        cy = y + row_h / 2
        parts.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{_esc(row["name"])}</text>')
        v, lo, hi = (float(row.get(k, math.nan)) for k in (value_key, lo_key, hi_key))
        if math.isnan(v):
            continue
        if signed:
            parts.append(f'<circle cx="{x(v):.1f}" cy="{cy:.1f}" r="4" fill="{ARM_COLOR}"/>')
        else:
            parts.append(f'<rect x="{x(x_min):.1f}" y="{y + 4}" width="{x(v) - x(x_min):.1f}" '
                         f'height="{row_h - 8}" fill="{ARM_COLOR}" opacity="0.75"/>')
        if not (math.isnan(lo) or math.isnan(hi)):
            parts.append(f'<line x1="{x(lo):.1f}" y1="{cy:.1f}" x2="{x(hi):.1f}" y2="{cy:.1f}" '
                         f'stroke="#101828" stroke-width="1.5"/>')
            for end in (lo, hi):
                parts.append(f'<line x1="{x(end):.1f}" y1="{cy - 5:.1f}" x2="{x(end):.1f}" '
                             f'y2="{cy + 5:.1f}" stroke="#101828" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_stacked(distribution, arms: Sequence[str], labels: Sequence[str], title: str) -> str:
    """100% stacked horizontal bars of the rating distribution per arm, with a legend."""
    left, right, row_h, top = 150, 20, 22, 28
    width = 460
    plot_w = width - left - right
    colors = _colors(len(labels))
    height = top + row_h * max(len(arms), 1) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="12" font-weight="600">{_esc(title)}</text>']
    for i, arm in enumerate(arms):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + row_h / 2 + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{_esc(arm)}</text>')
        sub = distribution[distribution["arm"] == arm]
        x0 = float(left)
        for color, (_, row) in zip(colors, sub.iterrows()):
            share = float(row["share"]) if not math.isnan(float(row["share"])) else 0.0
            w = share * plot_w
            if w > 0:
                parts.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" '
                             f'height="{row_h - 6}" fill="{color}"><title>{_esc(row["label"])}: '
                             f'{int(row["n"])}</title></rect>')
            x0 += w
    lx = left
    ly = height - 10
    for color, label in zip(colors, labels):
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="9" height="9" fill="{color}"/>')
        parts.append(f'<text x="{lx + 12}" y="{ly}" font-size="9.5">{_esc(label)}</text>')
        lx += 14 + 5.6 * len(str(label)) + 8
    parts.append("</svg>")
    return "".join(parts)


ERROR_DIMENSIONS = {"factual_error": ("factual error", "#b42318"),
                    "omission": ("omission", "#e17b54"), "style_issue": ("style", "#6ca6d9")}


def svg_grouped_rates(errors, arms: Sequence[str], title: str) -> str:
    """Per arm, one thin bar per error dimension (factual error, omission, style) with its
    interval, and a legend. ``errors``: the StudyResults.errors frame.

    Returns:
        An ``<svg>`` element as text ("" when no dimension was asked).
    """
    dims = [d for d in ERROR_DIMENSIONS if len(errors) and d in set(errors["question"])]
    if not dims:
        return ""
    left, right, top, bar_h = 150, 20, 28, 6
    width = 460
    plot_w = width - left - right
    row_h = bar_h * len(dims) + 8
    top_hi = max([float(v) for v in errors["hi"] if not math.isnan(float(v))] + [0.1])
    x_max = min(1.0, math.ceil(top_hi * 5) / 5)            # quarter ticks land on whole %
    height = top + row_h * len(arms) + 36

    def x(v: float) -> float:
        return left + min(max(v, 0.0), x_max) / x_max * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="12" font-weight="600">{_esc(title)}</text>']
    axis_y = top + row_h * len(arms)
    for i in range(5):
        xx = x(x_max * i / 4)
        parts.append(f'<line x1="{xx:.1f}" y1="{top - 4}" x2="{xx:.1f}" y2="{axis_y}" '
                     f'stroke="#eaecf0"/>')
        parts.append(f'<text x="{xx:.1f}" y="{axis_y + 12}" font-size="10" '
                     f'text-anchor="middle" fill="#475467">{100 * x_max * i / 4:.0f}%</text>')
    by = {(r["arm"], r["question"]): r for r in errors.to_dict("records")}
    for i, arm in enumerate(arms):
        y0 = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y0 + row_h / 2 + 3:.1f}" font-size="11" '
                     f'text-anchor="end">{_esc(arm)}</text>')
        for j, d in enumerate(dims):
            r = by.get((arm, d))
            if r is None or math.isnan(float(r["rate"])):
                continue
            y = y0 + 4 + j * bar_h
            name, color = ERROR_DIMENSIONS[d]
            parts.append(f'<rect x="{left}" y="{y}" width="{x(float(r["rate"])) - left:.1f}" '
                         f'height="{bar_h - 1}" fill="{color}"><title>{_esc(arm)}, '
                         f'{_esc(name)}: {100 * float(r["rate"]):.1f}%</title></rect>')
            if not (math.isnan(float(r["lo"])) or math.isnan(float(r["hi"]))):
                cy = y + (bar_h - 1) / 2
                parts.append(f'<line x1="{x(float(r["lo"])):.1f}" y1="{cy:.1f}" '
                             f'x2="{x(float(r["hi"])):.1f}" y2="{cy:.1f}" stroke="#101828"/>')
    lx, ly = left, height - 6
    for d in dims:
        name, color = ERROR_DIMENSIONS[d]
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="9" height="9" fill="{color}"/>')
        parts.append(f'<text x="{lx + 12}" y="{ly}" font-size="9.5">{_esc(name)}</text>')
        lx += 14 + 5.6 * len(name) + 8
    parts.append("</svg>")
    return "".join(parts)


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


def summary_html(res: "StudyResults") -> str:
    """The one-page HTML summary of a closed study's results.

    Args:
        res: :class:`core.studies.results.StudyResults`.
    Returns:
        A complete, self-contained HTML document (no scripts, no external resources).
    """
    s = res.study
    arms = list(s["arms"])
    shares = res.shares.to_dict("records")
    fig_share = svg_interval_bars(
        [{"name": r["arm"], "share": r["share"], "lo": r["lo"], "hi": r["hi"]} for r in shares],
        "Neutral or better (Wilson 95% CI)")
    fig_dist = svg_stacked(res.distribution, arms, list(res.scale.labels), "Rating distribution")
    paired = res.paired.to_dict("records")
    span = max([abs(float(v)) for r in paired for v in (r["lo"], r["hi"], r["mean_diff"])
                if not math.isnan(float(v))] + [0.5])
    span = min(4.0, math.ceil(span * 2) / 2)
    fig_pairs = svg_interval_bars(
        [{"name": f"{r['arm_a']} − {r['arm_b']}", "share": r["mean_diff"], "lo": r["lo"],
          "hi": r["hi"]} for r in paired],
        "Mean rating difference (bootstrap 95% CI)", x_min=-span, x_max=span, percent=False,
        ref=0.0) if paired else ""

    bias_rows = res.bias.to_dict("records")
    b_span = max([abs(float(v)) for r in bias_rows for v in (r["lo"], r["hi"], r["mean_offset"])
                  if not math.isnan(float(v))] + [0.5])
    b_span = min(4.0, math.ceil(b_span * 2) / 2)
    fig_bias = svg_interval_bars(
        [{"name": r["rater"], "share": r["mean_offset"], "lo": r["lo"], "hi": r["hi"]}
         for r in bias_rows],
        "Per-rater mean offset (95% CI)", x_min=-b_span, x_max=b_span, percent=False,
        ref=0.0) if bias_rows else ""
    fig_err = svg_grouped_rates(res.errors, arms, "Error rates (Wilson 95% CI)")

    share_table = _table(
        ["Arm", "Ratings", "Items", "Mean", "Neutral or better", "Wilson 95% CI",
         "Item bootstrap 95% CI"],
        [[_esc(r["arm"]), str(r["n_ratings"]), str(r["n_items"]), _num(r["mean"]),
          _pct(r["share"]), f"{_pct(r['lo'])} – {_pct(r['hi'])}",
          f"{_pct(r['boot_lo'])} – {_pct(r['boot_hi'])}"] for r in shares])
    err = res.errors
    dims = list(dict.fromkeys(err["question"])) if len(err) else []
    err_rows = []
    for arm in arms:
        row = [_esc(arm)]
        for d in dims:
            e = err[(err["arm"] == arm) & (err["question"] == d)]
            row.append(f"{_pct(e['rate'].iloc[0])} ({_pct(e['lo'].iloc[0])}–"
                       f"{_pct(e['hi'].iloc[0])})" if len(e) else "–")
        err_rows.append(row)
    err_names = [err[err["question"] == d]["text"].iloc[0] for d in dims]
    err_table = _table(["Arm", *err_names], err_rows) if dims else "<p>No yes/no questions.</p>"
    pair_table = _table(
        ["A", "B", "Test", "n", "Mean A", "Mean B", "Diff (95% CI)", "p", "p (Holm)", "Effect"],
        [[_esc(r["arm_a"]), _esc(r["arm_b"]), _esc(r["test"]), str(r["n"]), _num(r["mean_a"]),
          _num(r["mean_b"]), f"{_num(r['mean_diff'])} ({_num(r['lo'])}, {_num(r['hi'])})",
          _p(r["p_value"]), _p(r["p_holm"]), _num(r["effect"])] for r in paired],
        left=3) if paired else "<p>Only one arm: no comparisons.</p>"
    agree_table = _table(
        ["Statistic", "Estimate", "95% CI (bootstrap over units)", "Units", "Raters"],
        [[_esc(r["statistic"]), _num(r["estimate"], 3), f"{_num(r['lo'], 3)} – "
          f"{_num(r['hi'], 3)}", str(r["n_units"]), str(r["n_raters"])]
         for r in res.agreement.to_dict("records")])
    bias_table = _table(
        ["Rater", "Ratings", "Mean offset", "95% CI"],
        [[_esc(r["rater"]), str(r["n"]), _num(r["mean_offset"]),
          f"{_num(r['lo'])} – {_num(r['hi'])}"] for r in res.bias.to_dict("records")])
    metric_names = [c for c in res.unit_metrics.columns
                    if c not in ("slot", "arm", "n_ratings", "mean_rating")]
    metric_rows = []
    for arm in arms:
        um = res.unit_metrics[res.unit_metrics["arm"] == arm]
        if len(um):
            metric_rows.append([_esc(arm)] + [_num(um[m].astype(float).mean(), 3)
                                              for m in metric_names])
    corr = {r["metric"]: r for r in res.correlations.to_dict("records")}
    metric_rows.append(["<b>Spearman ρ with mean rating</b>"] + [
        f"{_num(corr[m]['rho'], 2)} (p {_p(corr[m]['p_value'])}, n {corr[m]['n']})"
        if m in corr else "–" for m in metric_names])
    metric_table = _table(["Arm (vs original impression)", *metric_names], metric_rows) \
        if metric_names else "<p>Automatic metrics were not computed.</p>"
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
<div class="grid">
<div>{fig_share}</div><div>{fig_dist}</div>
<div><h2>Share rated neutral or better</h2>{share_table}</div>
<div><h2>Error rates per dimension (Wilson 95% CI)</h2>{err_table}{fig_err}</div>
<div><h2>Comparisons between arms</h2>{pair_table}
<p class="small">Paired arms: Wilcoxon signed-rank on per-item mean ratings, effect = rank-biserial
(positive: A rated higher). External arm: Mann-Whitney U, effect = rank-biserial.</p></div>
<div>{fig_pairs}</div>
<div><h2>Inter-rater agreement</h2>{agree_table}
<h2>Per-rater bias (mean offset from the other raters of the same unit)</h2>{bias_table}</div>
<div><h2>Automatic metrics beside human ratings</h2>{metric_table}
{fig_bias}
{f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ''}</div>
</div>
</body></html>
"""


def summary_text(res: "StudyResults") -> str:
    """The results as plain text for the terminal (``python -m core study report``)."""
    import pandas as pd

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

    block("Share neutral-or-better (Wilson 95% CI; item-bootstrap CI)", res.shares,
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
