"""My feedback: a radiologist's own ratings and edits, filterable, exportable, correctable."""

import streamlit as st

from core.errors import ImpressionistError
from core.feedback import annotate, history
from core.studies import rating
from core.util import safe_csv
from ui import get_store, keep, kept, require_user

user = require_user("radiologist", "admin")
store = get_store()

st.title("My feedback")
if flash := st.session_state.pop("mf_flash", None):
    st.success(flash)
rows = annotate.feedback_of(store, user)
# A running study's ratings are not listed: beside the original impression they would unblind it.
running = [s for s in rating.my_studies(store, user) if s.done and s.status != "closed"]
hidden = " ".join(f"Your {s.done} ratings in the study {s.name} appear here once it is closed."
                  if s.done != 1 else f"Your rating in the study {s.name} appears here once it "
                  "is closed." for s in running)
if rows.empty:
    st.info(("Nothing to show yet. " + hidden) if running else "You have not rated any case yet.")
    st.stop()
if hidden:
    st.caption(hidden)

LABELS = list(annotate.RATING_SCALE.values())


def _s(value) -> str:
    return value if isinstance(value, str) else ""  # None and NaN: no text


c1, c2, c3 = st.columns(3)
kinds = c1.multiselect("Kind", ["rating", "skip", "retraction"],
                       key=kept("mf_kinds", ["rating", "skip"]), format_func=str.capitalize)
scope = c2.selectbox("Where", history.SCOPES, key=kept("mf_scope", history.SCOPES[0]),
                     help="Annotate ratings, ratings given in (closed) studies, or both.")
ratings = c3.multiselect("Rating", LABELS, key=kept("mf_ratings", []), placeholder="Any")
c4, c5 = st.columns(2)
show_old = c4.toggle("Include retracted and revised", key=kept("mf_retracted", False),
                     help="A case rated again (a correction, or a second tab) revises the "
                          "earlier rating, which stays on record but no longer counts.")
only_edits = c5.toggle("Only edited", key=kept("mf_edited", False))
text = st.text_input("Search in findings, impressions and comments", key=kept("mf_search", ""))
keep("mf_kinds", "mf_scope", "mf_ratings", "mf_retracted", "mf_edited", "mf_search")

view = history.apply(rows, history.Filters(kinds=kinds, include_old=show_old,
                                           only_edited=only_edits, text=text, scope=scope,
                                           ratings=ratings))
st.caption(f"{len(view):,} of {len(rows):,} rows")
st.dataframe(history.table(store, view), hide_index=True, width="stretch",
             key="mf_table")
st.download_button("Export CSV", safe_csv(view).encode("utf-8"),
                   file_name=f"feedback-{user.username}.csv", mime="text/csv",
                   on_click=annotate.record_export,
                   args=(store, user, "own feedback", len(view)), key="mf_export")

st.subheader("Correct a past rating")
fixable = history.correctable(view)
if fixable.empty:
    st.caption("No current Annotate rating among the rows above (a study's ratings belong to "
               "the study).")
    st.stop()
by_id = {int(r["id"]): r for _, r in fixable.iterrows()}


def _choice(i: int) -> str:
    r = by_id[i]
    return (f"Case {r['external_id']} · {r['created_at']:%Y-%m-%d %H:%M} · "
            f"{annotate.RATING_SCALE[int(r['rating'])]}")


fid = st.selectbox("Rating", list(by_id), key="mf_fix", format_func=_choice)
old = by_id[fid]
st.caption("Saved as a new entry that revises this one; the earlier rating stays on record.")
with st.form(f"mf_fix_form_{fid}"):
    st.caption("AI impression")
    st.text(_s(old["ai_text"]) or "(none)")
    new = st.radio("Rating", LABELS, index=LABELS.index(annotate.RATING_SCALE[int(old['rating'])]),
                   horizontal=True, key=f"mf_fix_rating_{fid}")
    t1, t2, t3, t4 = st.columns(4)
    ticks = {f: col.checkbox(label, value=bool(old[f]), key=f"mf_fix_{f}_{fid}")
             for col, (f, label) in zip((t1, t2, t3, t4), (
                 ("factual_error", "Factual error"), ("omission", "Omission"),
                 ("style_issue", "Style issue"), ("critical_missed", "Missed critical finding")))}
    edit = st.text_area("Edited impression", value=_s(old["edited_text"]) or _s(old["ai_text"]),
                        key=f"mf_fix_edit_{fid}")
    comment = st.text_area("Comment", value=_s(old["comment"]), key=f"mf_fix_comment_{fid}")
    if st.form_submit_button("Save correction", type="primary"):
        value = next(v for v, label in annotate.RATING_SCALE.items() if label == new)
        try:
            history.correct(store, user, fid, annotate.Rating(
                rating=value, comment=comment, edited_text=edit, **ticks))
        except ImpressionistError as exc:
            st.error(str(exc))
        else:
            st.session_state["mf_flash"] = f"Case {old['external_id']}: correction saved."
            st.rerun()
