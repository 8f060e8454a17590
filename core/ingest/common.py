"""Shared pieces of the report importers: the record type, the error type, text decoding,
whitespace normalisation, a validating CSV table reader and the record checks every format uses.

Nothing here imports pandas or any heavy library; the CSV reader is the standard ``csv`` module
(2,809 IU X-ray rows take a few milliseconds).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from core.errors import ImportValidationError

__all__ = [
    "ReportRecord", "ImportedReports", "normalize_text",
    "content_id", "read_text", "read_csv_table", "csv_header", "CsvTable", "ReaderContext",
    "SKIP_EMPTY_FINDINGS_HINT", "ALLOW_MISSING_IMPRESSION_HINT",
]

# What a user can do about a refused report, named as the CLI flags and the Admin page's
# checkboxes (never as Python parameters: people read these messages, not programmers).
SKIP_EMPTY_FINDINGS_HINT = (
    "re-run with --skip-empty-findings (Admin page: tick 'Skip reports without findings') to "
    "leave such reports out and count them")
ALLOW_MISSING_IMPRESSION_HINT = (
    "re-run with --allow-missing-impression (Admin page: tick 'Accept reports without an "
    "impression') to import them without one")


# -- public types --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportRecord:
    """One radiology report read from a file, validated and whitespace-normalised."""

    source: str
    external_id: str
    findings: str
    impression: str | None
    indication: str | None = None
    comparison: str | None = None
    author: str | None = None
    row: int | None = None
    extra: dict = field(default_factory=dict)


class ImportedReports(list):
    """The list ``read_reports`` returns: ``ReportRecord`` items plus what was left out.

    Attributes:
        format: the format that was read (after auto-detection).
        skipped: rows (int) or report files (str) left out because their findings were empty
            and ``skip_empty_findings=True``; empty otherwise.
        rows: data rows (CSV, JSONL) or report files (MIMIC-CXR) read, skipped ones included;
            CheXpert Plus has one row per image, so it can exceed the number of records.
    """

    def __init__(self, records: Iterable[ReportRecord] = (), format: str = "",
                 skipped: Sequence[int | str] = (), rows: int | None = None):
        super().__init__(records)
        self.format = format
        self.skipped = list(skipped)
        self.rows = len(self) + len(self.skipped) if rows is None else rows


# -- text helpers --------------------------------------------------------------------------------
# C0/C1 control characters (Unicode category Cc) become spaces; str.split() then collapses them
# together with every other kind of whitespace (\t \n \r \x1c-\x1f \x85 \u2028 NBSP ...).
_CONTROL_TO_SPACE = {c: " " for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}


def normalize_text(value: str | None) -> str:
    """Collapse all whitespace and control characters to single spaces and strip the ends.

    Args:
        value: raw cell text (None is treated as empty).
    Returns:
        The normalised text; "" when nothing but whitespace was given. De-identification marks
        such as "XXXX" or "___" are kept as they are.
    """
    if not value:
        return ""
    return " ".join(value.translate(_CONTROL_TO_SPACE).split())


def content_id(findings: str, impression: str | None) -> str:
    """Stable id for a report that has no id of its own: ``sha1:`` + hex of findings+impression.

    Args:
        findings: normalised findings text.
        impression: normalised impression text or None.
    Returns:
        "sha1:<40 hex digits>".
    """
    digest = hashlib.sha1(f"{findings}\n{impression or ''}".encode("utf-8")).hexdigest()
    return f"sha1:{digest}"


def _guess_encoding(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return " It looks like UTF-16 (Excel 'Unicode Text');"
    try:
        data.decode("cp1252")
        return " It looks like Windows-1252/Latin-1;"
    except UnicodeDecodeError:
        return ""


def read_text(path: Path, display: str, csv_header: bool = False) -> str:
    """Read a whole file as UTF-8 (a leading UTF-8 BOM is dropped).

    Args:
        path: file to read.
        display: how the file is named in error messages.
        csv_header: when True and the bytes are not UTF-8, the CSV is parsed leniently to name
            the row (line where the record starts) and column of the first bad byte.
    Returns:
        The decoded text.
    Raises:
        ImportValidationError: unreadable file or bytes that are not UTF-8 (the message gives the
            byte offset, row and, for CSV, the column, and says to re-save as UTF-8).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImportValidationError(display, None, None, "file not found") from None
    except IsADirectoryError:
        raise ImportValidationError(display, None, None, "is a folder, not a file") from None
    except OSError as exc:
        raise ImportValidationError(display, None, None,
                                    f"cannot read file ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        bad = data[offset]
        row = data.count(b"\n", 0, offset) + 1
        column = None
        if csv_header:
            row, column = _locate_bad_cell(data, row)
        raise ImportValidationError(
            display, row, column,
            f"not valid UTF-8 (byte 0x{bad:02x} at byte offset {offset}).{_guess_encoding(data)}"
            " re-save the file as UTF-8 (e.g. Excel: Save As > 'CSV UTF-8')") from None


def _locate_bad_cell(data: bytes, fallback_row: int) -> tuple[int, str | None]:
    """Spreadsheet row and column name of the first cell with a non-UTF-8 byte."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        for row, cells in enumerate(reader, start=1):
            in_header = header is None
            if in_header and cells and any(c.strip() for c in cells):
                header = [c.strip() for c in cells]
            for i, cell in enumerate(cells):
                if any("\udc80" <= ch <= "\udcff" for ch in cell):
                    if in_header or header is None:
                        return row, None  # a bad byte in the header itself
                    name = header[i] if i < len(header) else f"column {i + 1}"
                    return row, name
    except csv.Error:
        pass
    return fallback_row, None


# -- CSV -----------------------------------------------------------------------------------------
@dataclass
class CsvTable:
    """A parsed CSV: stripped header names, and (spreadsheet row, cells) for every non-blank
    row. Rows are numbered as a spreadsheet shows them: every record is one row, however many
    lines its quoted cells span, blank ones included (the header is row 1 unless blank lines
    come before it)."""

    display: str
    header: list[str]
    rows: list[tuple[int, list[str]]]
    header_row: int = 1

    @staticmethod
    def cell(cells: list[str], index: int | None) -> str:
        """A row's cell at a column index, stripped ("" when the column is absent)."""
        return cells[index].strip() if index is not None else ""

    def column(self, names: Sequence[str], *, required: bool, what: str) -> int | None:
        """Index of the first of ``names`` present in the header (case-insensitive).

        Args:
            names: candidate column names, preferred first.
            required: raise when none is present.
            what: our field name, for the error message.
        Returns:
            The 0-based column index, or None when absent and not required.
        Raises:
            ImportValidationError: required and missing (row None, field = the column name), or
                the column appears twice in the header.
        """
        lowered = [h.lower() for h in self.header]
        for name in names:
            hits = [i for i, h in enumerate(lowered) if h == name.lower()]
            if len(hits) > 1:
                raise ImportValidationError(
                    self.display, self.header_row, self.header[hits[0]],
                    f"column appears {len(hits)} times in the header (columns "
                    f"{', '.join(str(i + 1) for i in hits)}); rename all but one")
            if hits:
                return hits[0]
        if required:
            wanted = " or ".join(f"'{n}'" for n in names)
            hint = ""
            if len(self.header) == 1 and (sep := next((c for c in ";\t|" if c in self.header[0]), None)):
                hint = (f"; the file looks {({';': 'semicolon', '|': 'pipe'}.get(sep, 'tab'))}-"
                        "separated: save it as comma-separated CSV (spreadsheet: Save As, "
                        "'CSV UTF-8 (comma delimited)')")
            elif what == "impression":
                hint = f"; {ALLOW_MISSING_IMPRESSION_HINT}"
            raise ImportValidationError(
                self.display, None, names[0],
                f"missing required column {wanted} for {what} (header has: "
                f"{', '.join(self.header) or 'nothing'}){hint}")
        return None


def csv_delimiter(text: str) -> str:
    """The field separator: ``,`` unless the header (the first non-blank line) has no comma but
    semicolons or tabs, as a spreadsheet in many European locales saves "CSV".

    >>> csv_delimiter("uid;findings;impression\\n1;Clear, no effusion.;Normal.\\n")
    ';'
    """
    line = next((x for x in text.splitlines() if x.strip()), "")
    if "," in line:
        return ","
    return next((d for d in (";", "\t") if d in line), ",")


def csv_header(path: Path) -> list[str]:
    """The lower-cased header of a CSV, read leniently from its first 64 KiB (to tell a format
    from its columns); [] when the file cannot be read or parsed."""
    try:
        with path.open("rb") as fh:
            head = fh.read(65536)
        text = head.decode("utf-8-sig", errors="replace")
        for cells in csv.reader(io.StringIO(text, newline=""), delimiter=csv_delimiter(text)):
            if cells and any(c.strip() for c in cells):
                return [c.strip().lower() for c in cells]
    except (OSError, csv.Error):
        pass
    return []


def read_csv_table(path: Path, display: str) -> CsvTable:
    """Read and structurally validate a comma-separated file with a header row (semicolons or
    tabs are read as the separator when the header has no comma: :func:`csv_delimiter`).

    Checks: UTF-8 (BOM accepted), a header, quoting (an unterminated quoted field, e.g. a file cut
    off mid-cell, or text after a closing quote), the same number of fields in every row as in
    the header (too few usually means a truncated file), and at least one data row. Blank lines
    and rows whose cells are all blank are ignored.

    Args:
        path: CSV file.
        display: how the file is named in error messages.
    Returns:
        The table; rows are numbered as a spreadsheet shows them (header = row 1, first data
        row = row 2, a quoted cell spanning several lines does not shift the count).
    Raises:
        ImportValidationError: naming the row and, where it can be told, the field.
    """
    text = read_text(path, display, csv_header=True)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=csv_delimiter(text), strict=True)
    header: list[str] | None = None
    header_row = 1
    rows: list[tuple[int, list[str]]] = []
    row = 0            # spreadsheet row of the last complete record
    start_line = 1     # physical line on which the next record starts (to locate a bad quote)
    try:
        for cells in reader:
            row += 1
            if header is None:
                if cells and any(c.strip() for c in cells):
                    header = [c.strip() for c in cells]
                    header_row = row
            elif cells and any(c.strip() for c in cells):
                if len(cells) != len(header):
                    _raise_field_count(display, header, cells, row)
                rows.append((row, cells))
            start_line = reader.line_num + 1
    except csv.Error as exc:
        _raise_csv_error(display, text, header, start_line, row + 1, exc)
    if header is None:
        raise ImportValidationError(display, None, None, "the file is empty (no header row)")
    if not rows:
        raise ImportValidationError(display, None, None,
                                    f"no data rows (only the header, row {header_row})")
    return CsvTable(display, header, rows, header_row)


