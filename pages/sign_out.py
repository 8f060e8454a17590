import streamlit as st

from ui import end_session

end_session("Signed out.")
st.rerun()
