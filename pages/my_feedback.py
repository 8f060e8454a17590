"""My feedback: a radiologist's own ratings and edits, filterable and exportable."""

import streamlit as st

from core.feedback import annotate
from core.util import safe_csv
from ui import get_store, require_user

user = require_user("radiologist", "admin")
store = get_store()

st.title("My feedback")
history = annotate.feedback_of(store, user)
if history.empty:
    st.info("You have not rated any case yet.")
    st.stop()

c1, c2, c3 = st.columns(3)
kinds = c1.multiselect("Kind", ["rating", "skip", "retraction"], default=["rating", "skip"],
                       key="mf_kinds")
show_retracted = c2.toggle("Include retracted and revised", value=False, key="mf_retracted",
                           help="A case rated twice (two tabs): the later rating revises the "
                                "earlier one, which stays on record but no longer counts.")
only_edits = c3.toggle("Only edited", value=False, key="mf_edited")
text = st.text_input("Search in findings, impressions and comments", key="mf_search")

view = history[history["kind"].isin(kinds)]
if not show_retracted:
    view = view[~view["retracted"] & ~view["revised"]]
if only_edits:
    view = view[view["edited_text"].notna()]
if text:
    needle = text.lower()
    hay = (view["findings"].fillna("") + " " + view["ai_text"].fillna("") + " "
           + view["edited_text"].fillna("") + " " + view["comment"].fillna("")).str.lower()
    view = view[hay.str.contains(needle, regex=False)]

view = view.assign(rating_label=view["rating"].map(annotate.RATING_SCALE),
                   status=annotate.feedback_status(view))
cols = ["created_at", "kind", "rating_label", "status", "factual_error", "omission", "style_issue",
        "critical_missed", "ai_text", "edited_text", "original_impression", "comment",
        "external_id", "retracted"]
st.caption(f"{len(view):,} of {len(history):,} rows")
st.dataframe(view[cols], hide_index=True, use_container_width=True, key="mf_table")
st.download_button("Export CSV", safe_csv(view).encode("utf-8"),
                   file_name=f"feedback-{user.username}.csv", mime="text/csv",
                   on_click=annotate.record_export,
                   args=(store, user, "own feedback", len(view)), key="mf_export")
