"""Streamlit glue shared by the pages: the store handle, the signed-in user and the session
cookie.

Kept out of ``core`` because it imports streamlit; it holds no SQL and no model code.
"""

from __future__ import annotations

import html
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


def keyboard_guard(shortcuts: list[tuple[str, str]] | None = None,
                   ticks: dict[str, str] | None = None) -> None:
    """The keyboard of a rating page, one capture-phase listener per browser tab:

    - modified shortcuts (Alt+S: skip) do not fire while the focus is in a text box (Streamlit
      lets Alt/Ctrl shortcuts through there, and a skip throws the typed edit away); Ctrl+Enter
      (submit) still works from a text box;
    - Escape leaves a text box (the focus goes back to the page, so number keys work again);
    - a key pressed while a checkbox or radio button has the focus (Streamlit ignores its
      shortcuts there) is handed to the page as if nothing had the focus;
    - ``ticks`` ({key: checkbox label}) ticks or unticks that checkbox on the page;
    - ``?`` shows (and ``?`` or Escape hides) an overlay listing ``shortcuts`` ((keys, what));
    - on a page that draws :func:`run_mark` last: after Submit (Ctrl+Enter), Skip, Undo or Next,
      keys are dropped (with a note) until the page has drawn the outcome, and for 450 ms after a
      new case appears: a fast reader's "5, Ctrl+Enter, 2" gives the 2 neither to the case that
      is leaving nor to one that has not been read.

    The page's ``shortcuts`` and ``ticks`` travel in a hidden element beside the script and are
    read at each key press, so a page without it gets none of the page-specific keys. Ticks
    click the checkbox on screen: like every key, it acts on the case that is shown.
    """
    config = html.escape(json.dumps({"shortcuts": shortcuts or [], "ticks": ticks or {}}),
                         quote=True)
    st.html(f"<span hidden data-imp-keys=\"{config}\"></span><script>{_KEYS_JS}</script>",
            unsafe_allow_javascript=True, width="content")


