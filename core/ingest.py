"""Import report files into the store: validate the whole file first, then one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.store import Store


@dataclass(frozen=True)
class ImportResult:
    file: str
    format: str
    rows: int
    imported: int
    skipped: int

    def summary(self) -> str:
        return (f"{self.file}: {self.imported:,} reports imported, {self.skipped:,} skipped as "
                f"duplicates ({self.rows:,} rows, format {self.format})")


def import_file(store: Store, path: str | Path, fmt: str = "auto",
                mapping: dict[str, str] | None = None, require_impression: bool = True,
                actor: str | None = None, display_name: str | None = None) -> ImportResult:
    """Validate ``path`` completely, then insert its reports in one transaction.

    Raises:
        core.importers.ImportValidationError: naming file, row and field; nothing is written.
    """
    from core.importers import ImportValidationError, detect_format, read_reports

    name = display_name or str(path)
    try:
        fmt = detect_format(path) if fmt == "auto" else fmt
        records = read_reports(path, fmt=fmt, mapping=mapping, require_impression=require_impression)
    except ImportValidationError as exc:
        if display_name is None or exc.file != str(path):
            raise
        # An upload is read from a temporary copy: name the file the way the user knows it.
        raise ImportValidationError(display_name, exc.row, exc.field, exc.problem) from None
    imported, skipped = store.import_reports(records, file=name, fmt=fmt, actor=actor)
    return ImportResult(file=name, format=fmt, rows=len(records), imported=imported,
                        skipped=skipped)
