"""Study queue: a rater's blinded tasks in an evaluation study, with the study's scale,
questions and guideline. The rater never sees which arm (model, style, source) wrote a text."""

import time
import uuid

import streamlit as st

from core.errors import ImpressionistError
from core.studies import rating
from ui import findings_text, get_store, keyboard_guard, new_run, report_context, require_user, run_mark

user = require_user("radiologist", "admin")
store = get_store()

SHORTCUT_KEYS = "12345"


def _load(task=None) -> None:
    """Make ``task`` (or the next one in the queue) current, with fresh per-task widget state.
    Widget keys and callbacks carry ``sa_tag`` (task id + a fresh UUID): a key pressed on a
    stale page can only ever act on the task that page showed, and only while it is current."""
    sid = st.session_state["sa_study"]
    task = task if task is not None else rating.next_task(store, user, sid)
    nonce = uuid.uuid4().hex  # the save key: a full UUID, never reused
    tag = f"{task.task_id}_{nonce}" if task is not None else nonce
    st.session_state.update(sa_task=task, sa_task_study=sid, sa_started=time.monotonic(),
                            sa_nonce=nonce, sa_tag=tag)
    if task is not None and task.answer:  # an undone rating comes back filled in
        st.session_state[f"sa_rating_{tag}"] = task.answer["rating"]
        st.session_state[f"sa_comment_{tag}"] = task.answer["comment"] or ""
        for key, value in task.answer.get("answers", {}).items():
            if value is not None:  # the widget keys of _questions
                st.session_state[f"sa_q_{key}_{tag}"] = value


STALE = "A key pressed before the next text appeared was ignored (nothing was saved for it)."


def _current(tag: str, drawn: int | None = None) -> bool:
    """Is the task a widget was drawn for still current, and (``drawn``: the run that drew it)
    was the key not pressed on a page drawn before a Submit of it was handled (see
    pages/annotate.py)?"""
    if st.session_state.get("sa_tag") == tag and (
            drawn is None or st.session_state.get(f"sa_sent_{tag}", -1) < drawn):
        return True
    st.session_state["sa_flash"] = STALE
    return False


def _set_rating(tag: str, value: int, drawn: int = 0) -> None:
    if _current(tag, drawn):
        st.session_state[f"sa_rating_{tag}"] = value


def _submit(tag: str, keys: dict, shown, drawn: int = 0, values: tuple = ()) -> None:
    """Save the rating of the task rendered with ``tag`` (only while it is the current one).
    ``shown``: the rating selected on that page; a rating key handled in an earlier run was
    pressed before the Submit and is the answer; one handled in the same run (``values``: the
    scale, to read which were pressed) may have come after it, so nothing is saved and keys
    from that page are ignored (see pages/annotate.py)."""
    chosen = st.session_state.get(f"sa_rating_{tag}")
    if not _current(tag, drawn):
        return
    together = {v for i, v in enumerate(values) if st.session_state.get(f"sa_rate_{i}_{tag}")}
    if chosen is None or together - {shown}:
        if chosen is not None:
            st.session_state[f"sa_sent_{tag}"] = drawn
        st.session_state["sa_flash"] = ("Choose a rating first." if chosen is None else
                                        "A rating key arrived together with Submit: nothing "
                                        "was saved. Check the rating and submit again.")
        return
    get = st.session_state.get
    answers = {q: (get(k) or None) if kind == "text" else get(k) for q, (k, kind) in keys.items()}
    spent = min(int((time.monotonic() - st.session_state["sa_started"]) * 1000), 86_399_999)
    try:
        rating.submit(store, user, st.session_state["sa_task"].task_id, chosen, answers=answers,
                      comment=get(f"sa_comment_{tag}"), time_spent_ms=spent,
                      client_token=f"study-{st.session_state['sa_nonce']}")
    except ImpressionistError as exc:
        st.session_state["sa_error"] = str(exc)
        return
    st.session_state["sa_flash"] = "Rating saved"
    _load()


def _undo(tag: str, study_id: int) -> None:
    if not _current(tag):
        return
    try:
        back = rating.undo_last(store, user, study_id)
    except ImpressionistError as exc:
        st.session_state["sa_error"] = str(exc)
        return
    st.session_state["sa_flash"] = "Nothing to undo" if back is None else "Last rating retracted"
    if back is not None:
        _load(back)


def _questions(rs: rating.RaterStudy, tag: str) -> dict:
    """The study's questions; returns {question key: (widget key, kind)}."""
    keys = {q.key: (f"sa_q_{q.key}_{tag}", q.kind) for q in rs.questions}
    yesno = [q for q in rs.questions if q.kind == "yesno"]
    if yesno:
        qcols = st.columns(min(len(yesno), 4))  # one row: Submit stays near the fold
        for i, q in enumerate(yesno):
            qcols[i % len(qcols)].checkbox(q.text, key=keys[q.key][0])
    for q in rs.questions:
        if q.kind == "choice":
            st.radio(q.text, q.options, index=None, horizontal=True, key=keys[q.key][0])
        elif q.kind == "text":
            st.text_input(q.text, key=keys[q.key][0])
    return keys


