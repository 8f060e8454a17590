"""JSON Lines reports (.jsonl / .ndjson): one JSON object per line, blank lines ignored.

Keys are found like generic CSV columns (case-insensitive; see ``generic_csv``): external_id /
uid / id / report_id / study_id, findings, impression, indication, comparison, author / reader /
radiologist; ``mapping`` maps our field name to the file's key. Text values must be strings
(null counts as empty); ids may be strings or integers. Remaining keys go to ``extra``.
``row`` is the 1-based line number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from core.errors import ImportValidationError
from core.ingest.common import ReaderContext, ReportRecord, check_unique, read_text
from core.ingest.generic_csv import DEFAULT_COLUMNS, FIELDS, resolve_mapping


def _lookup(obj: dict[str, Any], lowered: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in obj:
            return n
        key = lowered.get(n.lower())
        if key is not None:
            return key
    return None


def _parse(line: str, lineno: int, display: str) -> dict[str, Any]:
    """One line's JSON object."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ImportValidationError(
            display, lineno, None,
            f"invalid JSON at column {exc.colno} ({exc.msg}); a truncated last line or a "
            "line break inside a value causes this") from None
    if not isinstance(obj, dict):
        raise ImportValidationError(display, lineno, None,
                                    f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _keys(obj: dict[str, Any], lineno: int, display: str, names: dict[str, tuple[str, ...]],
          required: set[str]) -> dict[str, str | None]:
    """Our field -> the object's key for it (None when absent); a required one must be there."""
    lowered = {k.lower(): k for k in obj}
    keys: dict[str, str | None] = {f: _lookup(obj, lowered, names[f]) for f in FIELDS}
    for f in FIELDS:
        if f in required and keys[f] is None:
            raise ImportValidationError(
                display, lineno, names[f][0],
                f"missing key '{names[f][0]}' for {f} (keys on this line: "
                f"{', '.join(obj) or 'none'})")
    return keys


def _values(obj: dict[str, Any], keys: dict[str, str | None], lineno: int,
            display: str) -> dict[str, str | None]:
    """Our field -> its text (None when absent or null); strings only, or an integer id."""
    values: dict[str, str | None] = {}
    for f in FIELDS:
        k = keys[f]
        v = None if k is None else obj[k]
        if isinstance(v, bool) or not (v is None or isinstance(v, str)
                                       or (f == "external_id" and isinstance(v, int))):
            raise ImportValidationError(
                display, lineno, k,
                f"expected {'a string or integer' if f == 'external_id' else 'a string'}, "
                f"got {type(v).__name__}")
        values[f] = None if v is None else str(v)
    if keys["external_id"] is not None and values["external_id"] is None:
        values["external_id"] = ""  # present but null: reported as an empty id
    return values


def read(path: Path, display: str, ctx: ReaderContext,
         mapping: Mapping[str, str] | None) -> list[ReportRecord]:
    """Read a JSON Lines file of reports.

    Args:
        path: the .jsonl file.
        display: file name for messages.
        ctx: per-file settings.
        mapping: our field -> their key, or None.
    Returns:
        Records in file order.
    Raises:
        ImportValidationError: not UTF-8, invalid JSON on a line (e.g. a truncated last line),
            a line that is not an object, a missing required key, a non-string value, empty
            findings/impression, duplicate ids, or no data lines.
    """
    resolved = resolve_mapping(mapping, display)
    text = read_text(path, display)
    names = {f: (resolved[f],) if f in resolved else DEFAULT_COLUMNS[f] for f in FIELDS}
    required = {f for f in FIELDS if f in resolved or f == "findings"
                or (f == "impression" and ctx.require_impression)}
    records: list[ReportRecord] = []
    saw_data = False
    first_line: dict[bool, int] = {}  # has an id? -> first line number
    id_key: str | None = None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        saw_data = True
        obj = _parse(line, lineno, display)
        keys = _keys(obj, lineno, display, names, required)
        values = _values(obj, keys, lineno, display)
        first_line.setdefault(keys["external_id"] is not None, lineno)
        id_key = id_key or keys["external_id"]
        used = {k for k in keys.values() if k is not None}
        extra = {k: v for k, v in obj.items() if k not in used and v not in (None, "")}
        rec = ctx.make(
            row=lineno, external_id=values["external_id"], findings=values["findings"],
            impression=values["impression"], indication=values["indication"],
            comparison=values["comparison"], author=values["author"], extra=extra,
            findings_field=keys["findings"] or "findings",
            impression_field=keys["impression"] or "impression",
            id_field=keys["external_id"] or "id")
        if rec is not None:
            records.append(rec)
    if not saw_data:
        raise ImportValidationError(display, None, None, "no data rows (the file is empty)")
    if len(first_line) == 2:
        raise ImportValidationError(
            display, first_line[False], names["external_id"][0],
            f"this line has no id but line {first_line[True]} has one; give every line an id "
            "or none")
    check_unique(records, display, id_key or "id", hashed=id_key is None)
    return records
