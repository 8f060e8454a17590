"""Annotate: rate and edit the AI impression of one case at a time, keyboard first."""

import time
import uuid

import streamlit as st

from core.feedback import annotate

from core.studies import rating
from core.errors import ImpressionistError
from ui import get_store, require_user

user = require_user("radiologist", "admin")
store = get_store()

SHORTCUTS = {-2: "1", -1: "2", 0: "3", 1: "4", 2: "5"}


def _load(case=None) -> None:
    """Make ``case`` (or the next in the queue) current, with fresh per-case widget state."""
    st.session_state["case"] = case if case is not None else annotate.next_case(store, user)
    st.session_state["case_started"] = time.monotonic()
    st.session_state["case_nonce"] = uuid.uuid4().hex  # the save key: a full UUID, never reused
    st.session_state["revealed"] = None


def _rerun() -> None:
    """Rerun only the case panel when it runs as a fragment (no page flicker), else the page."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:  # the panel ran as part of a full-page run
        st.rerun()


def _set_rating(value: int) -> None:
    st.session_state[f"rating_{st.session_state['case_nonce']}"] = value


@st.fragment
def case_panel() -> None:
    if "case" not in st.session_state:
        _load()
    case = st.session_state["case"]
    nonce = st.session_state["case_nonce"]
    done, total = annotate.progress(store, user)
    st.progress(done / total if total else 0.0, text=f"{done} of {total} cases rated")

    if (msg := st.session_state.pop("annotate_flash", None)) is not None:
        st.toast(msg)

    revealed = st.session_state.get("revealed")
    if revealed:
        st.success(revealed)
        if st.button("Next case", key="next_after_reveal", shortcut="N", type="primary"):
            _load()
            _rerun()
        return

    if case is None:
        st.success("Your queue is empty: every case with an AI impression ready is rated. "
                   "New cases appear after the next generation run.")
        if st.button("Undo last rating", key="undo_empty", shortcut="Alt+Z"):
            last = annotate.undo_last(store, user)
            if last is not None:
                _load(annotate.case_of(store, user, last["report_id"]))
                _rerun()
        return

    blind = st.session_state.get("blind", False)
    left, right = st.columns([5, 6], gap="large")
    with left:
        st.subheader("Findings")
        st.markdown(f"**Indication:** {case.indication or '—'}  \n"
                    f"**Comparison:** {case.comparison or '—'}")
        st.text(case.findings)
        st.caption(f"Report {case.external_id} · source {case.source}")
    with right:
        texts = {"ai": case.ai_text, "original": case.impression or "(no original impression)"}
        order = annotate.blind_order(user.id, case.report_id) if blind else ("ai", "original")
        labels = ("Impression A", "Impression B") if blind else ("AI impression",
                                                                  "Original impression")
        a, b = st.columns(2)
        for col, label, key in ((a, labels[0], order[0]), (b, labels[1], order[1])):
            with col:
                st.markdown(f"**{label}**")
                with st.container(border=True):
                    st.text(texts[key])
        # In blind mode nothing may say which text is the AI's, the clinical check included.
        if not blind and case.flags.get("messages"):
            st.warning("Clinical check: " + "; ".join(case.flags["messages"]))
        if not blind and (case.flags.get("removed") or case.flags.get("repaired")):
            changes = [f"removed “{x}” (this report's findings do not state it)"
                       for x in case.flags.get("removed") or []]
            changes += [f"added “{x}” from the findings" for x in case.flags.get("repaired") or []]
            st.info("The clinical check changed the AI draft: " + "; ".join(changes) + ".")

    st.divider()
    question = ("How does **B** compare with **A**?" if blind else
                "How does the **AI impression** compare with the original?")
    st.markdown(question)
    current = st.session_state.get(f"rating_{nonce}")
    cols = st.columns(5)
    for col, (value, label) in zip(cols, annotate.RATING_SCALE.items()):
        col.button(f"{label}", key=f"rate_{value}_{nonce}", shortcut=SHORTCUTS[value],
                   type="primary" if current == value else "secondary",
                   on_click=_set_rating, args=(value,), use_container_width=True)
    c1, c2, c3, c4 = st.columns(4)
    factual = c1.checkbox("Factually wrong", key=f"factual_{nonce}")
    omission = c2.checkbox("Omission", key=f"omission_{nonce}")
    style = c3.checkbox("Style", key=f"style_{nonce}")
    critical = c4.checkbox("Missed critical finding", key=f"critical_{nonce}")
    if blind:
        # An edit box holding the AI's text would say which of A and B it is.
        st.caption("Blinded: rate and comment only; switch blinding off to edit the AI text.")
        edited = case.ai_text
    else:
        edited = st.text_area("Edit the AI impression (optional)", value=case.ai_text,
                              key=f"edit_{nonce}", height=110)
    if edited.strip() != case.ai_text.strip():
        st.markdown("Your edit: " + annotate.diff_html(case.ai_text, edited),
                    unsafe_allow_html=True)
    comment = st.text_input("Comment (optional)", key=f"comment_{nonce}")

    b1, b2, b3 = st.columns(3)
    submit = b1.button("Submit and next", key=f"submit_{nonce}", shortcut="Ctrl+Enter",
                       type="primary", disabled=current is None, use_container_width=True)
    skip = b2.button("Skip", key=f"skip_{nonce}", shortcut="Alt+S",
                     use_container_width=True)
    undo = b3.button("Undo last rating", key=f"undo_{nonce}", shortcut="Alt+Z",
                     use_container_width=True)
    st.caption("Keys: 1–5 rate · Ctrl+Enter submit · Alt+S skip · Alt+Z undo")

    spent = int((time.monotonic() - st.session_state["case_started"]) * 1000)
    try:
        if submit and current is not None:
            # Blinded ratings compare B with A; stored ratings are always AI vs original.
            value = current if not blind or order[1] == "ai" else -current
            annotate.submit_rating(store, user, case, annotate.Rating(
                rating=value, factual_error=factual, omission=omission, style_issue=style,
                critical_missed=critical, comment=comment, edited_text=edited,
                time_spent_ms=spent, blinded=blind), client_token=f"{nonce}-rate")
            if blind:
                st.session_state["revealed"] = (
                    f"Saved. Impression {'A' if order[0] == 'ai' else 'B'} was the AI's.")
                _rerun()
            st.session_state["annotate_flash"] = "Rating saved"
            _load()
            _rerun()
        if skip:
            annotate.skip(store, user, case, client_token=f"{nonce}-skip", time_spent_ms=spent)
            _load()
            _rerun()
        if undo:
            last = annotate.undo_last(store, user)
            if last is None:
                st.session_state["annotate_flash"] = "Nothing to undo"
            else:
                st.session_state["annotate_flash"] = "Last rating retracted"
                _load(annotate.case_of(store, user, last["report_id"]))
            _rerun()
    except ImpressionistError as exc:
        st.error(str(exc))


st.title("Annotate")
pending = [s for s in rating.my_studies(store, user) if s.status == "running" and s.done < s.total]
if pending:
    with st.container(border=True):
        st.markdown("**Evaluation study waiting:** " + "; ".join(
            f"{s.name} ({s.total - s.done} of {s.total} left)" for s in pending))
        st.page_link("pages/study_annotate.py", label="Open my study queue",
                     icon=":material/checklist:")
st.toggle("Blind A/B (hide which impression is the AI's until rated)", key="blind")
case_panel()
