"""MIMIC-CXR free-text reports: one .txt file per study (files/p10/p10000032/s50414267.txt), or a
folder of them, read recursively in sorted order of their relative paths (names starting with
'.' are ignored).

A section starts at a header at the start of a line: a label followed by ':'. Which labels are
headers follows the section names and their frequencies in MIT-LCP's public
``mimic-cxr/txt/section_parser.py`` (the counts in brackets are that file's):

    impression   IMPRESSION (187,759), CONCLUSION(S), IMPRESSIONS and the misspellings
                 IMPRESSON, IMPRESION, IMPESSION ...
    findings     FINDINGS (149,842), FINDING, REFERENCE FINDINGS and misspellings (FINDNGS ...)
    both         FINDINGS AND IMPRESSION (87), FINDINGS/IMPRESSION (47)
    indication   INDICATION(S) (153,730), HISTORY (45,624), CLINICAL HISTORY (7,121), REASON
                 FOR EXAMINATION (5,845), REASON FOR EXAM (4,430), CLINICAL INFORMATION
                 (4,024), CLINICAL INDICATION (1,945), PATIENT HISTORY, PFI, REASON FOR STUDY
    comparison   COMPARISON (154,647), COMPARISONS (8,686), REFERENCE EXAM, COMPARISON EXAM,
                 COMPARISON FILM and misspellings (COMPARISION ...)
    examination  EXAMINATION (94,094), EXAM (3,907), TYPE OF EXAMINATION (1,678)
    technique    TECHNIQUE (81,402)
    other        NOTIFICATION (5,749), RECOMMENDATION(S) (1,700), RECOMMENDATION(S), ADDENDUM,
                 WET READ, DATE, COMMENT
These names are headers in any letter case ("Findings:"). Besides them, an ALL-CAPS label is a
header when it names a main section inside a longer label ("FINAL IMPRESSION:" -> impression,
"PERTINENT HISTORY:" -> indication), and, before the first FINDINGS or IMPRESSION, when it names
the exam the way old reports title their findings ("CHEST, TWO VIEWS:" (1,735), "PORTABLE AP
CHEST:", "PA AND LATERAL VIEWS OF THE CHEST:"); its text is findings.

Any other label (the anatomic sub-headings radiologists dictate: "HEART AND MEDIASTINUM:",
"LUNGS AND PLEURA:", "ETT:", "NG TUBE:", "OSSEOUS:", "Heart size: normal") is text of the section
it is in, never the start of a new one: nothing is cut.

Where the text goes (each whitespace-normalised, a section that appears twice joined with a
space in order of appearance):
    findings     findings sections and exam-title sections, then FINDINGS AND IMPRESSION text
    impression   impression sections; without one, the FINDINGS AND IMPRESSION text (the
                 radiologist wrote one text for both; extra["combined"] names the header)
    indication   every indication-like section, in order
    comparison   every comparison-like section, in order
    extra        "examination", "technique", "sections" ({header: text} for NOTIFICATION,
                 RECOMMENDATION(S), WET READ, ADDENDUM ...), "preamble" (text before the
                 first header), "path", "patient"
Only the "FINAL REPORT" title line and ruler lines (10 or more '_', '-' or '=') are dropped:
they carry no report text. "___" de-identification marks are kept.

external_id = the file stem (s50414267.txt -> "s50414267"); row = None; extra["path"] = the
path relative to the folder given (or the file name), extra["patient"] = the parent folder when
it looks like a MIMIC patient folder ("p10000032").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ImportValidationError
from core.ingest.common import (
    ALLOW_MISSING_IMPRESSION_HINT,
    SKIP_EMPTY_FINDINGS_HINT,
    ReaderContext,
    ReportRecord,
    normalize_text,
    read_text,
)

# Section name (upper case, single spaces, no space around '/') -> kind.
SECTION_NAMES: dict[str, str] = {
    **dict.fromkeys((
        "IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "CONCUSION", "IMPRESSON",
        "IMPRRESSION", "IMORESSION", "IMPRESSOIN", "IMPRSSION", "IMPRESION", "IMPERSSION",
        "MPRESSION", "IMPESSION"), "impression"),
    **dict.fromkeys((
        "FINDINGS", "FINDING", "FINDINS", "FINDINDGS", "FINDGINGS", "FINDNGS", "FINDNINGS",
        "FINIDNGS", "REFERENCE FINDINGS"), "findings"),
    **dict.fromkeys((
        "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "IMPRESSION AND FINDINGS",
        "IMPRESSION/FINDINGS", "FINDINGS & IMPRESSION"), "both"),
    **dict.fromkeys((
        "INDICATION", "INDICATIONS", "NDICATION", "IDICATION", "CLINICAL INDICATION",
        "HISTORY", "CLINICAL HISTORY", "PATIENT HISTORY", "CLINICAL INFORMATION", "PFI",
        "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY"), "indication"),
    **dict.fromkeys((
        "COMPARISON", "COMPARISONS", "COMPARISON EXAM", "COMPARISON FILM", "REFERENCE EXAM",
        "COMPARISION", "COMPARSION", "COMPARRISON", "COMPARISIONS"), "comparison"),
    **dict.fromkeys(("EXAMINATION", "EXAM", "TYPE OF EXAMINATION"), "examination"),
    "TECHNIQUE": "technique",
    **dict.fromkeys((
        "NOTIFICATION", "RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "ADDENDUM",
        "WET READ", "WETREAD", "DATE", "COMMENT", "COMMENTS"), "other"),
}
# A longer ALL-CAPS label naming one of these is that section ("FINAL IMPRESSION").
_MAIN_WORDS = (("IMPRESSION", "impression"), ("FINDINGS", "findings"),
               ("HISTORY", "indication"), ("INDICATION", "indication"),
               ("COMPARISON", "comparison"), ("ADDENDUM", "other"))
# An ALL-CAPS label naming the exam titles the findings in older reports ("CHEST, TWO VIEWS:").
_EXAM_TITLE = re.compile(
    r"\b(CHEST|PORTABLE|PA AND LAT(ERAL)?|LATERAL AND PA|AP AND LATERAL|LATERAL AND AP|"
    r"FRONTAL AND|TWO VIEWS|FRONTAL VIEW|PA VIEW|AP VIEW|ONE VIEW|SINGLE VIEW|LATERAL VIEW|"
    r"BONE WINDOW|FRONTAL UPRIGHT|FRONTAL SEMI-UPRIGHT|RIBS)\b")
_MAX_HEADER_WORDS = 7

_LABEL = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9 \t/&(),\-]{0,58}?)[ \t]*:(.*)$")
_RULER = re.compile(r"^[ \t]*[_=\-]{10,}[ \t]*$")
_TITLE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.I)
_PATIENT = re.compile(r"^p\d+$")


@dataclass
class Section:
    """One section of a report: its header as written (upper-cased), its kind, its text."""

    name: str
    kind: str        # impression, findings, both, indication, comparison, examination,
                     # technique, other, or preamble (text before the first header)
    text: str
    exam_title: bool = False


def _canonical(label: str) -> str:
    name = " ".join(label.split()).upper()
    return re.sub(r"\s*/\s*", "/", name)


def header_kind(label: str, in_body: bool) -> tuple[str, bool] | None:
    """Whether a line's leading ``label:`` starts a section, and of which kind.

    Args:
        label: the text before the first ':' of a line (stripped).
        in_body: a FINDINGS or IMPRESSION section has started (exam titles are headers only
            before that).
    Returns:
        (kind, is_exam_title), or None when the label is text of the current section.

    >>> header_kind("Findings", False), header_kind("HEART AND MEDIASTINUM", True)
    (('findings', False), None)
    >>> header_kind("CHEST, TWO VIEWS", False)
    ('findings', True)
    """
    name = _canonical(label)
    if name in SECTION_NAMES:
        return SECTION_NAMES[name], False
    letters = [ch for ch in label if ch.isalpha()]
    if len(letters) < 2 or label != label.upper() or len(name.split()) > _MAX_HEADER_WORDS:
        return None
    if "FINDINGS" in name and "IMPRESSION" in name:
        return "both", False
    for word, kind in _MAIN_WORDS:
        if re.search(rf"\b{word}\b", name):
            return kind, False
    if not in_body and _EXAM_TITLE.search(name):
        return "findings", True
    return None


def split_sections(text: str) -> list[Section]:
    """Split a free-text report into its sections, in order (see the module docstring).

    Args:
        text: the whole report.
    Returns:
        The sections; a "preamble" section first when there is text before the first header.
        Texts are whitespace-normalised; every line except headers, the "FINAL REPORT" title
        and ruler lines is in exactly one section.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sections: list[Section] = []
    name, kind, exam_title, lines = "PREAMBLE", "preamble", False, []
    in_body = False

    def close() -> None:
        body = normalize_text("\n".join(lines))
        if kind != "preamble" or body:
            sections.append(Section(name, kind, body, exam_title))

    for line in text.split("\n"):
        if _RULER.match(line) or _TITLE.match(line):
            continue
        m = _LABEL.match(line)
        found = header_kind(m.group(1).strip(), in_body) if m else None
        if found is None:
            lines.append(line)
            continue
        close()
        kind, exam_title = found
        name, lines = _canonical(m.group(1)), [m.group(2)]
        in_body = in_body or kind in ("findings", "impression", "both")
    close()
    return sections


