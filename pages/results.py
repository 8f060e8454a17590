"""Results of closed evaluation studies (coordinators and admins): figures, statistics and
exports. Everything is computed in core.studies.results; this page only draws it."""

import math
import tempfile
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.studies import exports, lifecycle, results
from core.errors import ImpressionistError
from ui import get_store, require_user

user = require_user("coordinator", "admin")
store = get_store()

st.title("Study results")
closed = [s for s in lifecycle.list_studies(store, user) if s["status"] == "closed"]
if not closed:
    st.info("No closed study yet. Results and exports reveal which arm wrote each text, so "
            "they open once a study is closed (Studies page).")
    st.stop()
by_id = {s["id"]: s for s in closed}
c1, c2, c3 = st.columns([3, 1, 1])
sid = c1.selectbox("Study", list(by_id), key="rs_study",
                   format_func=lambda i: f"#{i} {by_id[i]['name']}")
n_boot = c2.selectbox("Bootstrap resamples", [200, 1000, 2000], index=1, key="rs_boot")
with_bert = c3.checkbox("BERTScore (slower)", key="rs_bert")
metrics = ("rouge_l", "label_f1", *(("bertscore",) if with_bert else ()))
cache_key = ("rs_cache", sid, n_boot, metrics, by_id[sid]["n_done"])
if st.session_state.get("rs_cache_key") != cache_key:
    with st.spinner("Computing statistics…"):
        try:
            st.session_state["rs_results"] = results.results(store, user, sid, n_boot=n_boot,
                                                           metrics=metrics)
        except ImpressionistError as exc:
            st.error(str(exc))
            st.stop()
    st.session_state["rs_cache_key"] = cache_key
res: results.StudyResults = st.session_state["rs_results"]
s = res.study
arms = list(s["arms"])
st.caption(f"{s['n_items']} items × {len(arms)} arms · k = {s['k']} · {len(s['raters'])} raters "
           f"· {s['n_ratings']:,} ratings · {res.scale.name} scale · seed {s['seed']}")
for note in res.notes:
    st.warning(note)

COLORS = ["#b42318", "#e17b54", "#d0d5dd", "#6ca6d9", "#175cd3"]
PCT = st.column_config.NumberColumn(format="percent")


def _cols(pct=(), dec2=(), dec3=()) -> dict:
    """column_config: shares as %, means and differences to 2 decimals, agreement to 3
    (p-values keep the default, which shows small ones in full)."""
    cfg = {c: PCT for c in pct}
    cfg |= {c: st.column_config.NumberColumn(format="%.2f") for c in dec2}
    cfg |= {c: st.column_config.NumberColumn(format="%.3f") for c in dec3}
    return cfg



def _err(frame, value="share", lo="lo", hi="hi"):
    return dict(type="data", symmetric=False, array=(frame[hi] - frame[value]).tolist(),
                arrayminus=(frame[value] - frame[lo]).tolist())


