"""Import report files into the store: validate the whole file first, then stage and publish it
(all or nothing, in short transactions).

Three kinds of report are left out, each counted in the ``ImportResult`` (and all together in
the ``imports`` row's ``n_skipped``, which Admin's "Recent imports" shows beside the rows read):
    already imported   the same (source, external_id) with the same findings and impression is
                       in the database (re-importing a file adds nothing); the same id with
                       other findings or impression is an error (another patient's report)
    duplicates         the same findings and impression (a content fingerprint, see
                       ``Store.content_duplicates``) came in earlier through another format,
                       e.g. a MIMIC-CXR folder and then a CSV export of it; imported all the
                       same with ``allow_duplicates=True`` (the CLI's --allow-duplicates)
    without findings   only with ``skip_empty_findings=True`` (--skip-empty-findings); else
                       such a report is an error and nothing is imported
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ImportValidationError
from core.ingest.formats import detect_format, read_reports
from core.store.database import Store
from core.store.reports import ReportIdConflict


@dataclass(frozen=True)
class ImportResult:
    """What one import did.

    Attributes:
        file: the file as the user named it.
        format: the format read (after auto-detection).
        rows: data rows (or MIMIC-CXR report files) read.
        imported: reports written.
        skipped: reports already in the database (same source and id).
        duplicates: reports left out as the same content imported through another format.
        empty_findings: rows (or files) left out for having no findings.
        skipped_where: those rows (int, spreadsheet numbering) or files (str), in file order.
        duplicate_sources: the sources the duplicates were first imported from.
    """

    file: str
    format: str
    rows: int
    imported: int
    skipped: int
    duplicates: int = 0
    empty_findings: int = 0
    skipped_where: tuple = field(default=(), repr=False)
    duplicate_sources: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"{_n(self.imported, 'report')} imported, {self.skipped:,} skipped as already "
                 "imported"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} skipped as the same report was already "
                         f"imported from {', '.join(self.duplicate_sources)} (--allow-duplicates "
                         "imports them)")
        if self.empty_findings:
            where = ", ".join(str(w) for w in self.skipped_where[:5])
            more = ", ..." if len(self.skipped_where) > 5 else ""
            kind = "file" if isinstance(self.skipped_where[0], str) else "row"
            parts.append(f"{_n(self.empty_findings, kind)} without findings skipped "
                         f"({where}{more})")
        return f"{self.file}: {', '.join(parts)} ({_n(self.rows, 'row')}, format {self.format})"


def _n(count: int, word: str) -> str:
    """``1 report``, ``2 reports``, ``2,809 reports``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def import_file(store: Store, path: str | Path, fmt: str = "auto",
                mapping: dict[str, str] | None = None, require_impression: bool = True,
                actor: str | None = None, display_name: str | None = None,
                skip_empty_findings: bool = False,
                allow_duplicates: bool = False) -> ImportResult:
    """Validate ``path`` completely, then import its reports all or nothing: staged in chunks
    of ``core.store.reports.STAGE_ROWS`` and made visible by one short transaction.

    Args:
        store: the database.
        path: file or folder (MIMIC-CXR).
        fmt: one of ``core.ingest.formats.FORMATS``.
        mapping: our field -> the file's column, for csv/jsonl/iu-xray/chexpert-plus.
        require_impression: a report without an impression is an error.
        actor: who imports, for the audit log.
        display_name: how to name the file in messages (an upload's original name).
        skip_empty_findings: leave out and count reports without findings instead of failing.
        allow_duplicates: import reports whose content came in through another format too.
    Returns:
        The counts (see ``ImportResult``).
    Raises:
        core.ingest.formats.ImportValidationError: naming file, row and field; nothing is written.

    >>> import_file(store, "mimic/", skip_empty_findings=True).summary()  # doctest: +SKIP
    'mimic/: 2 reports imported, 0 skipped as already imported, 1 file without findings ...'
    """
    name = display_name or str(path)
    try:
        fmt = detect_format(path) if fmt == "auto" else fmt
        records = read_reports(path, fmt=fmt, mapping=mapping,
                               require_impression=require_impression,
                               skip_empty_findings=skip_empty_findings)
    except ImportValidationError as exc:
        if display_name is None or not exc.file.startswith(str(path)):
            raise
        # An upload is read from a temporary copy: name the file the way the user knows it.
        shown = display_name + exc.file[len(str(path)):]
        raise ImportValidationError(shown, exc.row, exc.field, exc.problem) from None
    # Staged in short transactions, then published in one that also makes the duplicate check
    # (a concurrent import of the other format cannot slip in between): the file is visible
    # whole or not at all, and no transaction holds the database for long
    # (Store.import_reports_staged).
    try:
        staged = store.import_reports_staged(records, file=name, fmt=fmt, actor=actor,
                                             check_duplicates=not allow_duplicates,
                                             rows_read=records.rows,
                                             left_out=len(records.skipped))
    except ReportIdConflict as exc:
        raise ImportValidationError(name, records[exc.k].row, None, exc.problem) from None
    dups = staged.duplicates
    return ImportResult(file=name, format=fmt, rows=records.rows, imported=staged.imported,
                        skipped=staged.skipped, duplicates=len(dups),
                        empty_findings=len(records.skipped),
                        skipped_where=tuple(records.skipped),
                        duplicate_sources=tuple(sorted(set(dups.values()))))
