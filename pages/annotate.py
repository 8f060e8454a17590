"""Annotate: rate and edit the AI impression of one case at a time, keyboard first.

Every widget key and callback carries the case it was rendered for (``case_tag``: report id,
generation id and a fresh UUID per showing). A key pressed on a page that is already stale
(typed ahead while the next case was on its way) reaches the callback of the case that page
showed, and a callback only acts while that case is still the current one: a rating can only
ever be stored on the case that was on screen, and a new case starts with an empty selection.
"""

import time
import uuid

import streamlit as st

from core.errors import ImpressionistError
from core.feedback import annotate, screen
from core.studies import rating
from ui import (findings_text, get_store, keyboard_guard, new_run, report_context, require_user,
                run_mark, sync_session_cookie)

user = require_user("radiologist", "admin")
store = get_store()

SHORTCUTS = {-2: "1", -1: "2", 0: "3", 1: "4", 2: "5"}
# the four error ticks: widget field -> (key, label)
TICKS = {"factual": ("f", "Factually wrong"), "omission": ("o", "Omission"),
         "style": ("s", "Style"), "critical": ("c", "Missed critical finding")}
FIELDS = (*TICKS, "edit", "comment")
MAX_COMMENT = 5_000  # core.feedback.annotate.save_rating's limit for a comment
KEYS = [("1 – 5", "rate: " + " · ".join(f"{SHORTCUTS[v]} {label}"
                                          for v, label in annotate.RATING_SCALE.items())),
        *[(k.upper(), f"tick or untick “{label}”") for k, label in TICKS.values()],
        ("Ctrl+Enter", "submit and go to the next case (also from a text box)"),
        ("Alt+S", "skip this case (not while typing)"),
        ("Alt+Z", "undo the last rating or skip (the case comes back filled in)"),
        ("N", "next case, after a blinded rating's reveal"),
        ("Esc", "leave the edit or comment box, so the keys above work again"),
        ("?", "show or hide this list")]
GUIDELINES = """**Rating** — the AI draft against the original (blinded: B against A), as you
would sign it:

1. **Much worse**: a clinically important error or omission; you would not sign it.
2. **Worse**: needs a correction before signing; less accurate or complete.
3. **Equivalent**: the same clinical content; only the wording differs.
4. **Better**: clearer or more complete than the original, nothing wrong.
5. **Much better**: gets right something clinically important the original missed or misstated.

**Ticks** (any number; about the AI draft, or B when blinded):

- **Factually wrong (F)**: states something the findings do not support (wrong side, size,
  finding or certainty).
- **Omission (O)**: leaves out a finding that belongs in the impression.
- **Style (S)**: wording, length, order or format you would change; the content is right.
- **Missed critical finding (C)**: an urgent finding (e.g. pneumothorax, free air, a new mass)
  is absent or understated; tick Omission or Factually wrong as well.

**Edit** the AI text into what you would sign (optional); whitespace and punctuation-only
changes are not counted as an edit. **Skip** a case you cannot judge (it is not counted as
rated)."""
STALE = "A key pressed before the next case appeared was ignored (nothing was saved for it)."


def _load(case=None, answer: dict | None = None, queued: bool = False,
          counts: tuple | None = None) -> None:
    """Make ``case`` (or the next in the queue) current, with fresh per-case widget state;
    ``answer`` (a previous answer, e.g. after undo) is filled in. ``queued``: ``case`` came
    from the queue (so it is not rated yet); ``counts``: the progress counts, when known."""
    if case is None and not queued:
        # the case and the progress bar: one transaction
        view = annotate.queue_view(store, user)
        case, queued, counts = view.case, True, (view.rated, view.skipped, view.total)
    nonce = uuid.uuid4().hex  # the save key: a full UUID, never reused
    tag = f"{case.report_id}_{case.generation_id}_{nonce}" if case is not None else nonce
    st.session_state.update(case=case, case_nonce=nonce, case_tag=tag, revealed=None,
                            case_started=time.monotonic(), counts=counts, queued=queued)
    if case is not None and answer:
        blind = st.session_state.get("blind", False)
        shown = screen.shown_rating(answer["rating"], blind, user.id, case.report_id)
        st.session_state[f"rating_{tag}"] = shown
        st.session_state.setdefault("drafts", {})[tag] = {
            "factual": answer["factual_error"], "omission": answer["omission"],
            "style": answer["style_issue"], "critical": answer["critical_missed"],
            "edit": answer["edited_text"] or case.ai_text, "comment": answer["comment"] or ""}


