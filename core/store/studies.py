"""SQL for human-evaluation studies (part of the store: mixed into core.store.database.Store).

Tables (migration 30):

* ``studies``: one row per study: name, seed, overlap ``k``, arms, scale, questions,
  guideline and the rest of the design (``config``), frozen at creation.
* ``study_events``: append-only life cycle (created, assigned, paused, resumed, extended,
  closed); a study's status is derived from its latest status event.
* ``study_units``: the blinded units: one per (slot, arm). ``slot`` is the study's item
  number; the unit's report is the slot's report (or, for the ``external`` arm, the slot's
  report from the external source); ``label`` is what raters see instead of the arm; ``text``
  is a snapshot of the impression rated, so later generations never change a running study.
  ``case_number`` (migration 31) is the number raters see: one per report, in a seeded order.
* ``study_raters``: who rates, and in which batch they joined (0 at assignment, 1.. extend).
* ``study_tasks``: one rater x unit, with the rater's queue position.
* ``study_task_withdrawals``: pending tasks moved to another rater when a study is extended
  (append-only; a task is active unless withdrawn).
* ``study_answers``: links each study rating (a ``feedback`` row with ``study_id`` set) to its
  task and unit and keeps the answers to the study's own questions.

Nothing here checks permissions or blinding; :mod:`core.studies` does, before calling these.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any, Sequence

from core import util
from core.errors import ValidationError
from core.store.feedback import OPEN_STUDY_REPORTS_SQL

# Migrations 30-39 belong to studies; core.store.migrations registers them.
STUDY_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        30,
        "studies: design, units (blinding key), raters, tasks, events, answers",
        """
        CREATE SEQUENCE studies_id_seq;
        CREATE TABLE studies (
            id BIGINT PRIMARY KEY DEFAULT nextval('studies_id_seq'),
            name VARCHAR NOT NULL,
            seed BIGINT NOT NULL,
            k INTEGER,
            n_items INTEGER NOT NULL,
            arms JSON NOT NULL,
            scale JSON NOT NULL,
            questions JSON NOT NULL,
            guideline VARCHAR,
            config JSON,
            created_by VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE SEQUENCE study_events_id_seq;
        CREATE TABLE study_events (
            id BIGINT PRIMARY KEY DEFAULT nextval('study_events_id_seq'),
            study_id BIGINT NOT NULL,
            event VARCHAR NOT NULL CHECK (event IN
                ('created', 'assigned', 'paused', 'resumed', 'extended', 'closed')),
            actor VARCHAR,
            detail JSON,
            created_at TIMESTAMP NOT NULL
        );
        CREATE SEQUENCE study_units_id_seq;
        CREATE TABLE study_units (
            id BIGINT PRIMARY KEY DEFAULT nextval('study_units_id_seq'),
            study_id BIGINT NOT NULL,
            slot INTEGER NOT NULL,
            report_id BIGINT NOT NULL,
            arm VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            generation_id BIGINT,
            text VARCHAR NOT NULL,
            normal BOOLEAN,
            UNIQUE (study_id, slot, arm)
        );
        CREATE TABLE study_raters (
            study_id BIGINT NOT NULL,
            reader_id INTEGER NOT NULL,
            batch INTEGER NOT NULL,
            added_at TIMESTAMP NOT NULL,
            PRIMARY KEY (study_id, reader_id)
        );
        CREATE SEQUENCE study_tasks_id_seq;
        CREATE TABLE study_tasks (
            id BIGINT PRIMARY KEY DEFAULT nextval('study_tasks_id_seq'),
            study_id BIGINT NOT NULL,
            unit_id BIGINT NOT NULL,
            reader_id INTEGER NOT NULL,
            position INTEGER NOT NULL,
            batch INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE INDEX study_tasks_reader ON study_tasks (study_id, reader_id);
        CREATE TABLE study_task_withdrawals (
            task_id BIGINT PRIMARY KEY,
            study_id BIGINT NOT NULL,
            batch INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE study_answers (
            feedback_id BIGINT PRIMARY KEY,
            study_id BIGINT NOT NULL,
            task_id BIGINT NOT NULL,
            unit_id BIGINT NOT NULL,
            reader_id INTEGER NOT NULL,
            answers JSON,
            created_at TIMESTAMP NOT NULL
        );
        """,
    ),
    (
        31,
        "study_units.case_number: the case number raters see (per report, seeded order)",
        # Before 31 raters saw slot + 1, which gave an external-arm text (another report in
        # the same slot) the case number of a different report's findings: a tell. Units of
        # older studies keep slot + 1 (NULL here; readers coalesce).
        "ALTER TABLE study_units ADD COLUMN case_number INTEGER;",
    ),
]

# Status events, latest wins; 'created' alone means a draft (no raters yet).
_STATUS_OF_EVENT = {"assigned": "running", "resumed": "running", "paused": "paused",
                    "closed": "closed"}

# Shared SQL pieces: a task is active unless withdrawn; done when a standing study rating
# (joined through study_answers) points at it.
_ACTIVE = "NOT EXISTS (SELECT 1 FROM study_task_withdrawals w WHERE w.task_id = t.id)"
# (study_answers only ever links rating rows, so "standing" = "not retracted".)
_DONE = ("EXISTS (SELECT 1 FROM study_answers a WHERE a.task_id = t.id AND NOT EXISTS ("
         "SELECT 1 FROM feedback x WHERE x.kind = 'retraction' AND x.retracts = a.feedback_id))")

_TASK_SQL = """
    SELECT t.id AS task_id, t.study_id, t.unit_id, t.reader_id, t.position, u.slot, u.label,
           coalesce(u.case_number, u.slot + 1) AS case_number, u.text, u.report_id,
           u.generation_id, r.findings, r.indication, r.comparison, r.impression AS reference,
           {done} AS done, {active} AS active
    FROM study_tasks t JOIN study_units u ON u.id = t.unit_id
    JOIN reports r ON r.id = u.report_id
"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class StudyQueries:
    """Study queries; uses Store's ``tx``/``_rows``/``_one``/``_scalar`` helpers."""

    # -- design inputs ---------------------------------------------------------------------------
    def study_candidate_reports(self, sources: Sequence[str] | None = None,
                                exclude_sources: Sequence[str] | None = None) -> list[dict]:
        """Reports a study may sample: findings and an original impression present.

        Args:
            sources: only these sources (None: any).
            exclude_sources: never these sources.
        Returns:
            dicts with id, source, findings, impression, indication, comparison (by id).
        """
        sql = ("SELECT id, source, findings, impression, indication, comparison FROM reports "
               "WHERE trim(coalesce(impression, '')) <> '' AND trim(findings) <> ''")
        params: list[Any] = []
        if sources:
            sql += " AND source IN (SELECT unnest(?))"
            params.append(list(sources))
        if exclude_sources:
            sql += " AND source NOT IN (SELECT unnest(?))"
            params.append(list(exclude_sources))
        return self._rows(sql + " ORDER BY id", params)

    def study_report_sources(self) -> list[dict]:
        """(source, n) of reports usable in a study."""
        return self._rows(
            "SELECT source, count(*) AS n FROM reports WHERE trim(coalesce(impression, '')) "
            "<> '' GROUP BY source ORDER BY source")

    def latest_generations(self, report_ids: Sequence[int], style: str = "default",
                           adapter: str | None = None, model: str | None = None) -> dict[int, dict]:
        """The newest generation per report for one (style, adapter[, model]).

        Returns:
            report_id -> {"generation_id", "text", "model"}.
        """
        if not report_ids:
            return {}
        sql = ("SELECT report_id, id AS generation_id, text, model FROM ("
               "SELECT *, row_number() OVER (PARTITION BY report_id ORDER BY id DESC) AS pick "
               "FROM generations WHERE report_id IN (SELECT unnest(?)) AND style = ? "
               "AND adapter IS NOT DISTINCT FROM ?")
        params: list[Any] = [list(report_ids), style, adapter]
        if model:
            sql += " AND model = ?"
            params.append(model)
        sql += ") WHERE pick = 1"
        return {r["report_id"]: r for r in self._rows(sql, params)}

    def generation_arms(self) -> list[dict]:
        """(adapter, style, n reports) of every stored generation kind (for the design form)."""
        return self._rows(
            "SELECT adapter, style, count(DISTINCT report_id) AS n FROM generations "
            "GROUP BY ALL ORDER BY adapter NULLS FIRST, style")

    # -- writing a study -------------------------------------------------------------------------
    def insert_study(self, study: dict, units, actor: str | None) -> int:
        """Insert a study and its units in one transaction; returns the study id.

        Args:
            study: name, seed, k, n_items, arms, scale, questions, guideline, config.
            units: DataFrame with slot, report_id, arm, label, generation_id, text, normal
                and case_number (default slot + 1).
            actor: username recorded in the event and audit log.
        """
        now = util.now()
        with self.tx() as con:
            # checked inside the insert's transaction: a second click on "Create study" (or a
            # second coordinator) cannot make a twin
            if con.execute("SELECT 1 FROM studies WHERE lower(name) = lower(?)",
                           [study["name"]]).fetchall():
                raise ValidationError(f"a study named {study['name']!r} exists already; "
                                      f"choose another name")
            con.execute(
                "INSERT INTO studies (name, seed, k, n_items, arms, scale, questions, guideline, "
                "config, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [study["name"], study["seed"], study.get("k"), study["n_items"],
                 json.dumps(study["arms"]), json.dumps(study["scale"]),
                 json.dumps(study["questions"]), study.get("guideline"),
                 json.dumps(study.get("config") or {}), actor, now])
            study_id = con.execute("SELECT currval('studies_id_seq')").fetchall()[0][0]
            frame = units.assign(study_id=study_id)
            if "case_number" not in frame:
                frame = frame.assign(case_number=frame["slot"] + 1)
            con.register("incoming_units", frame)
            try:
                con.execute(
                    "INSERT INTO study_units (study_id, slot, report_id, arm, label, "
                    "generation_id, text, normal, case_number) SELECT study_id, slot, "
                    "report_id, arm, label, generation_id, text, normal, case_number "
                    "FROM incoming_units")
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("incoming_units")
            self._study_event(con, study_id, "created", actor,
                              {"n_items": study["n_items"], "arms": study["arms"]}, now)
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) "
                        "VALUES (?, ?, ?, ?)", [now, actor, "study_created", json.dumps(
                            {"study_id": study_id, "name": study["name"],
                             "n_items": study["n_items"], "n_units": len(units)})])
        return study_id

    @staticmethod
    def _study_event(con, study_id: int, event: str, actor: str | None, detail: dict | None,
                     now: datetime | None = None) -> None:
        con.execute("INSERT INTO study_events (study_id, event, actor, detail, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [study_id, event, actor, json.dumps(detail or {}), now or util.now()])

    def add_study_event(self, study_id: int, event: str, actor: str | None,
                        detail: dict | None = None) -> None:
        """Append a life-cycle event (and the matching audit record) in one transaction."""
        now = util.now()
        with self.tx() as con:
            self._study_event(con, study_id, event, actor, detail, now)
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) "
                        "VALUES (?, ?, ?, ?)", [now, actor, f"study_{event}",
                                                json.dumps({"study_id": study_id,
                                                            **(detail or {})})])

    def add_study_tasks(self, study_id: int, tasks, raters: Sequence[int], batch: int,
                        event: str, actor: str | None, detail: dict | None = None,
                        withdraw: Sequence[int] = ()) -> int:
        """Add raters and tasks (and withdraw pending tasks) in one transaction.

        Args:
            study_id: the study.
            tasks: DataFrame with slot, arm, reader_id, position.
            raters: reader ids joining in this batch (already known ones are kept as they are).
            batch: 0 for the first assignment, 1.. for extensions.
            event: 'assigned' or 'extended'.
            actor: who did it.
            detail: event/audit detail (no patient text).
            withdraw: ids of pending tasks that move to another rater.
        Returns:
            the number of tasks added.
        """
        now = util.now()
        with self.tx() as con:
            for reader_id in raters:
                con.execute("INSERT INTO study_raters (study_id, reader_id, batch, added_at) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            [study_id, reader_id, batch, now])
            for task_id in withdraw:
                con.execute("INSERT INTO study_task_withdrawals (task_id, study_id, batch, "
                            "created_at) VALUES (?, ?, ?, ?)", [task_id, study_id, batch, now])
            frame = tasks.assign(study_id=study_id, batch=batch, created_at=now)
            con.register("incoming_tasks", frame)
            try:
                con.execute(
                    "INSERT INTO study_tasks (study_id, unit_id, reader_id, position, batch, "
                    "created_at) SELECT t.study_id, u.id, t.reader_id, t.position, t.batch, "
                    "t.created_at FROM incoming_tasks t JOIN study_units u ON "
                    "u.study_id = t.study_id AND u.slot = t.slot AND u.arm = t.arm")
            finally:
                with contextlib.suppress(Exception):  # keep the original error
                    con.unregister("incoming_tasks")
            self._study_event(con, study_id, event, actor, detail, now)
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) "
                        "VALUES (?, ?, ?, ?)", [now, actor, f"study_{event}",
                                                json.dumps({"study_id": study_id,
                                                            **(detail or {})})])
        return len(tasks)

    def add_study_answer(self, feedback_id: int, study_id: int, task_id: int, unit_id: int,
                         reader_id: int, answers: dict | None) -> None:
        """Link a study rating to its task (idempotent for a repeated feedback id)."""
        with self.tx() as con:
            con.execute("INSERT INTO study_answers (feedback_id, study_id, task_id, unit_id, "
                        "reader_id, answers, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING",
                        [feedback_id, study_id, task_id, unit_id, reader_id,
                         json.dumps(answers or {}), util.now()])

    # -- reading a study -------------------------------------------------------------------------
    def get_study(self, study_id: int) -> dict | None:
        """The study row with JSON fields parsed and ``status`` added, or None."""
        row = self._one("SELECT * FROM studies WHERE id = ?", [study_id])
        if row is None:
            return None
        for key in ("arms", "scale", "questions", "config"):
            row[key] = _json(row[key])
        row["status"] = self.study_status(study_id)
        return row

    def study_status(self, study_id: int) -> str:
        """draft | running | paused | closed (from the latest status event)."""
        event = self._scalar(
            "SELECT event FROM study_events WHERE study_id = ? AND event IN "
            "('assigned', 'paused', 'resumed', 'closed') ORDER BY id DESC LIMIT 1", [study_id])
        return _STATUS_OF_EVENT.get(event, "draft")

    def study_events(self, study_id: int) -> list[dict]:
        rows = self._rows("SELECT id, event, actor, detail, created_at FROM study_events "
                          "WHERE study_id = ? ORDER BY id", [study_id])
        for r in rows:
            r["detail"] = _json(r["detail"])
        return rows

    def list_studies(self) -> list[dict]:
        """Every study with status, rater count and active/done task counts (newest first)."""
        rows = self._rows(
            f"SELECT s.id, s.name, s.n_items, s.k, s.arms, s.created_by, s.created_at, "
            f"(SELECT count(*) FROM study_raters x WHERE x.study_id = s.id) AS n_raters, "
            f"(SELECT count(*) FROM study_tasks t WHERE t.study_id = s.id AND {_ACTIVE}) "
            f"AS n_tasks, "
            f"(SELECT count(*) FROM study_tasks t WHERE t.study_id = s.id AND {_ACTIVE} "
            f"AND {_DONE}) AS n_done FROM studies s ORDER BY s.id DESC")
        for r in rows:
            r["arms"] = _json(r["arms"])
            r["status"] = self.study_status(r["id"])
        return rows

    def studies_of_rater(self, reader_id: int) -> list[dict]:
        """Studies where this reader has active tasks, with their own done/total counts only."""
        rows = self._rows(
            f"SELECT s.id, s.name, s.guideline, s.scale, s.questions, count(*) AS total, "
            f"count(*) FILTER (WHERE {_DONE}) AS done "
            f"FROM study_tasks t JOIN studies s ON s.id = t.study_id "
            f"WHERE t.reader_id = ? AND {_ACTIVE} GROUP BY ALL ORDER BY s.id DESC", [reader_id])
        for r in rows:
            r["scale"] = _json(r["scale"])
            r["questions"] = _json(r["questions"])
            r["status"] = self.study_status(r["id"])
        return rows

    def study_raters(self, study_id: int) -> list[dict]:
        return self._rows(
            "SELECT x.reader_id, u.username, x.batch, x.added_at FROM study_raters x "
            "JOIN readers u ON u.id = x.reader_id WHERE x.study_id = ? ORDER BY x.batch, "
            "u.username", [study_id])

    def study_units(self, study_id: int):
        """Every unit of a study (the blinding key with texts) as a DataFrame."""
        return self.df(
            "SELECT u.id AS unit_id, u.slot, coalesce(u.case_number, u.slot + 1) AS "
            "case_number, u.report_id, u.arm, u.label, u.generation_id, "
            "u.text, u.normal, r.source, r.external_id, r.findings, r.indication, r.comparison, "
            "r.impression AS original, g.model, g.adapter, g.style, g.flags "
            "FROM study_units u JOIN reports r ON r.id = u.report_id "
            "LEFT JOIN generations g ON g.id = u.generation_id "
            "WHERE u.study_id = ? ORDER BY u.slot, u.arm", [study_id])

    def study_tasks(self, study_id: int):
        """Every task (active or withdrawn) with done flag and time spent, as a DataFrame."""
        return self.df(
            f"SELECT t.id AS task_id, t.unit_id, t.reader_id, rd.username AS rater, t.position, "
            f"t.batch, u.slot, u.arm, {_ACTIVE} AS active, {_DONE} AS done, "
            f"(SELECT max(f.time_spent_ms) FROM study_answers a JOIN current_feedback f ON "
            f"f.id = a.feedback_id WHERE a.task_id = t.id) AS time_spent_ms "
            f"FROM study_tasks t JOIN study_units u ON u.id = t.unit_id "
            f"JOIN readers rd ON rd.id = t.reader_id WHERE t.study_id = ? "
            f"ORDER BY t.reader_id, t.position, t.id", [study_id])

    def next_study_task(self, study_id: int, reader_id: int) -> dict | None:
        """The reader's first active, not yet rated task (by queue position), or None."""
        # The hot path of the rating screen: filters by study and reader before any join.
        return self._one(
            _TASK_SQL.format(done="FALSE", active="TRUE")
            + " WHERE t.study_id = ? AND t.reader_id = ? AND t.id NOT IN (SELECT task_id FROM "
              "study_task_withdrawals WHERE study_id = ?) AND t.id NOT IN (SELECT a.task_id "
              "FROM study_answers a JOIN feedback f ON f.id = a.feedback_id WHERE "
              "a.study_id = ? AND a.reader_id = ? AND NOT EXISTS (SELECT 1 FROM feedback x "
              "WHERE x.kind = 'retraction' AND x.retracts = f.id)) "
              "ORDER BY t.position, t.id LIMIT 1",
            [study_id, reader_id, study_id, study_id, reader_id])

    def get_study_task(self, task_id: int) -> dict | None:
        return self._one(_TASK_SQL.format(done=_DONE, active=_ACTIVE) + " WHERE t.id = ?",
                         [task_id])

    def study_rater_progress(self, study_id: int, reader_id: int) -> tuple[int, int]:
        """(done, total) of one reader's active tasks in a study."""
        row = self._one(
            f"SELECT count(*) AS total, count(*) FILTER (WHERE {_DONE}) AS done "
            f"FROM study_tasks t WHERE t.study_id = ? AND t.reader_id = ? AND {_ACTIVE}",
            [study_id, reader_id])
        return int(row["done"]), int(row["total"])

    def study_ratings(self, study_id: int):
        """Every standing study rating with its unit (arm, label, text) and answers (DataFrame).

        This is the unblinded key joined with the ratings: core.studies.results shows it only after close.
        """
        return self.df(
            "SELECT f.id AS feedback_id, f.created_at, a.task_id, a.unit_id, f.reader_id, "
            "rd.username AS rater, u.slot, coalesce(u.case_number, u.slot + 1) AS "
            "case_number, u.arm, u.label, u.report_id, r.source, "
            "r.external_id, u.normal, u.generation_id, g.model, g.adapter, g.style, "
            "f.rating, f.factual_error, f.omission, f.style_issue, f.critical_missed, "
            "f.comment, f.time_spent_ms, a.answers, u.text, r.impression AS original, "
            "r.findings, r.indication, r.comparison "
            "FROM current_feedback f JOIN study_answers a ON a.feedback_id = f.id "
            "JOIN study_units u ON u.id = a.unit_id JOIN readers rd ON rd.id = f.reader_id "
            "JOIN reports r ON r.id = u.report_id "
            "LEFT JOIN generations g ON g.id = u.generation_id "
            "WHERE f.study_id = ? AND f.kind = 'rating' ORDER BY u.slot, u.arm, rd.username",
            [study_id])

    def count_study_ratings(self, study_id: int) -> int:
        return self._scalar(
            "SELECT count(*) FROM current_feedback f JOIN study_answers a ON a.feedback_id = f.id "
            "WHERE f.study_id = ? AND f.kind = 'rating'", [study_id])

    def study_scores(self, study_id: int):
        """reader_id, unit_id, rating of every standing study rating: no arms (progress only)."""
        return self.df(
            "SELECT f.reader_id, a.unit_id, f.rating FROM current_feedback f "
            "JOIN study_answers a ON a.feedback_id = f.id "
            "WHERE f.study_id = ? AND f.kind = 'rating'", [study_id])

    def study_task_of_feedback(self, feedback_id: int) -> int | None:
        return self._scalar("SELECT task_id FROM study_answers WHERE feedback_id = ?",
                            [feedback_id])

    def study_answers_of(self, feedback_id: int) -> dict:
        """The custom answers given with a study rating ({} when none)."""
        raw = self._scalar("SELECT answers FROM study_answers WHERE feedback_id = ?", [feedback_id])
        return json.loads(raw) if raw else {}

    def is_study_case_of(self, study_id: int, reader_id: int, report_id: int) -> bool:
        """Does the reader have a (not withdrawn) task on this report in this study?"""
        return bool(self._scalar(
            "SELECT count(*) FROM study_tasks t JOIN study_units u ON u.id = t.unit_id "
            "WHERE t.study_id = ? AND t.reader_id = ? AND u.report_id = ? AND t.id NOT IN "
            "(SELECT task_id FROM study_task_withdrawals)", [study_id, reader_id, report_id]))

    def feedback_id_for_token(self, client_token: str, reader_id: int) -> int | None:
        """The reader's feedback row saved with ``client_token`` (tokens are unique per reader)."""
        return self._scalar("SELECT id FROM feedback WHERE reader_id = ? AND client_token = ?",
                            [reader_id, client_token])

    def open_study_ids(self) -> list[int]:
        """Ids of studies that are not closed (their ratings' arms are still blinded)."""
        return [r["id"] for r in self._rows(
            "SELECT id FROM studies WHERE id NOT IN (SELECT study_id FROM study_events "
            "WHERE event = 'closed') ORDER BY id")]

    def report_ids_in_open_studies(self, reader_id: int) -> list[int]:
        """Reports this reader rates in studies not closed yet.

        The general annotate queue should skip them: it shows the AI impression next to the
        original, which would tell the rater which study text came from which arm.
        """
        return [r["report_id"] for r in self._rows(
            f"SELECT DISTINCT report_id FROM ({OPEN_STUDY_REPORTS_SQL}) ORDER BY 1", [reader_id])]
