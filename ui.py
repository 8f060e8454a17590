"""Streamlit glue shared by the pages: the store handle, the signed-in user and the session
cookie.

Kept out of ``core`` because it imports streamlit; it holds no SQL and no model code.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from core.accounts import sessions
from core.accounts.auth import User, revalidate
from core.config import settings
from core.store.database import Store

# The cookie is re-issued (with a new "last active" time) at most this often while in use.
COOKIE_REFRESH_S = 60


@st.cache_resource(show_spinner=False)
def _store(path: str) -> Store:
    store = Store(path)
    store.migrate()
    return store


def get_store() -> Store:
    """The process-wide store for the configured database (one connection per process)."""
    _router_only()
    return _store(str(settings().db_path))


def _router_only() -> None:
    """The first browser session after the server starts may ask for ``/<page>``: Streamlit then
    runs ``pages/<page>.py`` on its own, as in apps without ``st.navigation`` (it only learns
    that this app routes when app.py first calls it). Rerun through app.py instead, so the
    router (sign-in, the session cookie, roles) always decides."""
    if PagesManager.uses_pages_directory and not st.session_state.get("routed"):
        PagesManager.uses_pages_directory = False
        st.rerun()


def _restore_from_cookie() -> None:
    """Once per browser session (a refresh or a typed URL starts a new one): sign in again
    from the session cookie when it still stands (``core.accounts.sessions.restore``)."""
    if st.session_state.get("cookie_checked"):
        return
    st.session_state["cookie_checked"] = True
    try:
        token = st.context.cookies.get(sessions.COOKIE)
    except Exception:  # noqa: BLE001 - no browser request behind this run (AppTest, bare mode)
        token = None
    restored = sessions.restore(get_store(), token) if token else None
    if restored is None:
        if token:
            st.session_state["clear_cookie"] = True  # expired or revoked: drop it
        return
    user, sid = restored
    st.session_state.update(user=user, session_id=sid, last_active=datetime.now(UTC))


def current_user() -> User | None:
    """The signed-in user, or None: also when the session has expired, or an admin has
    disabled the account or changed its role since sign-in (checked on every run)."""
    _router_only()
    _restore_from_cookie()
    user = st.session_state.get("user")
    if user is None:
        return None
    if user.expired:
        end_session("Your session expired; please sign in again.", "expired")
        return None
    if revalidate(get_store(), user) is None:
        end_session("Your account was disabled or its role changed; please sign in again.",
                    "revoked")
        return None
    return user


def end_session(flash: str | None, why: str = "signed out") -> None:
    """Sign the browser session out and revoke its cookie token."""
    user, sid = st.session_state.get("user"), st.session_state.get("session_id")
    if user is not None:
        sessions.revoke(get_store(), user.username, sid, why)
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state.update(cookie_checked=True, clear_cookie=True, routed=True)
    if flash:
        st.session_state["flash"] = flash


def _script(js: str) -> None:
    st.html(f"<script>{js}</script>", unsafe_allow_javascript=True, width="content")


def sync_session_cookie(user: User | None) -> None:
    """Write (or clear) the session cookie in the browser. It is re-issued at most every
    ``COOKIE_REFRESH_S`` so that its idle clock follows the page runs."""
    if user is None:
        if st.session_state.pop("clear_cookie", False):
            _script(f"document.cookie = '{sessions.COOKIE}=; Path=/; Max-Age=0; SameSite=Strict';")
        return
    if time.monotonic() - st.session_state.get("cookie_at", -1e9) < COOKIE_REFRESH_S:
        return
    sid = st.session_state.setdefault("session_id", sessions.new_session_id())
    token = sessions.issue(get_store(), user, sid)
    st.session_state["cookie_at"] = time.monotonic()
    _script(f"document.cookie = {json.dumps(sessions.COOKIE)} + '=' + {json.dumps(token)} + "
            "'; Path=/; Max-Age=28800; SameSite=Strict' + "
            "(location.protocol === 'https:' ? '; Secure' : '');")


def keyboard_guard() -> None:
    """Keep modified shortcuts (Alt+S: skip) from firing while the focus is in a text box:
    Streamlit lets Alt/Ctrl shortcuts through there, and a skip throws the typed edit away.
    Ctrl+Enter (submit) still works from a text box."""
    _script("""if (!window.__impKeyGuard) { window.__impKeyGuard = true;
  window.addEventListener('keydown', function (e) {
    var t = e.target, tag = t && t.tagName;
    var typing = t && (t.isContentEditable || tag === 'TEXTAREA' ||
                       (tag === 'INPUT' && !/^(checkbox|radio|button|submit|range)$/.test(t.type)));
    if (typing && e.altKey && !e.ctrlKey && !e.metaKey) { e.stopImmediatePropagation(); }
  }, true);
}""")


def require_user(*roles: str) -> User:
    """Stop the page unless someone with one of ``roles`` is signed in."""
    user = current_user()
    if user is None or (roles and user.role not in roles):
        st.error("You do not have access to this page.")
        st.stop()
    return user


def kept(key: str, default):
    """The key of a widget whose value survives leaving the page and coming back (Streamlit
    forgets a widget's state once a run does not draw it): seeds the widget from its kept copy
    (or ``default``); call :func:`keep` after drawing the page's widgets. Pass the widget no
    default of its own."""
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(f"kept:{key}", default)
    return key


def keep(*keys: str) -> None:
    """Copy these widgets' values where a page change does not clear them (see :func:`kept`)."""
    for key in keys:
        if key in st.session_state:
            st.session_state[f"kept:{key}"] = st.session_state[key]
