"""Reports (what was imported) and generations (what a model wrote for them) (part of the store)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core import util
from core.errors import NotFound, StoreError


def fingerprint_sql(alias: str) -> str:
    """SQL for the content fingerprint of the report row ``alias``: md5 of its findings and
    impression, lower-cased with runs of whitespace collapsed (see ``content_duplicates``;
    stored in ``reports.fingerprint`` since migration 4)."""
    def norm(column: str) -> str:
        return rf"regexp_replace(lower(trim({alias}.{column})), '\s+', ' ', 'g')"

    return f"md5({norm('findings')} || chr(10) || coalesce({norm('impression')}, ''))"


# Reports written per staging transaction of an import (see ``ReportQueries.import_reports``).
STAGE_ROWS = 2_000
# A stage untouched this long belongs to an import that died (a live one touches it per chunk).
STALE_STAGE_S = 600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _fingerprints(frame) -> list[str]:
    """``fingerprint_sql`` of each row of ``frame`` (findings, impression), computed by a private
    in-memory DuckDB (the same SQL, so the same values as the stored ones) without the file."""
    import duckdb  # on first use, as in core.store.connection

    con = duckdb.connect(":memory:")
    try:
        con.register("rows", frame[["k", "findings", "impression"]])
        return [fp for (fp,) in con.execute(
            f"SELECT {fingerprint_sql('r')} FROM (SELECT k::BIGINT AS k, findings::VARCHAR AS "
            f"findings, impression::VARCHAR AS impression FROM rows) r ORDER BY r.k").fetchall()]
    finally:
        con.close()


class ReportIdConflict(StoreError):
    """A record's (source, id) is stored already with other findings or impression: another
    patient's report under the same id (another site's file), never skipped as "already
    imported". Nothing of the file is imported."""

    def __init__(self, file: str, k: int, external_id: str, first_file: str | None):
        self.file, self.k, self.external_id, self.first_file = file, k, external_id, first_file
        self.problem = (
            f"id '{external_id}' is already in the database"
            + (f" (from {first_file})" if first_file else "")
            + " with different findings or impression; nothing was imported. If these are other "
              "patients' reports (another site), give them ids of their own, e.g. prefixed with "
              "the site; an amended report needs an id of its own too (the stored one stays, "
              "with the feedback given on it)")
        super().__init__(f"{file}: {self.problem}")

    def __reduce__(self):
        return (type(self), (self.file, self.k, self.external_id, self.first_file))


@dataclass(frozen=True)
class StagedImport:
    """What :meth:`ReportQueries.import_reports_staged` published."""

    import_id: int
    imported: int
    skipped: int  # already imported (same source and external id)
    duplicates: dict[int, str]  # index in the records -> source of the stored report it repeats