def _current(tag: str) -> bool:
    """Is the case a widget was rendered for still the one on screen?"""
    if st.session_state.get("case_tag") == tag:
        return True
    st.session_state["annotate_flash"] = STALE
    return False


def _pressed_after_submit(tag: str, drawn: int) -> bool:
    """Was this key pressed on a page drawn before a Submit of the same case was handled (typed
    on, without seeing what became of the Submit)? Then it is ignored: a fast reader's "5,
    Ctrl+Enter, 2, Ctrl+Enter" means 2 for the next case, never a second answer for this one."""
    if st.session_state.get(f"submitted_{tag}", -1) < drawn:
        return False
    st.session_state["annotate_flash"] = STALE
    return True


def _set_rating(tag: str, value: int, drawn: int = 0) -> None:
    if _current(tag) and not _pressed_after_submit(tag, drawn):
        st.session_state[f"rating_{tag}"] = value


def _fail(exc: ImpressionistError | str) -> None:
    st.session_state["annotate_error"] = str(exc)


def _submit(tag: str, blind: bool, shown: int | None, drawn: int = 0) -> None:
    """Save the rating of the case rendered with ``tag`` (only while it is the current one).

    ``shown`` is the rating selected on the page the Submit belongs to, ``drawn`` the run of
    this panel that drew it. Keys reach the server in the order they were pressed; keys that
    arrive while a run is in progress are handled together in the next run, in no known order.
    A rating key handled in an earlier run than the Submit was pressed before it: that rating is
    the answer, even when the page had not shown it yet. A rating key handled in the same run
    may have come before or after the Submit: nothing is saved and the reader checks the rating
    and submits again (and the keys pressed on the page the Submit came from are ignored).
    """
    chosen = st.session_state.get(f"rating_{tag}")
    if not _current(tag) or _pressed_after_submit(tag, drawn):
        return
    if chosen is None:
        st.session_state["annotate_flash"] = "Choose a rating (keys 1-5) first."
        return
    # rating buttons of this case pressed in this same run (their triggers are set for the run,
    # whichever callback ran first)
    together = {value for value in SHORTCUTS if st.session_state.get(f"rate_{value}_{tag}")}
    if together - {shown}:
        st.session_state[f"submitted_{tag}"] = drawn
        st.session_state["annotate_flash"] = ("A rating key arrived together with Submit: "
                                              "nothing was saved. Check the rating and submit "
                                              "again.")
        return
    case = st.session_state["case"]
    get = st.session_state.get
    edited = (None if len(case.ai_text) > annotate.MAX_TEXT  # too long to edit (_edit_box)
              else case.ai_text if blind else get(f"edit_{tag}", case.ai_text))
    try:
        _, upcoming = annotate.submit_and_next(store, user, case, annotate.Rating(
            rating=screen.stored_rating(chosen, blind, user.id, case.report_id),
            factual_error=bool(get(f"factual_{tag}")), omission=bool(get(f"omission_{tag}")),
            style_issue=bool(get(f"style_{tag}")), critical_missed=bool(get(f"critical_{tag}")),
            comment=get(f"comment_{tag}"), edited_text=edited, time_spent_ms=_spent(),
            blinded=blind), upcoming=_upcoming(case),
            client_token=f"{st.session_state['case_nonce']}-rate")
    except ImpressionistError as exc:
        return _fail(exc)
    if not _advance(tag, upcoming, rated=1):
        return
    st.session_state["annotate_flash"] = "Rating saved"
    if blind:
        st.session_state["revealed"] = _reveal(case)


def _skip(tag: str) -> None:
    if not _current(tag):
        return
    case = st.session_state["case"]
    try:
        _, upcoming = annotate.skip_and_next(
            store, user, case, _upcoming(case), time_spent_ms=_spent(),
            client_token=f"{st.session_state['case_nonce']}-skip")
    except ImpressionistError as exc:
        return _fail(exc)
    _advance(tag, upcoming, skipped=1)


