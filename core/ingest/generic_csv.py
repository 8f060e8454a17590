"""Generic CSV reports: one report per row, columns found by name.

Default columns (matched case-insensitively, first present wins):
    external_id  external_id, uid, id, report_id, study_id   (absent: "sha1:" content hash)
    findings     findings                                    (required)
    impression   impression                                  (required when require_impression)
    indication   indication
    comparison   comparison
    author       author, reader, radiologist
``mapping`` maps our field name to the file's column name, e.g. {"findings": "FINDINGS_TEXT"};
"id" and "uid" are accepted as spellings of "external_id". A mapped column must exist.
Every other non-empty cell ends up in ``extra`` under its column name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from core.errors import ImportValidationError
from core.ingest.common import CsvTable, ReaderContext, ReportRecord, check_unique, read_csv_table

FIELDS = ("external_id", "findings", "impression", "indication", "comparison", "author")
FIELD_ALIASES = {"id": "external_id", "uid": "external_id"}

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "external_id": ("external_id", "uid", "id", "report_id", "study_id"),
    "findings": ("findings",),
    "impression": ("impression",),
    "indication": ("indication",),
    "comparison": ("comparison",),
    "author": ("author", "reader", "radiologist"),
}


def resolve_mapping(mapping: Mapping[str, str] | None, display: str) -> dict[str, str]:
    """Check a user's field -> column mapping and canonicalise its keys.

    Args:
        mapping: our field name -> their column name, or None.
        display: file name for error messages.
    Returns:
        {our canonical field: their column}.
    Raises:
        ImportValidationError: unknown field name or empty column name (field = that key).
    """
    out: dict[str, str] = {}
    for key, column in (mapping or {}).items():
        name = FIELD_ALIASES.get(key, key)
        if name not in FIELDS:
            raise ImportValidationError(
                display, None, key,
                f"unknown field '{key}' in the column mapping; known fields: {', '.join(FIELDS)}")
        if not isinstance(column, str) or not column.strip():
            raise ImportValidationError(display, None, key,
                                        f"mapping gives no column name for '{key}'")
        out[name] = column.strip()
    return out


ExtraBuilder = Callable[[list[str], set[int]], dict]


def records_from_table(table: CsvTable, ctx: ReaderContext, mapping: dict[str, str],
                       columns: Mapping[str, Sequence[str]] = DEFAULT_COLUMNS,
                       id_required: bool = False,
                       extra: ExtraBuilder | None = None) -> list[ReportRecord]:
    """Turn validated CSV rows into records (all rows checked before returning).

    Args:
        table: parsed CSV.
        ctx: per-file settings.
        mapping: canonical mapping from ``resolve_mapping``.
        columns: default column names per field.
        id_required: the id column must exist (IU X-ray).
        extra: builds ``extra`` from (cells, indices of used columns); default: every other
            non-empty column by name.
    Returns:
        Records in file order.
    Raises:
        ImportValidationError: missing columns, empty findings/impression/id, duplicate ids.
    """
    idx: dict[str, int | None] = {}
    for name in FIELDS:
        names = (mapping[name],) if name in mapping else tuple(columns.get(name, ()))
        required = (name in mapping or name == "findings"
                    or (name == "impression" and ctx.require_impression)
                    or (name == "external_id" and id_required))
        idx[name] = table.column(names, required=required, what=name) if names else None

    header = table.header
    used = {i for i in idx.values() if i is not None}
    build_extra = extra or _other_columns(header, used)
    id_i = idx["external_id"]
    id_field = header[id_i] if id_i is not None else "id"

    def cell(cells: list[str], name: str) -> str | None:
        i = idx[name]
        return None if i is None else cells[i]

    records: list[ReportRecord] = []
    for row, cells in table.rows:
        rec = ctx.make(
            row=row, external_id=cell(cells, "external_id"),
            findings=cell(cells, "findings"), impression=cell(cells, "impression"),
            indication=cell(cells, "indication"), comparison=cell(cells, "comparison"),
            author=cell(cells, "author"), extra=build_extra(cells, used),
            findings_field=header[idx["findings"]],
            impression_field=header[idx["impression"]] if idx["impression"] is not None
            else "impression",
            id_field=id_field)
        if rec is not None:
            records.append(rec)
    check_unique(records, ctx.display, id_field, hashed=id_i is None)
    return records


def _other_columns(header: list[str], used: set[int]) -> ExtraBuilder:
    keep = [(i, h) for i, h in enumerate(header) if i not in used and h]

    def build(cells: list[str], _used: set[int]) -> dict:
        return {h: cells[i].strip() for i, h in keep if cells[i].strip()}

    return build


def read(path: Path, display: str, ctx: ReaderContext,
         mapping: Mapping[str, str] | None) -> list[ReportRecord]:
    """Read a generic CSV file (see the module docstring for the columns).

    Args:
        path: the CSV file.
        display: file name for messages.
        ctx: per-file settings.
        mapping: our field -> their column, or None.
    Returns:
        Records in file order.
    Raises:
        ImportValidationError: see ``read_csv_table`` and ``records_from_table``.
    """
    resolved = resolve_mapping(mapping, display)
    table = read_csv_table(path, display)
    return records_from_table(table, ctx, resolved)