class ReportQueries:
    """The ``imports``, ``reports`` and ``generations`` tables, and the staging of report imports
    (mixed into :class:`core.store.database.Store`)."""

    def import_reports(self, records: Iterable[Any], file: str, fmt: str,
                       actor: str | None = None) -> tuple[int, int]:
        """Import report records all or nothing; already known (source, external_id) skip.

        Staged in short transactions and published in one (see :meth:`import_reports_staged`).

        Args:
            records: objects with the fields of ``core.ingest.common.ReportRecord``.
        Returns:
            (imported, skipped_as_duplicates)
        """
        result = self.import_reports_staged(records, file, fmt, actor, check_duplicates=False)
        return result.imported, result.skipped

    def import_reports_staged(self, records: Iterable[Any], file: str, fmt: str,
                              actor: str | None = None, check_duplicates: bool = True,
                              chunk_rows: int | None = None, rows_read: int | None = None,
                              left_out: int = 0) -> StagedImport:
        """Import report records without holding the database in one long transaction.

        The records are written to ``report_staging`` under a fresh stage id, ``chunk_rows``
        per transaction (invisible to every reader: nothing queries that table but this), then
        published by ONE short transaction (``INSERT ... SELECT`` into ``reports``, the
        ``imports`` and audit rows, the staging rows deleted). So a file is visible whole or not
        at all: a failure removes its stage; a killed import leaves one that the next import
        removes (its process is gone, or it was untouched for ``STALE_STAGE_S``).

        Args:
            records: objects with the fields of ``core.ingest.common.ReportRecord``.
            check_duplicates: leave out records whose content (``fingerprint_sql``) repeats a
                stored report of another source (checked in the publishing transaction).
            chunk_rows: records per staging transaction (default ``STAGE_ROWS``).
            rows_read: the rows (or report files) the file had, left-out ones included (default:
                one per record); the ``imports`` row's ``n_rows``.
            left_out: rows (or files) the reader left out before staging (no findings, with
                ``skip_empty_findings``); counted in the ``imports`` row's ``n_skipped`` with the
                reports already imported and the content duplicates.
        """
        records = list(records)
        chunk_rows = max(1, chunk_rows or STAGE_ROWS)
        stage_id = uuid.uuid4().hex
        try:
            for start in range(0, max(len(records), 1), chunk_rows):
                # the stage itself is created by the first chunk's transaction (one fewer
                # hand-over of the file while the app waits)
                self._stage_chunk(stage_id, start, records[start:start + chunk_rows],
                                  (file, fmt, len(records), actor) if start == 0 else None)
            return self._publish_stage(stage_id, file, fmt, len(records), actor,
                                       check_duplicates, (rows_read, left_out))
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                self._drop_stage(stage_id)
            raise

    def _begin_stage(self, stage_id: str, file: str, fmt: str, n_rows: int,
                     actor: str | None) -> None:
        """A new stage (in the first chunk's transaction), after removing the stages of dead
        imports."""
        host, now = socket.gethostname(), util.now()
        with self.tx() as con:
            stages = con.execute("SELECT stage_id, host, pid, touched_at FROM report_stages"
                                 ).fetchall()
            dead = [sid for sid, h, pid, touched in stages
                    if (h == host and not _pid_alive(pid))
                    or (now - touched).total_seconds() > STALE_STAGE_S]
            con.execute("DELETE FROM report_staging WHERE stage_id IN (SELECT unnest(?)) OR "
                        "stage_id NOT IN (SELECT stage_id FROM report_stages)", [dead])
            con.execute("DELETE FROM report_stages WHERE stage_id IN (SELECT unnest(?))", [dead])
            con.execute("INSERT INTO report_stages (stage_id, file, format, n_rows, actor, host, "
                        "pid, started_at, touched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [stage_id, file, fmt, n_rows, actor, host, os.getpid(), now, now])

    def _stage_chunk(self, stage_id: str, start: int, chunk: Sequence[Any],
                     begin: tuple | None = None) -> None:
        """Write one chunk of records to the stage: one transaction (with ``begin``, the
        arguments of :meth:`_begin_stage`, it creates the stage first)."""
        import pandas as pd  # on first use: pandas takes ~0.5 s to import, most verbs never need it

        frame = pd.DataFrame({
            "k": range(start, start + len(chunk)),
            "source": [r.source for r in chunk],
            "external_id": [r.external_id for r in chunk],
            "findings": [r.findings for r in chunk],
            "impression": [r.impression for r in chunk],
            "indication": [r.indication for r in chunk],
            "comparison": [r.comparison for r in chunk],
            "author": [r.author for r in chunk],
            "extra": [json.dumps(r.extra or {}) for r in chunk],
        }, dtype=object)
        if chunk:
            frame["fingerprint"] = _fingerprints(frame)  # before the transaction: CPU work
        with self.tx() as con:
            if begin is not None:
                self._begin_stage(stage_id, *begin)
            else:
                con.execute("UPDATE report_stages SET touched_at = ? WHERE stage_id = ?",
                            [util.now(), stage_id])
            if not chunk:
                return
            con.register("incoming", frame)
            try:
                con.execute(
                    "INSERT INTO report_staging (stage_id, k, source, external_id, findings, "
                    "impression, indication, comparison, author, extra, fingerprint) "
                    "SELECT ?, i.k::INTEGER, i.source, i.external_id, i.findings, i.impression, "
                    "i.indication, i.comparison, i.author, i.extra::JSON, i.fingerprint "
                    "FROM incoming i", [stage_id])
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("incoming")

    def _publish_stage(self, stage_id: str, file: str, fmt: str, n_rows: int,
                       actor: str | None, check_duplicates: bool,
                       read: tuple[int | None, int] = (None, 0)) -> StagedImport:
        """Make a staged import visible: ONE transaction of a few set statements. ``read``:
        (rows the file had, rows left out before staging), see :meth:`import_reports_staged`."""
        now = util.now()
        with self.tx() as con:
            if not con.execute("SELECT 1 FROM report_stages WHERE stage_id = ?",
                               [stage_id]).fetchall():
                raise StoreError(f"{file}: the staged reports of this import were removed (idle "
                                 f"for more than {STALE_STAGE_S:.0f} s?); nothing was imported. "
                                 f"Run the import again")
            conflict = con.execute(
                "SELECT s.k, s.external_id, i.file FROM report_staging s JOIN reports r ON "
                "r.source = s.source AND r.external_id = s.external_id LEFT JOIN imports i ON "
                "i.id = r.import_id WHERE s.stage_id = ? AND r.fingerprint <> s.fingerprint "
                "ORDER BY s.k LIMIT 1", [stage_id]).fetchall()
            if conflict:
                k, external_id, first_file = conflict[0]
                raise ReportIdConflict(file, int(k), external_id, first_file)
            dups: dict[int, str] = {}
            if check_duplicates:
                dups = {int(k): src for k, src in con.execute(
                    "SELECT s.k, min(r.source) FROM report_staging s JOIN reports r ON "
                    "r.fingerprint = s.fingerprint AND r.source <> s.source WHERE s.stage_id = ? "
                    "AND NOT EXISTS (SELECT 1 FROM reports x WHERE x.source = s.source AND "
                    "x.external_id = s.external_id) GROUP BY s.k", [stage_id]).fetchall()}
            kept = n_rows - len(dups)
            rows_read, left_out = read
            con.execute(
                "INSERT INTO imports (file, format, n_rows, n_imported, n_skipped, actor, "
                "created_at) VALUES (?, ?, ?, 0, 0, ?, ?)",
                [file, fmt, n_rows + left_out if rows_read is None else rows_read, actor, now])
            import_id = con.execute("SELECT currval('imports_id_seq')").fetchall()[0][0]
            before = con.execute("SELECT count(*) FROM reports").fetchall()[0][0]
            con.execute(
                "INSERT INTO reports (source, external_id, findings, impression, indication, "
                "comparison, author, extra, fingerprint, import_id, created_at) "
                "SELECT s.source, s.external_id, s.findings, s.impression, s.indication, "
                "s.comparison, s.author, s.extra, s.fingerprint, ?, ? FROM report_staging s "
                "WHERE s.stage_id = ? AND s.k NOT IN (SELECT unnest(?::INTEGER[])) AND NOT "
                "EXISTS (SELECT 1 FROM reports r WHERE r.source = s.source AND "
                "r.external_id = s.external_id) ORDER BY s.k",
                [import_id, now, stage_id, sorted(dups)])
            imported = con.execute("SELECT count(*) FROM reports").fetchall()[0][0] - before
            skipped = kept - imported
            # every report or row left out counts: already imported, the same content from
            # another format, and what the reader left out (no findings)
            con.execute("UPDATE imports SET n_imported = ?, n_skipped = ? WHERE id = ?",
                        [imported, skipped + len(dups) + left_out, import_id])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [now, actor, "import", json.dumps(
                            {"file": os.path.basename(file), "format": fmt,
                             "imported": imported, "skipped": skipped,
                             "duplicates": len(dups), "empty_findings": left_out})])
            self._drop_stage(stage_id)
        return StagedImport(import_id, imported, skipped, dups)

    def _drop_stage(self, stage_id: str) -> None:
        with self.tx() as con:
            con.execute("DELETE FROM report_staging WHERE stage_id = ?", [stage_id])
            con.execute("DELETE FROM report_stages WHERE stage_id = ?", [stage_id])

    def content_duplicates(self, records: Sequence[Any]) -> dict[int, str]:
        """Records that repeat a stored report of *another* source, by content fingerprint.

        The fingerprint (``fingerprint_sql``) hashes the lower-cased, whitespace-collapsed
        findings and impression, so the same reports imported through a second format (a
        MIMIC-CXR folder, then a CSV export of it) are recognised. Reports of the same source
        are not compared: two studies of one file may well share a templated normal text, and
        the same (source, external_id) again is skipped by ``import_reports`` anyway.

        Args:
            records: objects with the fields of ``core.ingest.common.ReportRecord``.
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
                    f"ON r.fingerprint = {fingerprint_sql('i')} "
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
        row = self._one("SELECT * EXCLUDE (fingerprint) FROM reports WHERE id = ?",
                        [report_id])
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
                     r.get("latency_ms"), util.now()])
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
