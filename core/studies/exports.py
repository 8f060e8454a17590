"""Exports of a closed study, each written to the audit log: the ratings with the key (CSV or
Parquet), preference pairs for TRL (JSONL) and the one-page HTML summary."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Sequence

from core.accounts.auth import User
from core.errors import StudyError
from core.generation.prompts import impression_messages, report_text
from core.store.database import Store
from core.studies.access import require_closed
from core.studies.protocol import parse_arm, scale_of
from core.studies.report import summary_html
from core.studies.results import StudyResults, ratings_frame, results
from core.util import safe_csv

EXPORT_COLUMNS = [
    "study_id", "feedback_id", "created_at", "rater", "slot", "case_number", "label", "arm",
    "report_id", "source", "external_id", "normal", "model", "adapter", "style", "rating",
    "rating_label", "neutral_or_better", "factual_error", "omission", "style_issue",
    "critical_missed", "answers", "comment", "time_spent_ms", "text", "original",
]


def ratings_table(store: Store, user: User, study_id: int):
    """Every standing rating with the unblinded key, as exported (closed studies only)."""
    import pandas as pd  # deferred: pandas takes a second to import and most commands never need it

    study = require_closed(store, user, study_id, "ratings with the key")
    r = ratings_frame(store, study, scale_of(study["scale"]))
    if r.empty:
        return pd.DataFrame(columns=EXPORT_COLUMNS)
    r = r.assign(study_id=study["id"],
                 neutral_or_better=r["rating"] >= 0,
                 answers=r["answers"].map(lambda a: json.dumps(a, sort_keys=True)))
    return r[EXPORT_COLUMNS].reset_index(drop=True)


def _audit_export(store: Store, user: User, study_id: int, fmt: str, path: Path | None,
                  rows: int) -> None:
    store.audit(user.username, "study_export",
                {"study_id": int(study_id), "format": fmt, "rows": int(rows),
                 "file": path.name if path else None})


def export_ratings(store: Store, user: User, study_id: int, path: str | Path,
                   fmt: str | None = None) -> Path:
    """Write every rating with the unblinded key to CSV or Parquet.

    Args:
        path: output file; ``fmt`` defaults to its suffix (.csv or .parquet).
    Returns:
        The path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "parquet"):
        raise StudyError(f"export {path}: format {fmt!r} must be csv or parquet")
    table = ratings_table(store, user, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        safe_csv(table, path)
    else:
        table.to_parquet(path, index=False)
    _audit_export(store, user, study_id, fmt, path, len(table))
    return path


def _pair(x: dict, chosen: dict, rejected: dict, conversational: bool) -> dict:
    if conversational:
        return {"prompt": impression_messages(x["findings"], x["indication"], x["comparison"]),
                "chosen": [{"role": "assistant", "content": chosen["text"]}],
                "rejected": [{"role": "assistant", "content": rejected["text"]}]}
    return {"prompt": report_text(x["findings"], x["indication"], x["comparison"])
            + "\nIMPRESSION:", "chosen": " " + chosen["text"], "rejected": " " + rejected["text"]}


def preference_pairs(store: Store, user: User, study_id: int, min_margin: float = 0.0,
                     conversational: bool = True) -> list[dict]:
    """Preference pairs in TRL's format from items where two arms got different mean ratings.

    Only arms rating the same report are paired (not ``external``); identical texts are skipped.

    Args:
        min_margin: keep pairs whose mean ratings differ by more than this.
        conversational: prompt as chat messages (system + user, as the model is prompted) and
            chosen/rejected as assistant messages; False gives plain strings.
    Returns:
        dicts with exactly "prompt", "chosen", "rejected".
    """
    study = require_closed(store, user, study_id, "preference pairs")
    r = ratings_frame(store, study, scale_of(study["scale"]))
    if r.empty:
        return []
    paired_arms = [a for a in study["arms"] if parse_arm(a).paired]
    r = r[r["arm"].isin(paired_arms)]
    means = r.groupby(["slot", "arm"]).agg(mean=("rating", "mean"), text=("text", "first"),
                                           findings=("findings", "first"),
                                           indication=("indication", "first"),
                                           comparison=("comparison", "first")).reset_index()
    out = []
    for _, g in means.groupby("slot", sort=True):
        for x, y in combinations(g.to_dict("records"), 2):
            if abs(x["mean"] - y["mean"]) <= min_margin or x["text"].strip() == y["text"].strip():
                continue
            chosen, rejected = (x, y) if x["mean"] > y["mean"] else (y, x)
            out.append(_pair(x, chosen, rejected, conversational))
    return out


def export_preferences(store: Store, user: User, study_id: int, path: str | Path,
                       min_margin: float = 0.0, conversational: bool = True) -> int:
    """Write :func:`preference_pairs` as JSONL. Returns the number of pairs."""
    pairs = preference_pairs(store, user, study_id, min_margin, conversational)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    _audit_export(store, user, study_id, "jsonl", path, len(pairs))
    return len(pairs)


def export_html(store: Store, user: User, study_id: int, path: str | Path | None = None,
                res: StudyResults | None = None, n_boot: int = 1000,
                metrics: Sequence[str] = ("rouge_l", "label_f1")) -> str:
    """A self-contained one-page HTML summary (tables and inline SVG figures, no scripts).

    Args:
        path: where to write it (None: only return the HTML).
        res: results already computed (else computed here).
    Returns:
        The HTML text.
    """
    require_closed(store, user, study_id, "summaries")
    res = res or results(store, user, study_id, n_boot=n_boot, metrics=metrics)
    html = summary_html(res)
    p = Path(path) if path else None
    if p:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(html, encoding="utf-8")
    _audit_export(store, user, study_id, "html", p, len(res.ratings))
    return html