def _advance(tag: str, upcoming, rated: int = 0, skipped: int = 0) -> bool:
    """After a save: show the case fetched ahead (checked in the save's transaction), else the
    queue's next. If the queue cannot be read, the saved case stays on screen with its save key:
    submitting again stores nothing twice and tries the next case again."""
    if upcoming is None:
        try:
            upcoming = annotate.next_case(store, user)
        except ImpressionistError as exc:
            _fail(f"Saved, but the next case could not be loaded: {exc}. Submit (or skip) "
                  f"again to load it: nothing is saved twice.")
            return False
    st.session_state.get("drafts", {}).pop(tag, None)
    _load(upcoming, queued=True, counts=_counted(rated=rated, skipped=skipped))
    return True


def _upcoming(case):
    """The case fetched ahead while ``case`` was on screen (None: none yet, or none left)."""
    ahead = st.session_state.get("upcoming")
    return ahead[1] if ahead is not None and ahead[0] == case.report_id else None


def _fetch_ahead(case) -> None:
    """After the case is drawn, fetch the one after it while the reader reads (Prodigy-style):
    Submit then waits for the save alone, which checks this case is still queued."""
    ahead = st.session_state.get("upcoming")
    if ahead is not None and ahead[0] == case.report_id:
        return
    try:
        st.session_state["upcoming"] = (case.report_id,
                                        annotate.next_case(store, user, besides=case.report_id))
    except ImpressionistError:
        st.session_state.pop("upcoming", None)  # Submit asks the queue itself


def _counted(rated: int = 0, skipped: int = 0) -> tuple | None:
    """The progress counts after saving the case on screen, without asking the database: a
    case served by the queue was neither rated nor skipped, so one more of either (a linked or
    undone case may have been: None, counted again)."""
    counts = st.session_state.get("counts")
    if counts is None or not st.session_state.get("queued"):
        return None
    return counts[0] + rated, counts[1] + skipped, counts[2]


def _undo(tag: str) -> None:
    """Retract the last rating or skip and bring that case back with its answer filled in."""
    if not _current(tag):
        return
    try:
        last = annotate.undo_last(store, user)
        if last is None:
            st.session_state["annotate_flash"] = "Nothing to undo"
            return
        case = annotate.case_of(store, user, last["report_id"])
    except ImpressionistError as exc:
        return _fail(exc)
    _load(case, answer=last if last["kind"] == "rating" else None)
    st.session_state["annotate_flash"] = "Last rating retracted: your answer is filled in again"


def _next() -> None:
    st.session_state["revealed"] = None


def _spent() -> int:
    return min(int((time.monotonic() - st.session_state["case_started"]) * 1000), 86_399_999)


def _open_linked_case() -> None:
    """``?case=<report id>``: open that case (once per link), if this reader may see it."""
    want = st.query_params.get("case")
    if not want or want == st.session_state.get("case_link"):
        return
    # followed from here on, also when the case on screen is already the linked one (a refresh
    # of an unrated case): else, after its rating, the old link would reopen it
    st.session_state["case_link"] = want
    case = st.session_state.get("case")
    if case is not None and str(case.report_id) == want:
        return
    try:
        linked = screen.linked_case(store, user, want)
        answer = annotate.standing_answer(store, user, linked.report_id)
    except ImpressionistError as exc:
        st.session_state["annotate_error"] = f"Cannot open case {want}: {exc}"
        return
    same = answer is not None and answer["generation_id"] == linked.generation_id
    _load(linked, answer=answer if same else None)
    if answer is not None:
        st.session_state["annotate_flash"] = (
            "You rated this case before: your answer is filled in, and submitting again replaces "
            "it." if same else "You rated an earlier AI text of this case: rating this one replaces "
                               "that answer.")


def _restore_drafts(tag: str) -> None:
    """Widget values of this case kept while the page was left (Streamlit drops the state of
    widgets that are not on the page)."""
    for field, value in st.session_state.get("drafts", {}).get(tag, {}).items():
        st.session_state.setdefault(f"{field}_{tag}", value)


def _keep_drafts(tag: str) -> None:
    st.session_state.setdefault("drafts", {})[tag] = {
        f: st.session_state[f"{f}_{tag}"] for f in FIELDS if f"{f}_{tag}" in st.session_state}


