"""Backup, restore and the check that a database file is whole (part of the store).

A backup is a new DuckDB file written from one snapshot and read back completely before it is
renamed into place; a restore checks the backup completely, copies it, checks the copy, and only
then swaps files, keeping the database it replaced.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from core import util
from core.errors import StoreError, UnusableBackup, ValidationError
from core.store.migrations import MIGRATIONS


def _sql_path(path: str | os.PathLike) -> str:
    return str(path).replace("'", "''")


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
    import duckdb  # on first use, like core.store.connection: importing the store stays fast

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


@dataclass(frozen=True)
class RestoreResult:
    """What :meth:`Store.restore` did: row counts of the restored database, and where the
    database it replaced was kept (None when there was none)."""

    counts: dict
    kept_as: Path | None


class Backups:
    """Backup and restore (mixed into :class:`core.store.database.Store`)."""

    def backup(self, dest: str | os.PathLike) -> dict:
        """Write a consistent copy of the whole database to ``dest`` (a new DuckDB file).

        Runs inside one transaction, so it sees one snapshot even while the app writes; the
        copy is written next to ``dest``, read back completely (:func:`verify_database_file`,
        outside the transaction) and only then renamed into place.
        """
        dest = Path(dest)
        if dest.exists():
            raise ValidationError(f"{dest}: already exists; choose a new backup file")
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
            UnusableBackup: ``src`` is not a whole Impressionist database (not DuckDB, cut
                short, damaged, foreign, newer): bad input, nothing was changed.
            ValidationError: ``src`` is missing; nothing was changed.
            StoreError: the database could not be swapped (nothing was changed).
        """
        src = Path(src)
        if self.memory:
            raise StoreError("cannot restore into an in-memory database")
        if not src.is_file():
            raise ValidationError(f"{src}: no such backup file; nothing was restored")
        stamp = util.now().strftime("%Y%m%dT%H%M%SZ")
        staged = Path(f"{self.path}.restoring-{stamp}-{os.getpid()}")
        kept = None
        try:
            try:
                verify_database_file(src)
                _rebuild_from(src, staged)
                counts = verify_database_file(staged, shown_as=src)
            except StoreError as exc:  # the file given is no usable backup: bad input
                raise UnusableBackup(str(exc)) from exc
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
