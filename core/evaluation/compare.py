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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import EvaluationError
from core.evaluation.mesh import mesh_score
from core.evaluation.metrics import LabelScore, evaluate, format_table
from core.ingest.common import CsvTable, read_csv_table


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


def _read(path: Path, what: str, need: tuple[str, ...],
          optional: tuple[str | None, ...]) -> tuple[CsvTable, dict[str, int | None]]:
    """The table, read and checked by the one CSV reader, and the index of each named column
    (case-insensitive; None when an optional one is absent)."""
    table = read_csv_table(path, f"{what} file {path}")
    cols = {name.lower(): table.column([name], required=True, what=name) for name in need}
    for name in optional:
        if name and name.lower() not in cols:
            cols[name.lower()] = table.column([name], required=False, what=name)
    return table, cols


def _references(table: CsvTable, uid: int) -> dict[str, tuple[int, list[str]]]:
    """uid -> (row, cells) of a references table; rows without a uid can never match (skipped)."""
    refs: dict[str, tuple[int, list[str]]] = {}
    for row, cells in table.rows:
        key = CsvTable.cell(cells, uid)
        if not key:
            continue
        if key in refs:
            raise EvaluationError(f"{table.display}, row {row}, field '{table.header[uid]}': "
                                  f"uid {key!r} is duplicated (first at row {refs[key][0]})")
        refs[key] = (row, cells)
    return refs


def read_pairs(pred: str | Path, ref: str | Path, pred_col: str = "prediction",
               ref_col: str = "impression", findings_col: str | None = "findings",
               uid_col: str = "uid") -> EvalPairs:
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
        ImportValidationError: a file is missing, not UTF-8, malformed, has no data rows or lacks
            a column (:func:`core.ingest.common.read_csv_table`).
        EvaluationError: a uid is blank or duplicated, a prediction's uid is not in the
            references, or a matched reference is blank (messages name the file, row, field and
            uid).
    """
    pred, ref = Path(pred), Path(ref)
    p_table, p = _read(pred, "predictions", (uid_col, pred_col), ("needs_review",))
    r_table, r = _read(ref, "references", (uid_col, ref_col), (findings_col, "mesh"))
    uid, text_col, ref_i = uid_col.lower(), pred_col.lower(), ref_col.lower()
    refs = _references(r_table, r[uid])
    use_findings = bool(findings_col) and r.get(findings_col.lower()) is not None
    has_review, use_mesh = p["needs_review"] is not None, r["mesh"] is not None
    out = EvalPairs([], [], [], [] if use_findings else None, [] if has_review else None,
                    [] if use_mesh else None)
    seen: dict[str, int] = {}
    blank_pred = 0
    for row, cells in p_table.rows:
        key = CsvTable.cell(cells, p[uid])
        where = f"{p_table.display}, row {row}, field '{p_table.header[p[uid]]}'"
        if not key:
            raise EvaluationError(f"{where}: the uid is blank")
        if key in seen:
            raise EvaluationError(f"{where}: uid {key!r} is duplicated (first at row {seen[key]})")
        seen[key] = row
        if key not in refs:
            raise EvaluationError(f"{where}: uid {key!r} is unknown (not in the references "
                                  f"file {ref})")
        r_row, r_cells = refs[key]
        reference = CsvTable.cell(r_cells, r[ref_i])
        if not reference:
            raise EvaluationError(f"{r_table.display}, row {r_row}, field "
                                  f"'{r_table.header[r[ref_i]]}': the reference of uid {key} is "
                                  f"blank: nothing to score the prediction of predictions row {row} "
                                  "against")
        text = CsvTable.cell(cells, p[text_col])
        blank_pred += not text
        out.uids.append(key)
        out.preds.append(text)
        out.refs.append(reference)
        if use_findings:
            out.findings.append(CsvTable.cell(r_cells, r[findings_col.lower()]))
        if has_review:
            out.needs_review.append(CsvTable.cell(cells, p["needs_review"]).lower() in ("1", "true", "yes"))
        if use_mesh:
            out.mesh.append(CsvTable.cell(r_cells, r["mesh"]))
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
    result = evaluate(pairs.preds, pairs.refs, findings=pairs.findings, with_bertscore=with_bertscore)
    result["notes"] = list(pairs.notes) + list(result.get("notes", []))
    result["label"] = {**result["label"], "per_label": [asdict(x) for x in result["label"]["per_label"]]}
    if pairs.needs_review is not None:
        result["needs_review_share"] = sum(pairs.needs_review) / len(pairs.needs_review)
    if pairs.mesh is not None:
        result["mesh"] = {"predictions": mesh_score(pairs.preds, pairs.mesh),
                          "references": mesh_score(pairs.refs, pairs.mesh)}
    return result


def format_result(result: dict) -> str:
    """Markdown table of an :func:`evaluate_pairs` result (per-label rows included)."""
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


__all__ = ["EvalPairs", "read_pairs", "evaluate_pairs", "format_result", "format_mesh",
           "write_json"]