def _impressions(case, blind: bool) -> None:
    """The two impressions side by side (blinded: as A and B in this reader's order)."""
    texts = {"ai": case.ai_text, "original": case.impression or "(no original impression)"}
    order = annotate.blind_order(user.id, case.report_id) if blind else ("ai", "original")
    # whose draft it is: the reader's own adapter (after a nightly promotion) or the shared model
    own = (f"your adapter v{case.adapter_version}" if case.adapter and case.adapter_version
           else "shared model")
    labels = ("Impression A", "Impression B") if blind else (f"AI impression ({own})",
                                                              "Original impression")
    for col, label, key in zip(st.columns(2), labels, order):
        with col:
            st.markdown(f"**{label}**")
            st.container(border=True).text(texts[key])
    # In blind mode nothing may say which text is the AI's, the clinical check included.
    if not blind and case.flags.get("messages"):
        st.warning("Clinical check: " + "; ".join(case.flags["messages"]))
    if not blind and (case.flags.get("removed") or case.flags.get("repaired")):
        changes = [f"removed “{x}” (this report's findings do not state it)"
                   for x in case.flags.get("removed") or []]
        changes += [f"added “{x}” from the findings" for x in case.flags.get("repaired") or []]
        st.info("The clinical check changed the AI draft: " + "; ".join(changes) + ".")


def _reveal(case) -> dict:
    """What the reveal screen shows after a blinded rating: both texts under their labels."""
    order = annotate.blind_order(user.id, case.report_id)
    texts = {"ai": case.ai_text, "original": case.impression or "(no original impression)"}
    names = {"ai": "the AI's", "original": "the original"}
    return {"message": f"Saved. Impression {'A' if order[0] == 'ai' else 'B'} was the AI's.",
            "texts": [(f"Impression {ab} — {names[k]}", texts[k]) for ab, k in zip("AB", order)],
            "report": case.external_id}


def _show_reveal(revealed: dict, tag: str) -> None:
    st.success(revealed["message"])
    for col, (label, text) in zip(st.columns(2), revealed["texts"]):
        with col:
            st.markdown(f"**{label}**")
            st.container(border=True).text(text)
    st.caption(f"Report {revealed['report']} (rated)")
    b1, b2 = st.columns(2)
    b1.button("Next case", key=f"next_after_reveal_{tag}", shortcut="N", type="primary",
              on_click=_next, width="stretch")
    b2.button("Undo last rating", key=f"undo_{tag}", shortcut="Alt+Z", on_click=_undo,
              args=(tag,), width="stretch")


def _rating_buttons(tag: str, blind: bool, drawn: int):
    st.markdown("How does **B** compare with **A**?" if blind else
                "How does the **AI impression** compare with the original?")
    current = st.session_state.get(f"rating_{tag}")
    for col, (value, label) in zip(st.columns(5), annotate.RATING_SCALE.items()):
        col.button(label, key=f"rate_{value}_{tag}", shortcut=SHORTCUTS[value],
                   type="primary" if current == value else "secondary",
                   icon=":material/check:" if current == value else None,
                   on_click=_set_rating, args=(tag, value, drawn),
                   width="stretch")
    for col, field in zip(st.columns(4), TICKS):
        col.checkbox(f"{TICKS[field][1]} ({TICKS[field][0].upper()})", key=f"{field}_{tag}")
    return current


def _actions(tag: str, blind: bool, current, drawn: int) -> None:
    b1, b2, b3 = st.columns(3)
    b1.button("Submit and next", key=f"submit_{tag}", shortcut="Ctrl+Enter", type="primary",
              on_click=_submit, args=(tag, blind, current, drawn),
              width="stretch")
    b2.button("Skip", key=f"skip_{tag}", shortcut="Alt+S", on_click=_skip, args=(tag,),
              width="stretch")
    b3.button("Undo last rating", key=f"undo_{tag}", shortcut="Alt+Z", on_click=_undo,
              args=(tag,), width="stretch")
    st.caption("Keys: 1–5 rate · F O S C tick · Ctrl+Enter submit · Alt+S skip · Alt+Z undo · "
               "Esc leaves a text box · ? all keys")


