"""Impressionist: the router. Sign-in decides which pages a user gets (st.navigation)."""

import streamlit as st

from ui import current_user

st.set_page_config(page_title="Impressionist", page_icon="🩻", layout="wide")

user = current_user()
if user is None:
    pages = [st.Page("pages/sign_in.py", title="Sign in", icon="🔑")]
else:
    pages = []
    if user.role in ("radiologist", "admin"):
        pages += [st.Page("pages/annotate.py", title="Annotate", icon="📝", default=True),
                  st.Page("pages/my_feedback.py", title="My feedback", icon="🗂️")]
    if user.role in ("coordinator", "admin"):
        pages += [st.Page("pages/feedback_all.py", title="All feedback", icon="📊",
                          default=user.role == "coordinator")]
    if user.role == "admin":
        pages += [st.Page("pages/admin.py", title="Admin", icon="⚙️")]
    pages += [st.Page("pages/sign_out.py", title="Sign out", icon="🚪")]
    with st.sidebar:
        st.caption(f"Signed in as **{user.username}** ({user.role})")

st.navigation(pages).run()
