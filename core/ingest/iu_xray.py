"""IU X-ray / Open-i reports: the CSV with columns uid, MeSH, Problems, image, indication,
comparison, findings, impression (as in shared/data/iu_xray/reports.csv).

external_id = uid (required). author = the ``image`` exam header (e.g. "Xray Chest PA and
Lateral"), whitespace-normalised: the IU reports carry no radiologist name, and the header
wording is the closest stand-in for the dictating template. extra = {"mesh": [...],
"problems": [...]} split on ';'. "XXXX" de-identification marks are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from core.ingest.common import ReaderContext, ReportRecord, read_csv_table
from core.ingest.generic_csv import records_from_table, resolve_mapping

COLUMNS = {
    "external_id": ("uid",),
    "findings": ("findings",),
    "impression": ("impression",),
    "indication": ("indication",),
    "comparison": ("comparison",),
    "author": ("image",),
}
SIGNATURE = {"mesh", "problems", "image"}  # lower-cased header columns that identify the format


def _split_terms(value: str) -> list[str]:
    return [t.strip() for t in value.split(";") if t.strip()]


def read(path: Path, display: str, ctx: ReaderContext,
         mapping: Mapping[str, str] | None) -> list[ReportRecord]:
    """Read an IU X-ray reports CSV.

    Args:
        path: the CSV file.
        display: file name for messages.
        ctx: per-file settings.
        mapping: optional overrides of the column names (our field -> their column).
    Returns:
        Records in file order.
    Raises:
        ImportValidationError: structural problems, missing uid/findings/impression columns,
            empty findings or impression, duplicate uid.
    """
    resolved = resolve_mapping(mapping, display)
    table = read_csv_table(path, display)
    mesh_i = table.column(("MeSH",), required=False, what="mesh")
    prob_i = table.column(("Problems",), required=False, what="problems")

    def extra(cells: list[str], _used: set[int]) -> dict:
        out = {}
        if mesh_i is not None:
            out["mesh"] = _split_terms(cells[mesh_i])
        if prob_i is not None:
            out["problems"] = _split_terms(cells[prob_i])
        return out

    return records_from_table(table, ctx, resolved, columns=COLUMNS, id_required=True,
                              extra=extra)