def fig_shares(frame) -> go.Figure:
    fig = go.Figure(go.Bar(x=frame["arm"], y=frame["share"], error_y=_err(frame),
                           marker_color="#175cd3",
                           hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
    fig.update_layout(title="Share rated neutral or better (Wilson 95% CI)",
                      yaxis=dict(range=[0, 1], tickformat=".0%"), height=360,
                      margin=dict(t=50, b=30))
    return fig


def fig_distribution(frame) -> go.Figure:
    labels = list(res.scale.labels)
    colors = COLORS if len(labels) == 5 else [COLORS[0], COLORS[2], COLORS[4]][:len(labels)]
    fig = go.Figure()
    for label, color in zip(labels, colors):
        part = frame[frame["label"] == label].set_index("arm").reindex(arms)
        fig.add_bar(y=arms, x=part["share"], name=label, orientation="h", marker_color=color,
                    customdata=part["n"], hovertemplate="%{y}: %{x:.1%} (%{customdata})"
                                                        "<extra>" + label + "</extra>")
    fig.update_layout(barmode="stack", title="Rating distribution", height=360,
                      xaxis=dict(tickformat=".0%", range=[0, 1]),
                      yaxis=dict(autorange="reversed"), margin=dict(t=50, b=30),
                      legend=dict(orientation="h", y=-0.15, traceorder="normal"))
    return fig


def fig_errors(frame) -> go.Figure:
    fig = go.Figure()
    for arm in arms:
        part = frame[frame["arm"] == arm]
        fig.add_bar(x=part["text"], y=part["rate"], name=arm, error_y=_err(part, "rate"))
    fig.update_layout(barmode="group", title="Error rates per dimension (Wilson 95% CI)",
                      yaxis=dict(tickformat=".0%", rangemode="tozero"), height=360,
                      margin=dict(t=50, b=30))
    return fig


def fig_paired(frame) -> go.Figure:
    names = [f"{a} − {b}" for a, b in zip(frame["arm_a"], frame["arm_b"])]
    fig = go.Figure(go.Scatter(
        x=frame["mean_diff"], y=names, mode="markers", marker=dict(size=10, color="#175cd3"),
        error_x=_err(frame, "mean_diff"), customdata=frame[["p_value", "effect"]],
        hovertemplate="%{y}: %{x:.2f}<br>p=%{customdata[0]:.3g}, "
                      "r=%{customdata[1]:.2f}<extra></extra>"))
    fig.add_vline(x=0, line_dash="dash", line_color="#475467")
    fig.update_layout(title="Mean rating difference between arms (bootstrap 95% CI)",
                      height=120 + 40 * len(frame), yaxis=dict(autorange="reversed"),
                      margin=dict(t=50, b=30))
    return fig


def fig_pairwise(frame) -> go.Figure:
    raters = sorted(set(frame["rater_a"]) | set(frame["rater_b"]))
    idx = {r: i for i, r in enumerate(raters)}
    z = [[math.nan] * len(raters) for _ in raters]
    for row in frame.itertuples():
        z[idx[row.rater_a]][idx[row.rater_b]] = z[idx[row.rater_b]][idx[row.rater_a]] = row.kappa
    fig = go.Figure(go.Heatmap(z=z, x=raters, y=raters, zmin=-1, zmax=1, colorscale="RdBu",
                               hovertemplate="%{y} × %{x}: κ=%{z:.2f}<extra></extra>"))
    fig.update_layout(title="Pairwise weighted Cohen's kappa", height=360,
                      margin=dict(t=50, b=30))
    return fig


def fig_bias(frame) -> go.Figure:
    fig = go.Figure(go.Scatter(x=frame["mean_offset"], y=frame["rater"], mode="markers",
                               marker=dict(size=10, color="#175cd3"),
                               error_x=_err(frame, "mean_offset")))
    fig.add_vline(x=0, line_dash="dash", line_color="#475467")
    fig.update_layout(title="Per-rater bias (mean offset from the other raters, 95% CI)",
                      height=120 + 30 * len(frame), yaxis=dict(autorange="reversed"),
                      margin=dict(t=50, b=30))
    return fig


def fig_metric(frame, metric: str) -> go.Figure:
    fig = go.Figure()
    for arm in arms:
        part = frame[frame["arm"] == arm]
        if len(part):
            fig.add_scatter(x=part[metric], y=part["mean_rating"], mode="markers", name=arm,
                            opacity=0.7)
    fig.update_layout(title=f"{metric} vs mean human rating (per text)", height=360,
                      xaxis_title=metric, yaxis_title="mean rating", margin=dict(t=50, b=30))
    return fig


tab_arms, tab_cmp, tab_agree, tab_auto, tab_export = st.tabs(
    ["Arms", "Comparisons", "Agreement", "Automatic metrics", "Export"])
with tab_arms:
    left, right = st.columns(2)
    left.plotly_chart(fig_shares(res.shares), use_container_width=True, key="rs_fig_shares")
    right.plotly_chart(fig_distribution(res.distribution), use_container_width=True,
                       key="rs_fig_dist")
    st.dataframe(res.shares, hide_index=True, use_container_width=True,
                 column_config=_cols(pct=("share", "lo", "hi", "boot_lo", "boot_hi"),
                                     dec2=("mean",)))
    if not res.errors.empty:
        st.plotly_chart(fig_errors(res.errors), use_container_width=True, key="rs_fig_err")
    if not res.by_stratum.empty:
        st.markdown("**Neutral or better by normal / abnormal report**")
        st.dataframe(res.by_stratum, hide_index=True, use_container_width=True,
                     column_config=_cols(pct=("share", "lo", "hi")))
with tab_cmp:
    if res.paired.empty:
        st.info("A comparison needs two arms with ratings.")
    else:
        st.plotly_chart(fig_paired(res.paired), use_container_width=True, key="rs_fig_paired")
        st.dataframe(res.paired, hide_index=True, use_container_width=True,
                     column_config=_cols(dec2=("mean_a", "mean_b", "mean_diff", "lo", "hi",
                                               "effect")))
        st.caption("Paired arms: Wilcoxon signed-rank on per-item mean ratings; effect = "
                   "rank-biserial (positive: A rated higher); p (Holm) adjusts for the number "
                   "of comparisons. External arm: Mann-Whitney U (different reports).")
with tab_agree:
    st.dataframe(res.agreement, hide_index=True, use_container_width=True,
                 column_config=_cols(dec3=("estimate", "lo", "hi")))
    left, right = st.columns(2)
    if not res.pairwise.empty:
        left.plotly_chart(fig_pairwise(res.pairwise), use_container_width=True,
                          key="rs_fig_kappa")
    if not res.bias.empty:
        right.plotly_chart(fig_bias(res.bias), use_container_width=True, key="rs_fig_bias")
with tab_auto:
    if res.correlations.empty:
        st.info("No automatic metric was computed.")
    else:
        names = list(res.correlations["metric"])
        st.markdown("**Mean per arm** (each text against the report's original impression)")
        st.dataframe(res.unit_metrics.groupby("arm", sort=False)[["mean_rating", *names]]
                     .mean().reindex([a for a in arms if a in set(res.unit_metrics["arm"])])
                     .reset_index(), hide_index=True, use_container_width=True,
                     column_config=_cols(dec2=("mean_rating",), dec3=tuple(names)))
        st.markdown("**How well each metric tracks the human ratings** (Spearman, per text)")
        st.dataframe(res.correlations, hide_index=True, use_container_width=True,
                     column_config=_cols(dec3=("rho",)))
        metric = st.selectbox("Metric", list(res.correlations["metric"]), key="rs_metric")
        st.plotly_chart(fig_metric(res.unit_metrics, metric), use_container_width=True,
                        key="rs_fig_metric")
with tab_export:
    st.markdown("Each export is written to the audit log.")
    fmt = st.selectbox("Format", ["csv", "parquet", "jsonl", "html"], key="rs_fmt",
                       format_func={"csv": "Ratings with the key (CSV)",
                                    "parquet": "Ratings with the key (Parquet)",
                                    "jsonl": "Preference pairs for TRL (JSONL)",
                                    "html": "One-page summary (HTML)"}.get)
    if st.button("Prepare export", key="rs_prepare"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"study-{sid}.{fmt}"
                if fmt in ("csv", "parquet"):
                    exports.export_ratings(store, user, sid, path, fmt=fmt)
                elif fmt == "jsonl":
                    exports.export_preferences(store, user, sid, path)
                else:
                    exports.export_html(store, user, sid, path, res=res)
                st.session_state["rs_export"] = (path.name, path.read_bytes())
        except ImpressionistError as exc:
            st.error(str(exc))
    if (ready := st.session_state.get("rs_export")) is not None:
        mime = {"csv": "text/csv", "parquet": "application/octet-stream",
                "jsonl": "application/jsonl", "html": "text/html"}[ready[0].rsplit(".", 1)[1]]
        st.download_button(f"Download {ready[0]}", ready[1], file_name=ready[0], mime=mime,
                           key="rs_download")
