"""Studies (coordinators and admins): design a blinded evaluation study, follow its progress,
pause or resume it, extend it with more raters, and close it."""

import json

import streamlit as st

from core.studies import assignment, lifecycle, progress, protocol, texts
from core.errors import ImpressionistError
from ui import get_store, require_user

user = require_user("coordinator", "admin")
store = get_store()

st.title("Studies")
tab_run, tab_new = st.tabs(["Progress", "New study"])


with tab_new:
    opts = lifecycle.design_options(store, user)
    radiologists, sources, options = opts.radiologists, opts.sources, opts.arms
    caption = ("Stored texts (reports): " + ", ".join(opts.stored)) if opts.stored else \
        "No stored texts yet"
    with st.form("study_new"):
        name = st.text_input("Name (raters see it: do not name the arms)", key="sn_name")
        arms = st.multiselect("Arms", options, default=["original", "base"], key="sn_arms")
        st.caption(caption + ". Style arms are rendered from the stored base texts. The app "
                   "never runs the model: other missing texts are created with "
                   "`python -m core study create ... --generate`.")
        c1, c2, c3 = st.columns(3)
        n_items = c1.number_input("Reports (items)", 1, 100_000, min(200, max(opts.base_texts, 1)),
                                  key="sn_n")
        k = c2.number_input("Raters per text (k)", 1, 50, 2, key="sn_k")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="sn_seed")
        raters = st.multiselect("Raters", radiologists, key="sn_raters")
        scale_name = st.selectbox(
            "Rating scale", list(protocol.SCALES), key="sn_scale",
            format_func=lambda s: f"{s}: {' / '.join(protocol.SCALES[s].labels)}"
                                  + (" (vs the original impression)"
                                     if protocol.SCALES[s].reference else ""))
        builtin = st.multiselect("Questions (yes/no)", list(protocol.FEEDBACK_FLAGS),
                                 default=list(protocol.FEEDBACK_FLAGS), key="sn_builtin",
                                 format_func=lambda q: protocol.FEEDBACK_FLAGS[q])
        custom = st.text_area("Extra yes/no questions, one per line as `key: question`",
                              key="sn_custom", height=70)
        guideline = st.text_area("Guideline shown to raters", protocol.DEFAULT_GUIDELINE,
                                 key="sn_guideline", height=120)
        c1, c2, c3 = st.columns(3)
        strata = c1.multiselect("Stratify by", ["normal", "source"],
                                default=["normal", "source"], key="sn_strata")
        ext = c2.selectbox("External source (for the external arm)", [None, *sources],
                           key="sn_external")
        typo_rate = c3.number_input("Typo rate", 0.001, 0.5, protocol.DEFAULT_TYPO_RATE,
                                    step=0.01, format="%.3f", key="sn_typos")
        from_sources = st.multiselect("Sample from sources (empty: all but the external one)",
                                      list(sources), key="sn_sources")
        create = st.form_submit_button("Create study", type="primary")
    if create:
        try:
            questions = [*builtin, *[line for line in custom.splitlines() if line.strip()]]
            design = lifecycle.StudyDesign(
                name=name, arms=arms, n_items=int(n_items), seed=int(seed), raters=raters,
                k=int(k), scale=scale_name, questions=questions, guideline=guideline,
                strata=strata, sources=from_sources or None, external_source=ext,
                typo_rate=float(typo_rate))
            with st.spinner("Sampling reports and assigning raters…"):
                new_id = lifecycle.create_study(store, user, design,
                                            make_texts=texts.stored_style_maker(store))
        except ImpressionistError as exc:
            st.error(str(exc))
        else:
            st.session_state["sp_study"] = new_id
            st.success(f"Created study {new_id}. Follow it on the Progress tab.")

with tab_run:
    studies = lifecycle.list_studies(store, user)
    if not studies:
        st.info("No studies yet: create one on the New study tab.")
    else:
        by_id = {s["id"]: s for s in studies}
        if st.session_state.get("sp_study") not in by_id:
            st.session_state["sp_study"] = studies[0]["id"]
        sid = st.selectbox("Study", list(by_id), key="sp_study",
                           format_func=lambda i: f"#{i} {by_id[i]['name']} "
                                                 f"({by_id[i]['status']})")
        p = progress.progress(store, user, sid)
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Status", p.status)
        c2.metric("Rated", f"{p.done:,} / {p.total:,}")
        c3.metric("Raters per text", p.k if p.k is not None else "—")
        c4.metric("Agreement so far (α)", "—" if p.alpha_so_far != p.alpha_so_far
                  else f"{p.alpha_so_far:.2f}")
        st.caption(f"{p.n_items} items × {len(p.arms)} arms. Per-arm ratings and the key stay "
                   "hidden until the study is closed (then see the Results page).")
        cfg = {"done": st.column_config.NumberColumn("done"),
               "median_s": st.column_config.NumberColumn("median s / text", format="%.1f")}
        left, right = st.columns(2)
        with left:
            st.markdown("**Per rater**")
            st.dataframe(p.per_rater, hide_index=True, width="stretch",
                         column_config=cfg)
        with right:
            st.markdown("**Per arm**")
            st.dataframe(p.per_arm, hide_index=True, width="stretch",
                         column_config=cfg)

        try:
            if p.status == "draft":
                with st.form("sp_assign"):
                    st.markdown("**Assign raters** (this study has none yet)")
                    names = st.multiselect("Raters", lifecycle.design_options(store, user)
                                           .radiologists, key="sp_assign_raters")
                    k_new = st.number_input("Raters per text (k)", 1, 50, 2, key="sp_assign_k")
                    if st.form_submit_button("Assign"):
                        n = assignment.assign_raters(store, user, sid, names, int(k_new))
                        st.success(f"{n:,} tasks assigned.")
                        st.rerun()
            if p.status in ("running", "paused"):
                b1, b2 = st.columns(2)
                if p.status == "running" and b1.button("Pause study", key="sp_pause"):
                    lifecycle.pause(store, user, sid)
                    st.rerun()
                if p.status == "paused" and b1.button("Resume study", key="sp_resume",
                                                      type="primary"):
                    lifecycle.resume(store, user, sid)
                    st.rerun()
                current = set(lifecycle.study_raters(store, user, sid))
                free = [r for r in lifecycle.design_options(store, user).radiologists
                        if r not in current]
                with st.expander("Extend with more raters"):
                    with st.form("sp_extend"):
                        new = st.multiselect("New raters", free, key="sp_extend_raters")
                        extra = st.number_input(
                            "Extra ratings per text (0: the new raters take over part of the "
                            "remaining work)", 0, 50, 0, key="sp_extend_k")
                        if st.form_submit_button("Extend"):
                            n = assignment.extend(store, user, sid, new, extra_k=int(extra))
                            st.success(f"{n:,} tasks for {', '.join(new)}.")
                            st.rerun()
            if p.status != "closed":
                with st.expander("Close the study"):
                    st.markdown("Closing is final: raters can no longer rate, and results and "
                                "exports (with the unblinding key) become available.")
                    sure = st.checkbox("I want to close this study", key="sp_close_sure")
                    if st.button("Close study", key="sp_close", disabled=not sure):
                        lifecycle.close(store, user, sid)
                        st.rerun()
        except ImpressionistError as exc:
            st.error(str(exc))

        with st.expander("History"):
            st.dataframe([{"when": e["created_at"], "event": e["event"], "by": e["actor"],
                           "detail": json.dumps(e["detail"])} for e in p.events], hide_index=True,
                         width="stretch")