_KEYS_JS = """if (!window.__impKeyGuard) { window.__impKeyGuard = true;
  var cfg = function () {
    var el = document.querySelector('[data-imp-keys]');
    try { return el ? JSON.parse(el.getAttribute('data-imp-keys')) : null; } catch (x) { return null; }
  };
  var overlay = function (show, conf) {
    var old = document.getElementById('imp-keys-overlay');
    if (old) { old.remove(); }
    if (!show || !conf) { return; }
    var box = document.createElement('div');
    box.id = 'imp-keys-overlay'; box.setAttribute('role', 'dialog');
    box.setAttribute('aria-label', 'Keyboard shortcuts');
    box.style.cssText = 'position:fixed;inset:0;z-index:1000100;background:rgba(0,0,0,.45);' +
      'display:flex;align-items:center;justify-content:center;';
    var card = document.createElement('div');
    card.style.cssText = 'background:#fff;color:#111;border-radius:8px;padding:20px 28px;' +
      'max-width:560px;font:15px/1.5 sans-serif;box-shadow:0 8px 30px rgba(0,0,0,.3);';
    var h = document.createElement('h3'); h.textContent = 'Keyboard shortcuts';
    h.style.margin = '0 0 10px'; card.appendChild(h);
    var table = document.createElement('table');
    conf.shortcuts.forEach(function (row) {
      var tr = document.createElement('tr'), k = document.createElement('td'),
          w = document.createElement('td');
      k.textContent = row[0]; w.textContent = row[1];
      k.style.cssText = 'font-family:monospace;font-weight:bold;padding:2px 18px 2px 0;' +
        'white-space:nowrap;vertical-align:top;';
      tr.appendChild(k); tr.appendChild(w); table.appendChild(tr);
    });
    card.appendChild(table);
    var foot = document.createElement('div'); foot.textContent = '? or Escape closes this.';
    foot.style.cssText = 'margin-top:10px;color:#555;font-size:13px;'; card.appendChild(foot);
    box.appendChild(card);
    box.addEventListener('click', function () { box.remove(); });
    document.body.appendChild(box);
  };
  var tick = function (label) {
    var boxes = document.querySelectorAll('[data-testid="stCheckbox"]');
    for (var i = 0; i < boxes.length; i++) {
      var lab = boxes[i].innerText.trim();
      if (lab === label || lab.indexOf(label + ' ') === 0) {
        var input = boxes[i].querySelector('input');
        if (input && !input.disabled) { input.click(); input.blur(); return true; }
      }
    }
    return false;
  };
  // After Submit, Skip, Undo or Next: until the page has drawn the answer (a run mark newer
  // than the one on screen when the key was pressed), the keys of the page that is about to go
  // are dropped: they were typed for a case the reader has not seen yet.
  // A case that has just appeared cannot have been read: a rating, tick or action key within
  // FRESH ms of it was typed ahead for the case before and is dropped too.
  var pending = null, FRESH = 450, seen = {key: null, at: 0};
  var markOf = function (attr) {
    var el = document.querySelector('[data-imp-run]');
    return el ? el.getAttribute(attr) : null;
  };
  var runMark = function () { return markOf('data-imp-run'); };
  var look = function () {
    var key = markOf('data-imp-case');
    // (a mark missing for a moment while a run redraws it is not a new case)
    if (key !== null && key !== seen.key) { seen = {key: key, at: Date.now()}; }
  };
  setInterval(look, 40);
  var has = function (label) {
    var buttons = document.querySelectorAll('button');
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].innerText.trim().indexOf(label) === 0 && !buttons[i].disabled) { return true; }
    }
    return false;
  };
  var note = function () {
    var old = document.getElementById('imp-key-note');
    if (old) { old.remove(); }
    var n = document.createElement('div'); n.id = 'imp-key-note'; n.setAttribute('role', 'status');
    n.textContent = 'Key ignored: pressed before the next case appeared.';
    n.style.cssText = 'position:fixed;bottom:18px;left:50%;transform:translateX(-50%);' +
      'z-index:1000090;background:#333;color:#fff;padding:6px 14px;border-radius:6px;' +
      'font:14px sans-serif;';
    document.body.appendChild(n);
    setTimeout(function () { n.remove(); }, 2500);
  };
  window.addEventListener('keydown', function (e) {
    var t = e.target, tag = t && t.tagName;
    var typing = t && (t.isContentEditable || tag === 'TEXTAREA' || tag === 'SELECT' ||
                       (tag === 'INPUT' && !/^(checkbox|radio|button|submit|range)$/.test(t.type)));
    var plain = !e.ctrlKey && !e.altKey && !e.metaKey;
    var submit = e.key === 'Enter' && e.ctrlKey && !e.altKey;
    var undo = e.altKey && !e.ctrlKey && /^z$/i.test(e.key) && has('Undo');  // never dropped
    // an action only where the page has its button: a key with no button changes nothing, and
    // must not hold the keys after it
    var action = (submit && has('Submit')) || (e.altKey && !e.ctrlKey && /^s$/i.test(e.key) && has('Skip')) ||
                 (plain && !typing && /^n$/i.test(e.key) && has('Next case'));
    var mark = runMark();
    if (pending && ((mark !== null && mark !== pending.mark) || Date.now() > pending.until)) {
      pending = null;
    }
    look();
    var fresh = seen.key !== null && Date.now() - seen.at < FRESH;
    if ((pending || fresh) && (action || (plain && !typing && e.key.length === 1 && e.key !== '?'))) {
      e.preventDefault(); e.stopImmediatePropagation(); note(); return;
    }
    // Undo acts on the last saved answer, whatever is on screen: it goes through, and the keys
    // after it wait for the case it brings back.
    if ((action || undo) && mark !== null && !(typing && !submit)) {
      pending = {mark: mark, until: Date.now() + 4000};
    }
    if (typing) {
      if (e.altKey && !e.ctrlKey && !e.metaKey) { e.stopImmediatePropagation(); }
      if (e.key === 'Escape' && plain) { t.blur(); }
      return;
    }
    var open = document.getElementById('imp-keys-overlay');
    if (open && (e.key === 'Escape' || e.key === '?')) {
      open.remove(); e.preventDefault(); e.stopImmediatePropagation(); return;
    }
    var conf = cfg();
    if (!conf || !plain || e.key.length !== 1) { return; }
    if (tag === 'INPUT' && /^(checkbox|radio)$/.test(t.type) && e.key !== ' ') {
      // Streamlit ignores shortcuts while an input has the focus: hand the key to the page.
      e.preventDefault(); e.stopImmediatePropagation(); t.blur();
      var again = new KeyboardEvent('keydown', {key: e.key, code: e.code, shiftKey: e.shiftKey,
                                                bubbles: true, cancelable: true});
      ['keyCode', 'which'].forEach(function (p) {
        Object.defineProperty(again, p, {get: function () { return e.keyCode; }}); });
      document.body.dispatchEvent(again);
      return;
    }
    if (e.key === '?') {
      e.preventDefault(); e.stopImmediatePropagation(); overlay(true, conf); return;
    }
    var label = conf.ticks[e.key.toLowerCase()];
    if (label && !e.shiftKey && tick(label)) { e.preventDefault(); e.stopImmediatePropagation(); }
  }, true);
}"""


def new_run() -> int:
    """Count a run of a rating fragment; call it first. Its number is the ``drawn`` the run's
    buttons carry to their callbacks (a key from a page drawn before a Submit was handled is
    ignored) and the mark :func:`run_mark` draws."""
    st.session_state["_runs"] = st.session_state.get("_runs", 0) + 1
    return st.session_state["_runs"]


def run_mark(case: str) -> None:
    """A hidden mark naming this run (:func:`new_run`) and the ``case`` on screen; draw it after
    everything else, so that it changes once the run has drawn the page (see
    :func:`keyboard_guard`)."""
    st.html(f"<span hidden data-imp-run=\"{st.session_state.get('_runs', 0)}\" "
            f"data-imp-case=\"{html.escape(case, quote=True)}\"></span>", width="content")


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


# Findings longer than this scroll in a box of this height, so the rating stays above the fold.
FINDINGS_LONG, FINDINGS_PX = 700, 230


def report_context(indication: str | None, comparison: str | None) -> None:
    """The report's indication and comparison under bold labels, verbatim: a report's "*", "#",
    "1." or ":red[...]" is shown as typed, never read as Markdown or HTML."""
    lines = [f"<b>{label}:</b> {html.escape(value) if value and value.strip() else '—'}"
             for label, value in (("Indication", indication), ("Comparison", comparison))]
    st.html("<div style='white-space:pre-wrap'>" + "<br>".join(lines) + "</div>")


def findings_text(findings: str) -> None:
    """The findings verbatim; long ones scroll in their own box of fixed height, so the
    rating and Submit below them stay above the fold of a 1000 px window."""
    box = st.container(height=FINDINGS_PX) if len(findings) > FINDINGS_LONG else st.container()
    box.text(findings)
