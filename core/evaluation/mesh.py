"""An independent clinical score: the human MeSH labels of IU X-ray against what an impression names.

The rule-based labeler (:mod:`core.clinical`) drives the vote bonus, the repair and label F1, so
scoring our impressions with it grades our own homework. Here the truth is the human indexers'
MeSH column (one per report, made from the whole report), and the impression is read by a
deliberately small, separate keyword matcher (a keyword per significant finding, negated when a
negation cue precedes it in the same sentence) that shares no rule with :mod:`core.clinical`.

For each report with at least one significant MeSH finding:

* **recall**: the share of its significant MeSH findings that the impression names;
* **false statements**: significant findings the impression names that its MeSH labels lack
  (counted over every report, normal ones included).

Run it on the original impressions too: MeSH was indexed from findings *and* impression, so the
human impression's recall is the ceiling a summary reaches, not 1.

>>> sorted(mesh_findings("Cardiomegaly/mild;Pleural Effusion/right/small;Calcified Granuloma"))
['cardiomegaly', 'effusion']
>>> sorted(named_findings("Small right effusion. No pneumothorax or consolidation."))
['effusion']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# finding -> (MeSH heads that index it, words that name it in an impression)
SIGNIFICANT: dict[str, tuple[tuple[str, ...], str]] = {
    "cardiomegaly": (("cardiomegaly",),
                     r"cardiomegaly|enlarged (?:heart|cardiac)|(?:heart|cardiac)(?: silhouette| size| shadow)?"
                     r" (?:is |are |remains? |appears? )?(?:\w+ )?(?:enlarged|increased)|enlargement of the (?:heart|cardiac)"),
    "effusion": (("pleural effusion",), r"effusions?|hydrothorax"),
    "pneumothorax": (("pneumothorax", "hydropneumothorax", "hemopneumothorax"), r"pneumothora\w*"),
    "airspace disease": (("consolidation", "pneumonia", "airspace disease", "infiltrate"),
                         r"consolidat\w*|pneumonia|airspace (?:disease|opacit\w+)|infiltrat\w*"),
    "edema": (("pulmonary edema",), r"edema|congestive heart failure|\bchf"),
    "nodule or mass": (("nodule", "mass"), r"nodul\w*|mass(?:es)?|neoplasm|tumou?r"),
    "fracture": (("fractures, bone",), r"fractur\w*"),
    "atelectasis": (("pulmonary atelectasis",), r"atelecta\w*"),
    "emphysema": (("emphysema", "pulmonary emphysema", "bullous emphysema",
                   "pulmonary disease, chronic obstructive"),
                  r"emphysema\w*|copd|chronic obstructive|hyperinflat\w*|hyperexpan\w*"),
    "free air": (("pneumoperitoneum",), r"free (?:intraperitoneal )?air|pneumoperitoneum"),
}
# Qualifiers that make a MeSH term not significant for an impression.
_NOT_SIGNIFICANT = {"borderline", "healed", "old", "calcified"}
_HEAD = {head: name for name, (heads, _) in SIGNIFICANT.items() for head in heads}
_NAME_RE = {name: re.compile(rf"\b(?:{words})\b") for name, (_, words) in SIGNIFICANT.items()}
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of|clear of|resolved|resolution of|"
                       r"absence of|rather than|removed)\b")
_SENTENCE = re.compile(r"[.;\n]+|\s\d{1,2}[.)]\s")


def mesh_findings(cell: str | None) -> set[str]:
    """The significant findings of one MeSH cell (';'-separated terms, '/'-separated qualifiers)."""
    out: set[str] = set()
    for term in str(cell or "").split(";"):
        parts = [p.strip().lower() for p in term.split("/")]
        name = _HEAD.get(parts[0])
        if name and not (set(parts[1:]) & _NOT_SIGNIFICANT):
            out.add(name)
    return out


def named_findings(text: str | None) -> set[str]:
    """The significant findings an impression names (hedged counts; negated does not)."""
    out: set[str] = set()
    for sentence in _SENTENCE.split((text or "").lower()):
        for name, rx in _NAME_RE.items():
            for m in rx.finditer(sentence):
                before = sentence[:m.start()].split()[-6:]
                if not _NEGATION.search(" ".join(before)):
                    out.add(name)
                    break
    return out


def mesh_score(impressions: Sequence[str], mesh_cells: Sequence[str | None]) -> dict:
    """Recall of the significant MeSH findings and false statements, overall and per finding.

    Args:
        impressions: one text per report.
        mesh_cells: the reports' MeSH cells, in the same order; "No Indexing" rows are skipped.

    Returns:
        ``n`` (reports scored), ``n_with_findings``, ``recall`` (micro), ``false_statements``
        (named findings MeSH lacks, per 100 reports), ``reports_with_false_statement`` (share),
        and ``per_finding``: {finding: {support, named, recall, false}}.
    """
    if len(impressions) != len(mesh_cells):
        raise ValueError(f"{len(impressions)} impressions but {len(mesh_cells)} MeSH cells")
    per = {name: {"support": 0, "named": 0, "false": 0} for name in SIGNIFICANT}
    n = with_findings = reports_false = 0
    for text, cell in zip(impressions, mesh_cells):
        if "no indexing" in str(cell or "").lower():
            continue
        n += 1
        truth, named = mesh_findings(cell), named_findings(text)
        with_findings += bool(truth)
        reports_false += bool(named - truth)
        for name in truth:
            per[name]["support"] += 1
            per[name]["named"] += name in named
        for name in named - truth:
            per[name]["false"] += 1
    support = sum(p["support"] for p in per.values())
    for p in per.values():
        p["recall"] = p["named"] / p["support"] if p["support"] else None
    return {"n": n, "n_with_findings": with_findings,
            "recall": sum(p["named"] for p in per.values()) / support if support else None,
            "false_statements": 100 * sum(p["false"] for p in per.values()) / n if n else None,
            "reports_with_false_statement": reports_false / n if n else None,
            "per_finding": per}


__all__ = ["SIGNIFICANT", "mesh_findings", "named_findings", "mesh_score"]
