"""Reports (what was imported) and generations (what a model wrote for them) (part of the store)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterable, Sequence

from core import util
from core.errors import NotFound


def _fingerprint_sql(alias: str) -> str:
    """SQL for the content fingerprint of the report row ``alias``: md5 of its findings and
    impression, lower-cased with runs of whitespace collapsed (see ``content_duplicates``)."""
    def norm(column: str) -> str:
        return rf"regexp_replace(lower(trim({alias}.{column})), '\s+', ' ', 'g')"

    return f"md5({norm('findings')} || chr(10) || coalesce({norm('impression')}, ''))"


class ReportQueries:
    """The ``imports``, ``reports`` and ``generations`` tables (mixed into
    :class:`core.store.database.Store`)."""

    def import_reports(self, records: Iterable[Any], file: str, fmt: str,
                       actor: str | None = None) -> tuple[int, int]:
        """Insert report records in ONE transaction; already known (source, external_id) skip.

        Args:
            records: objects with the fields of ``core.ingest.common.ReportRecord``.
        Returns:
            (imported, skipped_as_duplicates)
        """
        import pandas as pd  # on first use: pandas takes ~0.5 s to import, most verbs never need it

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
                [file, fmt, len(records), actor, util.now()])
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
                    "AND r.external_id = i.external_id)", [import_id, util.now()])
                after = con.execute("SELECT count(*) FROM reports").fetchall()[0][0]
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("incoming")
            imported = after - before
            skipped = len(records) - imported
            con.execute("UPDATE imports SET n_imported = ?, n_skipped = ? WHERE id = ?",
                        [imported, skipped, import_id])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [util.now(), actor, "import", json.dumps(
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
