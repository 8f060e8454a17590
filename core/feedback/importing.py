"""Import feedback that already exists: draft -> signed impression pairs from a CSV file.

``python -m core feedback import FILE.csv``. Departments have years of resident drafts and
dictation corrections; each row becomes a radiologist's feedback on day one.

Columns (header names matched case-insensitively; the first present spelling wins):

    reader      reader, radiologist, username                      required: an existing user
    uid         uid, report_uid, external_id, report               required: a report in the store
    edited      edited_impression, edited, signed_impression,      required: the impression the
                final_impression, impression                       radiologist signed
    ai_text     ai_text, draft, draft_impression, ai_impression    optional: the draft it replaced
    rating      rating                                             optional: -2..2, the draft
                                                                   relative to the original
    source      source                                             optional: report source, when
                                                                   a uid exists in several

The same rules as the report importers: the whole file is validated first (UTF-8, header,
quoting, field counts, every cell) and an error names the file, row and field; nothing is written
unless every row is valid. Then the rows are written in chunks of ``CHUNK_ROWS``, each chunk ONE
transaction (all of its rows or none), so no import holds the database for long (a 10,000-row
file is five short transactions, and the app's saves go in between). The import has an id
(table ``feedback_imports``): a run killed or failed half way leaves its committed chunks and the
unfinished import; running the same file again resumes that import id and writes only the rows
not yet written. Rows already imported (same reader, report and texts) and repeated rows are
skipped, so importing a file twice is safe.

One answer per reader and report counts: a row for a report the reader already answered outside
studies (rated or skipped in the app, or imported before) revises that answer (``revises``), as a
second rating in the app does; the earlier one stays on record, and preference pairs use only the
current one. Two rows of one file for the same reader and report: the later one revises the
earlier.

Each row becomes a ``feedback`` row (kind ``rating``, ``source = 'import'``). With ``ai_text``
the draft is stored as a generation (model ``imported-draft``, style ``imported``, so it never
enters anyone's queue) and the row yields an edit-over-draft pair. Without it the row is linked to
the report's current shared AI draft when there is one (an edit-over-draft pair against the
model's own text), otherwise it only feeds the radiologist's memory of accepted impressions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.accounts.auth import User, authorize
from core.feedback.annotate import MAX_TEXT
from core.ingest.common import ImportValidationError, normalize_text, read_csv_table
from core.learning.pairs import same_words

__all__ = ["FeedbackImportResult", "import_feedback", "COLUMNS"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "reader": ("reader", "radiologist", "username"),
    "uid": ("uid", "report_uid", "external_id", "report"),
    "edited": ("edited_impression", "edited", "signed_impression", "final_impression",
               "impression"),
    "ai_text": ("ai_text", "draft", "draft_impression", "ai_impression"),
    "rating": ("rating",),
    "source": ("source",),
}
RATERS = ("radiologist", "admin")
# Rows per transaction: ~0.1 s of writing on a 2-core server, well inside the store's bound on
# how long one transaction may keep the database from the app (see core.store.database).
CHUNK_ROWS = 2000


@dataclass(frozen=True)
class FeedbackImportResult:
    file: str
    rows: int
    imported: int
    skipped: int
    drafts_stored: int
    linked_to_shared_draft: int
    memory_only: int
    import_id: int | None = None
    resumed: bool = False

    def summary(self) -> str:
        return (f"{self.file}: {self.imported:,} feedback rows imported, {self.skipped:,} "
                f"skipped as already imported or repeated ({self.rows:,} rows); "
                f"{self.drafts_stored:,} drafts stored, {self.linked_to_shared_draft:,} linked to "
                f"the shared AI draft, {self.memory_only:,} without any draft (memory only)"
                + (f"; resumed import {self.import_id}" if self.resumed else ""))


def _token(reader: str, report_id: int, edited: str, ai_text: str | None) -> str:
    raw = json.dumps([reader, report_id, edited, ai_text or ""], ensure_ascii=False)
    return "import:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]


@dataclass(frozen=True)
class _Row:
    """One validated row of a feedback file."""

    line: int
    reader: Any
    uid: str
    source: str | None
    edited: str
    ai_text: str | None
    rating: int | None


def _parse_rating(raw: str, error) -> int | None:
    if not raw:
        return None
    try:
        rating = int(float(raw))
        if float(raw) != rating:
            raise ValueError
    except (ValueError, OverflowError):  # "abc", "1.5", "nan"; "inf", "1e309"
        raise error(f"rating {raw!r} is not a whole number") from None
    if not -2 <= rating <= 2:
        raise error(f"rating {rating} is outside -2..2")
    return rating


def _parse_row(table, col: dict, display: str, readers: dict, line: int, cells) -> _Row:
    """One row checked cell by cell; an error names the file, row and field."""
    def cell(key: str) -> str:
        i = col[key]
        return normalize_text(cells[i]) if i is not None else ""

    def error(key: str):
        return lambda message: ImportValidationError(display, line, table.header[col[key]],
                                                     message)

    name = cell("reader")
    if not name:
        raise error("reader")("reader is empty")
    reader = readers.get(name)
    if reader is None:
        raise error("reader")(f"no user named {name!r}; add the user first")
    if reader.role not in RATERS or not reader.active:
        raise error("reader")(f"user {name!r} is "
                              f"{'disabled' if not reader.active else reader.role}"
                              f"; only active radiologists (or admins) give feedback")
    uid = cell("uid")
    if not uid:
        raise error("uid")("uid is empty")
    edited = cell("edited")
    if not edited:
        raise error("edited")("edited impression is empty")
    if len(edited) > MAX_TEXT:
        raise error("edited")(f"{len(edited):,} characters, at most {MAX_TEXT:,}")
    ai_text = cell("ai_text") or None
    if ai_text and len(ai_text) > MAX_TEXT:
        raise error("ai_text")(f"{len(ai_text):,} characters, at most {MAX_TEXT:,}")
    rating = _parse_rating(cell("rating"), error("rating") if col["rating"] is not None else None)
    return _Row(line, reader, uid, cell("source") or None, edited, ai_text, rating)


def _resolve(store, rows: list[_Row], table, col: dict, display: str) -> list[tuple]:
    """(reader, report, edited, ai_text, rating) per row: each uid names exactly one report."""
    reports: dict[tuple[str, str], list[dict]] = {}
    by_uid: dict[str, list[dict]] = {}
    for r in store.reports_by_external_id(sorted({row.uid for row in rows})):
        by_uid.setdefault(r["external_id"], []).append(r)
        reports.setdefault((r["external_id"], r["source"]), []).append(r)
    field_uid = table.header[col["uid"]]
    resolved = []
    for row in rows:
        uid, source = row.uid, row.source
        matches = reports.get((uid, source), []) if source else by_uid.get(uid, [])
        if not matches:
            raise ImportValidationError(display, row.line, field_uid,
                                        f"no report with uid {uid!r}"
                                        f"{f' from source {source!r}' if source else ''} in the "
                                        f"database; import the reports first")
        if len(matches) > 1:
            raise ImportValidationError(
                display, row.line, field_uid,
                f"uid {uid!r} names {len(matches)} reports (sources "
                f"{', '.join(sorted(m['source'] for m in matches))}); add a 'source' column")
        resolved.append((row.reader, matches[0], row.edited, row.ai_text, row.rating))
    return resolved


def _plan(store, resolved: list[tuple]) -> tuple[list[dict], dict[str, int]]:
    """The feedback rows still to write, and counts: skipped, drafts, linked, memory_only."""
    tokens = [_token(rd.username, rep["id"], ed, ai) for rd, rep, ed, ai, _ in resolved]
    known = store.feedback_client_tokens(tokens)
    shared = store.latest_default_generation(sorted({rep["id"] for _, rep, *_ in resolved}))
    counts = {"skipped": 0, "drafts": 0, "linked": 0, "memory_only": 0}
    seen: set[str] = set()
    todo: list[dict] = []
    for (reader, rep, edited, ai_text, rating), token in zip(resolved, tokens):
        if token in known or token in seen:
            counts["skipped"] += 1
            continue
        seen.add(token)
        row = {"reader_id": reader.id, "report_id": rep["id"], "rating": rating,
               "client_token": token}
        if ai_text:
            row["draft_text"] = draft_text = ai_text
            counts["drafts"] += 1
        elif rep["id"] in shared:
            row["generation_id"] = shared[rep["id"]]["id"]
            draft_text = shared[rep["id"]]["text"]
            counts["linked"] += 1
        else:
            draft_text = None
            counts["memory_only"] += 1
        row["edited_text"] = None if draft_text and same_words(edited, draft_text) else edited
        todo.append(row)
    return todo, counts


def import_feedback(store, path: str | Path, actor: str | None = None,
                    display_name: str | None = None, user: User | None = None,
                    chunk_rows: int = CHUNK_ROWS) -> FeedbackImportResult:
    """Validate a feedback CSV completely, then write it in chunks (see the module docstring).

    Args:
        store: the store.
        path: the CSV file.
        actor: who imports (audit log) when no ``user`` is given: a system job (the CLI).
        display_name: how the file is named in messages (default: the path).
        user: the signed-in admin who imports (checked against the store; then the actor).
        chunk_rows: rows per transaction.

    Returns:
        A :class:`FeedbackImportResult`.

    Raises:
        ImportValidationError: naming file, row and field; nothing is written.
        PermissionDenied: ``user`` is not an active admin (the account is re-read), or a
            reader was disabled while the import ran (the chunks before stay written).

    >>> import_feedback(store, "signed.csv", actor="cli").summary()  # doctest: +SKIP
    'signed.csv: 120 feedback rows imported, 0 skipped as already imported or repeated ...'
    """
    if user is not None:
        actor = authorize(store, user, "admin").username
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r}: must be at least 1")
    display = display_name or str(path)
    table = read_csv_table(Path(path), display)
    col = {k: table.column(v, required=k in ("reader", "uid", "edited"), what=k)
           for k, v in COLUMNS.items()}
    readers = {r.username: r for r in store.list_readers()}
    rows = [_parse_row(table, col, display, readers, line, cells) for line, cells in table.rows]
    resolved = _resolve(store, rows, table, col, display)
    todo, counts = _plan(store, resolved)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    name = Path(display).name
    import_id, resumed = store.start_feedback_import(name, digest, len(resolved), actor)
    imported = 0
    for start in range(0, len(todo), chunk_rows):
        imported += store.import_feedback_chunk(import_id, todo[start:start + chunk_rows],
                                                {"imported_from": name})
    # rows a killed run of this import had already written count as skipped (they are there)
    skipped = counts["skipped"] + len(todo) - imported
    store.finish_feedback_import(import_id, actor, {
        "file": name, "rows": len(resolved), "imported": imported,
        "skipped": skipped, "resumed": resumed})
    return FeedbackImportResult(display, len(resolved), imported, skipped, counts["drafts"],
                                counts["linked"], counts["memory_only"], import_id, resumed)
