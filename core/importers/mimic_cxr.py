"""MIMIC-CXR free-text reports: one .txt file per study (files/p10/p10000032/s50414267.txt), or a
folder of them, read recursively in sorted order of their relative paths (names starting with
'.' are ignored).

Sections are found by headers at the start of a line, case-insensitively, followed by ':':
    findings    FINDINGS, FINDING
    impression  IMPRESSION, IMPRESSIONS, CONCLUSION, CONCLUSIONS
    indication  INDICATION(S), CLINICAL INDICATION, CLINICAL HISTORY, HISTORY,
                REASON FOR EXAM, REASON FOR EXAMINATION, REASON FOR STUDY  (first present wins)
    comparison  COMPARISON, COMPARISONS
    extra       EXAMINATION, TECHNIQUE  (stored in extra["examination"], extra["technique"])
A section runs until the next header: any ALLCAPS words followed by ':' at the start of a line
(e.g. NOTIFICATION:, RECOMMENDATION(S):, WET READ:), or one of the names above in any case.
Anatomic sub-headings that radiologists use inside FINDINGS (LUNGS:, HEART:, PLEURA:, BONES:,
LINES AND TUBES: ...) do not end a section; they stay in its text. Text before the first header
("FINAL REPORT") is ignored, a section that appears twice is joined with a space, and "___"
de-identification marks are kept.

external_id = the file stem (s50414267.txt -> "s50414267"); row = None; extra["path"] = the
path relative to the folder given (or the file name), extra["patient"] = the parent folder when
it looks like a MIMIC patient folder ("p10000032").
"""

from __future__ import annotations

import re
from pathlib import Path

from core.importers.common import (
    ImportValidationError, ReaderContext, ReportRecord, normalize_text, read_text,
)

SECTION_ALIASES: dict[str, str] = {
    "FINDINGS": "findings", "FINDING": "findings",
    "IMPRESSION": "impression", "IMPRESSIONS": "impression",
    "CONCLUSION": "impression", "CONCLUSIONS": "impression",
    "INDICATION": "indication", "INDICATIONS": "indication",
    "CLINICAL INDICATION": "indication", "CLINICAL HISTORY": "indication",
    "HISTORY": "indication", "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication", "REASON FOR STUDY": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison",
    "EXAMINATION": "examination", "TECHNIQUE": "technique",
}
# Preference among the indication-like headers when several are present.
INDICATION_ORDER = ("INDICATION", "INDICATIONS", "CLINICAL INDICATION", "CLINICAL HISTORY",
                    "HISTORY", "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY")
SUBHEADINGS = frozenset({
    "LUNGS", "LUNG", "HEART", "PLEURA", "PLEURAL SPACES", "MEDIASTINUM", "HILA", "AIRWAYS",
    "BONES", "OSSEOUS STRUCTURES", "SOFT TISSUES", "UPPER ABDOMEN", "ABDOMEN", "CARDIAC",
    "CARDIOMEDIASTINAL", "LINES", "TUBES", "LINES AND TUBES", "TUBES AND LINES",
    "LINES/TUBES", "TUBES/LINES", "SUPPORT DEVICES", "DEVICES", "VASCULATURE",
})

_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9 \t/&()\-]{0,48}?)[ \t]*:", re.M)
_PATIENT = re.compile(r"^p\d+$")


def _is_header(raw: str) -> str | None:
    name = " ".join(raw.split()).upper()
    if name in SUBHEADINGS:
        return None
    if name in SECTION_ALIASES:
        return name
    letters = sum(ch.isalpha() for ch in raw)
    if letters >= 2 and raw == raw.upper():
        return name
    return None


def parse_sections(text: str) -> dict[str, str]:
    """Split a free-text report into its sections.

    Args:
        text: the whole report.
    Returns:
        {upper-cased header name: whitespace-normalised text}, in order of appearance; a header
        that appears twice has its texts joined with a space.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    heads = [(name, m.start(), m.end()) for m in _HEADER.finditer(text)
             if (name := _is_header(m.group(1))) is not None]
    sections: dict[str, str] = {}
    for i, (name, _, end) in enumerate(heads):
        stop = heads[i + 1][1] if i + 1 < len(heads) else len(text)
        body = normalize_text(text[end:stop])
        if name in sections:
            sections[name] = f"{sections[name]} {body}".strip()
        else:
            sections[name] = body
    return sections


def _pick(sections: dict[str, str], field: str) -> str | None:
    names = INDICATION_ORDER if field == "indication" else [
        n for n, f in SECTION_ALIASES.items() if f == field]
    texts = [sections[n] for n in names if sections.get(n)]
    if field == "indication":
        return texts[0] if texts else None
    return " ".join(texts) or None


def list_report_files(root: Path, display: str) -> list[Path]:
    """All .txt files under a folder, recursively, sorted by relative path.

    Args:
        root: the folder.
        display: folder name for messages.
    Returns:
        The files (hidden names starting with '.' are left out).
    Raises:
        ImportValidationError: when there is no .txt file.
    """
    files = [p for p in root.rglob("*")
             if p.suffix.lower() == ".txt" and not p.name.startswith(".") and p.is_file()]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ImportValidationError(display, None, None, "no .txt report files in this folder")
    return files


def read(path: Path, display: str, ctx: ReaderContext) -> list[ReportRecord]:
    """Read one MIMIC-CXR report file or a folder of them.

    Args:
        path: a .txt file or a folder.
        display: the path as the user gave it, for messages.
        ctx: per-file settings.
    Returns:
        One record per file, in sorted path order.
    Raises:
        ImportValidationError: naming the offending .txt file: not UTF-8 (with the line), no
            FINDINGS (unless skip_empty_findings) or IMPRESSION (when required) section, or two
            files with the same study id.
    """
    if path.is_dir():
        files = list_report_files(path, display)
        root = path
    else:
        files = [path]
        root = path.parent
    records: list[ReportRecord] = []
    seen: dict[str, str] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        shown = display if f is path else str(Path(display) / rel)
        text = read_text(f, shown)
        sections = parse_sections(text)
        present = ", ".join(sections) or "none"
        extra: dict = {"path": rel}
        if _PATIENT.match(f.parent.name):
            extra["patient"] = f.parent.name
        for key in ("examination", "technique"):
            value = _pick(sections, key)
            if value:
                extra[key] = value
        findings = _pick(sections, "findings")
        impression = _pick(sections, "impression")
        if not findings and not ctx.skip_empty_findings:
            raise ImportValidationError(
                shown, None, "findings",
                f"no FINDINGS section or it is empty (sections found: {present}); use "
                "skip_empty_findings=True / --skip-empty-findings to leave such reports out")
        if findings and not impression and ctx.require_impression:
            raise ImportValidationError(
                shown, None, "impression",
                f"no IMPRESSION section or it is empty (sections found: {present}); pass "
                "require_impression=False to import reports without one")
        rec = ctx.make(row=None, external_id=f.stem, findings=findings, impression=impression,
                       indication=_pick(sections, "indication"),
                       comparison=_pick(sections, "comparison"), extra=extra, display=shown,
                       skip_key=rel)
        if rec is None:
            continue
        if rec.external_id in seen:
            raise ImportValidationError(
                shown, None, "external_id",
                f"duplicate study id '{rec.external_id}' (files {seen[rec.external_id]} and "
                f"{rel})")
        seen[rec.external_id] = rel
        records.append(rec)
    return records
