"""Streamlit glue shared by the pages: the store handle and the signed-in user.

Kept out of ``core`` because it imports streamlit; it holds no SQL and no model code.
"""

from __future__ import annotations

import streamlit as st

from core.accounts.auth import User
from core.config import settings
from core.store.database import Store


@st.cache_resource(show_spinner=False)
def _store(path: str) -> Store:
    store = Store(path)
    store.migrate()
    return store


def get_store() -> Store:
    """The process-wide store for the configured database (one connection per process)."""
    return _store(str(settings().db_path))


def current_user() -> User | None:
    """The signed-in user, or None: also when the session has expired, or an admin has
    disabled the account or changed its role since sign-in (checked on every run)."""
    from core.accounts.auth import revalidate

    user = st.session_state.get("user")
    if user is None:
        return None
    if user.expired:
        st.session_state.pop("user", None)
        st.session_state["flash"] = "Your session expired; please sign in again."
        return None
    if revalidate(get_store(), user) is None:
        st.session_state.pop("user", None)
        st.session_state["flash"] = ("Your account was disabled or its role changed; please "
                                     "sign in again.")
        return None
    return user


def require_user(*roles: str) -> User:
    """Stop the page unless someone with one of ``roles`` is signed in."""
    user = current_user()
    if user is None or (roles and user.role not in roles):
        st.error("You do not have access to this page.")
        st.stop()
    return user
