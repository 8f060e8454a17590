"""SQL for training runs, adapters and the nightly job (mixed into core.store.database.Store).

Tables (migrations 11-12):

* ``training_runs``: one row per nightly training attempt for one radiologist: method, status
  (running / succeeded / failed / abandoned / skipped), the feedback high-water mark it read,
  pair counts, steps, wall time, losses, evaluation metrics of the candidate and of the adapter it
  had to beat, the gate's decision and reason, and the adapter version it wrote.
* ``adapters``: every adapter version written to disk (``<adapters_dir>/<reader>/v<N>``), with
  the run that made it, its metrics and its status (candidate / rejected / promoted).
* ``active_adapters``: the version each radiologist's drafts use now (no row: the shared model).
* ``adapter_events``: append-only log of promotions and rollbacks (from which version to which).
* ``heldout_reports``: the reports of each radiologist kept for evaluation only; a report stays
  held out once assigned, so later feedback on it never leaks into training.

Runs are mutable while they run (status, metrics); nothing else here is ever deleted.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from core import util
from core.errors import NotFound, StoreError

# Migrations 10-29 belong to training runs, adapters and personalization; core.store.migrations
# registers them. (10 is left to generation; this module starts at 11.)
TRAINING_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        11,
        "training runs: one row per nightly training attempt",
        """
        CREATE SEQUENCE training_runs_id_seq;
        CREATE TABLE training_runs (
            id BIGINT PRIMARY KEY DEFAULT nextval('training_runs_id_seq'),
            reader_id INTEGER NOT NULL,
            method VARCHAR NOT NULL,
            status VARCHAR NOT NULL CHECK (status IN
                ('running', 'succeeded', 'failed', 'abandoned', 'skipped')),
            decision VARCHAR,
            reason VARCHAR,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            pid INTEGER,
            host VARCHAR,
            feedback_high_water BIGINT,
            n_feedback INTEGER,
            n_pairs INTEGER,
            n_train_pairs INTEGER,
            n_heldout_pairs INTEGER,
            pair_counts JSON,
            steps INTEGER,
            wall_s DOUBLE,
            train_s DOUBLE,
            pairs_per_s DOUBLE,
            losses JSON,
            metrics JSON,
            baseline_metrics JSON,
            config JSON,
            adapter_version INTEGER,
            adapter_path VARCHAR,
            error VARCHAR
        );
        """,
    ),
    (
        12,
        "adapters: versions on disk, active version per reader, promotion log, held-out reports",
        """
        CREATE TABLE adapters (
            reader_id INTEGER NOT NULL,
            version INTEGER NOT NULL,
            path VARCHAR NOT NULL,
            run_id BIGINT,
            method VARCHAR,
            base_model VARCHAR,
            status VARCHAR NOT NULL CHECK (status IN ('candidate', 'rejected', 'promoted')),
            metrics JSON,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (reader_id, version)
        );
        CREATE TABLE active_adapters (
            reader_id INTEGER PRIMARY KEY,
            version INTEGER NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            updated_by VARCHAR
        );
        CREATE SEQUENCE adapter_events_id_seq;
        CREATE TABLE adapter_events (
            id BIGINT PRIMARY KEY DEFAULT nextval('adapter_events_id_seq'),
            reader_id INTEGER NOT NULL,
            action VARCHAR NOT NULL CHECK (action IN ('promote', 'rollback')),
            version INTEGER,
            previous_version INTEGER,
            actor VARCHAR,
            reason VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE heldout_reports (
            reader_id INTEGER NOT NULL,
            report_id BIGINT NOT NULL,
            assigned_at TIMESTAMP NOT NULL,
            PRIMARY KEY (reader_id, report_id)
        );
        """,
    ),
]

RUN_JSON = ("pair_counts", "losses", "metrics", "baseline_metrics", "config")
RUN_FIELDS = ("status", "decision", "reason", "finished_at", "feedback_high_water", "n_feedback",
              "n_pairs", "n_train_pairs", "n_heldout_pairs", "pair_counts", "steps", "wall_s",
              "train_s", "pairs_per_s", "losses", "metrics", "baseline_metrics", "config",
              "adapter_version", "adapter_path", "error")


def _loads(row: dict | None, keys: Iterable[str]) -> dict | None:
    if row is None:
        return None
    row = dict(row)
    for k in keys:
        if isinstance(row.get(k), str):
            row[k] = json.loads(row[k])
    return row


class TrainingQueries:
    """Training/adapters queries; uses Store's ``tx``/``_rows``/``_one``/``_scalar`` helpers."""

    # -- feedback for pair building ------------------------------------------------------------
    def feedback_for_training(self, reader_id: int, since_id: int | None = None) -> list[dict]:
        """Every feedback row of a reader (ratings, skips, retractions), outside studies, with the
        report's texts and the rated generation's text, adapter and style; oldest first. A
        rating revised by a later rating of the same case is left out (only the current one
        makes pairs)."""
        sql = (
            "SELECT f.id, f.reader_id, f.report_id, f.generation_id, f.kind, f.rating, "
            "f.factual_error, f.omission, f.style_issue, f.critical_missed, f.edited_text, "
            "f.retracts, f.source, f.created_at, r.external_id, r.findings, r.indication, "
            "r.comparison, r.impression AS original, g.text AS ai_text, g.adapter, "
            "g.adapter_version, g.style, g.model "
            "FROM feedback f JOIN reports r ON r.id = f.report_id "
            "LEFT JOIN generations g ON g.id = f.generation_id "
            "WHERE f.reader_id = ? AND f.study_id IS NULL "
            # a rating revised by a later one of the same case (two tabs) no longer counts
            "AND NOT EXISTS (SELECT 1 FROM feedback v WHERE v.revises = f.id AND NOT EXISTS ("
            "SELECT 1 FROM feedback x WHERE x.kind = 'retraction' AND x.retracts = v.id))")
        params: list[Any] = [reader_id]
        if since_id is not None:
            sql += " AND f.id > ?"
            params.append(since_id)
        return self._rows(sql + " ORDER BY f.id", params)

    def feedback_high_water(self, reader_id: int) -> int:
        """The largest feedback id of a reader (0 when none)."""
        return self._scalar("SELECT coalesce(max(id), 0) FROM feedback WHERE reader_id = ? "
                            "AND study_id IS NULL", [reader_id])

    def training_candidates(self) -> list[dict]:
        """Per active radiologist: feedback count, high-water mark, and what the last finished run
        read (so the nightly job can count new feedback)."""
        return self._rows(
            "SELECT u.id AS reader_id, u.username, "
            "(SELECT count(*) FROM feedback f WHERE f.reader_id = u.id AND f.study_id IS NULL "
            " AND f.kind = 'rating') AS n_ratings, "
            "(SELECT coalesce(max(f.id), 0) FROM feedback f WHERE f.reader_id = u.id "
            " AND f.study_id IS NULL) AS high_water, "
            "(SELECT coalesce(max(t.feedback_high_water), 0) FROM training_runs t "
            " WHERE t.reader_id = u.id AND t.status = 'succeeded') AS last_high_water "
            "FROM readers u WHERE u.active AND u.role IN ('radiologist', 'admin') "
            "ORDER BY u.username")

    def count_new_ratings(self, reader_id: int, since_id: int) -> int:
        return self._scalar("SELECT count(*) FROM feedback WHERE reader_id = ? AND id > ? AND "
                            "study_id IS NULL AND kind IN ('rating', 'retraction')",
                            [reader_id, since_id])

    # -- held-out reports ------------------------------------------------------------------------
    def heldout_report_ids(self, reader_id: int) -> set[int]:
        return {r["report_id"] for r in self._rows(
            "SELECT report_id FROM heldout_reports WHERE reader_id = ?", [reader_id])}

    def assign_heldout(self, reader_id: int, report_ids: Iterable[int]) -> int:
        """Record reports as held out for a reader (already recorded ones are kept). Returns how
        many were new."""
        ids = sorted(set(int(i) for i in report_ids))
        if not ids:
            return 0
        with self.tx() as con:
            known = {r[0] for r in con.execute(
                "SELECT report_id FROM heldout_reports WHERE reader_id = ?", [reader_id]).fetchall()}
            new = [i for i in ids if i not in known]
            if new:
                con.executemany("INSERT INTO heldout_reports (reader_id, report_id, assigned_at) "
                                "VALUES (?, ?, ?)", [[reader_id, i, util.now()] for i in new])
        return len(new)

    # -- training runs ---------------------------------------------------------------------------
    def start_run(self, reader_id: int, method: str, pid: int | None = None,
                  host: str | None = None, config: dict | None = None) -> int:
        with self.tx() as con:
            con.execute(
                "INSERT INTO training_runs (reader_id, method, status, started_at, pid, host, "
                "config) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                [reader_id, method, util.now(), pid, host, json.dumps(config or {})])
            return con.execute("SELECT currval('training_runs_id_seq')").fetchall()[0][0]

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set fields of a run (JSON fields are serialised)."""
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise StoreError(f"unknown training_runs field(s): {sorted(unknown)}")
        if not fields:
            return
        cols = list(fields)
        values = [json.dumps(fields[c]) if c in RUN_JSON and fields[c] is not None else fields[c]
                  for c in cols]
        with self.tx() as con:
            con.execute(f"UPDATE training_runs SET {', '.join(f'{c} = ?' for c in cols)} "
                        f"WHERE id = ?", values + [run_id])

    def abandon_running(self, reason: str) -> list[int]:
        """Mark every run still 'running' as 'abandoned' (called by the nightly job once it holds
        its exclusive lock: such runs belong to a process that died). Returns their ids."""
        with self.tx() as con:
            ids = [r[0] for r in con.execute(
                "SELECT id FROM training_runs WHERE status = 'running' ORDER BY id").fetchall()]
            if ids:
                con.execute("UPDATE training_runs SET status = 'abandoned', reason = ?, "
                            "finished_at = ? WHERE status = 'running'", [reason, util.now()])
        return ids

    def get_run(self, run_id: int) -> dict:
        row = _loads(self._one("SELECT * FROM training_runs WHERE id = ?", [run_id]), RUN_JSON)
        if row is None:
            raise NotFound(f"no training run with id {run_id}")
        return row

    def training_runs(self, reader_id: int | None = None, limit: int = 500) -> list[dict]:
        sql = ("SELECT t.*, u.username AS reader FROM training_runs t "
               "JOIN readers u ON u.id = t.reader_id")
        params: list[Any] = []
        if reader_id is not None:
            sql += " WHERE t.reader_id = ?"
            params.append(reader_id)
        sql += " ORDER BY t.id DESC LIMIT ?"
        params.append(limit)
        return [_loads(r, RUN_JSON) for r in self._rows(sql, params)]

    # -- adapters --------------------------------------------------------------------------------
    def max_adapter_version(self, reader_id: int) -> int:
        return self._scalar("SELECT coalesce(max(version), 0) FROM adapters WHERE reader_id = ?",
                            [reader_id])

    def add_adapter(self, reader_id: int, version: int, path: str, run_id: int | None,
                    method: str, base_model: str | None, metrics: dict | None,
                    status: str = "candidate") -> None:
        with self.tx() as con:
            con.execute(
                "INSERT INTO adapters (reader_id, version, path, run_id, method, base_model, "
                "status, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [reader_id, version, path, run_id, method, base_model, status,
                 json.dumps(metrics or {}), util.now()])

    def set_adapter_status(self, reader_id: int, version: int, status: str) -> None:
        with self.tx() as con:
            con.execute("UPDATE adapters SET status = ? WHERE reader_id = ? AND version = ?",
                        [status, reader_id, version])

    def get_adapter(self, reader_id: int, version: int) -> dict | None:
        return _loads(self._one("SELECT * FROM adapters WHERE reader_id = ? AND version = ?",
                                [reader_id, version]), ("metrics",))

    def adapters_of(self, reader_id: int | None = None) -> list[dict]:
        sql = ("SELECT a.*, u.username AS reader, (x.version IS NOT NULL) AS active "
               "FROM adapters a JOIN readers u ON u.id = a.reader_id "
               "LEFT JOIN active_adapters x ON x.reader_id = a.reader_id "
               "AND x.version = a.version")
        params: list[Any] = []
        if reader_id is not None:
            sql += " WHERE a.reader_id = ?"
            params.append(reader_id)
        return [_loads(r, ("metrics",)) for r in self._rows(
            sql + " ORDER BY u.username, a.version", params)]

    def active_adapter_row(self, reader_id: int) -> dict | None:
        """The active adapter of a reader joined with its adapters row, or None (shared model)."""
        return _loads(self._one(
            "SELECT a.*, x.updated_at, x.updated_by FROM active_adapters x JOIN adapters a "
            "ON a.reader_id = x.reader_id AND a.version = x.version WHERE x.reader_id = ?",
            [reader_id]), ("metrics",))

    def active_adapters(self) -> list[dict]:
        """Every reader's active adapter (username, version, path, promoted at/by)."""
        return [_loads(r, ("metrics",)) for r in self._rows(
            "SELECT u.username AS reader, x.reader_id, x.version, a.path, a.method, a.metrics, "
            "x.updated_at, x.updated_by FROM active_adapters x JOIN readers u ON "
            "u.id = x.reader_id JOIN adapters a ON a.reader_id = x.reader_id AND "
            "a.version = x.version ORDER BY u.username")]

    def set_active_adapter(self, reader_id: int, version: int | None, action: str,
                           actor: str | None, reason: str | None = None) -> int | None:
        """Make ``version`` (None: the shared model) the reader's active adapter, in ONE
        transaction with its event and audit rows. Returns the previously active version."""
        with self.tx() as con:
            prev = con.execute("SELECT version FROM active_adapters WHERE reader_id = ?",
                               [reader_id]).fetchall()
            previous = prev[0][0] if prev else None
            con.execute("DELETE FROM active_adapters WHERE reader_id = ?", [reader_id])
            if version is not None:
                con.execute("INSERT INTO active_adapters (reader_id, version, updated_at, "
                            "updated_by) VALUES (?, ?, ?, ?)", [reader_id, version, util.now(), actor])
                if action == "promote":
                    con.execute("UPDATE adapters SET status = 'promoted' WHERE reader_id = ? "
                                "AND version = ?", [reader_id, version])
            con.execute(
                "INSERT INTO adapter_events (reader_id, action, version, previous_version, actor, "
                "reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [reader_id, action, version, previous, actor, reason, util.now()])
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [util.now(), actor, f"adapter_{action}", json.dumps(
                            {"reader_id": reader_id, "version": version,
                             "previous_version": previous})])
        return previous

    def version_before(self, reader_id: int, version: int) -> int | None:
        """The version that was active before ``version`` was (last) promoted; None = shared."""
        return self._scalar(
            "SELECT previous_version FROM adapter_events WHERE reader_id = ? AND "
            "action = 'promote' AND version = ? ORDER BY id DESC LIMIT 1", [reader_id, version])

    def adapter_events(self, reader_id: int | None = None, limit: int = 200) -> list[dict]:
        sql = ("SELECT e.*, u.username AS reader FROM adapter_events e JOIN readers u ON "
               "u.id = e.reader_id")
        params: list[Any] = []
        if reader_id is not None:
            sql += " WHERE e.reader_id = ?"
            params.append(reader_id)
        sql += " ORDER BY e.id DESC LIMIT ?"
        params.append(limit)
        return self._rows(sql, params)

    # -- imported feedback -----------------------------------------------------------------------
    def reports_by_external_id(self, external_ids: Sequence[str],
                               source: str | None = None) -> list[dict]:
        sql = ("SELECT id, source, external_id, findings, impression FROM reports "
               "WHERE external_id IN (SELECT unnest(?))")
        params: list[Any] = [list(external_ids)]
        if source:
            sql += " AND source = ?"
            params.append(source)
        return self._rows(sql, params)

    def latest_default_generation(self, report_ids: Sequence[int]) -> dict[int, dict]:
        """report_id -> its newest shared-model ('default' style, no adapter) generation."""
        rows = self._rows(
            "SELECT * FROM (SELECT g.*, row_number() OVER (PARTITION BY report_id ORDER BY id "
            "DESC) AS k FROM generations g WHERE g.style = 'default' AND g.adapter IS NULL AND "
            "g.report_id IN (SELECT unnest(?))) WHERE k = 1", [list(report_ids)])
        return {r["report_id"]: r for r in rows}

    def feedback_client_tokens(self, tokens: Sequence[str]) -> set[str]:
        return {r["client_token"] for r in self._rows(
            "SELECT client_token FROM feedback WHERE client_token IN (SELECT unnest(?))",
            [list(tokens)])}

    def pending_reports_for(self, reader_id: int, adapter: str, limit: int) -> list[dict]:
        """Reports with a shared draft that the reader has not rated and that have no draft of
        ``adapter`` yet (the queue to pre-generate after a promotion)."""
        return self._rows(
            "SELECT r.id, r.source, r.external_id, r.findings, r.impression, r.indication, "
            "r.comparison, r.author FROM reports r WHERE EXISTS (SELECT 1 FROM generations g "
            "WHERE g.report_id = r.id AND g.style = 'default' AND g.adapter IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM current_feedback f WHERE f.reader_id = ? AND "
            "f.report_id = r.id AND f.study_id IS NULL) AND NOT EXISTS (SELECT 1 FROM "
            "generations g WHERE g.report_id = r.id AND g.adapter = ? AND g.adapter_version = "
            "(SELECT version FROM active_adapters WHERE reader_id = ?)) ORDER BY r.id LIMIT ?",
            [reader_id, adapter, reader_id, limit])
