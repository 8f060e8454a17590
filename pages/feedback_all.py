"""All feedback (coordinators and admins): every reader's ratings, filterable, exportable."""

import streamlit as st

from core.feedback import annotate
from core.util import safe_csv
from ui import get_store, require_user

user = require_user("coordinator", "admin")
store = get_store()

st.title("All feedback")
readers = {r.username: r.id for r in store.list_readers("radiologist")}
if not readers:
    st.info("No radiologists yet.")
    st.stop()
name = st.selectbox("Reader", sorted(readers), key="fa_reader")
history = annotate.feedback_of(store, user, reader_id=readers[name])
st.caption(f"{len(history):,} rows")
st.dataframe(history.drop(columns=["findings"]), hide_index=True, use_container_width=True)
st.download_button("Export CSV", safe_csv(history).encode("utf-8"),
                   file_name=f"feedback-{name}.csv", mime="text/csv",
                   on_click=annotate.record_export,
                   args=(store, user, f"feedback of {name}", len(history)), key="fa_export")
