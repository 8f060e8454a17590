"""Results of closed evaluation studies (coordinators and admins): figures, statistics and
exports. Everything is computed in core.studies.results; this page only draws it."""

import tempfile
from pathlib import Path

import streamlit as st

from core.studies import exports, figures, lifecycle, report, results
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
if not s["n_ratings"]:
    st.info("No ratings yet: this study was closed before any of its texts was rated, so "
            "there are no results to show.")
    st.stop()
MEAN = f"mean ({res.scale.mean_unit})"

PCT = st.column_config.NumberColumn(format="percent")


def _cols(pct=(), dec2=(), dec3=()) -> dict:
    """column_config: shares as %, means and differences to 2 decimals, agreement to 3
    (p-values keep the default, which shows small ones in full)."""
    cfg = {c: PCT for c in pct}
    cfg |= {c: st.column_config.NumberColumn(format="%.2f") for c in dec2}
    cfg |= {c: st.column_config.NumberColumn(format="%.3f") for c in dec3}
    return cfg


def _chart(where, spec) -> None:
    """One study figure, from the same spec the HTML summary draws."""
    if spec is not None:
        where.plotly_chart(figures.plotly_figure(spec), width="stretch",
                           key=f"rs_fig_{spec.key}")


tab_arms, tab_cmp, tab_agree, tab_auto, tab_export = st.tabs(
    ["Arms", "Comparisons", "Agreement", "Automatic metrics", "Export"])
with tab_arms:
    left, right = st.columns(2)
    _chart(left, figures.shares(res))
    _chart(right, figures.distribution(res))
    st.dataframe(results.on_keys(res.scale, res.shares).rename(columns={"mean": MEAN}),
                 hide_index=True, width="stretch",
                 column_config=_cols(pct=("share", "lo", "hi", "boot_lo", "boot_hi"),
                                     dec2=(MEAN,)))
    st.caption(res.scale.mean_note)
    _chart(st, figures.error_rates(res))
    if not res.by_stratum.empty:
        st.markdown("**Neutral or better by normal / abnormal report**")
        st.dataframe(res.by_stratum, hide_index=True, width="stretch",
                     column_config=_cols(pct=("share", "lo", "hi")))
with tab_cmp:
    if res.paired.empty:
        st.info(report.no_comparison(res))
    else:
        _chart(st, figures.differences(res))
        unit = res.scale.mean_unit
        st.dataframe(results.on_keys(res.scale, res.paired).rename(
                         columns={"mean_a": f"mean_a ({unit})", "mean_b": f"mean_b ({unit})"}),
                     hide_index=True, width="stretch",
                     column_config=_cols(dec2=(f"mean_a ({unit})", f"mean_b ({unit})",
                                               "mean_diff", "lo", "hi", "effect")))
        st.caption("Paired arms: Wilcoxon signed-rank on per-item mean ratings; effect = "
                   "rank-biserial (positive: A rated higher); p (Holm) adjusts for the number "
                   "of comparisons. External arm: Mann-Whitney U (different reports).")
with tab_agree:
    st.dataframe(res.agreement, hide_index=True, width="stretch",
                 column_config=_cols(dec3=("estimate", "lo", "hi")))
    left, right = st.columns(2)
    _chart(left, figures.pairwise_kappa(res))
    _chart(right, figures.rater_offsets(res))
with tab_auto:
    if res.correlations.empty:
        st.info("No automatic metric was computed.")
    else:
        names = list(res.correlations["metric"])
        st.markdown("**Mean per arm** (each text against the report's original impression)")
        um = results.on_keys(res.scale, res.unit_metrics)
        st.dataframe(um.groupby("arm", sort=False)[["mean_rating", *names]]
                     .mean().reindex([a for a in arms if a in set(um["arm"])])
                     .reset_index().rename(columns={"mean_rating": MEAN}), hide_index=True,
                     width="stretch", column_config=_cols(dec2=(MEAN,),
                                                                   dec3=tuple(names)))
        st.markdown("**How well each metric tracks the human ratings** (Spearman, per text)")
        st.dataframe(res.correlations, hide_index=True, width="stretch",
                     column_config=_cols(dec3=("rho",)))
        metric = st.selectbox("Metric", list(res.correlations["metric"]), key="rs_metric")
        _chart(st, figures.metric_scatter(res, metric))
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
