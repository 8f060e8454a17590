"""The schema: every migration in order, and applying them (part of the store).

Each part of the store owns a range of versions and its own list: 1-9 here (readers, reports,
generations, feedback, assignments, audit log, feedback imports, report staging), 10-29 in
:mod:`core.store.training`, 30-39 in :mod:`core.store.studies`. ``MIGRATIONS`` is all of them.
"""

from __future__ import annotations

from core.store.reports import fingerprint_sql
from core.store.studies import STUDY_MIGRATIONS
from core.store.training import TRAINING_MIGRATIONS

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
    (
        4,
        ("report imports staged in chunks and published in one short transaction; stored "
         "content fingerprints"),
        f"""
        -- The content fingerprint (core.store.reports.fingerprint_sql), stored once per report:
        -- computed over every report at each import it took seconds inside the import's
        -- transaction.
        ALTER TABLE reports ADD COLUMN fingerprint VARCHAR;
        UPDATE reports SET fingerprint = {fingerprint_sql('reports')};
        -- One row per import being staged: its owner (host, pid) and last sign of life, so
        -- the next import removes what a killed one left.
        CREATE TABLE report_stages (
            stage_id VARCHAR PRIMARY KEY,
            file VARCHAR NOT NULL,
            format VARCHAR NOT NULL,
            n_rows INTEGER NOT NULL,
            actor VARCHAR,
            host VARCHAR NOT NULL,
            pid INTEGER NOT NULL,
            started_at TIMESTAMP NOT NULL,
            touched_at TIMESTAMP NOT NULL
        );
        -- Staged reports: invisible to everything but the import that wrote them.
        CREATE TABLE report_staging (
            stage_id VARCHAR NOT NULL,
            k INTEGER NOT NULL,
            source VARCHAR NOT NULL,
            external_id VARCHAR NOT NULL,
            findings VARCHAR NOT NULL,
            impression VARCHAR,
            indication VARCHAR,
            comparison VARCHAR,
            author VARCHAR,
            extra JSON,
            fingerprint VARCHAR
        );
        """,
    ),
]


MIGRATIONS += TRAINING_MIGRATIONS + STUDY_MIGRATIONS


class Migrations:
    """Schema versions (mixed into :class:`core.store.database.Store`)."""

    def migrate(self) -> int:
        """Apply pending migrations in order, each in its own transaction. Returns the version."""
        # One transaction when nothing is pending (every CLI command starts here: each extra
        # transaction is one more hand-over of the file while the app waits).
        with self.tx() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description VARCHAR, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
            done = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
            pending = [m for m in sorted(MIGRATIONS) if m[0] not in done]
            if not pending:
                return max(done, default=0)
        for version, description, sql in pending:
            with self.tx() as con:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                            [version, description])
        return self.schema_version()

    def schema_version(self) -> int:
        return self._scalar("SELECT coalesce(max(version), 0) FROM schema_migrations")
