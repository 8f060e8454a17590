"""The only module that speaks SQL: schema, migrations and every query.

Two processes share one DuckDB file: the Streamlit app and the nightly job (plus CLI commands
such as ``import``). DuckDB lets only one *process* open a database file at a time, even
read-only, so a process must never keep the file to itself. The rule here:

* Inside a process, one DuckDB connection is shared by all threads and guarded by a lock that
  serves threads in arrival order (:class:`core.store.lock.FairLock`); every query runs inside
  :meth:`Store.tx` (one transaction).
* Across processes, an advisory ``flock`` on ``<db>.lock`` says who has the file open. A
  process keeps the file open only while it is busy, plus a short linger (default 0.3 s) so a
  burst of queries from the app does not reopen the file each time (opening costs ~20 ms).
* A process that wants the file and finds it taken (or others already waiting) queues a ticket
  in ``<db>.queue/`` and is served in turn (:class:`core.store.lock.FileLock`); the holder sees
  the ticket after its current transaction (or from its watcher thread when idle) and lets go,
  after at most ``slice_s`` (0.2 s) more of its own queued transactions. A ticket is alive only
  while its owner holds a lock on it, so a killed waiter, a stale marker or a file with a
  future mtime changes nothing.
* Nothing waits forever and nothing fails raw: after ``lock_timeout`` (60 s) a waiter gets
  :class:`~core.errors.StoreBusy` ("database busy ... nothing was saved") holding nothing; a
  program outside this protocol that keeps the file open (a ``duckdb`` shell) gives the same;
  a lock file that cannot be opened (a folder in its place, a full or read-only disk) is a
  :class:`~core.errors.StoreError` that says nothing was saved.

**The bound.** No transaction of the app, the importers or the nightly job keeps the file
from the others for more than 0.5 s on the 2-core reference server (measured: a rating
10-20 ms, a 2,000-row feedback chunk 30-50 ms, a 2,000-report import 0.1 s): feedback imports
commit in chunks of ``core.feedback.importing.CHUNK_ROWS`` rows; a report import is one
transaction of ~50 us per report (a file of 10,000 reports stays within the bound; split larger
ones). So a waiter waits for at most the holder's current transaction, one slice and one close
(a checkpoint) and reopen, per process ahead of it in the queue. ``backup`` holds the file for
its copy (~15 ms per MB) and ``restore`` for two renames; both are operator actions, best
run at quiet hours. Migrations run once per upgrade.

Nothing the app records is ever updated or deleted: feedback is append-only (a retraction, or a
second rating of the same case, is a new row), and "the current state of a case" is the
``current_feedback`` view.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from core.errors import NotFound, PermissionDenied, StoreBusy, StoreError
from core.store.lock import FairLock, FileLock
from core.store.studies import STUDY_MIGRATIONS, StudyQueries
from core.store.training import TRAINING_MIGRATIONS, TrainingQueries

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
    (
        2,
        "feedback: client tokens unique per reader; a rating can revise the reader's earlier one",
        """
        -- DuckDB cannot drop a constraint: the table is rebuilt (same columns and sequence).
        CREATE TABLE feedback_v2 (
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
            client_token VARCHAR,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            revises BIGINT,
            UNIQUE (reader_id, client_token)
        );
        INSERT INTO feedback_v2 SELECT *, NULL FROM feedback;
        DROP VIEW current_feedback;
        DROP TABLE feedback;
        ALTER TABLE feedback_v2 RENAME TO feedback;
        -- A rating or skip stands until a later retraction names it, or until a later rating of
        -- the same case by the same reader revises it (two tabs); retracting the revision
        -- brings the revised one back.
        CREATE VIEW current_feedback AS
            SELECT f.* FROM feedback f
            WHERE f.kind IN ('rating', 'skip')
              AND NOT EXISTS (
                  SELECT 1 FROM feedback r WHERE r.kind = 'retraction' AND r.retracts = f.id)
              AND NOT EXISTS (
                  SELECT 1 FROM feedback v WHERE v.revises = f.id AND NOT EXISTS (
                      SELECT 1 FROM feedback x WHERE x.kind = 'retraction'
                      AND x.retracts = v.id));
        """,
    ),
    (
        3,
        "feedback imports: one row per import, resumable (its chunks commit one by one)",
        """
        CREATE SEQUENCE feedback_imports_id_seq;
        CREATE TABLE feedback_imports (
            id BIGINT PRIMARY KEY DEFAULT nextval('feedback_imports_id_seq'),
            file VARCHAR NOT NULL,
            sha256 VARCHAR NOT NULL,
            n_rows INTEGER NOT NULL,
            n_imported INTEGER NOT NULL DEFAULT 0,
            chunks_done INTEGER NOT NULL DEFAULT 0,
            actor VARCHAR,
            created_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        );
        """,
    ),
]


MIGRATIONS += TRAINING_MIGRATIONS + STUDY_MIGRATIONS


# Every store still open at interpreter exit is closed first: a DuckDB connection torn down
# during finalisation, with the watcher thread still running, can abort the process (exit 134)
# after its work was done (a cron job would report a failed nightly run).
_OPEN_STORES: "weakref.WeakSet[Store]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    for store in list(_OPEN_STORES):
        with contextlib.suppress(Exception):
            store.close()


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


# DuckDB's file starts with three 4 KiB headers, then ``total_blocks`` blocks.
_DUCKDB_HEADER_BYTES = 3 * 4096
# Tables whose row counts backup and restore report.
COUNTED_TABLES = ("reports", "generations", "feedback", "readers")


def verify_database_file(path: str | os.PathLike, shown_as: str | os.PathLike | None = None
                         ) -> dict[str, int]:
    """Check that ``path`` is a complete, undamaged Impressionist database, by reading it.

    Opens the file read-only and reads every row of every table (a hash over all columns, so
    every data block is read and DuckDB verifies each block's checksum), checks that the
    schema is one this code knows (no migration newer than ours) and that the
    ``current_feedback`` view reads. A file cut short or with a damaged block fails here
    instead of after it has replaced the live database.

    Args:
        path: the DuckDB file.
        shown_as: how to name the file in messages (default: ``path``).
    Returns:
        Row count per table.
    Raises:
        StoreError: naming the file and what is wrong with it.
    """
    import duckdb

    name = shown_as or path

    def refuse(why: str) -> StoreError:
        return StoreError(f"{name}: not a usable Impressionist backup: {why}; nothing was "
                          f"restored and the live database is unchanged")

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise refuse(f"DuckDB cannot open it ({_first_line(exc)})") from exc
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]
        missing = sorted({"schema_migrations", *COUNTED_TABLES} - set(tables))
        if missing:
            raise refuse(f"tables missing: {', '.join(missing)}")
        versions = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
        newer = sorted(versions - {m[0] for m in MIGRATIONS})
        if newer:
            raise refuse(f"written by a newer Impressionist (migrations {newer})")
        # A file cut short may still answer every query when the cut falls in space no row
        # uses yet; it is damaged all the same (DuckDB would extend into it): refuse it.
        block_size, total_blocks = con.execute(
            "SELECT block_size, total_blocks FROM pragma_database_size()").fetchall()[0]
        expected = _DUCKDB_HEADER_BYTES + block_size * total_blocks
        if os.path.getsize(path) < expected:
            raise refuse(f"cut short ({os.path.getsize(path):,} of {expected:,} bytes)")
        counts = {}
        for table in tables:
            counts[table] = con.execute(
                f'SELECT count(*), sum(hash(row_)) FROM "{table}" row_').fetchall()[0][0]
        con.execute("SELECT count(*) FROM current_feedback").fetchall()
    except duckdb.Error as exc:
        raise refuse(f"damaged ({_first_line(exc)})") from exc
    finally:
        con.close()
    return counts


def _rebuild_from(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy every table and sequence of the database ``src`` into the new file ``dest``."""
    import duckdb

    Path(dest).unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(dest))
        try:
            main = con.execute("SELECT current_database()").fetchall()[0][0]
            con.execute(f"ATTACH '{_sql_path(src)}' AS restore_source (READ_ONLY)")
            con.execute(f'COPY FROM DATABASE restore_source TO "{main}"')
            con.execute("DETACH restore_source")
        finally:
            con.close()
    except duckdb.Error as exc:
        raise StoreError(f"{src}: not a usable Impressionist backup: copying it failed "
                         f"({_first_line(exc)}); nothing was restored and the live database "
                         f"is unchanged") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# What makes two submits with one client token the same save (time spent may differ between
