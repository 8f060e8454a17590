"""Admin: import report files, manage users, watch generation."""

import tempfile
from pathlib import Path

import streamlit as st

from core.accounts import admin, auth
from core.errors import ImpressionistError
from ui import get_store, require_user

user = require_user("admin")
store = get_store()

st.title("Admin")
tab_import, tab_users, tab_gen = st.tabs(["Import reports", "Users", "Generation"])

with tab_import:
    st.markdown("Upload IU X-ray/Open-i CSV, CheXpert Plus CSV, MIMIC-CXR report text "
                "(.txt), or a generic CSV/JSONL (columns uid, findings, impression, "
                "indication, comparison). The whole file is checked before anything is "
                "written: a bad file imports nothing.")
    upload = st.file_uploader("Report file", type=["csv", "jsonl", "ndjson", "txt"],
                              key="admin_upload")
    fmt = st.selectbox("Format", admin.IMPORT_FORMATS, key="admin_format")
    skip_empty = st.checkbox(
        "Skip reports without findings", key="admin_skip_empty_findings",
        help="Leave out and count reports with no findings (about a third of MIMIC-CXR "
             "reports, many CheXpert Plus rows) instead of refusing the file. "
             "CLI: --skip-empty-findings")
    no_impression = st.checkbox(
        "Accept reports without an impression", key="admin_allow_missing_impression",
        help="CLI: --allow-missing-impression")
    duplicates = st.checkbox(
        "Import reports already imported through another format",
        key="admin_allow_duplicates",
        help="By default a report whose findings and impression are already in the database "
             "from another format is skipped and counted. CLI: --allow-duplicates")
    if st.button("Import", key="admin_import", type="primary", disabled=upload is None):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.name).name
            path.write_bytes(upload.getvalue())
            with st.spinner(f"Importing {upload.name}…"):
                try:
                    result = admin.import_reports(store, user, path, fmt=fmt,
                                                  display_name=upload.name,
                                                  skip_empty_findings=skip_empty,
                                                  require_impression=not no_impression,
                                                  allow_duplicates=duplicates)
                except ImpressionistError as exc:
                    st.error(f"Nothing was imported. {exc}")
                else:
                    st.success(result.summary())
    st.markdown("**Recent imports**")
    st.dataframe(admin.recent_imports(store, user), hide_index=True, width="stretch")

with tab_users:
    accounts = admin.users(store, user)
    table = st.empty()          # drawn after the forms below: it shows their action at once
    with st.form("add_user", clear_on_submit=True):
        st.markdown("**Add a user**")
        name = st.text_input("Username", key="admin_new_name")
        role = st.selectbox("Role", auth.ROLES, key="admin_new_role")
        password = st.text_input("Initial password", type="password", key="admin_new_pw")
        if st.form_submit_button("Add user"):
            try:
                admin.add_user(store, user, name, role, password)
            except ImpressionistError as exc:
                st.error(str(exc))
            else:
                st.success(f"Added {name} ({role}).")
    with st.form("user_access"):
        st.markdown("**Disable or re-enable an account**")
        st.caption("A disabled account cannot sign in, is signed out on its next page, and "
                   "can save nothing; what it wrote stays.")
        others = [n for n in accounts["username"] if n != user.username]
        target = st.selectbox("User", others, key="admin_access_user")
        c1, c2 = st.columns(2)
        disable = c1.form_submit_button("Disable")
        enable = c2.form_submit_button("Enable")
        if (disable or enable) and target:
            try:
                admin.set_user_active(store, user, target, active=enable)
            except ImpressionistError as exc:
                st.error(str(exc))
            else:
                st.success(f"{target} {'enabled' if enable else 'disabled'}.")
    table.dataframe(admin.users(store, user), hide_index=True, width="stretch")



def _progress() -> None:
    """The runs started from this server (progress read from the database) and the counts."""
    status = admin.generation_status(store, user)
    c1, c2 = st.columns(2)
    c1.metric("Reports", f"{status['reports']:,}")
    c2.metric("Reports with an AI impression ready", f"{status['ready']:,}")
    for run in admin.generation_progress(store, user)[:3]:
        st.progress(run.fraction, text=run.text)
    st.dataframe(status["by_model"], hide_index=True, width="stretch")


with tab_gen:
    box = st.container()
    st.markdown("Generation runs as its own process so that the app stays responsive; the "
                "queue only shows cases whose AI impression is ready.")
    limit = st.number_input("Reports to generate", 1, 100_000, 200, key="admin_gen_limit")
    if st.button("Start generation in the background", key="admin_gen_start"):
        run = admin.start_generation(store, user, limit=int(limit))
        st.info(f"Generation {run.id} started: up to {run.target:,} impressions.")
    st.code("python -m core generate --limit 200", language="bash")
    with box:  # above the button, drawn after it: a run just started shows at once
        running = any(r.running for r in admin.generation_progress(store, user))
        st.fragment(_progress, run_every=2.0 if running else None)()