def _raise_field_count(display: str, header: list[str], cells: list[str], row: int) -> None:
    n, want = len(cells), len(header)
    if n < want:
        missing = header[n]
        raise ImportValidationError(
            display, row, missing,
            f"row has {n} field{'' if n == 1 else 's'} but the header has {want} (fields from "
            f"'{missing}' on are missing); the file looks truncated or a line break splits the "
            "row")
    raise ImportValidationError(
        display, row, None,
        f"row has {n} fields but the header has {want}; a cell probably contains an unquoted "
        "comma (quote cells that contain commas)")


def _raise_csv_error(display: str, text: str, header: list[str] | None, start_line: int,
                     row: int, exc: csv.Error) -> None:
    """Turn a strict-mode csv.Error into an ImportValidationError naming row and field.

    ``start_line`` is the physical line where the broken record starts (to find the field),
    ``row`` its spreadsheet row (for the message)."""
    message = str(exc)
    column = None
    lines = io.StringIO(text, newline="").readlines()
    offset = sum(len(line) for line in lines[:start_line - 1])
    index = _broken_field_index(text, offset)
    if header is not None and index is not None:
        column = header[index] if index < len(header) else f"column {index + 1}"
    if "unexpected end of data" in message:
        problem = ("unterminated quoted field: a '\"' opens on this row and is never closed "
                   "before the end of the file (truncated file or stray quote)")
    elif "field larger than field limit" in message:
        problem = ("a cell runs past 131,072 characters, almost certainly an unclosed '\"' "
                   "swallowing the rest of the file")
    elif "expected after" in message:
        problem = (f"malformed quoting ({message}): text follows a closing quote; double a '\"' "
                   "inside a quoted cell")
    else:
        problem = f"malformed CSV ({message})"
    raise ImportValidationError(display, row, column, problem) from None


