"""Adapters (coordinators and admins): nightly runs, metrics over time, the active version per
radiologist, promote and roll back."""

import plotly.express as px
import streamlit as st

from core.adapters import registry as adapters
from core.errors import ImpressionistError
from core.learning import nightly
from ui import get_store, require_user

user = require_user("coordinator", "admin")
store = get_store()


@st.cache_data(ttl=60, show_spinner="Working out the next nightly run…")
def _next_runs(n_readers: int, db: str) -> dict[str, str]:
    """``nightly.plan`` of this page's store, at most once a minute (the arguments are the
    cache key: the database, and its radiologists' count)."""
    return nightly.plan(store)


st.title("Adapters")
st.caption("Each radiologist's adapter (LoRA weights + their accepted impressions) is retrained "
           "by the nightly job (`python -m core nightly`) and promoted only when it beats the "
           "current one on their held-out feedback without losing critical findings.")

if (msg := st.session_state.pop("adapters_flash", None)) is not None:
    st.success(msg)

tab_active, tab_runs, tab_metrics, tab_versions = st.tabs(
    ["Active versions", "Runs", "Metrics over time", "Versions"])

with tab_active:
    active = adapters.active_table(store, user)
    if active.empty:
        st.info("No radiologists yet.")
    else:
        # the reasons the nightly summary gives, worked out now (default settings): builds each
        # waiting reader's pairs, so once a minute at most
        try:
            waits = _next_runs(len(active), store.path)
        except ImpressionistError as exc:
            waits = {}
            st.warning(f"Could not work out the next nightly run: {exc}")
        active["next nightly run"] = active["reader"].map(waits).fillna("not trained: inactive")
        st.dataframe(active, hide_index=True, width="stretch")
        st.caption("**next nightly run**: whether the next run with the default settings trains "
                   "the radiologist, or why they wait (worked out once a minute; `python -m core "
                   "nightly --plan` says it now).")
        with_adapter = active.loc[active["active"] != "shared model", "reader"].tolist()
        if with_adapter:
            who = st.selectbox("Roll back a radiologist to their previous version",
                               with_adapter, key="ad_rollback_reader")
            preview = adapters.rollback_preview(store, who, user)
            if preview is not None:
                old_v, new_v = preview
                target = f"v{new_v}" if new_v else "the shared model"
                sure = st.checkbox(f"Yes, roll {who} back from v{old_v} to {target}",
                                   key=f"ad_rollback_confirm_{who}_{old_v}",
                                   help="Their next drafts are written with that version.")
                if st.button("Roll back", key="ad_rollback", icon=":material/undo:",
                             disabled=not sure):
                    try:
                        old, new = adapters.rollback(store, who, user=user)
                    except ImpressionistError as exc:
                        st.error(str(exc))
                    else:
                        st.session_state["adapters_flash"] = (
                            f"{who}: rolled back from v{old} to "
                            f"{'v' + str(new) if new else 'the shared model'}.")
                        st.rerun()

with tab_runs:
    runs = adapters.runs_table(store, user)
    if runs.empty:
        st.info("No nightly runs yet. Schedule `python -m core nightly` (see the README).")
    else:
        readers = ["everyone"] + sorted(runs["reader"].unique())
        pick = st.selectbox("Radiologist", readers, key="ad_runs_reader")
        shown = runs if pick == "everyone" else runs[runs["reader"] == pick]
        failed = int((shown["status"].isin(["failed", "abandoned"])).sum())
        c1, c2, c3 = st.columns(3)
        c1.metric("Runs", len(shown))
        c2.metric("Promoted", int((shown["decision"] == "promoted").sum()))
        c3.metric("Failed or abandoned", failed)
        st.dataframe(shown, hide_index=True, width="stretch")

with tab_metrics:
    runs = adapters.runs_table(store, user)
    done = runs[runs["ROUGE-L"].notna()] if not runs.empty else runs
    if done.empty:
        st.info("Metrics appear after the first evaluated run.")
    else:
        fig = px.line(done.sort_values("finished"), x="finished", y="ROUGE-L", color="reader",
                      symbol="decision", markers=True,
                      hover_data=["run", "version", "ROUGE-L before", "label F1",
                                  "critical recall", "pairs"],
                      title="Candidate ROUGE-L on each radiologist's held-out feedback")
        st.plotly_chart(fig, width="stretch", key="ad_metrics_chart")
        trained = done[done["pairs/s"].fillna(0) > 0]  # memory-only runs train no weights
        if trained.empty:
            st.caption("No run has trained weights yet: memory-only runs have no training "
                       "speed to show.")
        else:
            fig2 = px.bar(trained.sort_values("run").assign(run=lambda f: "run " + f["run"]
                                                            .astype(int).astype(str)),
                          x="run", y="pairs/s", color="reader",
                          title="Training speed of each run that trained weights (pairs/s)")
            fig2.update_xaxes(type="category", title="run")
            st.plotly_chart(fig2, width="stretch", key="ad_speed_chart")

with tab_versions:
    names = [r.username for r in store.list_readers() if r.role in ("radiologist", "admin")]
    if not names:
        st.info("No radiologists yet.")
    else:
        who = st.selectbox("Radiologist", names, key="ad_versions_reader")
        versions = adapters.list_versions(store, user, reader=who)
        if not versions:
            st.info(f"{who} has no adapter versions yet.")
        else:
            import pandas as pd

            st.dataframe(pd.DataFrame([{
                "version": v["version"], "status": v["status"], "active": v["active"],
                "method": v["method"], "ROUGE-L": (v["metrics"] or {}).get("rougeL"),
                "label F1": (v["metrics"] or {}).get("label_f1"),
                "created": v["created_at"], "path": v["path"]} for v in versions]),
                hide_index=True, width="stretch")
            by_version = {v["version"]: v for v in versions}
            choice = st.selectbox("Version to make active",
                                  [v["version"] for v in reversed(versions)],
                                  format_func=lambda v: f"v{v} ({by_version[v]['state']})",
                                  key="ad_promote_version")
            rejected = by_version[choice]["status"] == "rejected"
            override = False
            if rejected:
                st.warning(f"The nightly gate rejected v{choice}: it did not beat the version "
                           f"that was active on {who}'s held-out feedback, or it lost critical "
                           f"findings. Promote it only if you know why.")
                override = st.checkbox(f"Promote v{choice} anyway, overriding the gate",
                                       key=f"ad_override_{who}_{choice}")
            if st.button("Promote", key="ad_promote", icon=":material/publish:", type="primary",
                         disabled=rejected and not override):
                try:
                    prev = adapters.promote(store, who, int(choice), user=user,
                                            reason="promoted on the Adapters page",
                                            override_gate=override)
                except ImpressionistError as exc:
                    st.error(str(exc))
                else:
                    st.session_state["adapters_flash"] = (
                        f"{who}: v{choice} is active (was "
                        f"{'v' + str(prev) if prev else 'the shared model'}).")
                    st.rerun()

st.code("python -m core nightly            # cron: 0 2 * * * cd /srv/impressionist && "
        ".venv/bin/python -m core nightly --quiet\n"
        "python -m core nightly --plan     # who it would train, and why the others wait\n"
        "python -m core adapters list\npython -m core adapters rollback <reader>",
        language="bash")
