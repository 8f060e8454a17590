"""Admin actions (imports, users, generation status), each checked against the user's role."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
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


@dataclass
class GenerationRun:
    """A ``python -m core generate`` started from the Admin page (in this server process).

    ``target``: the reports it was asked to write (``limit``, at most the reports that had no
    AI impression when it started); progress is read from the database (impressions ready now
    against ``ready_at_start``), not from its log.
    """
    id: int
    pid: int
    limit: int
    target: int
    ready_at_start: int
    started: float
    log: Path
    process: subprocess.Popen = field(repr=False)
    returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.returncode is None and self.process.poll() is None


_RUNS: list[GenerationRun] = []
_RUNS_LOCK = threading.Lock()


def _reap(run: GenerationRun) -> None:
    """Wait for the child in a thread so it never lingers as ``<defunct>`` once it exits."""
    run.returncode = run.process.wait()


def start_generation(store: Store, user: User, limit: int = 200) -> GenerationRun:
    """Start ``python -m core generate`` as a separate process (its output goes to a log file
    beside the database); a thread reaps it when it exits. Returns the run."""
    authorize(store, user, "admin")
    logs = settings().db_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.log"
    ready, total = store.reports_ready_count(), store.count_reports()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "core", "generate", "--limit", str(limit)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ), start_new_session=True)
    with _RUNS_LOCK:
        run = GenerationRun(len(_RUNS) + 1, proc.pid, int(limit),
                            max(0, min(int(limit), total - ready)), ready, time.time(), log,
                            proc)
        _RUNS.append(run)
    threading.Thread(target=_reap, args=(run,), name=f"reap-generate-{proc.pid}",
                     daemon=True).start()
    store.audit(user.username, "generation_started", {"limit": limit})
    return run


@dataclass(frozen=True)
class GenerationProgress:
    """What the Admin page shows of a run: no server paths."""
    id: int
    running: bool
    done: int
    target: int
    elapsed_s: float
    returncode: int | None

    @property
    def fraction(self) -> float:
        return 1.0 if not self.target else min(1.0, self.done / self.target)

    @property
    def text(self) -> str:
        state = ("running" if self.running else "finished" if self.returncode == 0 else
                 f"stopped with an error (exit status {self.returncode}; the server log has "
                 f"the details)")
        return (f"Generation {self.id}: {self.done:,} of {self.target:,} impressions written, "
                f"{state} ({self.elapsed_s:,.0f} s)")


def generation_progress(store: Store, user: User) -> list[GenerationProgress]:
    """The runs started from this server, newest first, with progress read from the database."""
    authorize(store, user, "admin", "coordinator")
    ready = store.reports_ready_count()
    out = []
    with _RUNS_LOCK:
        runs = list(reversed(_RUNS))
    for run in runs:
        running = run.running
        if not running and run.returncode is None:
            run.returncode = run.process.poll()
        done = max(0, ready - run.ready_at_start)
        out.append(GenerationProgress(run.id, running, min(done, run.target) if running
                                      else done, run.target, time.time() - run.started,
                                      run.returncode))
    return out