def _broken_field_index(text: str, pos: int) -> int | None:
    """0-based index of the field whose quoting is broken in the record starting at ``pos``.

    A quote opens a quoted field only at the start of a field (as in the csv module); returns
    the field in which a closing quote is followed by other text, or whose quote never closes.
    """
    n = len(text)
    field_no, in_quotes, at_start = 0, False, True
    while pos < n:
        c = text[pos]
        if in_quotes:
            if c == '"':
                if pos + 1 < n and text[pos + 1] == '"':
                    pos += 2
                    continue
                in_quotes = False
                pos += 1
                if pos < n and text[pos] not in ",\r\n":
                    return field_no
                continue
        elif c == '"' and at_start:
            in_quotes = True
        elif c == ",":
            field_no += 1
            at_start = True
            pos += 1
            continue
        elif c in "\r\n":
            return None
        at_start = False
        pos += 1
    return field_no if in_quotes else None


# -- record checks shared by every format --------------------------------------------------------
class ReaderContext:
    """Per-file settings and the checks that turn raw values into a ReportRecord."""

    def __init__(self, display: str, source: str, require_impression: bool,
                 skip_empty_findings: bool):
        self.display = display
        self.source = source
        self.require_impression = require_impression
        self.skip_empty_findings = skip_empty_findings
        self.skipped: list[int | str] = []
        self.rows = 0  # rows (or files) seen by make(), skipped ones included

    def make(self, *, row: int | None, external_id: str | None, findings: str | None,
             impression: str | None, indication: str | None = None,
             comparison: str | None = None, author: str | None = None,
             extra: dict | None = None, display: str | None = None,
             findings_field: str = "findings", impression_field: str = "impression",
             id_field: str = "id", skip_key: int | str | None = None) -> ReportRecord | None:
        """Normalise and validate one report.

        Args:
            row: row number for the record and for error messages (None for whole files).
            external_id: raw id, or None to derive ``sha1:`` from the content.
            findings, impression, indication, comparison, author: raw texts.
            extra: format-specific metadata (must be JSON-serialisable).
            display: file name for messages when it differs from the context's (MIMIC folders).
            findings_field, impression_field, id_field: names used in messages (their columns).
            skip_key: what to record in ``skipped`` when the row is skipped (default: row).
        Returns:
            The record, or None when findings are empty and ``skip_empty_findings`` is set.
        Raises:
            ImportValidationError: empty findings, empty impression when required, empty id.
        """
        self.rows += 1
        where = display or self.display
        for name, value in ((findings_field, findings), (impression_field, impression),
                            ("indication", indication), ("comparison", comparison),
                            ("author", author), (id_field, external_id)):
            _check_encodable(value, where, row, name)
        f = normalize_text(findings)
        if not f:
            if self.skip_empty_findings:
                self.skipped.append(row if skip_key is None else skip_key)
                return None
            raise ImportValidationError(
                where, row, findings_field,
                f"empty findings (every report needs findings); {SKIP_EMPTY_FINDINGS_HINT}")
        imp = normalize_text(impression) or None
        if imp is None and self.require_impression:
            raise ImportValidationError(
                where, row, impression_field,
                f"empty impression; {ALLOW_MISSING_IMPRESSION_HINT}")
        if external_id is None:
            ext = content_id(f, imp)
        else:
            ext = normalize_text(external_id)
            if not ext:
                raise ImportValidationError(where, row, id_field, "empty id")
        return ReportRecord(
            source=self.source, external_id=ext, findings=f, impression=imp,
            indication=normalize_text(indication) or None,
            comparison=normalize_text(comparison) or None,
            author=normalize_text(author) or None, row=row, extra=extra or {})


