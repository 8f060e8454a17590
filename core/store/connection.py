"""The store's connection: how two processes share one DuckDB file (part of the store).

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
from the others for more than 0.5 s on the 2-core reference server (measured: the next case
or a rating, account check included, one transaction of 5-20 ms; a 2,000-row feedback chunk
30-50 ms; a 2,000-report staging chunk 20-100 ms; publishing a 10,000-report file 0.1-0.2 s):
feedback imports commit in chunks of ``core.feedback.importing.CHUNK_ROWS`` rows; a report
import is staged in chunks of ``core.store.reports.STAGE_ROWS`` and made visible by one
transaction of ~15-20 us per report (files up to ~25,000 reports stay within the bound; a
larger one is still all or nothing, its publish grows with it). So a waiter waits for at most
the holder's current transaction, one slice and one close (a checkpoint) and reopen, per
process ahead of it in the queue. ``StoreConnection.on_tx_end`` sees every transaction's
duration (the tests check the bound with it). ``backup`` holds the file for
its copy (~15 ms per MB) and ``restore`` for two renames; both are operator actions, best
run at quiet hours. Migrations run once per upgrade.

:class:`StoreConnection` holds the connection, the hand-over and the query helpers every part of
:class:`core.store.database.Store` uses (``tx``, ``_rows``, ``_one``, ``_scalar``, ``df``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from core.errors import StoreBusy, StoreError
from core.store.lock import FairLock, FileLock
from core.store.reports import fingerprint_sql

# Every store still open at interpreter exit is closed first: a DuckDB connection torn down
# during finalisation, with the watcher thread still running, can abort the process (exit 134)
# after its work was done (a cron job would report a failed nightly run).
_OPEN_STORES: "weakref.WeakSet[StoreConnection]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    for store in list(_OPEN_STORES):
        with contextlib.suppress(Exception):
            store.close()


def _check_database_file(path: str) -> None:
    """Refuse an existing file that is not a DuckDB database (a CSV or Parquet file given as
    ``--db``): DuckDB would read it as a table of a throw-away in-memory database, and every
    write would be lost without a word."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except FileNotFoundError:
        return  # a new database
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database file ({exc.strerror})") from exc
    if head and head[8:12] != b"DUCK":
        raise StoreError(f"{path}: not a DuckDB database (a CSV, Parquet or other file?); "
                         f"nothing was read or written. Name the database file, or a new path")


class StoreConnection:
    """One process's side of the shared database file (see the module docstring); the
    arguments are those of :class:`core.store.database.Store`."""

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
                      "longest_hold_s": 0.0, "transactions": 0}
        # Called after every outer transaction with its duration in seconds (still holding the
        # connection): how tests and benchmarks check the bound on a transaction.
        self.on_tx_end: list[Callable[[float], None]] = []
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = FileLock(self.path)
        _OPEN_STORES.add(self)

    # -- connection management -----------------------------------------------------------------
    def _someone_waits(self) -> bool:
        return self._file.others_wait()

    def _open(self) -> None:
        """Take the file lock in turn, then open the database; on any failure hold nothing."""
        import duckdb  # on the first query: importing the store (every page, every verb) stays fast

        if self.memory:
            self._con = duckdb.connect(":memory:")
            return
        _check_database_file(self.path)
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
                    self.stats["transactions"] += 1
                    self.stats["longest_tx_s"] = max(self.stats["longest_tx_s"],
                                                     self._last_used - started)
                    for observe in self.on_tx_end:
                        observe(self._last_used - started)
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
                if table == "reports":
                    con.execute(f"UPDATE reports SET fingerprint = {fingerprint_sql('reports')} "
                                f"WHERE fingerprint IS NULL")
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("bulk_frame")