def _edit_box(case, tag: str, blind: bool) -> None:
    if blind:
        # An edit box holding the AI's text would say which of A and B it is.
        st.caption("Blinded: rate and comment only; switch blinding off to edit the AI text.")
    elif len(case.ai_text) > annotate.MAX_TEXT:
        # the box would cut the text at its limit, and the cut text would be saved as an edit
        st.caption(f"The AI text is longer than an edit can be ({annotate.MAX_TEXT:,} "
                   f"characters): rate it and say what to change in the comment.")
    else:
        st.session_state.setdefault(f"edit_{tag}", case.ai_text)
        edited = st.text_area("Edit the AI impression (optional)", key=f"edit_{tag}",
                              height=110, max_chars=annotate.MAX_TEXT)
        st.caption(f"{len(edited):,} / {annotate.MAX_TEXT:,} characters")
        if not edited.strip():
            st.caption("An empty box is saved as no edit: type the impression you would sign, "
                       "or rate the AI text as it is.")
        elif edited.strip() != case.ai_text.strip():
            # Verbatim: st.html shows the escaped diff as it is (st.markdown would render
            # "**", "#" or "1." in the text as Markdown).
            st.html("<div style='white-space:pre-wrap'>Your edit: "
                    f"{annotate.diff_html(case.ai_text, edited)}</div>")
    st.text_input("Comment (optional)", key=f"comment_{tag}", max_chars=MAX_COMMENT)


def _case_view(case, tag: str, blind: bool, drawn: int) -> None:
    """Findings beside the impressions; under them, full width, the rating, the ticks and
    Submit/Skip/Undo (above the fold at 1000 px: long findings scroll in their own box), then
    the edit box and the comment."""
    _restore_drafts(tag)
    left, right = st.columns([5, 6], gap="large")
    with left:
        st.markdown("**Findings**")
        report_context(case.indication, case.comparison)
        findings_text(case.findings)
        st.caption(f"Report {case.external_id} · source {case.source}")
    with right:
        _impressions(case, blind)
    current = _rating_buttons(tag, blind, drawn)
    _actions(tag, blind, current, drawn)
    _edit_box(case, tag, blind)
    _keep_drafts(tag)


@st.fragment
def case_panel() -> None:
    # the run that draws the buttons (rating keys rerun only this fragment): a key from it after
    # a refused Submit is ignored (_pressed_after_submit)
    drawn = new_run()
    if "case" not in st.session_state:
        _load()
    _open_linked_case()
    sync_session_cookie(user)  # rating runs only this fragment: keep the cookie's idle clock
    case, tag = st.session_state["case"], st.session_state["case_tag"]
    if case is not None and st.query_params.get("case") != str(case.report_id):
        st.query_params["case"] = str(case.report_id)  # a refresh or a link reopens this case
        st.session_state["case_link"] = str(case.report_id)  # ours, not a link to follow
    # The counts change only with a save, skip or undo (each loads a case): a rating key or a
    # tick reruns this fragment without asking the database again.
    if st.session_state.get("counts") is None:
        st.session_state["counts"] = annotate.queue_counts(store, user)
    rated, skipped, total = st.session_state["counts"]
    st.progress(rated / total if total else 0.0,
                text=f"{rated} of {total} cases rated" + (f" · {skipped} skipped"
                                                          if skipped else ""))

    if (msg := st.session_state.pop("annotate_flash", None)) is not None:
        st.toast(msg)
    if (err := st.session_state.pop("annotate_error", None)) is not None:
        st.error(err)

    revealed = st.session_state.get("revealed")
    if revealed:
        _show_reveal(revealed, tag)
    elif case is None:
        st.success("Your queue is empty: every case with an AI impression ready is rated. "
                   "New cases appear after the next generation run.")
        st.button("Undo last rating", key=f"undo_{tag}", shortcut="Alt+Z", on_click=_undo,
                  args=(tag,))
    else:
        _case_view(case, tag, st.session_state.get("blind", False), drawn)
    run_mark(tag)  # once the page is drawn: keys typed after a Submit wait for it (keyboard_guard)
    if case is not None:
        _fetch_ahead(case)  # after the page is drawn


st.title("Annotate")
keyboard_guard(KEYS, {k: label for k, label in TICKS.values()})
with st.sidebar.expander("Guidelines: ratings and ticks", expanded=True):
    st.markdown(GUIDELINES)
pending = [s for s in rating.my_studies(store, user) if s.status == "running" and s.done < s.total]
if pending:
    with st.container(border=True):
        st.markdown("**Evaluation study waiting:** " + "; ".join(
            f"{s.name} ({s.total - s.done} of {s.total} left)" for s in pending))
        st.page_link("pages/study_annotate.py", label="Open my study queue",
                     icon=":material/checklist:")
st.toggle("Blind A/B (hide which impression is the AI's until rated)", key="blind")
case_panel()
