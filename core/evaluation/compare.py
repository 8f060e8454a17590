"""Score a predictions CSV against a references CSV: ``python -m core evaluate``.

Predictions are what ``python -m core generate --in X.csv --out P.csv`` writes (``uid,
prediction[, style, needs_review, flags]``); references are any CSV with ``uid`` and ``impression``
(the IU X-ray ``reports.csv`` itself works: its extra rows are ignored). Rows are joined by uid:
every prediction needs exactly one reference; references without a prediction are left out. When
the reference file has a findings column, findings-impression consistency is scored as well.

Metrics come from :func:`core.evaluation.metrics.evaluate` (ROUGE-1/2/L, BLEU, BERTScore with the offline
MiniLM, clinical label F1, consistency).

>>> pairs = read_pairs("pred.csv", "reports.csv")          # doctest: +SKIP
>>> result = evaluate_pairs(pairs, with_bertscore=False)   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ValidationError
from core.errors import EvaluationError  # noqa: F401 (defined in core.errors)


@dataclass
class EvalPairs:
    """Predictions joined with their references by uid (in the predictions' order)."""

    uids: list[str]
    preds: list[str]
    refs: list[str]
    findings: list[str] | None = None  # from the references file, when it has the column
    needs_review: list[bool] | None = None  # from the predictions file, when it has the column
    mesh: list[str] | None = None  # human MeSH labels from the references file (IU X-ray), when present
    notes: list[str] = field(default_factory=list)


def _read(path: Path, need: tuple[str, ...], what: str) -> tuple[list[tuple[int, dict]], dict[str, str]]:
    """Rows (with their line numbers) and a lower-case column map; checks required columns."""
    if not path.is_file():
        raise EvaluationError(f"{what} file {path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rd = csv.DictReader(fh)
            cols = {c.strip().lower(): c for c in (rd.fieldnames or []) if c is not None}
            for name in need:
                if name.lower() not in cols:
                    raise EvaluationError(f"{what} file {path}: column {name!r} is missing (columns: "
                                          f"{', '.join(rd.fieldnames or []) or 'none'})")
            rows = [(rd.line_num, row) for row in rd]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"{what} file {path}: not a readable UTF-8 CSV ({exc})") from exc
    return rows, cols


def read_pairs(pred: str | Path, ref: str | Path, pred_col: str = "prediction", ref_col: str = "impression",
               findings_col: str | None = "findings", uid_col: str = "uid") -> EvalPairs:
    """Join a predictions CSV and a references CSV by uid.

    Args:
        pred: CSV with ``uid`` and ``pred_col`` (one row per uid).
        ref: CSV with ``uid`` and ``ref_col``; rows whose uid has no prediction are ignored.
        pred_col: the predictions' text column.
        ref_col: the references' text column.
        findings_col: the references' findings column, used for consistency when present (None:
            never).
        uid_col: the join column in both files.

    Returns:
        The joined :class:`EvalPairs`, in the predictions' row order.

    Raises:
        EvaluationError: a file is missing or unreadable, a column is missing, a uid is blank or
            duplicated, a prediction's uid is not in the references, a matched reference is blank,
            or there is no prediction at all (messages name the file, row, column and uid).
    """
    pred, ref = Path(pred), Path(ref)
    p_rows, p_cols = _read(pred, (uid_col, pred_col), "predictions")
    r_rows, r_cols = _read(ref, (uid_col, ref_col), "references")
    if not p_rows:
        raise EvaluationError(f"predictions file {pred}: no rows to score")

    def cell(row: dict, cols: dict, name: str) -> str:
        c = cols.get(name.lower())
        return (row.get(c) or "").strip() if c else ""

    refs: dict[str, tuple[int, dict]] = {}
    for line, row in r_rows:
        uid = cell(row, r_cols, uid_col)
        if not uid:
            continue  # a reference row without uid can never be matched; not an error for the file
        if uid in refs:
            raise EvaluationError(f"references file {ref}: row {line}, column {uid_col!r}: uid {uid!r} is duplicated "
                                  f"(first at row {refs[uid][0]})")
        refs[uid] = (line, row)
    use_findings = bool(findings_col) and findings_col.lower() in r_cols
    has_review = "needs_review" in p_cols
    use_mesh = "mesh" in r_cols
    out = EvalPairs([], [], [], [] if use_findings else None, [] if has_review else None,
                    [] if use_mesh else None)
    seen: dict[str, int] = {}
    blank_pred = 0
    for line, row in p_rows:
        uid = cell(row, p_cols, uid_col)
        if not uid:
            raise EvaluationError(f"predictions file {pred}: row {line}, column {uid_col!r} is blank")
        if uid in seen:
            raise EvaluationError(f"predictions file {pred}: row {line}, column {uid_col!r}: uid {uid!r} is duplicated "
                                  f"(first at row {seen[uid]})")
        seen[uid] = line
        if uid not in refs:
            raise EvaluationError(f"predictions file {pred}: row {line}, column {uid_col!r}: uid {uid!r} is unknown "
                                  f"(not in the references file {ref})")
        r_line, r_row = refs[uid]
        reference = cell(r_row, r_cols, ref_col)
        if not reference:
            raise EvaluationError(f"references file {ref}: row {r_line} (uid {uid}), column {ref_col!r} is blank: "
                                  f"nothing to score the prediction of predictions row {line} against")
        text = cell(row, p_cols, pred_col)
        blank_pred += not text
        out.uids.append(uid)
        out.preds.append(text)
        out.refs.append(reference)
        if use_findings:
            out.findings.append(cell(r_row, r_cols, findings_col))
        if has_review:
            out.needs_review.append(cell(row, p_cols, "needs_review").lower() in ("1", "true", "yes"))
        if use_mesh:
            out.mesh.append(cell(r_row, r_cols, "mesh"))
    if blank_pred:
        out.notes.append(f"{blank_pred} blank prediction(s) scored as empty text")
    if findings_col and not use_findings:
        out.notes.append(f"no {findings_col!r} column in the references: consistency not scored")
    return out


def evaluate_pairs(pairs: EvalPairs, with_bertscore: bool = True) -> dict:
    """All metrics of :func:`core.evaluation.metrics.evaluate` for joined pairs, JSON-ready.

    Args:
        pairs: from :func:`read_pairs`.
        with_bertscore: also compute BERTScore (MiniLM; ~0.05 s per text on a CPU).

    Returns:
        The ``evaluate`` dict with ``label.per_label`` as plain dicts, plus ``needs_review_share``
        when the predictions say which rows were flagged, ``mesh`` (:func:`core.evaluation.mesh.mesh_score`
        of the predictions and of the references) when the references carry human MeSH labels,
        and the join notes in ``notes``.
    """
    from dataclasses import asdict

    from core.evaluation.metrics import evaluate

    result = evaluate(pairs.preds, pairs.refs, findings=pairs.findings, with_bertscore=with_bertscore)
    result["notes"] = list(pairs.notes) + list(result.get("notes", []))
    result["label"] = {**result["label"], "per_label": [asdict(x) for x in result["label"]["per_label"]]}
    if pairs.needs_review is not None:
        result["needs_review_share"] = sum(pairs.needs_review) / len(pairs.needs_review)
    if pairs.mesh is not None:
        from core.evaluation.mesh import mesh_score

        result["mesh"] = {"predictions": mesh_score(pairs.preds, pairs.mesh),
                          "references": mesh_score(pairs.refs, pairs.mesh)}
    return result


def format_result(result: dict) -> str:
    """Markdown table of an :func:`evaluate_pairs` result (per-label rows included)."""
    from core.evaluation.metrics import LabelScore, format_table

    shown = dict(result)
    shown["label"] = {**result["label"], "per_label": [LabelScore(**x) for x in result["label"]["per_label"]]}
    text = format_table(shown)
    if "needs_review_share" in result:
        head, sep, rest = text.partition("\n\n")
        text = head + f"\n| Flagged for review | {result['needs_review_share']:.3f} |" + sep + rest
    if "mesh" in result:
        text += "\n\n" + format_mesh(result["mesh"])
    return text


def format_mesh(mesh: dict) -> str:
    """Markdown table of the MeSH-based score of the predictions beside the references'."""
    p, r = mesh["predictions"], mesh["references"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [f"Independent clinical score against the human MeSH labels ({p['n']} indexed reports, "
             f"{p['n_with_findings']} with a significant finding; core.evaluation.mesh):", "",
             "| | predictions | references (human ceiling) |", "|---|---:|---:|",
             f"| recall of MeSH significant findings (%) | {pct(p['recall'])} | {pct(r['recall'])} |",
             f"| false statements per 100 reports | {p['false_statements']:.1f} | {r['false_statements']:.1f} |",
             f"| reports with a false statement (%) | {pct(p['reports_with_false_statement'])} | "
             f"{pct(r['reports_with_false_statement'])} |"]
    lines += ["", "| finding | MeSH support | recall, predictions (%) | recall, references (%) "
                  "| false, predictions | false, references |", "|---|---:|---:|---:|---:|---:|"]
    for name, x in p["per_finding"].items():
        y = r["per_finding"][name]
        if x["support"] or x["false"] or y["false"]:
            lines.append(f"| {name} | {x['support']} | {pct(x['recall'])} | {pct(y['recall'])} | "
                         f"{x['false']} | {y['false']} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    """Write a result as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["EvaluationError", "EvalPairs", "read_pairs", "evaluate_pairs", "format_result", "format_mesh",
           "write_json"]
