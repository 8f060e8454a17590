"""Admin actions (imports, users, generation status), each checked against the user's role."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.accounts import auth
from core.accounts.auth import User, authorize
from core.config import ROOT, settings
from core.errors import ValidationError
from core.ingest.reports import ImportResult, import_file
from core.store.database import Store

IMPORT_FORMATS = ("auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl")


def import_reports(store: Store, user: User, path: str | Path, fmt: str = "auto",
                   display_name: str | None = None, skip_empty_findings: bool = False,
                   require_impression: bool = True,
                   allow_duplicates: bool = False) -> ImportResult:
    """``core.ingest.reports.import_file`` for an admin (the Admin page's import, its checkboxes)."""
    authorize(store, user, "admin")
    return import_file(store, path, fmt=fmt, actor=user.username, display_name=display_name,
                       skip_empty_findings=skip_empty_findings,
                       require_impression=require_impression,
                       allow_duplicates=allow_duplicates)


def recent_imports(store: Store, user: User):
    import pandas as pd  # on first use: only the Admin page needs it, the CLI starts without it

    authorize(store, user, "admin", "coordinator")
    return pd.DataFrame(store.imports())


def users(store: Store, user: User):
    import pandas as pd

    authorize(store, user, "admin")
    return pd.DataFrame([r.__dict__ for r in store.list_readers()])


def add_user(store: Store, user: User, username: str, role: str, password: str):
    authorize(store, user, "admin")
    return auth.create_user(store, username, role, password, actor=user.username)


def set_user_active(store: Store, user: User, username: str, active: bool) -> None:
    """Disable (or re-enable) an account. A disabled account cannot sign in, its open sessions
    end on their next page run, and it can save nothing (``Store.add_feedback`` checks);
    everything it wrote stays. Audited as ``user_disabled`` / ``user_enabled``."""
    authorize(store, user, "admin")
    target = auth.lookup_user(store, username)
    if not active and target.id == user.id:
        raise ValidationError("you cannot disable your own account")
    store.set_reader_active(target.username, bool(active))
    store.audit(user.username, "user_enabled" if active else "user_disabled",
                {"user": target.username})


def generation_status(store: Store, user: User) -> dict:
    import pandas as pd

    authorize(store, user, "admin", "coordinator")
    by_model = pd.DataFrame(store.generation_status())
    ready = store.reports_ready_count()
    return {"reports": store.count_reports(), "ready": ready, "by_model": by_model}


def start_generation(store: Store, user: User, limit: int = 200) -> Path:
    """Start ``python -m core generate`` as a separate process; returns its log file."""
    authorize(store, user, "admin")
    logs = settings().db_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(log, "wb") as out:
        subprocess.Popen([sys.executable, "-m", "core", "generate", "--limit", str(limit)],
                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                         env=dict(os.environ), start_new_session=True)
    store.audit(user.username, "generation_started", {"limit": limit})
    return log
