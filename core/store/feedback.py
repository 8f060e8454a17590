"""Feedback: the annotation queue, ratings/skips/retractions (append-only) and chunked feedback
imports (part of the store).

Nothing here is ever updated or deleted: a retraction, or a second rating of the same case, is a
new row, and "the current state of a case" is the ``current_feedback`` view.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from core import util
from core.errors import NotFound, PermissionDenied, StoreError

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


# The reports a reader (the one ``?``) rates in a study that is not closed: they stay out of the
# general queue and its count, since it shows the AI impression beside the original.
OPEN_STUDY_REPORTS_SQL = ("SELECT u.report_id FROM study_tasks t JOIN study_units u ON u.id = t.unit_id "
                          "WHERE t.reader_id = ? AND t.study_id NOT IN "
                          "(SELECT study_id FROM study_events WHERE event = 'closed')")


class FeedbackQueries:
    """The annotation queue, ``feedback`` and ``feedback_imports`` (mixed into
    :class:`core.store.database.Store`)."""

    # The drafts a reader may be served: the shared one, or their own adapter('s version).
    _READY = ("g.style = 'default' AND (g.adapter IS NULL OR (g.adapter = ? AND "
              "(CAST(? AS INTEGER) IS NULL OR g.adapter_version = ?)))")
    # The queue in two narrow steps (the next report id from integer columns only, then that one
    # report's row): ~10 ms with 43,000 reports and 100,000 ratings where the one query that
    # ranked every draft and joined every report's text before taking the first took ~70 ms, and
    # every millisecond of it is a millisecond all other sessions wait (one connection).
    # Reports this reader rates in a study that is not closed stay out of the general queue: it
    # shows the AI impression beside the original, which would unblind the study's arms.
    _NEXT_ID_SQL = f"""
        SELECT min(g.report_id) FROM generations g
        WHERE {_READY}
          AND NOT EXISTS (SELECT 1 FROM current_feedback f WHERE f.reader_id = ? AND
                          f.report_id = g.report_id AND f.study_id IS NULL)
          AND g.report_id NOT IN ({OPEN_STUDY_REPORTS_SQL})
          {{after}}
    """
    # One report as served: the reader's adapter's draft when there is one, else the newest
    # shared draft.
    _CASE_SQL = f"""
        SELECT r.id AS report_id, g.id AS generation_id, r.source, r.external_id, r.findings,
               r.impression, r.indication, r.comparison, g.text AS ai_text, g.model, g.adapter,
               g.adapter_version, g.style, g.flags
        FROM generations g JOIN reports r ON r.id = g.report_id
        WHERE g.report_id = ? AND {_READY}
        ORDER BY (g.adapter IS NOT DISTINCT FROM ?) DESC, g.id DESC
        LIMIT 1
    """

    def next_case(self, reader_id: int, adapter: str | None = None,
                  after_report: int | None = None,
                  adapter_version: int | None = None,
                  besides: int | None = None) -> Case | None:
        """The first report with a ready AI impression that this reader has not rated or skipped.

        Only reports whose AI impression is ready are queued: the app never generates while a
        radiologist waits. With ``adapter`` (and ``adapter_version``) a report's draft by that
        adapter (version) is served when there is one, the shared draft otherwise.
        ``after_report`` lets a caller step past a case; ``besides`` leaves one report out (the
        case on screen, when the page fetches the one after it ahead of time). One transaction
        (joins the caller's).
        """
        ready = [adapter, adapter_version, adapter_version]
        with self.tx():
            while True:
                where, args = [], []
                if after_report is not None:
                    where, args = ["AND g.report_id > ?"], [after_report]
                if besides is not None:
                    where, args = [*where, "AND g.report_id <> ?"], [*args, besides]
                report_id = self._scalar(self._NEXT_ID_SQL.format(after=" ".join(where)),
                                         [*ready, reader_id, reader_id, *args])
                if report_id is None:
                    return None
                row = self._one(self._CASE_SQL, [report_id, *ready, adapter])
                if row is not None:
                    return self._case(row)
                after_report = report_id  # a draft whose report is gone: step past it

    def queued_case(self, reader_id: int, report_id: int, adapter: str | None = None,
                    adapter_version: int | None = None) -> Case | None:
        """One report as :meth:`next_case` would serve it now, if it is still in this reader's
        queue (not rated or skipped since, not one of their tasks in an open study), else None:
        the check of a case fetched ahead of time, by report id (one point lookup). One
        transaction (joins the caller's)."""
        ready = [adapter, adapter_version, adapter_version]
        with self.tx():
            if self._scalar(self._NEXT_ID_SQL.format(after="AND g.report_id = ?"),
                            [*ready, reader_id, reader_id, report_id]) is None:
                return None
            row = self._one(self._CASE_SQL, [report_id, *ready, adapter])
            return None if row is None else self._case(row)

    def case(self, report_id: int, adapter: str | None = None,
             adapter_version: int | None = None) -> Case:
        row = self._one(self._CASE_SQL,
                        [report_id, adapter, adapter_version, adapter_version, adapter])
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

    def queue_counts(self, reader_id: int) -> tuple[int, int, int]:
        """(rated, skipped, total) for a reader's general queue: a skipped case is not rated."""
        # the total leaves out the reports this reader rates in an open study (they are not in
        # this queue: see _NEXT_ID_SQL), unless already rated or skipped here
        row = self._one(
            "SELECT (SELECT count(DISTINCT g.report_id) FROM generations g WHERE g.style = "
            f"'default' AND (g.report_id NOT IN ({OPEN_STUDY_REPORTS_SQL}) OR g.report_id IN "
            "(SELECT report_id FROM current_feedback WHERE reader_id = ? AND study_id IS NULL))) "
            "AS total, count(DISTINCT report_id) FILTER (WHERE kind = 'rating') AS rated, "
            "count(DISTINCT report_id) FILTER (WHERE kind = 'skip') AS skipped "
            "FROM current_feedback WHERE reader_id = ? AND study_id IS NULL",
            [reader_id, reader_id, reader_id])
        return row["rated"], row["skipped"], row["total"]

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
        skipped outside studies (two tabs, a correction, a case whose answer was imported) is
        stored as a revision of the standing one (``revises``): the later rating counts, the
        earlier stays on record.

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
            if fields.get("kind") in ("rating", "skip") and fields.get("study_id") is None:
                case = [fields["reader_id"], fields.get("report_id")]
                # The first rating of a case (nearly every save) is told by a plain scan, ~2 ms;
                # the standing one through the view (anti-joins over all feedback) only if any.
                # Whatever stands outside studies is revised, an imported answer included: one
                # answer per reader and case counts.
                rated = con.execute(
                    "SELECT count(*) FROM feedback WHERE reader_id = ? AND report_id = ? AND "
                    "kind IN ('rating', 'skip') AND study_id IS NULL", case).fetchall()[0][0]
                if rated:
                    revises = con.execute(
                        "SELECT max(id) FROM current_feedback WHERE reader_id = ? AND "
                        "report_id = ? AND study_id IS NULL", case).fetchall()[0][0]
            values = [fields[k] for k in cols] + [revises, util.now()]
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
                        "VALUES (?, ?, ?, ?, ?)", [file, sha256, n_rows, actor, util.now()])
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
            resumed import writes each row once); each revises the answer standing for its
            reader and report (see :meth:`_insert_imported_feedback`).
        Raises:
            PermissionDenied: a reader was disabled, or lost the role to give feedback, since
                the file was checked; nothing of this chunk was written.
        """
        import pandas as pd  # on first use: pandas takes ~0.5 s to import, most verbs never need it

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
        now = util.now()
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
                written = self._insert_imported_feedback(con, now)
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.execute("DROP TABLE IF EXISTS fb_new")
                with contextlib.suppress(Exception):
                    con.unregister("fb_chunk")
            con.execute("UPDATE feedback_imports SET n_imported = n_imported + ?, chunks_done = "
                        "chunks_done + 1 WHERE id = ?", [written, import_id])
        return written

    @staticmethod
    def _insert_imported_feedback(con, now) -> int:
        """Insert the rows of ``fb_new`` as feedback, each revising the answer that stands for
        its reader and report outside studies (from the app or an earlier import), as a second
        rating in the app does: one answer per reader and case counts. Rows of one case in the
        same chunk go in passes (the first of each case, then the second, ...), so each revises
        the one before it. Returns the rows written."""
        con.execute("ALTER TABLE fb_new ADD COLUMN pass_no BIGINT")
        con.execute("UPDATE fb_new SET pass_no = o.n FROM (SELECT k, row_number() OVER "
                    "(PARTITION BY reader_id, report_id ORDER BY k) AS n FROM fb_new) o "
                    "WHERE fb_new.k = o.k")
        passes = con.execute("SELECT coalesce(max(pass_no), 0) FROM fb_new").fetchall()[0][0]
        for n in range(1, passes + 1):
            con.execute(
                "INSERT INTO feedback (reader_id, report_id, generation_id, kind, rating, "
                "edited_text, source, client_token, created_at, revises) SELECT c.reader_id, "
                "c.report_id, coalesce(c.new_gid, c.generation_id), 'rating', c.rating, "
                "c.edited_text, 'import', c.client_token, ?, s.id FROM fb_new c LEFT JOIN "
                "(SELECT reader_id, report_id, max(id) AS id FROM current_feedback WHERE "
                "study_id IS NULL AND report_id IN (SELECT report_id FROM fb_new) "
                "GROUP BY reader_id, report_id) s ON s.reader_id = c.reader_id "
                "AND s.report_id = c.report_id WHERE c.pass_no = ? ORDER BY c.k",
                [now, n])
        return con.execute("SELECT count(*) FROM fb_new").fetchall()[0][0]

    def finish_feedback_import(self, import_id: int, actor: str | None, detail: dict) -> dict:
        """Mark an import finished and audit it (``feedback_import``); returns its row."""
        with self.tx() as con:
            con.execute("UPDATE feedback_imports SET finished_at = ? WHERE id = ?",
                        [util.now(), import_id])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [util.now(), actor, "feedback_import",
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

    def standing_rating(self, reader_id: int, report_id: int) -> dict | None:
        """The reader's rating of a report that stands (outside studies), or None."""
        return self._one(
            "SELECT * FROM current_feedback WHERE reader_id = ? AND report_id = ? AND study_id IS NULL "
            "AND kind = 'rating' ORDER BY id DESC LIMIT 1", [reader_id, report_id])

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