def _check_encodable(value: str | None, display: str, row: int | None, field: str) -> None:
    """Refuse text that cannot be stored as UTF-8: lone surrogates (JSON "\\udc80" escapes)."""
    if not value:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ImportValidationError(
            display, row, field,
            f"invalid character {value[exc.start]!r} at position {exc.start} (a lone UTF-16 "
            "surrogate, e.g. a broken \\u escape in JSON); fix or remove it") from None


def check_unique(records: Sequence[ReportRecord], display: str, id_field: str,
                 hashed: bool = False) -> None:
    """Raise when two records share an external_id, naming both rows.

    Args:
        records: records of one file.
        display: file name for the message.
        id_field: the id column, for the message.
        hashed: ids are content hashes (the file has no id column).
    Raises:
        ImportValidationError: on the first repeated id (row = the later row).
    """
    seen: dict[str, int | None] = {}
    for rec in records:
        if rec.external_id in seen:
            first = seen[rec.external_id]
            if hashed:
                raise ImportValidationError(
                    display, rec.row, "findings",
                    f"rows {first} and {rec.row} have identical findings and impression and the "
                    "file has no id column; add an id column or remove the duplicate")
            raise ImportValidationError(
                display, rec.row, id_field,
                f"duplicate id '{rec.external_id}' (rows {first} and {rec.row})")
        seen[rec.external_id] = rec.row

