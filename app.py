"""Impressionist: the router. Sign-in decides which pages a user gets (st.navigation)."""

from datetime import datetime, timezone

import streamlit as st

from core.accounts import auth
from ui import current_user, get_store

st.set_page_config(page_title="Impressionist", page_icon=":material/radiology:", layout="wide")

user = current_user()
if user is not None:
    # Idle timeout: every page run counts as activity; a session left alone too long ends.
    now = datetime.now(timezone.utc)
    if not auth.check_idle(get_store(), user, st.session_state.get("last_active",
                                                                   user.signed_in_at), now):
        st.session_state.pop("user", None)
        st.session_state["flash"] = "You were signed out after a while without activity."
        user = None
    else:
        st.session_state["last_active"] = now
if user is None:
    home = st.Page("pages/sign_in.py", title="Sign in", icon=":material/login:", default=True)
    pages = [home]
else:
    coordinator = user.role == "coordinator"
    annotate = st.Page("pages/annotate.py", title="Annotate", icon=":material/edit_note:",
                       default=not coordinator)
    everyone = st.Page("pages/feedback_all.py", title="All feedback", icon=":material/table_chart:",
                       default=coordinator)
    pages = []
    if user.role in ("radiologist", "admin"):
        pages += [annotate,
                  st.Page("pages/study_annotate.py", title="Study queue", icon=":material/checklist:"),
                  st.Page("pages/my_feedback.py", title="My feedback", icon=":material/history:")]
    if user.role in ("coordinator", "admin"):
        pages += [everyone,
                  st.Page("pages/study.py", title="Studies", icon=":material/science:"),
                  st.Page("pages/results.py", title="Study results", icon=":material/monitoring:"),
                  st.Page("pages/adapters.py", title="Adapters", icon=":material/model_training:")]
    if user.role == "admin":
        pages += [st.Page("pages/admin.py", title="Admin", icon=":material/settings:")]
    pages += [st.Page("pages/sign_out.py", title="Sign out", icon=":material/logout:")]
    home = everyone if coordinator else annotate
    with st.sidebar:
        st.caption(f"Signed in as **{user.username}** ({user.role})")

page = st.navigation(pages)
if user is not None and st.session_state.pop("just_signed_in", False):
    # The browser still points at the sign-in page; send it to the role's home page.
    st.switch_page(home)
page.run()
