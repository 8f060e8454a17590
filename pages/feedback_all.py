"""All feedback (coordinators and admins): every reader's ratings, filterable, exportable."""

import datetime as dt

import streamlit as st

from core.feedback import annotate, history
from core.util import safe_csv
from ui import get_store, keep, kept, require_user

user = require_user("coordinator", "admin")
store = get_store()

st.title("All feedback")
readers = sorted(r.username for r in store.list_readers("radiologist"))
if not readers:
    st.info("No radiologists yet.")
    st.stop()

c1, c2, c3 = st.columns(3)
names = c1.multiselect("Readers", readers, key=kept("fa_readers", []), placeholder="Everyone")
ratings = c2.multiselect("Rating", list(annotate.RATING_SCALE.values()),
                         key=kept("fa_ratings", []), placeholder="Any")
kinds = c3.multiselect("Kind", ["rating", "skip", "retraction"],
                       key=kept("fa_kinds", ["rating", "skip"]), format_func=str.capitalize)
c4, c5, c6 = st.columns(3)
since = c4.date_input("From", key=kept("fa_since", None), format="YYYY-MM-DD")
until = c5.date_input("To", key=kept("fa_until", None), format="YYYY-MM-DD")
scope = c6.selectbox("Where", history.SCOPES, key=kept("fa_scope", history.SCOPES[0]))
show_old = st.toggle("Include retracted and revised", key=kept("fa_retracted", False))
keep("fa_readers", "fa_ratings", "fa_kinds", "fa_since", "fa_until", "fa_scope", "fa_retracted")

rows = history.all_feedback(store, user, since=since)
view = history.apply(rows, history.Filters(kinds=kinds, include_old=show_old, scope=scope,
                                           readers=names, ratings=ratings, since=since,
                                           until=until))
note = (f" (the newest {history.ALL_FEEDBACK_LIMIT:,}: narrow the dates for older ones)"
        if len(rows) >= history.ALL_FEEDBACK_LIMIT else "")
st.caption(f"{len(view):,} of {len(rows):,} rows{note}")
st.dataframe(history.table(store, view, with_reader=True), hide_index=True,
             width="stretch", key="fa_table")
who = "-".join(names) if 0 < len(names) <= 3 else "all"
st.download_button("Export CSV", safe_csv(view).encode("utf-8"),
                   file_name=f"feedback-{who}-{dt.date.today():%Y%m%d}.csv", mime="text/csv",
                   on_click=annotate.record_export,
                   args=(store, user, f"feedback of {', '.join(names) or 'all readers'}",
                         len(view)), key="fa_export")
