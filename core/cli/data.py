"""Files in and scores out: ``import`` (reports), ``feedback import``, ``evaluate``."""

from __future__ import annotations

import argparse
import textwrap

from core.cli.common import existing_store, open_store
from core.errors import ValidationError
from core.evaluation.compare import evaluate_pairs, format_result, read_pairs, write_json
from core.feedback.annotate import RATING_SCALE
from core.feedback.importing import COLUMNS, import_feedback
from core.ingest.reports import import_file

FORMATS = ["auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl"]


def _mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValidationError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. findings=FINDINGS")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_import(args) -> int:
    store = open_store(args)
    result = import_file(store, args.file, fmt=args.format, mapping=_mapping(args.map),
                         require_impression=not args.allow_missing_impression, actor="cli",
                         skip_empty_findings=args.skip_empty_findings,
                         allow_duplicates=args.allow_duplicates)
    print(result.summary())
    return 0


def cmd_feedback(args) -> int:
    """Import existing draft -> signed impression pairs as feedback (into a database that has
    the readers and reports)."""
    store = existing_store(args)
    result = import_feedback(store, args.file, actor="cli")
    print(result.summary())
    return 0


def cmd_evaluate(args) -> int:
    """Score predictions (uid,prediction) against references (uid,impression), joined by uid."""
    pairs = read_pairs(args.pred, args.ref, pred_col=args.pred_col, ref_col=args.ref_col,
                       findings_col=None if args.findings_col == "" else args.findings_col)
    result = evaluate_pairs(pairs, with_bertscore=not args.no_bertscore)
    result.update({"pred_file": str(args.pred), "ref_file": str(args.ref)})
    print(f"{result['n']} predictions of {args.pred} scored against {args.ref}\n")
    print(format_result(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


def _feedback_help() -> str:
    scale = ", ".join(f"{v} {label.lower()}" for v, label in RATING_SCALE.items())
    need = {"reader": "required: the username of a radiologist (or admin)",
            "uid": "required: a report in the database",
            "edited": "required: the impression the radiologist signed",
            "ai_text": "optional: the draft it replaced",
            "rating": f"optional: the draft rated relative to the original, "
                      f"{min(RATING_SCALE)}..{max(RATING_SCALE)}: {scale}",
            "source": "optional: the report source, when a uid is in several"}
    lines = [textwrap.fill(
        "Import existing feedback: each row is a radiologist's signed impression for a report, "
        "optionally with the draft it replaced and a rating. The whole file is checked first; "
        "nothing is written unless every row is valid. A row for a report the reader already "
        "answered (in the app or an earlier import) revises that answer, as a second rating in "
        "the app does; importing the same file again changes nothing. Columns (header names in "
        "any case; the first spelling present wins):", 92), ""]
    for key, names in COLUMNS.items():
        lines.append(f"  {' | '.join(names)}")
        lines.append(textwrap.fill(need[key], 92, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="import reports from a file or folder")
    p.add_argument("file", help="a CSV/JSONL file, or a folder of MIMIC-CXR report .txt files")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="auto (the default: told from the columns or the folder), iu-xray (the "
                        "IU X-ray/Open-i reports.csv: uid, findings, impression, indication, "
                        "comparison, MeSH ...), mimic-cxr (a folder of free-text reports with "
                        "FINDINGS:/IMPRESSION: sections), chexpert-plus (the CheXpert Plus CSV, one "
                        "row per image, section_* columns), csv or jsonl (any columns: name them "
                        "with --map)")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="column mapping for generic CSV/JSONL (repeatable)")
    p.add_argument("--allow-missing-impression", action="store_true",
                   help="accept reports without an impression")
    p.add_argument("--skip-empty-findings", action="store_true",
                   help="leave out (and count) reports without findings instead of refusing "
                        "the file (about a third of MIMIC-CXR reports have none)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="import reports whose findings and impression were already imported "
                        "through another format (skipped and counted by default)")
    p.set_defaults(func=cmd_import)


def add_feedback(sub) -> None:
    p = sub.add_parser("feedback", help="import existing feedback (draft -> signed impression)")
    fb = p.add_subparsers(dest="feedback_cmd", required=True)
    a = fb.add_parser("import", help="CSV: reader, uid, edited impression[, ai_text, rating]",
                      description=_feedback_help(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("file", help="UTF-8 CSV with a header row (columns below)")
    p.set_defaults(func=cmd_feedback)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a predictions CSV against reference impressions")
    p.add_argument("--pred", required=True,
                   help="CSV with uid, prediction (what generate --out writes)")
    p.add_argument("--ref", required=True,
                   help="CSV with uid, impression[, findings] (e.g. IU reports.csv)")
    p.add_argument("--pred-col", default="prediction", help="predictions text column")
    p.add_argument("--ref-col", default="impression", help="references text column")
    p.add_argument("--findings-col", default="findings",
                   help="references findings column for consistency ('' to skip)")
    p.add_argument("--json", help="also write the metrics as JSON here")
    p.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (faster)")
    p.set_defaults(func=cmd_evaluate)
