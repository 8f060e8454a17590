import streamlit as st

from core.accounts import auth, sessions
from core.errors import AuthError
from ui import get_store

st.title("Impressionist")
st.caption("AI impressions for radiology reports, refined by your own feedback.")
if msg := st.session_state.pop("flash", None):
    st.info(msg)

with st.form("signin", clear_on_submit=False):
    username = st.text_input("Username", key="signin_username")
    password = st.text_input("Password", type="password", key="signin_password")
    submitted = st.form_submit_button("Sign in", type="primary")

if submitted:
    try:
        st.session_state["user"] = auth.sign_in(get_store(), username.strip(), password,
                                                   client=st.context.ip_address)
    except AuthError as exc:
        st.error(str(exc))
    else:
        st.session_state["just_signed_in"] = True
        st.session_state["session_id"] = sessions.new_session_id()  # the cookie's session
        st.session_state.pop("cookie_at", None)
        st.session_state["last_active"] = st.session_state["user"].signed_in_at  # idle clock
        st.rerun()
