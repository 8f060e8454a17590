"""The only module that speaks SQL: schema, migrations and every query.

Two processes share one DuckDB file: the Streamlit app and the nightly job (plus CLI commands
such as ``import``). DuckDB lets only one *process* open a database file at a time, even
read-only, so a process must never keep the file to itself. The rule here:

* Inside a process, one DuckDB connection is shared by all threads and guarded by an RLock;
  every query runs inside :meth:`Store.tx` (one transaction).
* Across processes, an advisory ``flock`` on ``<db>.lock`` says who has the file open. A
  process keeps the file open only while it is busy, plus a short linger (default 0.3 s) so a
  burst of queries from the app does not reopen the file each time (opening costs ~20 ms).
* A process that wants the file and finds it taken writes ``<db>.want``; the holder sees that
  file after its current transaction (or from its watcher thread when idle) and lets go at
  once. The waiter then gets the file within milliseconds. Nobody is locked out for longer
  than the other side's longest single transaction.

Nothing the app records is ever updated or deleted: feedback is append-only (a retraction is a
new row), and "the current state of a case" is the ``current_feedback`` view.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from core.errors import NotFound, PermissionDenied, StoreBusy, StoreError
from core.store_study import STUDY_MIGRATIONS, StudyQueries
from core.store_training import TRAINING_MIGRATIONS, TrainingQueries

# ---------------------------------------------------------------------------------------------
# Migrations. Append only; never edit a released migration. Version ranges by area:
# 1-9 foundation, 10-19 generation/training runs, 20-29 personalization, 30-39 studies.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "foundation: readers, reports, generations, feedback, assignments, audit log",
        """
        CREATE SEQUENCE readers_id_seq;
        CREATE TABLE readers (
            id INTEGER PRIMARY KEY DEFAULT nextval('readers_id_seq'),
            username VARCHAR NOT NULL UNIQUE,
            role VARCHAR NOT NULL CHECK (role IN ('radiologist', 'coordinator', 'admin')),
            password_hash VARCHAR NOT NULL,
            active BOOLEAN NOT NULL DEFAULT TRUE,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE SEQUENCE imports_id_seq;
        CREATE TABLE imports (
            id BIGINT PRIMARY KEY DEFAULT nextval('imports_id_seq'),
            file VARCHAR NOT NULL,
            format VARCHAR NOT NULL,
            n_rows INTEGER NOT NULL,
            n_imported INTEGER NOT NULL,
            n_skipped INTEGER NOT NULL,
            actor VARCHAR,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE SEQUENCE reports_id_seq;
        CREATE TABLE reports (
            id BIGINT PRIMARY KEY DEFAULT nextval('reports_id_seq'),
            source VARCHAR NOT NULL,
            external_id VARCHAR NOT NULL,
            findings VARCHAR NOT NULL,
            impression VARCHAR,
            indication VARCHAR,
            comparison VARCHAR,
            author VARCHAR,
            extra JSON,
            import_id BIGINT,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            UNIQUE (source, external_id)
        );
        CREATE SEQUENCE generations_id_seq;
        CREATE TABLE generations (
            id BIGINT PRIMARY KEY DEFAULT nextval('generations_id_seq'),
            report_id BIGINT NOT NULL,
            model VARCHAR NOT NULL,
            adapter VARCHAR,
            adapter_version INTEGER,
            style VARCHAR NOT NULL DEFAULT 'default',
            text VARCHAR NOT NULL,
            flags JSON,
            latency_ms DOUBLE,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE SEQUENCE feedback_id_seq;
        CREATE TABLE feedback (
            id BIGINT PRIMARY KEY DEFAULT nextval('feedback_id_seq'),
            reader_id INTEGER NOT NULL,
            report_id BIGINT NOT NULL,
            generation_id BIGINT,
            kind VARCHAR NOT NULL CHECK (kind IN ('rating', 'skip', 'retraction')),
            rating SMALLINT CHECK (rating BETWEEN -2 AND 2),
            factual_error BOOLEAN,
            omission BOOLEAN,
            style_issue BOOLEAN,
            critical_missed BOOLEAN,
            comment VARCHAR,
            edited_text VARCHAR,
            retracts BIGINT,
            time_spent_ms INTEGER,
            blinded BOOLEAN,
            study_id BIGINT,
            source VARCHAR NOT NULL DEFAULT 'app',
            client_token VARCHAR UNIQUE,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE SEQUENCE assignments_id_seq;
        CREATE TABLE assignments (
            id BIGINT PRIMARY KEY DEFAULT nextval('assignments_id_seq'),
            study_id BIGINT,
            reader_id INTEGER NOT NULL,
            report_id BIGINT NOT NULL,
            generation_id BIGINT,
            position INTEGER,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE SEQUENCE audit_id_seq;
        CREATE TABLE audit_log (
            id BIGINT PRIMARY KEY DEFAULT nextval('audit_id_seq'),
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            actor VARCHAR,
            action VARCHAR NOT NULL,
            detail JSON
        );
        -- A rating or skip stands until a later retraction row names it.
        CREATE VIEW current_feedback AS
            SELECT f.* FROM feedback f
            WHERE f.kind IN ('rating', 'skip')
              AND NOT EXISTS (
                  SELECT 1 FROM feedback r WHERE r.kind = 'retraction' AND r.retracts = f.id);
        """,
    ),
]


MIGRATIONS += TRAINING_MIGRATIONS + STUDY_MIGRATIONS


def _sql_path(path: str | os.PathLike) -> str:
    return str(path).replace("'", "''")


def _fingerprint_sql(alias: str) -> str:
    """SQL for the content fingerprint of the report row ``alias``: md5 of its findings and
    impression, lower-cased with runs of whitespace collapsed (see ``content_duplicates``)."""
    def norm(column: str) -> str:
        return rf"regexp_replace(lower(trim({alias}.{column})), '\s+', ' ', 'g')"

    return f"md5({norm('findings')} || chr(10) || coalesce({norm('impression')}, ''))"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Reader:
    id: int
    username: str
    role: str
    active: bool


@dataclass(frozen=True)
class Case:
    """One report with the AI impression to rate, as the annotate screen shows it."""

    report_id: int
    generation_id: int
    source: str
    external_id: str
    findings: str
    impression: str | None
    indication: str | None
    comparison: str | None
    ai_text: str
    model: str
    adapter: str | None
    style: str
    flags: dict


class Store(TrainingQueries, StudyQueries):
    """A DuckDB database shared fairly between processes (see the module docstring).

    Args:
        path: database file; ``":memory:"`` for a private in-memory database (tests).
        lock_timeout: seconds to wait for another process before raising :class:`StoreBusy`.
        linger: seconds an idle connection is kept open before the file is handed back.
        slice_s: while another process waits, keep the file at most this long for threads of
            this process already queued in ``tx()`` (one reopen per burst, not one per
            transaction: each hand-over costs a checkpoint and a reopen, 40-400 ms).

    >>> store = Store(":memory:"); store.migrate()
    1
    """

    def __init__(self, path: str | os.PathLike, lock_timeout: float = 60.0, linger: float = 0.3,
                 slice_s: float = 0.2):
        self.slice_s = slice_s
        self._queued = 0  # threads of this process inside or waiting for tx()
        self._queued_lock = threading.Lock()
        self._held_since = 0.0
        self.path = str(path)
        self.memory = self.path == ":memory:"
        self.lock_timeout = lock_timeout
        self.linger = linger
        self._lock = threading.RLock()
        self._con = None
        self._lock_fd: int | None = None
        self._last_used = 0.0
        self._depth = 0
        self._closed = False
        self._watcher: threading.Thread | None = None
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_path = self.path + ".lock"
            self._want_path = self.path + ".want"

    # -- connection management -----------------------------------------------------------------
    def _someone_waits(self) -> bool:
        try:
            st = os.stat(self._want_path)
        except FileNotFoundError:
            return False
        # A waiter refreshes the file every few ms; an old one was left by a dead process.
        return time.time() - st.st_mtime < 5.0

    def _open(self) -> None:
        import duckdb

        if self.memory:
            self._con = duckdb.connect(":memory:")
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.lock_timeout
        waiting = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreBusy(
                            f"{self.path}: another process kept the database for more than "
                            f"{self.lock_timeout:.0f} s") from None
                    Path(self._want_path).write_text(str(os.getpid()))
                    waiting = True
                    time.sleep(0.005)
            if waiting:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._want_path)
            for attempt in range(50):
                try:
                    self._con = duckdb.connect(self.path)
                    break
                except duckdb.IOException as exc:
                    # A process outside this protocol (a duckdb shell) holds the file.
                    if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                        raise StoreBusy(f"{self.path}: {exc}") from exc
                    time.sleep(0.02 * (attempt + 1))
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._lock_fd = fd
        self._held_since = time.monotonic()
        self._ensure_watcher()

    def _release(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _ensure_watcher(self) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return

        def watch() -> None:
            while not self._closed:
                time.sleep(0.05)
                with self._lock:
                    if self._con is None or self._depth:
                        continue
                    idle = time.monotonic() - self._last_used
                    if idle > self.linger or self._someone_waits():
                        self._release()

        self._watcher = threading.Thread(target=watch, name="store-watcher", daemon=True)
        self._watcher.start()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Any]:
        """One transaction on the shared connection; commits on success, rolls back on error.

        Nested calls join the outer transaction.
        """
        with self._queued_lock:
            self._queued += 1
        try:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self.path}: store is closed")
                if self._con is None:
                    self._open()
                con = self._con
                outer = self._depth == 0
                self._depth += 1
                try:
                    if outer:
                        con.execute("BEGIN TRANSACTION")
                    yield con
                    if outer:
                        con.execute("COMMIT")
                except BaseException:
                    if outer:
                        with contextlib.suppress(Exception):
                            con.execute("ROLLBACK")
                    raise
                finally:
                    self._depth -= 1
                    self._last_used = time.monotonic()
                    if outer and not self.memory and (self.linger <= 0 or (
                            self._someone_waits() and (
                                self._queued <= 1 or
                                time.monotonic() - self._held_since > self.slice_s))):
                        # Another process waits: hand over now, unless other threads of this
                        # process are queued and the slice is not used up (one reopen per
                        # burst of queued transactions, not one per transaction).
                        self._release()
        finally:
            with self._queued_lock:
                self._queued -= 1

    def close(self) -> None:
        """Close the connection and hand the file back (the store cannot be used after)."""
        with self._lock:
            self._closed = True
            self._release()

    # -- backup and restore ----------------------------------------------------------------------
    def backup(self, dest: str | os.PathLike) -> dict:
        """Write a consistent copy of the whole database to ``dest`` (a new DuckDB file).

        Runs inside one transaction, so it sees one snapshot even while the app writes;
        the copy is written next to ``dest`` and renamed into place when complete.
        """
        dest = Path(dest)
        if dest.exists():
            raise StoreError(f"{dest}: already exists; choose a new backup file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        with self._lock:
            with self.tx() as con:
                main = con.execute("SELECT current_database()").fetchall()[0][0]
                con.execute(f"ATTACH '{_sql_path(tmp)}' AS backup_target")
                con.execute(f'COPY FROM DATABASE "{main}" TO backup_target')
                counts = {t: con.execute(f"SELECT count(*) FROM backup_target.{t}"
                                         ).fetchall()[0][0]
                          for t in ("reports", "generations", "feedback", "readers")}
            # DuckDB detaches only outside the transaction that wrote to the target.
            if self._con is not None:
                self._con.execute("DETACH backup_target")
        os.replace(tmp, dest)
        return counts

    def restore(self, src: str | os.PathLike) -> dict:
        """Replace the database with the backup ``src`` (checked first), atomically.

        Other processes are kept out while the file is swapped; they reopen the restored file
        on their next transaction. The replaced database is kept as ``<db>.before-restore``.
        """
        import duckdb

        src = Path(src)
        if self.memory:
            raise StoreError("cannot restore into an in-memory database")
        try:
            check = duckdb.connect(str(src), read_only=True)
            counts = {t: check.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                      for t in ("reports", "generations", "feedback", "readers")}
            check.close()
        except duckdb.Error as exc:
            raise StoreError(f"{src}: not a usable Impressionist backup ({exc})") from exc
        with self._lock:
            if self._con is None:
                self._open()
            self._con.close()  # keep the flock: nobody else may open the file meanwhile
            self._con = None
            try:
                staged = Path(self.path + ".restoring")
                shutil.copyfile(src, staged)
                if Path(self.path).exists():
                    os.replace(self.path, self.path + ".before-restore")
                Path(self.path + ".wal").unlink(missing_ok=True)
                os.replace(staged, self.path)
            finally:
                self._release()
        self.audit(None, "restore", {"from": src.name, **counts})
        return counts

    # -- small helpers ---------------------------------------------------------------------------
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        with self.tx() as con:
            cur = con.execute(sql, list(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.tx() as con:
            rows = con.execute(sql, list(params)).fetchall()
            return rows[0][0] if rows else None

    def df(self, sql: str, params: Sequence[Any] = ()):
        """Run a read query and return a pandas DataFrame (used by exports and reports)."""
        with self.tx() as con:
            return con.execute(sql, list(params)).df()

    # -- migrations ------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply pending migrations in order, each in its own transaction. Returns the version."""
        with self.tx() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description VARCHAR, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
        done = {r["version"] for r in self._rows("SELECT version FROM schema_migrations")}
        for version, description, sql in sorted(MIGRATIONS):
            if version in done:
                continue
            with self.tx() as con:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                            [version, description])
        return self.schema_version()

    def schema_version(self) -> int:
        return self._scalar("SELECT coalesce(max(version), 0) FROM schema_migrations")

    # -- audit -----------------------------------------------------------------------------------
    def audit(self, actor: str | None, action: str, detail: dict | None = None) -> None:
        """Append an audit record. ``detail`` must never hold patient text or secrets."""
        with self.tx() as con:
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES (?, ?, ?, ?)",
                        [_now(), actor, action, json.dumps(detail or {})])

    def audit_log(self, limit: int = 200, action: str | None = None,
                  actor: str | None = None, since: datetime | None = None) -> list[dict]:
        sql = "SELECT id, created_at, actor, action, detail FROM audit_log WHERE 1=1"
        params: list[Any] = []
        if action:
            sql += " AND action = ?"
            params.append(action)
        if actor:
            sql += " AND actor = ?"
            params.append(actor)
        if since:
            sql += " AND created_at >= ?"
            params.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return self._rows(sql, params)

    # -- readers ---------------------------------------------------------------------------------
    def add_reader(self, username: str, role: str, password_hash: str) -> Reader:
        with self.tx() as con:
            exists = con.execute("SELECT 1 FROM readers WHERE username = ?",
                                 [username]).fetchall()
            if exists:
                raise StoreError(f"user {username!r} already exists")
            con.execute("INSERT INTO readers (username, role, password_hash, created_at) "
                        "VALUES (?, ?, ?, ?)", [username, role, password_hash, _now()])
        return self.get_reader(username)

    def get_reader(self, username: str) -> Reader:
        row = self._one("SELECT id, username, role, active FROM readers WHERE username = ?",
                        [username])
        if row is None:
            raise NotFound(f"no user named {username!r}")
        return Reader(**row)

    def get_reader_by_id(self, reader_id: int) -> Reader:
        row = self._one("SELECT id, username, role, active FROM readers WHERE id = ?", [reader_id])
        if row is None:
            raise NotFound(f"no user with id {reader_id}")
        return Reader(**row)

    def password_hash(self, username: str) -> str | None:
        return self._scalar("SELECT password_hash FROM readers WHERE username = ? AND active",
                            [username])

    def set_password_hash(self, username: str, password_hash: str) -> None:
        with self.tx() as con:
            con.execute("UPDATE readers SET password_hash = ? WHERE username = ?",
                        [password_hash, username])

    def set_reader_active(self, username: str, active: bool) -> None:
        with self.tx() as con:
            con.execute("UPDATE readers SET active = ? WHERE username = ?", [active, username])

    def list_readers(self, role: str | None = None) -> list[Reader]:
        sql = "SELECT id, username, role, active FROM readers"
        params: list[Any] = []
        if role:
            sql += " WHERE role = ?"
            params.append(role)
        return [Reader(**r) for r in self._rows(sql + " ORDER BY username", params)]

    def failed_signins_since(self, username: str, since: datetime) -> int:
        return self._scalar(
            "SELECT count(*) FROM audit_log WHERE action = 'signin_failed' AND actor = ? "
            "AND created_at >= ? AND created_at > coalesce((SELECT max(created_at) FROM audit_log WHERE "
            "action = 'signin' AND actor = ?), TIMESTAMP '1970-01-01')",
            [username, since, username])

    def failed_signins_from_client(self, client: str, since: datetime) -> int:
        """Failed sign-ins from one client key (any name) since ``since``."""
        return self._scalar(
            "SELECT count(*) FROM audit_log WHERE action = 'signin_failed' AND created_at >= ? "
            "AND json_extract_string(detail, '$.client') = ?", [since, client])

    # -- reports ---------------------------------------------------------------------------------
    def import_reports(self, records: Iterable[Any], file: str, fmt: str,
                       actor: str | None = None) -> tuple[int, int]:
        """Insert report records in ONE transaction; already known (source, external_id) skip.

        Args:
            records: objects with the fields of ``core.importers.ReportRecord``.
        Returns:
            (imported, skipped_as_duplicates)
        """
        import pandas as pd

        records = list(records)
        frame = pd.DataFrame({
            "source": [r.source for r in records],
            "external_id": [r.external_id for r in records],
            "findings": [r.findings for r in records],
            "impression": [r.impression for r in records],
            "indication": [r.indication for r in records],
            "comparison": [r.comparison for r in records],
            "author": [r.author for r in records],
            "extra": [json.dumps(r.extra or {}) for r in records],
        }, dtype=object)
        with self.tx() as con:
            con.execute(
                "INSERT INTO imports (file, format, n_rows, n_imported, n_skipped, actor, "
                "created_at) VALUES (?, ?, ?, 0, 0, ?, ?)",
                [file, fmt, len(records), actor, _now()])
            import_id = con.execute("SELECT currval('imports_id_seq')").fetchall()[0][0]
            con.register("incoming", frame)
            try:
                before = con.execute("SELECT count(*) FROM reports").fetchall()[0][0]
                con.execute(
                    "INSERT INTO reports (source, external_id, findings, impression, indication, "
                    "comparison, author, extra, import_id, created_at) "
                    "SELECT i.source, i.external_id, i.findings, i.impression, i.indication, "
                    "i.comparison, i.author, i.extra::JSON, ?, ? FROM incoming i "
                    "WHERE NOT EXISTS (SELECT 1 FROM reports r WHERE r.source = i.source "
                    "AND r.external_id = i.external_id)", [import_id, _now()])
                after = con.execute("SELECT count(*) FROM reports").fetchall()[0][0]
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("incoming")
            imported = after - before
            skipped = len(records) - imported
            con.execute("UPDATE imports SET n_imported = ?, n_skipped = ? WHERE id = ?",
                        [imported, skipped, import_id])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES (?, ?, ?, ?)",
                        [_now(), actor, "import", json.dumps(
                            {"file": os.path.basename(file), "format": fmt,
                             "imported": imported, "skipped": skipped})])
        return imported, skipped

    def content_duplicates(self, records: Sequence[Any]) -> dict[int, str]:
        """Records that repeat a stored report of *another* source, by content fingerprint.

        The fingerprint (``_fingerprint_sql``) hashes the lower-cased, whitespace-collapsed
        findings and impression, so the same reports imported through a second format (a
        MIMIC-CXR folder, then a CSV export of it) are recognised. Reports of the same source
        are not compared: two studies of one file may well share a templated normal text, and
        the same (source, external_id) again is skipped by ``import_reports`` anyway.

        Args:
            records: objects with the fields of ``core.importers.ReportRecord``.
        Returns:
            {index in ``records``: the source of a stored report with the same fingerprint}.
        """
        import pandas as pd

        frame = pd.DataFrame({
            "idx": range(len(records)),
            "source": [r.source for r in records],
            "external_id": [r.external_id for r in records],
            "findings": [r.findings for r in records],
            "impression": [r.impression for r in records],
        }, dtype=object)
        with self.tx() as con:
            con.register("incoming_fp", frame)
            try:
                rows = con.execute(
                    "SELECT i.idx, min(r.source) FROM incoming_fp i JOIN reports r "
                    f"ON {_fingerprint_sql('r')} = {_fingerprint_sql('i')} "
                    "AND r.source <> i.source WHERE NOT EXISTS (SELECT 1 FROM reports s "
                    "WHERE s.source = i.source AND s.external_id = i.external_id) "
                    "GROUP BY i.idx").fetchall()
            finally:
                with contextlib.suppress(Exception):
                    con.unregister("incoming_fp")
        return {int(idx): source for idx, source in rows}

    def count_reports(self) -> int:
        return self._scalar("SELECT count(*) FROM reports")

    def get_report(self, report_id: int) -> dict:
        row = self._one("SELECT * FROM reports WHERE id = ?", [report_id])
        if row is None:
            raise NotFound(f"no report with id {report_id}")
        return row

    def reports(self, ids: Sequence[int] | None = None, source: str | None = None,
                limit: int | None = None) -> list[dict]:
        sql = ("SELECT id, source, external_id, findings, impression, indication, comparison, "
               "author FROM reports WHERE 1=1")
        params: list[Any] = []
        if ids is not None:
            sql += " AND id IN (SELECT unnest(?))"
            params.append(list(ids))
        if source:
            sql += " AND source = ?"
            params.append(source)
        sql += " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return self._rows(sql, params)

    def imports(self, limit: int = 50) -> list[dict]:
        return self._rows("SELECT * FROM imports ORDER BY id DESC LIMIT ?", [limit])

    # -- generations -----------------------------------------------------------------------------
    def reports_without_generation(self, style: str = "default", adapter: str | None = None,
                                   limit: int | None = None) -> list[dict]:
        sql = ("SELECT r.id, r.source, r.external_id, r.findings, r.impression, r.indication, "
               "r.comparison, r.author FROM reports r WHERE NOT EXISTS (SELECT 1 FROM "
               "generations g WHERE g.report_id = r.id AND g.style = ? AND "
               "g.adapter IS NOT DISTINCT FROM ?) ORDER BY r.id")
        params: list[Any] = [style, adapter]
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return self._rows(sql, params)

    def add_generations(self, rows: Iterable[dict]) -> list[int]:
        """Insert generations (report_id, model, text, and optionally adapter, adapter_version,
        style, flags, latency_ms) in one transaction. Returns their ids."""
        ids = []
        with self.tx() as con:
            for r in rows:
                con.execute(
                    "INSERT INTO generations (report_id, model, adapter, adapter_version, style, "
                    "text, flags, latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [r["report_id"], r["model"], r.get("adapter"), r.get("adapter_version"),
                     r.get("style") or "default", r["text"], json.dumps(r.get("flags") or {}),
                     r.get("latency_ms"), _now()])
                ids.append(con.execute("SELECT currval('generations_id_seq')").fetchall()[0][0])
        return ids

    def get_generation(self, generation_id: int) -> dict:
        row = self._one("SELECT * FROM generations WHERE id = ?", [generation_id])
        if row is None:
            raise NotFound(f"no generation with id {generation_id}")
        return row

    def generations_for_report(self, report_id: int) -> list[dict]:
        return self._rows("SELECT * FROM generations WHERE report_id = ? ORDER BY id",
                          [report_id])

    def reports_ready_count(self) -> int:
        return self._scalar("SELECT count(DISTINCT report_id) FROM generations "
                            "WHERE style = 'default'")

    def generation_status(self) -> list[dict]:
        return self._rows(
            "SELECT model, coalesce(adapter, '(base)') AS adapter, style, count(*) AS n, "
            "count(DISTINCT report_id) AS reports, round(avg(latency_ms), 1) AS mean_latency_ms, "
            "max(created_at) AS last FROM generations GROUP BY ALL ORDER BY last DESC")

    # -- the annotation queue --------------------------------------------------------------------
    _CASE_SQL = """
        WITH ready AS (
            SELECT g.*, row_number() OVER (PARTITION BY g.report_id
                ORDER BY (g.adapter IS NOT DISTINCT FROM ?) DESC, g.id DESC) AS pick
            FROM generations g
            WHERE g.style = 'default' AND (g.adapter IS NULL OR g.adapter = ?)
        )
        SELECT r.id AS report_id, g.id AS generation_id, r.source, r.external_id, r.findings,
               r.impression, r.indication, r.comparison, g.text AS ai_text, g.model, g.adapter,
               g.style, g.flags
        FROM ready g JOIN reports r ON r.id = g.report_id
        WHERE g.pick = 1 {where}
        ORDER BY r.id
        LIMIT 1
    """

    def next_case(self, reader_id: int, adapter: str | None = None,
                  after_report: int | None = None) -> Case | None:
        """The first report with a ready AI impression that this reader has not rated or skipped.

        Only reports whose AI impression is ready are queued: the app never generates while a
        radiologist waits. ``after_report`` lets a caller step past a case (e.g. prefetching).
        """
        # Reports this reader rates in a study that is not closed stay out of the general queue:
        # it shows the AI impression beside the original, which would unblind the study's arms.
        where = ("AND NOT EXISTS (SELECT 1 FROM current_feedback f WHERE f.reader_id = ? AND "
                 "f.report_id = r.id AND f.study_id IS NULL) "
                 "AND r.id NOT IN (SELECT u.report_id FROM study_tasks t JOIN study_units u "
                 "ON u.id = t.unit_id WHERE t.reader_id = ? AND t.study_id NOT IN "
                 "(SELECT study_id FROM study_events WHERE event = 'closed'))")
        params: list[Any] = [adapter, adapter, reader_id, reader_id]
        if after_report is not None:
            where += " AND r.id > ?"
            params.append(after_report)
        row = self._one(self._CASE_SQL.format(where=where), params)
        return self._case(row) if row else None

    def case(self, report_id: int, adapter: str | None = None) -> Case:
        row = self._one(self._CASE_SQL.format(where="AND r.id = ?"), [adapter, adapter, report_id])
        if row is None:
            raise NotFound(f"report {report_id} has no AI impression ready")
        return self._case(row)

    @staticmethod
    def _case(row: dict) -> Case:
        row = dict(row)
        row["flags"] = json.loads(row["flags"]) if row.get("flags") else {}
        return Case(**row)

    def queue_progress(self, reader_id: int) -> tuple[int, int]:
        """(done, total) for a reader's general queue: reports with an AI impression ready."""
        row = self._one(
            "SELECT (SELECT count(DISTINCT report_id) FROM generations WHERE style = 'default') "
            "AS total, (SELECT count(DISTINCT report_id) FROM current_feedback WHERE "
            "reader_id = ? AND study_id IS NULL) AS done", [reader_id])
        return row["done"], row["total"]

    # -- feedback (append-only) ------------------------------------------------------------------
    FEEDBACK_FIELDS = ("reader_id", "report_id", "generation_id", "kind", "rating",
                       "factual_error", "omission", "style_issue", "critical_missed", "comment",
                       "edited_text", "retracts", "time_spent_ms", "blinded", "study_id",
                       "source", "client_token")

    def add_feedback(self, **fields: Any) -> int:
        """Append one feedback row and return its id.

        A repeated ``client_token`` (a double submit) returns the id of the first row instead of
        writing a second one.
        """
        unknown = set(fields) - set(self.FEEDBACK_FIELDS)
        if unknown:
            raise StoreError(f"unknown feedback field(s): {sorted(unknown)}")
        cols = [k for k in self.FEEDBACK_FIELDS if fields.get(k) is not None]
        with self.tx() as con:
            # A disabled account writes nothing, even from a session opened before it was
            # disabled (checked in the same transaction as the insert).
            active = con.execute("SELECT active FROM readers WHERE id = ?",
                                 [fields.get("reader_id")]).fetchall()
            if not active or not active[0][0]:
                raise PermissionDenied("this account is disabled or does not exist; nothing "
                                       "was saved")
            token = fields.get("client_token")
            if token:
                prior = con.execute("SELECT id FROM feedback WHERE client_token = ?",
                                    [token]).fetchall()
                if prior:
                    return prior[0][0]
            con.execute(
                f"INSERT INTO feedback ({', '.join(cols)}, created_at) VALUES "
                f"({', '.join('?' for _ in cols)}, ?)", [fields[k] for k in cols] + [_now()])
            return con.execute("SELECT currval('feedback_id_seq')").fetchall()[0][0]

    def add_feedback_many(self, rows: Sequence[dict]) -> int:
        """Append many feedback rows in one transaction (bulk imports, benchmarks)."""
        with self.tx():
            for r in rows:
                self.add_feedback(**r)
        return len(rows)

    def last_current_rating(self, reader_id: int, study_id: int | None = None) -> dict | None:
        return self._one(
            "SELECT * FROM current_feedback WHERE reader_id = ? AND study_id IS NOT DISTINCT "
            "FROM ? ORDER BY id DESC LIMIT 1", [reader_id, study_id])

    def get_feedback(self, feedback_id: int) -> dict:
        row = self._one("SELECT * FROM feedback WHERE id = ?", [feedback_id])
        if row is None:
            raise NotFound(f"no feedback with id {feedback_id}")
        return row

    def is_retracted(self, feedback_id: int) -> bool:
        return bool(self._scalar(
            "SELECT count(*) FROM feedback WHERE kind = 'retraction' AND retracts = ?",
            [feedback_id]))

    def feedback_history(self, reader_id: int | None = None, include_retracted: bool = True,
                         kinds: Sequence[str] = ("rating", "skip", "retraction"),
                         since: datetime | None = None, limit: int | None = None):
        """Feedback rows joined with the report and generation texts, newest first (DataFrame)."""
        view = "feedback" if include_retracted else "current_feedback"
        sql = (f"SELECT f.id, f.created_at, u.username AS reader, f.kind, f.rating, "
               f"f.factual_error, f.omission, f.style_issue, f.critical_missed, f.comment, "
               f"f.edited_text, f.retracts, f.time_spent_ms, f.blinded, f.study_id, f.source, "
               f"f.report_id, r.external_id, r.findings, r.impression AS original_impression, "
               f"f.generation_id, g.text AS ai_text, g.model, g.adapter, g.style, "
               f"EXISTS (SELECT 1 FROM feedback x WHERE x.kind = 'retraction' AND "
               f"x.retracts = f.id) AS retracted "
               f"FROM {view} f JOIN readers u ON u.id = f.reader_id "
               f"JOIN reports r ON r.id = f.report_id "
               f"LEFT JOIN generations g ON g.id = f.generation_id "
               f"WHERE f.kind IN (SELECT unnest(?))")
        params: list[Any] = [list(kinds)]
        if reader_id is not None:
            sql += " AND f.reader_id = ?"
            params.append(reader_id)
        if since is not None:
            sql += " AND f.created_at >= ?"
            params.append(since)
        sql += " ORDER BY f.id DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return self.df(sql, params)

    def count_feedback(self, reader_id: int | None = None) -> int:
        if reader_id is None:
            return self._scalar("SELECT count(*) FROM feedback")
        return self._scalar("SELECT count(*) FROM feedback WHERE reader_id = ?", [reader_id])

    # -- bulk helpers for benchmarks and demo data -----------------------------------------------
    def bulk_insert_frame(self, table: str, frame) -> None:
        """Append a DataFrame to ``table`` (benchmarks and demo data only; never app code)."""
        if table not in {"reports", "generations", "feedback"}:
            raise StoreError(f"bulk insert into {table!r} is not allowed")
        with self.tx() as con:
            con.register("bulk_frame", frame)
            try:
                cols = ", ".join(frame.columns)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM bulk_frame")
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("bulk_frame")