# the two clicks of a double submit; everything the radiologist chose may not).
_SAVE_IDENTITY = ("report_id", "generation_id", "kind", "rating", "factual_error", "omission",
                  "style_issue", "critical_missed", "comment", "edited_text", "retracts",
                  "study_id")


def _same_save(row: dict, fields: dict) -> bool:
    if (fields.get("source") or "app") != row["source"]:
        return False
    return all(fields.get(k) == row.get(k) for k in _SAVE_IDENTITY)


@dataclass(frozen=True)
class RestoreResult:
    """What :meth:`Store.restore` did: row counts of the restored database, and where the
    database it replaced was kept (None when there was none)."""

    counts: dict
    kept_as: Path | None


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
    adapter_version: int | None = None  # the reader's adapter version that wrote ai_text


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
        self._held_since = 0.0
        self.path = str(path)
        self.memory = self.path == ":memory:"
        self.lock_timeout = lock_timeout
        self.linger = linger
        self._lock = FairLock()
        self._con = None
        self._last_used = 0.0
        self._depth = 0
        self._closed = False
        self._watcher: threading.Thread | None = None
        # What the hand-over costs, for benchmarks: opens, seconds waited for the file, the
        # longest transaction and the longest time the file was held.
        self.stats = {"opens": 0, "waited_s": 0.0, "longest_wait_s": 0.0, "longest_tx_s": 0.0,
                      "longest_hold_s": 0.0}
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = FileLock(self.path)
        _OPEN_STORES.add(self)

    # -- connection management -----------------------------------------------------------------
    def _someone_waits(self) -> bool:
        return self._file.others_wait()

    def _open(self) -> None:
        """Take the file lock in turn, then open the database; on any failure hold nothing."""
        import duckdb

        if self.memory:
            self._con = duckdb.connect(":memory:")
            return
        deadline = time.monotonic() + self.lock_timeout
        waited = self._file.acquire(deadline, self.path)
        try:
            delay = 0.02
            while True:
                try:
                    self._con = duckdb.connect(self.path)
                    break
                except duckdb.IOException as exc:
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    if "lock" not in str(exc).lower():
                        raise StoreError(f"{self.path}: cannot open the database ({first}); "
                                         f"nothing was saved") from exc
                    # A program outside this protocol (a duckdb shell, a BI tool) has the file
                    # open: retry until the deadline, then give up holding nothing.
                    if time.monotonic() + delay > deadline:
                        raise StoreBusy(
                            f"{self.path}: database busy: another program (a duckdb shell or a "
                            f"BI tool?) has kept the file open for more than "
                            f"{self.lock_timeout:.0f} s; nothing was saved. Close it and try "
                            f"again") from exc
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.25)
        except BaseException:
            self._con = None
            self._file.release()
            raise
        self._held_since = time.monotonic()
        waited = self._held_since - (deadline - self.lock_timeout)  # the lock and the connect
        self.stats["opens"] += 1
        self.stats["waited_s"] += waited
        self.stats["longest_wait_s"] = max(self.stats["longest_wait_s"], waited)
        self._ensure_watcher()

    def _release(self) -> None:
        try:
            if self._con is not None:
                self._con.close()
        finally:
            self._con = None
            if not self.memory and self._file.held:
                self.stats["longest_hold_s"] = max(self.stats["longest_hold_s"],
                                                   time.monotonic() - self._held_since)
                self._file.release()

    def _ensure_watcher(self) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return

        def watch() -> None:
            while not self._closed:
                time.sleep(0.02)
                if not self._lock.acquire(blocking=False):
                    continue  # a transaction runs or is queued: tx() decides when it ends
                try:
                    if self._con is None or self._depth:
                        continue
                    idle = time.monotonic() - self._last_used
                    if idle > self.linger or self._someone_waits():
                        self._release()
                finally:
                    self._lock.release()

        self._watcher = threading.Thread(target=watch, name="store-watcher", daemon=True)
        self._watcher.start()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Any]:
        """One transaction on the shared connection; commits on success, rolls back on error.

        Nested calls join the outer transaction. Threads are served in arrival order; when
        another process waits for the file, it gets it after this transaction unless threads
        of this process are queued and the ``slice_s`` slice is not used up.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: store is closed")
            if self._con is None:
                self._open()
            con = self._con
            outer = self._depth == 0
            self._depth += 1
            started = time.monotonic()
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
                if outer:
                    self.stats["longest_tx_s"] = max(self.stats["longest_tx_s"],
                                                     self._last_used - started)
                if outer and not self.memory and (self.linger <= 0 or (
                        self._someone_waits() and (
                            self._lock.waiting() == 0 or
                            time.monotonic() - self._held_since > self.slice_s))):
                    # Another process waits: hand over now, unless other threads of this
                    # process are queued and the slice is not used up (one reopen per
                    # burst of queued transactions, not one per transaction).
                    self._release()

    def close(self) -> None:
        """Close the connection and hand the file back (the store cannot be used after)."""
        with self._lock:
            self._closed = True
            self._release()
        _OPEN_STORES.discard(self)

    # -- backup and restore ----------------------------------------------------------------------
    def backup(self, dest: str | os.PathLike) -> dict:
        """Write a consistent copy of the whole database to ``dest`` (a new DuckDB file).

        Runs inside one transaction, so it sees one snapshot even while the app writes; the
        copy is written next to ``dest``, read back completely (:func:`verify_database_file`,
        outside the transaction) and only then renamed into place.
        """
        dest = Path(dest)
        if dest.exists():
            raise StoreError(f"{dest}: already exists; choose a new backup file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        try:
            with self._lock:
                with self.tx() as con:
                    main = con.execute("SELECT current_database()").fetchall()[0][0]
                    con.execute(f"ATTACH '{_sql_path(tmp)}' AS backup_target")
                    con.execute(f'COPY FROM DATABASE "{main}" TO backup_target')
                # DuckDB detaches only outside the transaction that wrote to the target.
                if self._con is not None:
                    self._con.execute("DETACH backup_target")
            counts = verify_database_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return {t: counts[t] for t in COUNTED_TABLES}

    def restore(self, src: str | os.PathLike, actor: str | None = None) -> "RestoreResult":
        """Replace the database with the backup ``src``, checked completely first.

        The backup is read in full (:func:`verify_database_file`: its length, every row of
        every table, DuckDB's block checksums, the schema), then its rows are copied into a new
        file next to the database (DuckDB's ``COPY FROM DATABASE``: tables, sequences, and
        indexes built afresh, so a damaged index block of the backup is never used), and that
        file is read in full again; a damaged or foreign backup is refused and the live database
        is not touched.
        Only then, holding the file lock (other processes wait; they reopen the restored file
        on their next transaction), the live file is renamed to
        ``<db>.before-restore-<UTC time>`` (never overwriting an earlier one) and the copy is
        renamed into place. The live file is never opened, so a good backup also restores
        over a damaged database. Migrations newer than the backup are applied; the restore is
        audited with ``actor``.

        Raises:
            StoreError: the backup is missing, unreadable or damaged (nothing was changed).
        """
        src = Path(src)
        if self.memory:
            raise StoreError("cannot restore into an in-memory database")
        if not src.is_file():
            raise StoreError(f"{src}: no such backup file; nothing was restored")
        stamp = _now().strftime("%Y%m%dT%H%M%SZ")
        staged = Path(f"{self.path}.restoring-{stamp}-{os.getpid()}")
        kept = None
        try:
            verify_database_file(src)
            _rebuild_from(src, staged)
            counts = verify_database_file(staged, shown_as=src)
            with self._lock:
                self._release()  # our own connection first; then the file, in turn
                self._file.acquire(time.monotonic() + self.lock_timeout, self.path)
                try:
                    if Path(self.path).exists():
                        kept = Path(f"{self.path}.before-restore-{stamp}")
                        n = 1
                        while kept.exists():
                            n += 1
                            kept = Path(f"{self.path}.before-restore-{stamp}-{n}")
                        os.replace(self.path, kept)
                        # A WAL left by a crashed process belongs to the file it was kept with.
                        if Path(self.path + ".wal").exists():
                            os.replace(self.path + ".wal", str(kept) + ".wal")
                    os.replace(staged, self.path)
                finally:
                    self._file.release()
        finally:
            staged.unlink(missing_ok=True)
        self.migrate()
        main = {t: counts[t] for t in COUNTED_TABLES}
        self.audit(actor, "restore", {"from": src.name, "kept_as": kept.name if kept else None,
                                      **main})
        return RestoreResult(main, kept)

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

    def password_hash(self, username: str, active_only: bool = True) -> str | None:
        return self._scalar("SELECT password_hash FROM readers WHERE username = ?"
                            + (" AND active" if active_only else ""), [username])

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

    def begin_signin(self, actor: str, client: str | None, since: datetime,
                     max_per_name: int, max_per_client: int) -> int | None:
        """Count recent sign-in attempts and record this one, in ONE transaction.

        An attempt counts against the limits from the moment it starts (before its password is
        checked), so parallel attempts cannot all pass a check made before any of them failed.
        Per name: attempts since ``since`` and since the name's last successful sign-in. Per
        client: attempts since ``since`` that did not succeed (a ward's shared address is not
        throttled for its successful sign-ins).

        Returns:
            The attempt's audit id (name it in :meth:`end_signin`), or None when a limit is
            reached (then a ``signin_throttled`` row is written instead).
        """
        detail = json.dumps({"client": client} if client else {})
        with self.tx() as con:
            by_name = con.execute(
                "SELECT count(*) FROM audit_log WHERE action = 'signin_attempt' AND actor = ? "
                "AND created_at >= ? AND id > coalesce((SELECT max(id) FROM audit_log WHERE "
                "action = 'signin' AND actor = ?), 0)", [actor, since, actor]).fetchall()[0][0]
            by_client = 0
            if client:
                by_client = con.execute(
                    "SELECT count(*) FROM audit_log a WHERE a.action = 'signin_attempt' AND "
                    "a.created_at >= ? AND json_extract_string(a.detail, '$.client') = ? AND NOT "
                    "EXISTS (SELECT 1 FROM audit_log s WHERE s.action = 'signin' AND s.actor = "
                    "a.actor AND json_extract_string(s.detail, '$.attempt') = "
                    "CAST(a.id AS VARCHAR))", [since, client]).fetchall()[0][0]
            action = ("signin_throttled" if by_name >= max_per_name or
                      by_client >= max_per_client else "signin_attempt")
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [_now(), actor, action, detail])
            if action == "signin_throttled":
                return None
            return con.execute("SELECT currval('audit_id_seq')").fetchall()[0][0]

    # -- reports ---------------------------------------------------------------------------------
    def import_reports(self, records: Iterable[Any], file: str, fmt: str,
                       actor: str | None = None) -> tuple[int, int]:
        """Insert report records in ONE transaction; already known (source, external_id) skip.

        Args:
            records: objects with the fields of ``core.ingest.formats.ReportRecord``.
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
            records: objects with the fields of ``core.ingest.formats.ReportRecord``.
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
            WHERE g.style = 'default' AND (g.adapter IS NULL OR (g.adapter = ? AND
                  (CAST(? AS INTEGER) IS NULL OR g.adapter_version = ?)))
        )
        SELECT r.id AS report_id, g.id AS generation_id, r.source, r.external_id, r.findings,
               r.impression, r.indication, r.comparison, g.text AS ai_text, g.model, g.adapter,
               g.adapter_version, g.style, g.flags
        FROM ready g JOIN reports r ON r.id = g.report_id
        WHERE g.pick = 1 {where}
        ORDER BY r.id
        LIMIT 1
    """

    def next_case(self, reader_id: int, adapter: str | None = None,
                  after_report: int | None = None, adapter_version: int | None = None) -> Case | None:
        """The first report with a ready AI impression that this reader has not rated or skipped.

        Only reports whose AI impression is ready are queued: the app never generates while a
        radiologist waits. With ``adapter`` (and ``adapter_version``) a report's draft by that
        adapter (version) is served when there is one, the shared draft otherwise.
        ``after_report`` lets a caller step past a case (e.g. prefetching).
        """
        # Reports this reader rates in a study that is not closed stay out of the general queue:
        # it shows the AI impression beside the original, which would unblind the study's arms.
        where = ("AND NOT EXISTS (SELECT 1 FROM current_feedback f WHERE f.reader_id = ? AND "
                 "f.report_id = r.id AND f.study_id IS NULL) "
                 "AND r.id NOT IN (SELECT u.report_id FROM study_tasks t JOIN study_units u "
                 "ON u.id = t.unit_id WHERE t.reader_id = ? AND t.study_id NOT IN "
                 "(SELECT study_id FROM study_events WHERE event = 'closed'))")
        params: list[Any] = [adapter, adapter, adapter_version, adapter_version, reader_id, reader_id]
        if after_report is not None:
            where += " AND r.id > ?"
            params.append(after_report)
        row = self._one(self._CASE_SQL.format(where=where), params)
        return self._case(row) if row else None

    def case(self, report_id: int, adapter: str | None = None,
             adapter_version: int | None = None) -> Case:
        row = self._one(self._CASE_SQL.format(where="AND r.id = ?"),
                        [adapter, adapter, adapter_version, adapter_version, report_id])
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

        A repeated ``client_token`` of the same reader for the same save (a double submit)
        returns the id of the first row instead of writing a second one. The same token with
        a different save (a collision) is refused: a save is only ever acknowledged with the
        id of a row that holds it. A rating or skip of a case the reader already rated or
        skipped in the general queue (two tabs) is stored as a revision of the standing one
        (``revises``): the later rating counts, the earlier stays on record.

        Raises:
            PermissionDenied: the account is disabled or does not exist.
            StoreError: the token names another save of this reader; nothing was saved.
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
                cur = con.execute("SELECT * FROM feedback WHERE reader_id = ? AND "
                                  "client_token = ?", [fields["reader_id"], token])
                prior = cur.fetchall()
                if prior:
                    row = dict(zip([d[0] for d in cur.description], prior[0]))
                    if _same_save(row, fields):
                        return row["id"]
                    raise StoreError(
                        f"the form's save key {token!r} was already used for another save "
                        f"(feedback {row['id']}); nothing was saved. Reload the case and "
                        f"submit again")
            revises = None
            if fields.get("kind") in ("rating", "skip") and fields.get("study_id") is None \
                    and fields.get("source", "app") == "app":
                revises = con.execute(
                    "SELECT max(id) FROM current_feedback WHERE reader_id = ? AND report_id = ? "
                    "AND study_id IS NULL AND source = 'app'",
                    [fields["reader_id"], fields.get("report_id")]).fetchall()[0][0]
            values = [fields[k] for k in cols] + [revises, _now()]
            con.execute(
                f"INSERT INTO feedback ({', '.join(cols)}, revises, created_at) VALUES "
                f"({', '.join('?' for _ in cols)}, ?, ?)", values)
            return con.execute("SELECT currval('feedback_id_seq')").fetchall()[0][0]

    # -- feedback imports (chunked, resumable) ---------------------------------------------------
    def start_feedback_import(self, file: str, sha256: str, n_rows: int,
                              actor: str | None) -> tuple[int, bool]:
        """The import id for a feedback file: the unfinished import of the same content (a run
        that was killed or failed half way) is resumed, else a new one starts.

        Returns:
            (import id, resumed)
        """
        with self.tx() as con:
            prior = con.execute("SELECT max(id) FROM feedback_imports WHERE sha256 = ? AND "
                                "finished_at IS NULL", [sha256]).fetchall()[0][0]
            if prior is not None:
                return prior, True
            con.execute("INSERT INTO feedback_imports (file, sha256, n_rows, actor, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", [file, sha256, n_rows, actor, _now()])
            return con.execute("SELECT currval('feedback_imports_id_seq')").fetchall()[0][0], False

    def import_feedback_chunk(self, import_id: int, rows: Sequence[dict], draft_flags: dict
                              ) -> int:
        """Write one chunk of an import in ONE transaction: all of its rows or none.

        Args:
            import_id: from :meth:`start_feedback_import`.
            rows: dicts with reader_id, report_id, draft_text (stored as a new generation, model
                ``imported-draft``, style ``imported``) or generation_id, rating, edited_text,
                client_token.
            draft_flags: the ``flags`` of the stored drafts.
        Returns:
            Feedback rows written (rows whose reader already holds the token are skipped: a
            resumed import writes each row once).
        Raises:
            PermissionDenied: a reader was disabled, or lost the role to give feedback, since
                the file was checked; nothing of this chunk was written.
        """
        import pandas as pd

        frame = pd.DataFrame({
            "k": range(len(rows)),
            "reader_id": [r["reader_id"] for r in rows],
            "report_id": [r["report_id"] for r in rows],
            "draft_text": [r.get("draft_text") for r in rows],
            "generation_id": [r.get("generation_id") for r in rows],
            "rating": [r.get("rating") for r in rows],
            "edited_text": [r.get("edited_text") for r in rows],
            "client_token": [r["client_token"] for r in rows],
        }, dtype=object)
        now = _now()
        with self.tx() as con:
            readers = sorted({int(r["reader_id"]) for r in rows})
            ok = {i for (i,) in con.execute(
                "SELECT id FROM readers WHERE id IN (SELECT unnest(?)) AND active AND role IN "
                "('radiologist', 'admin')", [readers]).fetchall()}
            if set(readers) - ok:
                raise PermissionDenied(f"reader ids {sorted(set(readers) - ok)} are disabled or "
                                       f"may not give feedback any more; nothing of this chunk "
                                       f"was saved")
            con.register("fb_chunk", frame)
            try:
                con.execute(
                    "CREATE TEMP TABLE fb_new AS SELECT c.k, c.reader_id::INTEGER AS reader_id, "
                    "c.report_id::BIGINT AS report_id, c.draft_text::VARCHAR AS draft_text, "
                    "c.generation_id::BIGINT AS generation_id, c.rating::SMALLINT AS rating, "
                    "c.edited_text::VARCHAR AS edited_text, c.client_token::VARCHAR AS "
                    "client_token FROM fb_chunk c WHERE NOT EXISTS (SELECT 1 FROM feedback f "
                    "WHERE f.reader_id = c.reader_id::INTEGER AND f.client_token = "
                    "c.client_token::VARCHAR)")
                con.execute("ALTER TABLE fb_new ADD COLUMN new_gid BIGINT")
                con.execute("UPDATE fb_new SET new_gid = nextval('generations_id_seq') "
                            "WHERE draft_text IS NOT NULL")
                con.execute(
                    "INSERT INTO generations (id, report_id, model, style, text, flags, "
                    "created_at) SELECT new_gid, report_id, 'imported-draft', 'imported', "
                    "draft_text, ?::JSON, ? FROM fb_new WHERE new_gid IS NOT NULL ORDER BY k",
                    [json.dumps(draft_flags), now])
                con.execute(
                    "INSERT INTO feedback (reader_id, report_id, generation_id, kind, rating, "
                    "edited_text, source, client_token, created_at) SELECT reader_id, report_id, "
                    "coalesce(new_gid, generation_id), 'rating', rating, edited_text, 'import', "
                    "client_token, ? FROM fb_new ORDER BY k", [now])
                written = con.execute("SELECT count(*) FROM fb_new").fetchall()[0][0]
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.execute("DROP TABLE IF EXISTS fb_new")
                with contextlib.suppress(Exception):
                    con.unregister("fb_chunk")
            con.execute("UPDATE feedback_imports SET n_imported = n_imported + ?, chunks_done = "
                        "chunks_done + 1 WHERE id = ?", [written, import_id])
        return written

    def finish_feedback_import(self, import_id: int, actor: str | None, detail: dict) -> dict:
        """Mark an import finished and audit it (``feedback_import``); returns its row."""
        with self.tx() as con:
            con.execute("UPDATE feedback_imports SET finished_at = ? WHERE id = ?",
                        [_now(), import_id])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [_now(), actor, "feedback_import",
                                         json.dumps({"import_id": import_id, **detail})])
            return self._one("SELECT * FROM feedback_imports WHERE id = ?", [import_id])

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
        """Feedback rows joined with the report and generation texts, newest first (DataFrame).

        ``retracted``: undone by a retraction; ``revises``: the earlier rating of the same case
        this one replaced; ``revised``: replaced by a later rating of the same case (two tabs).
        """
        view = "feedback" if include_retracted else "current_feedback"
        sql = (f"SELECT f.id, f.created_at, u.username AS reader, f.kind, f.rating, "
               f"f.factual_error, f.omission, f.style_issue, f.critical_missed, f.comment, "
               f"f.edited_text, f.retracts, f.time_spent_ms, f.blinded, f.study_id, f.source, "
               f"f.report_id, r.external_id, r.findings, r.impression AS original_impression, "
               f"f.generation_id, g.text AS ai_text, g.model, g.adapter, g.style, "
               f"EXISTS (SELECT 1 FROM feedback x WHERE x.kind = 'retraction' AND "
               f"x.retracts = f.id) AS retracted, f.revises, "
               f"EXISTS (SELECT 1 FROM feedback v WHERE v.revises = f.id AND NOT EXISTS ("
               f"SELECT 1 FROM feedback x WHERE x.kind = 'retraction' AND x.retracts = v.id)) "
               f"AS revised "
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
