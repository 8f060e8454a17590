"""Report importers: read radiology reports from files into validated ``ReportRecord`` objects.

Formats (``FORMATS``):
    iu-xray        IU X-ray / Open-i CSV (uid, MeSH, Problems, image, indication, comparison,
                   findings, impression)                                   -> iu_xray.py
    mimic-cxr      MIMIC-CXR free-text .txt report, or a folder of them    -> mimic_cxr.py
    chexpert-plus  CheXpert Plus CSV (path_to_image, section_findings, ...) -> chexpert_plus.py
    csv            generic CSV, columns by name or ``mapping``             -> generic_csv.py
    jsonl          JSON Lines (.jsonl / .ndjson), keys by name or mapping  -> jsonl.py

``read_reports`` validates the whole file before returning anything (the caller inserts the
records in one transaction) and raises ``ImportValidationError`` naming the file, row and field
of the first problem. Text is whitespace-normalised (runs of whitespace and control characters
become one space); de-identification marks ("XXXX", "___") are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from core.errors import ImportValidationError
from core.ingest import chexpert_plus, generic_csv, iu_xray, jsonl, mimic_cxr
from core.ingest.common import ImportedReports, ReaderContext, csv_header

__all__ = ["FORMATS", "detect_format", "read_reports"]

FORMATS = ("auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl")

_CSV_EXT = {".csv"}
_JSONL_EXT = {".jsonl", ".ndjson"}
_TXT_EXT = {".txt"}


def detect_format(path: str | Path) -> str:
    """Tell a report file's format from its extension and, for CSV, its header columns.

    A folder or a .txt file is mimic-cxr; a .jsonl/.ndjson file is jsonl; a .csv file whose
    header has MeSH, Problems and image is iu-xray, one with section_findings is chexpert-plus,
    any other .csv is csv.

    Args:
        path: file or folder.
    Returns:
        One of FORMATS other than "auto".
    Raises:
        ImportValidationError: the path does not exist or the format cannot be told (the
            message names the file and says to pass the format explicitly).
    """
    p = Path(path)
    display = str(path)
    if p.is_dir():
        return "mimic-cxr"
    if not p.exists():
        raise ImportValidationError(display, None, None, "file not found")
    ext = p.suffix.lower()
    if ext in _TXT_EXT:
        return "mimic-cxr"
    if ext in _JSONL_EXT:
        return "jsonl"
    if ext in _CSV_EXT:
        cols = set(csv_header(p))
        if iu_xray.SIGNATURE <= cols:
            return "iu-xray"
        if chexpert_plus.SIGNATURE in cols:
            return "chexpert-plus"
        return "csv"
    raise ImportValidationError(
        display, None, None,
        f"cannot tell the report format from the extension '{p.suffix or '(none)'}' (known: "
        ".csv, .jsonl, .ndjson, .txt, or a folder of .txt reports); pass the format explicitly "
        f"(one of {', '.join(FORMATS[1:])})")


def read_reports(path: str | Path, fmt: str = "auto", mapping: Mapping[str, str] | None = None,
                 require_impression: bool = True, source: str | None = None,
                 skip_empty_findings: bool = False) -> ImportedReports:
    """Read and validate every report in a file (or a folder of MIMIC-CXR .txt reports).

    Args:
        path: the file or folder.
        fmt: one of FORMATS; "auto" uses ``detect_format``.
        mapping: our field name -> the file's column/key name for csv, jsonl, iu-xray and
            chexpert-plus (fields: external_id (or id/uid), findings, impression, indication,
            comparison, author). Not accepted for mimic-cxr.
        require_impression: an empty or missing impression is an error (else impression=None).
        source: value of ``ReportRecord.source``; default the format name.
        skip_empty_findings: leave out reports with empty findings instead of raising; their
            rows (or MIMIC file paths) are listed in the result's ``skipped`` attribute. Default
            False: empty findings are an error in every format (about a third of MIMIC-CXR
            reports and many CheXpert Plus rows have none; the CLI's --skip-empty-findings).
    Returns:
        An ``ImportedReports`` list of ``ReportRecord`` in file order, with ``.format``,
        ``.skipped`` and ``.rows``.
    Raises:
        ImportValidationError: the first problem found, naming file, row and field.
    """
    display = str(path)
    p = Path(path)
    if fmt not in FORMATS:
        raise ImportValidationError(display, None, "format",
                                    f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(p)
    elif not p.exists():
        raise ImportValidationError(display, None, None, "file not found")
    ctx = ReaderContext(display, source or fmt, require_impression, skip_empty_findings)
    if fmt == "mimic-cxr":
        if mapping:
            raise ImportValidationError(display, None, "mapping",
                                        "a column mapping does not apply to mimic-cxr reports")
        records = mimic_cxr.read(p, display, ctx)
    else:
        if p.is_dir():
            raise ImportValidationError(display, None, None,
                                        f"is a folder; format '{fmt}' needs a file")
        reader = {"iu-xray": iu_xray.read, "chexpert-plus": chexpert_plus.read,
                  "csv": generic_csv.read, "jsonl": jsonl.read}[fmt]
        records = reader(p, display, ctx, mapping)
    return ImportedReports(records, format=fmt, skipped=ctx.skipped, rows=ctx.rows)
