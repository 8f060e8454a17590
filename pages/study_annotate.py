"""Study queue: a rater's blinded tasks in an evaluation study, with the study's scale,
questions and guideline. The rater never sees which arm (model, style, source) wrote a text."""

import time
import uuid

import streamlit as st

from core.studies import rating
from core.errors import ImpressionistError
from ui import get_store, require_user

user = require_user("radiologist", "admin")
store = get_store()

SHORTCUT_KEYS = "12345"


def _load(task=None) -> None:
    """Make ``task`` (or the next one in the queue) current, with fresh per-task widget state."""
    sid = st.session_state["sa_study"]
    st.session_state["sa_task"] = task if task is not None else rating.next_task(store, user, sid)
    st.session_state["sa_task_study"] = sid
    st.session_state["sa_started"] = time.monotonic()
    st.session_state["sa_nonce"] = uuid.uuid4().hex  # the save key: a full UUID, never reused


def _rerun() -> None:
    from streamlit.errors import StreamlitAPIException

    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


def _set_rating(value: int) -> None:
    st.session_state[f"sa_rating_{st.session_state['sa_nonce']}"] = value


@st.fragment
def task_panel(rs: rating.RaterStudy) -> None:
    if st.session_state.get("sa_task_study") != rs.study_id or "sa_task" not in st.session_state:
        _load()
    task = st.session_state["sa_task"]
    nonce = st.session_state["sa_nonce"]
    done, total = rating.rater_progress(store, user, rs.study_id)
    st.progress(done / total if total else 0.0, text=f"{done} of {total} texts rated")
    if (msg := st.session_state.pop("sa_flash", None)) is not None:
        st.toast(msg)

    if task is None:
        st.success("You have rated every text assigned to you in this study. Thank you!")
        if st.button("Undo last rating", key="sa_undo_empty", shortcut="Alt+Z"):
            try:
                back = rating.undo_last(store, user, rs.study_id)
            except ImpressionistError as exc:
                st.error(str(exc))
            else:
                if back is not None:
                    _load(back)
                    _rerun()
        return

    left, right = st.columns([5, 6], gap="large")
    with left:
        st.subheader(f"Case {task.case_number}")
        st.markdown(f"**Indication:** {task.indication or '—'}  \n"
                    f"**Comparison:** {task.comparison or '—'}")
        st.markdown("**Findings**")
        st.text(task.findings)
    with right:
        if task.reference is not None:
            st.markdown("**Reference impression**")
            st.text(task.reference)
        st.markdown(f"**Impression to rate** (text {task.label})")
        # Verbatim, not Markdown: "- ", "1." or "*" in a text must look the same for every arm.
        st.container(border=True).text(task.text)
        st.markdown(rs.scale.question)
        current = st.session_state.get(f"sa_rating_{nonce}")
        cols = st.columns(len(rs.scale.values))
        for i, (col, value, label) in enumerate(zip(cols, rs.scale.values, rs.scale.labels)):
            col.button(label, key=f"sa_rate_{i}_{nonce}", shortcut=SHORTCUT_KEYS[i],
                       type="primary" if current == value else "secondary",
                       on_click=_set_rating, args=(value,), use_container_width=True)
        answers = {}
        yesno = [q for q in rs.questions if q.kind == "yesno"]
        if yesno:
            qcols = st.columns(min(len(yesno), 2))
            for i, q in enumerate(yesno):
                answers[q.key] = qcols[i % len(qcols)].checkbox(q.text, key=f"sa_q_{q.key}_{nonce}")
        for q in rs.questions:
            if q.kind == "choice":
                answers[q.key] = st.radio(q.text, q.options, index=None, horizontal=True,
                                          key=f"sa_q_{q.key}_{nonce}")
            elif q.kind == "text":
                answers[q.key] = st.text_input(q.text, key=f"sa_q_{q.key}_{nonce}") or None
        comment = st.text_input("Comment (optional)", key=f"sa_comment_{nonce}")
        b1, b2 = st.columns(2)
        submit = b1.button("Submit and next", key=f"sa_submit_{nonce}", shortcut="Ctrl+Enter",
                           type="primary", disabled=current is None, use_container_width=True)
        undo = b2.button("Undo last rating", key=f"sa_undo_{nonce}", shortcut="Alt+Z",
                         use_container_width=True)
        st.caption("Keys: " + " · ".join(f"{SHORTCUT_KEYS[i]} {lab}" for i, lab in
                                         enumerate(rs.scale.labels))
                   + " · Ctrl+Enter submit · Alt+Z undo")

    spent = int((time.monotonic() - st.session_state["sa_started"]) * 1000)
    try:
        if submit and current is not None:
            rating.submit(store, user, task.task_id, current, answers=answers, comment=comment,
                         time_spent_ms=spent, client_token=f"study-{nonce}")
            st.session_state["sa_flash"] = "Rating saved"
            _load()
            _rerun()
        if undo:
            back = rating.undo_last(store, user, rs.study_id)
            st.session_state["sa_flash"] = "Nothing to undo" if back is None else \
                "Last rating retracted"
            if back is not None:
                _load(back)
            _rerun()
    except ImpressionistError as exc:
        st.error(str(exc))


st.title("Study queue")
mine = rating.my_studies(store, user)
if not mine:
    st.info("You have no study tasks. Studies appear here when a coordinator assigns you.")
    st.stop()
by_id = {s.study_id: s for s in mine}
open_first = sorted(mine, key=lambda s: (s.status != "running", s.done >= s.total, -s.study_id))
if st.session_state.get("sa_study") not in by_id:
    st.session_state["sa_study"] = open_first[0].study_id
st.selectbox("Study", list(by_id), key="sa_study",
             format_func=lambda i: f"{by_id[i].name} — {by_id[i].done}/{by_id[i].total} "
                                   f"rated ({by_id[i].status})")
rs = rating.rater_study(store, user, st.session_state["sa_study"])
with st.expander("Guideline", expanded=rs.done == 0):
    st.markdown(rs.guideline or "No guideline was given for this study.")
    st.markdown("**Scale:** " + " · ".join(rs.scale.labels))
if rs.status == "paused":
    st.warning("This study is paused by its coordinator. Your ratings so far are saved; "
               "please come back when it resumes.")
elif rs.status == "closed":
    st.info(f"This study is closed. You rated {rs.done} of {rs.total} texts. Thank you!")
else:
    task_panel(rs)
