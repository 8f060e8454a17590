"""Impressionist: the router. Sign-in decides which pages a user gets (st.navigation).

Every page has a stable URL. A refresh or a typed URL keeps the session (the signed session
cookie, ``ui.current_user``); signed out, any page URL shows the sign-in form and leads to that
page (with its query, e.g. ``/annotate?case=12``) once signed in.
"""

from datetime import UTC, datetime

import streamlit as st

from core.accounts import auth
from ui import current_user, end_session, get_store, sync_session_cookie

st.set_page_config(page_title="Impressionist", page_icon=":material/radiology:", layout="wide")
st.session_state["routed"] = True  # this session runs through the router (ui._router_only)

# (file, title, icon, roles)
PAGES = [
    ("pages/annotate.py", "Annotate", ":material/edit_note:", ("radiologist", "admin")),
    ("pages/study_annotate.py", "Study queue", ":material/checklist:", ("radiologist", "admin")),
    ("pages/my_feedback.py", "My feedback", ":material/history:", ("radiologist", "admin")),
    ("pages/feedback_all.py", "All feedback", ":material/table_chart:", ("coordinator", "admin")),
    ("pages/study.py", "Studies", ":material/science:", ("coordinator", "admin")),
    ("pages/results.py", "Study results", ":material/monitoring:", ("coordinator", "admin")),
    ("pages/adapters.py", "Adapters", ":material/model_training:", ("coordinator", "admin")),
    ("pages/admin.py", "Admin", ":material/settings:", ("admin",)),
]


def _url(path: str) -> str:
    return path.split("/")[-1].removesuffix(".py")


def _no_access() -> None:
    st.error("You do not have access to this page.")


user = current_user()
if user is not None:
    # Idle timeout: every page run counts as activity; a session left alone too long ends.
    now = datetime.now(UTC)
    if not auth.check_idle(get_store(), user, st.session_state.get("last_active",
                                                                   user.signed_in_at), now):
        end_session("You were signed out after a while without activity.", "idle")
        user = None
    else:
        st.session_state["last_active"] = now
if user is None:
    home = st.Page("pages/sign_in.py", title="Sign in", icon=":material/login:", default=True)
    # Every page URL shows the sign-in form (not "Page not found"); sign-in then goes there.
    pages = [home] + [st.Page("pages/sign_in.py", title="Sign in", url_path=_url(path),
                              visibility="hidden") for path, *_ in PAGES]
else:
    home_file = "pages/feedback_all.py" if user.role == "coordinator" else "pages/annotate.py"
    # Pages of other roles answer "no access" at their URL instead of "Page not found".
    pages = [st.Page(path, title=title, icon=icon) if user.role in roles else
             st.Page(_no_access, title=title, url_path=_url(path), visibility="hidden")
             for path, title, icon, roles in PAGES]
    pages += [st.Page("pages/sign_out.py", title="Sign out", icon=":material/logout:")]
    mine = {_url(path): page for (path, *_, roles), page in zip(PAGES, pages)
            if user.role in roles}
    home = mine[_url(home_file)]
    # The root URL goes to the role's home page; the home page keeps its own URL (/annotate):
    # Streamlit serves a default page only at the root, and answers "Page not found" at its name.
    pages.insert(0, st.Page(lambda: st.switch_page(home, query_params=st.query_params.to_dict() or None),
                            title="Home", url_path="home", default=True, visibility="hidden"))
    with st.sidebar:
        st.caption(f"Signed in as **{user.username}** ({user.role})")

page = st.navigation(pages)
if user is None and page.url_path:
    st.session_state["wanted"] = (page.url_path, st.query_params.to_dict())
if user is not None and st.session_state.pop("just_signed_in", False):
    # The browser still points at the sign-in page (or the page asked for before signing in).
    path, query = st.session_state.pop("wanted", ("", {}))
    target = mine.get(path, home)
    st.switch_page(target, query_params=query if path in mine else None)
with st.sidebar:
    sync_session_cookie(user)
page.run()
