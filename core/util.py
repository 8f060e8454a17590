"""Small helpers shared by several packages: the clock, spreadsheet-safe CSV exports."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


def now() -> datetime:
    """The current time in UTC without a time zone, as the database's TIMESTAMP columns hold it.

    >>> now().tzinfo is None
    True
    """
    return datetime.now(timezone.utc).replace(tzinfo=None)


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): =, +, -, @, tab, CR.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A text cell that starts like a formula, prefixed with ``'`` so Excel/Sheets show it as text.

    >>> spreadsheet_safe("=HYPERLINK(\\"http://x\\")"), spreadsheet_safe("No acute disease."), spreadsheet_safe(-2)
    ('\\'=HYPERLINK("http://x")', 'No acute disease.', -2)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def safe_csv(frame, path: str | Path | None = None) -> str | None:
    """Write a DataFrame as CSV with every text cell :func:`spreadsheet_safe` (numbers untouched).

    Returns the CSV text when ``path`` is None, else writes the file and returns None.
    """
    from pandas.api.types import is_numeric_dtype  # deferred: heavy

    out = frame.copy()
    for col in out.columns:
        if not is_numeric_dtype(out[col]):
            out[col] = out[col].map(spreadsheet_safe)
    return out.to_csv(path, index=False) if path is not None else out.to_csv(index=False)