def parse_sections(text: str) -> dict[str, str]:
    """Split a free-text report into {upper-cased header: text}, in order of appearance.

    Args:
        text: the whole report.
    Returns:
        A header that appears twice has its texts joined with a space; text before the first
        header is under "PREAMBLE".
    """
    out: dict[str, str] = {}
    for s in split_sections(text):
        out[s.name] = f"{out[s.name]} {s.text}".strip() if s.name in out else s.text
    return out


def _join(sections: list[Section], *kinds: str) -> str | None:
    return " ".join(s.text for s in sections if s.kind in kinds and s.text) or None


def report_fields(sections: list[Section]) -> dict:
    """Map a report's sections to record fields (see the module docstring).

    Returns:
        {"findings", "impression", "indication", "comparison": str | None, "extra": dict}.
    """
    findings = _join(sections, "findings")
    both = _join(sections, "both")
    impression = _join(sections, "impression")
    extra: dict = {}
    if both:
        findings = f"{findings} {both}" if findings else both
        if impression is None:
            impression = both
            extra["combined"] = next(s.name for s in sections if s.kind == "both" and s.text)
    for key in ("examination", "technique", "preamble"):
        value = _join(sections, key)
        if value:
            extra[key] = value
    titles = [s.name for s in sections if s.exam_title]
    if titles and "examination" not in extra:
        extra["examination"] = titles[0]
    others: dict[str, str] = {}
    for s in sections:
        if s.kind == "other" and s.text:
            others[s.name] = f"{others[s.name]} {s.text}" if s.name in others else s.text
    if others:
        extra["sections"] = others
    return {"findings": findings, "impression": impression,
            "indication": _join(sections, "indication"),
            "comparison": _join(sections, "comparison"), "extra": extra}


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
        ctx: per-file settings; with ``skip_empty_findings`` a report without findings is
            left out and its relative path listed in ``ctx.skipped``.
    Returns:
        One record per file, in sorted path order.
    Raises:
        ImportValidationError: naming the offending .txt file: not UTF-8 (with the line), no
            FINDINGS (unless skipped) or IMPRESSION (when required) text, or two files with
            the same study id.
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
        sections = split_sections(read_text(f, shown))
        present = ", ".join(dict.fromkeys(s.name for s in sections)) or "none"
        fields = report_fields(sections)
        extra: dict = {"path": rel}
        if _PATIENT.match(f.parent.name):
            extra["patient"] = f.parent.name
        extra.update(fields["extra"])
        if not fields["findings"] and not ctx.skip_empty_findings:
            raise ImportValidationError(
                shown, None, "findings",
                f"no FINDINGS section or it is empty (sections found: {present}); "
                f"{SKIP_EMPTY_FINDINGS_HINT}")
        if fields["findings"] and not fields["impression"] and ctx.require_impression:
            raise ImportValidationError(
                shown, None, "impression",
                f"no IMPRESSION section or it is empty (sections found: {present}); "
                f"{ALLOW_MISSING_IMPRESSION_HINT}")
        rec = ctx.make(row=None, external_id=f.stem, findings=fields["findings"],
                       impression=fields["impression"], indication=fields["indication"],
                       comparison=fields["comparison"], extra=extra, display=shown,
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