@st.fragment
def task_panel(rs: rating.RaterStudy) -> None:
    if st.session_state.get("sa_task_study") != rs.study_id or "sa_task" not in st.session_state:
        _load()
    task, tag = st.session_state["sa_task"], st.session_state["sa_tag"]
    # the run that draws the buttons: a key from it after a refused Submit is ignored
    drawn = new_run()
    done, total = rating.rater_progress(store, user, rs.study_id)
    st.progress(done / total if total else 0.0, text=f"{done} of {total} texts rated")
    if (msg := st.session_state.pop("sa_flash", None)) is not None:
        st.toast(msg)
    if (err := st.session_state.pop("sa_error", None)) is not None:
        st.error(err)

    if task is None:
        if done != rs.done:  # the selector above still shows the count of the page's last full run
            st.rerun(scope="app")
        st.success("You have rated every text assigned to you in this study. Thank you!")
        st.button("Undo last rating", key=f"sa_undo_empty_{tag}", shortcut="Alt+Z",
                  on_click=_undo, args=(tag, rs.study_id))
        return

    left, right = st.columns([5, 6], gap="large")
    with left:
        # One bold line, no heading: Submit stays above the fold of a 1000 px window.
        st.markdown(f"**Case {task.case_number}: findings**")
        report_context(task.indication, task.comparison)
        findings_text(task.findings)
    with right:
        if task.reference is not None:
            st.markdown("**Reference impression**")
            st.text(task.reference)
        st.markdown(f"**Impression to rate** (text {task.label})")
        # Verbatim, not Markdown: "- ", "1." or "*" in a text must look the same for every arm.
        st.container(border=True).text(task.text)
    # Full width under the texts, so the scale's labels are not cut off.
    st.markdown(rs.scale.question)
    current = st.session_state.get(f"sa_rating_{tag}")
    cols = st.columns(len(rs.scale.values))
    for i, (col, value, label) in enumerate(zip(cols, rs.scale.values, rs.scale.labels)):
        col.button(label, key=f"sa_rate_{i}_{tag}", shortcut=SHORTCUT_KEYS[i],
                   type="primary" if current == value else "secondary",
                   icon=":material/check:" if current == value else None,
                   on_click=_set_rating, args=(tag, value, drawn), width="stretch")
    keys = _questions(rs, tag)
    b1, b2 = st.columns(2)
    b1.button("Submit and next", key=f"sa_submit_{tag}", shortcut="Ctrl+Enter",
              type="primary", on_click=_submit,
              args=(tag, keys, current, drawn, tuple(rs.scale.values)), width="stretch")
    b2.button("Undo last rating", key=f"sa_undo_{tag}", shortcut="Alt+Z",
              on_click=_undo, args=(tag, rs.study_id), width="stretch")
    st.caption("Keys: " + " · ".join(f"{SHORTCUT_KEYS[i]} {lab}" for i, lab in
                                     enumerate(rs.scale.labels))
               + " · Ctrl+Enter submit · Alt+Z undo · ? all keys")
    st.text_input("Comment (optional)", key=f"sa_comment_{tag}", max_chars=5_000)
    run_mark(tag)  # last: keys typed after a Submit wait for it (ui.keyboard_guard)


st.title("Study queue")
keyboard_guard([("1 – 5", "rate on the study's scale (the buttons, left to right)"),
                ("Ctrl+Enter", "submit and go to the next text (also from a text box)"),
                ("Alt+Z", "undo the last rating"),
                ("Esc", "leave a text box, so the keys above work again"),
                ("?", "show or hide this list")])
mine = rating.my_studies(store, user)
if not mine:
    st.info("You have no study tasks. Studies appear here when a coordinator assigns you.")
    st.stop()
by_id = {s.study_id: s for s in mine}
open_first = sorted(mine, key=lambda s: (s.status != "running", s.done >= s.total, -s.study_id))
if st.session_state.get("sa_study") not in by_id:
    st.session_state["sa_study"] = open_first[0].study_id
# Names only: the selector's text box keeps the label it showed when its options change but
# the choice does not, so a count in it went stale; the queue's progress bar counts instead.
st.selectbox("Study", list(by_id), key="sa_study", format_func=lambda i: by_id[i].name)
rs = rating.rater_study(store, user, st.session_state["sa_study"])
with st.expander("Guideline", expanded=rs.done == 0):
    st.markdown(rs.guideline or "No guideline was given for this study.")
    st.markdown("**Scale:** " + " · ".join(rs.scale.labels))
    st.caption("Ratings here serve this evaluation only: they do not change the drafts you "
               "are shown on the Annotate page (ratings given there do).")
if rs.status == "paused":
    st.warning("This study is paused by its coordinator. Your ratings so far are saved; "
               "please come back when it resumes.")
elif rs.status == "closed":
    st.info(f"This study is closed. You rated {rs.done} of {rs.total} texts. Thank you!")
else:
    task_panel(rs)
