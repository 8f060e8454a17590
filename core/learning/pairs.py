"""Preference pairs from a radiologist's append-only feedback, for DPO and evaluation.

Rules (one radiologist at a time; study ratings are not used):

* **edit over draft**: a rating with an edited impression gives (edit > the AI draft it replaced).
* **original over AI / AI over original**: ``rating`` is the AI impression relative to the
  report's original impression (-2..2): a negative rating gives (original > AI), a positive one
  (AI > original); 0 (equivalent) gives nothing.
* **AI over AI**: two AI impressions of the same report (other styles, other adapter versions)
  rated by the same radiologist: the higher-rated one over the lower-rated one (ratings share the
  original as their anchor, so their difference is the preference).

Every pair carries a weight: ``min(gap, 4) / 2`` for a rating gap (an edit counts as gap 2),
times ``critical_factor`` (default 2) when a critical finding is involved: the radiologist ticked
"critical finding missed", or one side of the pair misses a critical finding of the Findings that
the other side states (``core.clinical.verifier.check_impression``).

Dropped, and counted by reason:

* ``retracted``: the rating was undone (a retraction row names it);
* ``trivial_edit`` / ``identical``: the two sides differ only in whitespace or punctuation;
* ``chosen_misses_critical``: the preferred text leaves out a critical finding that the other
  states (such a pair would teach the adapter to drop critical findings);
* ``contradictory``: the same two texts for the same report are preferred both ways;
* ``duplicate``: the same (report, chosen, rejected) again (the first one is kept).

A held-out slice of each radiologist's *reports* (``heldout_fraction``, chosen by a hash of reader
and report, and remembered in the store once assigned) goes to evaluation only: all pairs, edits
and ratings of a held-out report stay out of training and out of the adapter's memory.

The reader's *memory* is the list of their accepted impressions on training reports: their
edits, and AI drafts they rated as good as their own or better (0..2) without editing, unless
flagged "critical finding missed" or missing a critical finding of the Findings. These are style
exemplars for retrieval-conditioned drafting (see :mod:`core.adapters.registry`); with edits alone the
memory would hold only the cases the AI got wrong.

>>> from core.learning.pairs import FeedbackItem, build_pairs
>>> items = [FeedbackItem(id=1, reader_id=1, report_id=10, generation_id=5, kind="rating",
...          rating=-1, edited_text="No acute disease.", findings="Lungs clear.",
...          original="Normal chest.", ai_text="Cardiomegaly.")]
>>> ps = build_pairs(items, heldout_fraction=0.0)
>>> [(p.kind, p.chosen, p.rejected) for p in ps.train]
[('edit', 'No acute disease.', 'Cardiomegaly.'), ('rating', 'Normal chest.', 'Cardiomegaly.')]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from core.clinical.verifier import check_impression
from core.errors import PairsError  # noqa: F401 (defined in core.errors)
from core.generation.prompts import draft_messages

__all__ = ["FeedbackItem", "Pair", "PairSet", "PairsError", "build_pairs", "is_heldout",
           "same_words", "pairs_for_reader", "report_of", "to_trl", "write_jsonl"]

DROP_REASONS = ("retracted", "trivial_edit", "identical", "chosen_misses_critical",
                "contradictory", "duplicate")


@dataclass
class FeedbackItem:
    """One feedback row with the texts it refers to (what the store returns, as a dataclass)."""
    id: int
    reader_id: int
    report_id: int
    generation_id: int | None = None
    kind: str = "rating"
    rating: int | None = None
    edited_text: str | None = None
    retracts: int | None = None
    critical_missed: bool | None = None
    findings: str = ""
    indication: str | None = None
    comparison: str | None = None
    original: str | None = None
    ai_text: str | None = None
    adapter: str | None = None
    adapter_version: int | None = None
    style: str | None = None
    source: str | None = None
    external_id: str | None = None

    @classmethod
    def from_row(cls, row: dict) -> "FeedbackItem":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Pair:
    """One preference: for ``prompt`` (the report), ``chosen`` is preferred over ``rejected``."""
    report_id: int
    findings: str
    indication: str | None
    comparison: str | None
    chosen: str
    rejected: str
    kind: str  # edit | rating | ai_vs_ai
    weight: float
    gap: int
    critical: bool
    feedback_ids: list[int] = field(default_factory=list)
    external_id: str | None = None

    def key(self) -> tuple:
        return (self.report_id, _norm(self.chosen), _norm(self.rejected))


@dataclass
class PairSet:
    """The result of :func:`build_pairs`."""
    train: list[Pair]
    heldout: list[Pair]
    heldout_reports: set[int]
    counts: dict[str, int]  # kept_* and dropped_* counters
    memory: list[dict]  # accepted impressions on training reports: report_id, findings, impression
    heldout_refs: list[dict]  # held-out reports with the reader's reference text (edit/original)
    high_water: int = 0  # largest feedback id read

    def summary(self) -> str:
        kept = {k[5:]: v for k, v in self.counts.items() if k.startswith("kept_") and v}
        dropped = {k[8:]: v for k, v in self.counts.items() if k.startswith("dropped_") and v}
        return (f"{len(self.train)} training pairs, {len(self.heldout)} held-out pairs "
                f"({len(self.heldout_reports)} held-out reports); kept {kept or '{}'}; "
                f"dropped {dropped or '{}'}; memory {len(self.memory)} accepted impressions")


# Words, and the symbols that carry meaning in an impression: "effusion >= 2 cm" -> "< 2 cm",
# "+" / "-" before a number, "%", and "?" (a hedge) are edits; spacing, case, periods and commas
# are not.
_WORDS = re.compile(r"[\w']+|[<>\u2264\u2265=\u00b1%?]|[+\-\u2212](?=\s?\d)")


_DASHES = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2212": "-"})  # an en dash for a hyphen is no edit


def _norm(text: str | None) -> tuple[str, ...]:
    return tuple(_WORDS.findall((text or "").lower().translate(_DASHES)))


def same_words(a: str | None, b: str | None) -> bool:
    """True when two texts differ only in whitespace, letter case or punctuation that carries no
    meaning (periods, commas, hyphens between words); a changed comparison sign, a sign before
    a number, "%" or "?" is an edit.

    >>> same_words("No  acute disease", "no acute disease."), same_words("Effusion ≥ 2 cm.", "Effusion < 2 cm.")
    (True, False)
    """
    return _norm(a) == _norm(b)


def is_heldout(reader_id: int, report_id: int, fraction: float) -> bool:
    """Whether a report belongs to a reader's held-out slice (stable hash of reader and report)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"heldout:{reader_id}:{report_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 10_000 < fraction * 10_000


def _missing_critical(findings: str, text: str) -> set[str]:

    if not findings:
        return set()
    return set(check_impression(findings, text).missing_critical)


def _weight(gap: int, critical: bool, critical_factor: float) -> float:
    return round(min(gap, 4) / 2.0 * (critical_factor if critical else 1.0), 4)


def _accepted(r: FeedbackItem, impression: str) -> dict:
    """A report with the impression the reader accepted (memory item or held-out reference)."""
    return {"report_id": r.report_id, "external_id": r.external_id, "findings": r.findings,
            "indication": r.indication, "comparison": r.comparison, "impression": impression}


def _standing_ratings(rows: list[FeedbackItem], counts: Counter) -> list[FeedbackItem]:
    """The ratings no retraction withdrew (skips and retractions counted, not returned)."""
    retracted = {r.retracts for r in rows if r.kind == "retraction" and r.retracts is not None}
    ratings = []
    for r in rows:
        if r.kind != "rating":
            counts["skips" if r.kind == "skip" else "retractions"] += 1
        elif r.id in retracted:
            counts["dropped_retracted"] += 1
        else:
            ratings.append(r)
    counts["ratings"] = len(ratings)
    return ratings


class _Candidates:
    """Candidate pairs of one reader, with the drop rules applied as each is added."""
    def __init__(self, counts: Counter, critical_factor: float) -> None:
        self.counts = counts
        self.critical_factor = critical_factor
        self.pairs: list[Pair] = []
        self._missing: dict[tuple[int, str], set[str]] = {}

    def missing(self, r: FeedbackItem, text: str) -> set[str]:
        """Critical findings of the report's findings that ``text`` leaves out (cached)."""
        key = (r.report_id, text)
        if key not in self._missing:
            self._missing[key] = _missing_critical(r.findings, text)
        return self._missing[key]

    def add(self, r: FeedbackItem, chosen: str, rejected: str, kind: str, gap: int,
            fb_ids: list[int]) -> None:
        if same_words(chosen, rejected):
            self.counts["dropped_trivial_edit" if kind == "edit" else "dropped_identical"] += 1
            return
        miss_c, miss_r = self.missing(r, chosen), self.missing(r, rejected)
        if miss_c - miss_r:
            self.counts["dropped_chosen_misses_critical"] += 1
            return
        critical = bool(r.critical_missed) or bool(miss_r - miss_c)
        self.pairs.append(Pair(r.report_id, r.findings, r.indication, r.comparison,
                               chosen.strip(), rejected.strip(), kind,
                               _weight(gap, critical, self.critical_factor), gap, critical,
                               fb_ids, r.external_id))

    def from_rating(self, r: FeedbackItem, held: set[int], memory: dict, refs: dict) -> None:
        """An edit's pair, a rating's pair against the original, and what the reader accepted
        (their memory on training reports, the references on held-out ones)."""
        edited = (r.edited_text or "").strip()
        if edited:
            if r.ai_text:
                self.add(r, edited, r.ai_text, "edit", 2, [r.id])
            else:
                self.counts["edits_without_draft"] += 1
            target = memory if r.report_id not in held else refs
            target[r.report_id] = _accepted(r, edited)
        elif r.ai_text and r.rating is not None and r.rating >= 0 and not r.critical_missed \
                and r.report_id not in held and not self.missing(r, r.ai_text):
            # signed off as it stands (as good as their own, no edit): also how they want it
            # said. Without these the memory would hold only the cases the AI got wrong.
            memory[r.report_id] = _accepted(r, r.ai_text.strip())
        if r.rating is not None and r.ai_text and r.original:
            if r.rating < 0:
                self.add(r, r.original, r.ai_text, "rating", -r.rating, [r.id])
            elif r.rating > 0:
                self.add(r, r.ai_text, r.original, "rating", r.rating, [r.id])
            else:
                self.counts["equivalent"] += 1
        if r.report_id in held and r.report_id not in refs and r.original:
            refs[r.report_id] = _accepted(r, r.original)

    def ai_over_ai(self, ratings: list[FeedbackItem]) -> None:
        """The latest standing rating of each distinct AI text of a report, paired by rating."""
        by_report: dict[int, dict[tuple, FeedbackItem]] = {}
        for r in ratings:
            if r.rating is not None and r.ai_text:
                by_report.setdefault(r.report_id, {})[_norm(r.ai_text)] = r
        for texts in by_report.values():
            rated = sorted(texts.values(), key=lambda r: r.id)
            for i, a in enumerate(rated):
                for b in rated[i + 1:]:
                    if a.rating == b.rating:
                        continue
                    hi, lo = (a, b) if a.rating > b.rating else (b, a)
                    self.add(hi, hi.ai_text, lo.ai_text, "ai_vs_ai", hi.rating - lo.rating,
                             [a.id, b.id])

    def consistent(self) -> list[Pair]:
        """The candidates minus contradictions (the same two texts of one report preferred both
        ways) and duplicates."""
        directions: dict[tuple, set[tuple]] = {}
        for p in self.pairs:
            a, b = _norm(p.chosen), _norm(p.rejected)
            directions.setdefault((p.report_id, frozenset((a, b))), set()).add((a, b))
        kept: list[Pair] = []
        seen: set[tuple] = set()
        for p in self.pairs:
            a, b = _norm(p.chosen), _norm(p.rejected)
            if len(directions[(p.report_id, frozenset((a, b)))]) > 1:
                self.counts["dropped_contradictory"] += 1
            elif p.key() in seen:
                self.counts["dropped_duplicate"] += 1
            else:
                seen.add(p.key())
                kept.append(p)
        return kept


def build_pairs(items: Iterable[FeedbackItem | dict], heldout_fraction: float = 0.2,
                critical_factor: float = 2.0, heldout_reports: set[int] | None = None
                ) -> PairSet:
    """Turn one radiologist's feedback into preference pairs (see the module docstring).

    Args:
        items: the reader's feedback rows (ratings, skips, retractions), any order.
        heldout_fraction: share of reports held out for evaluation (hash of reader and report).
        critical_factor: weight multiplier when a critical finding is involved.
        heldout_reports: report ids already held out (from the store); they stay held out, and
            new reports are assigned by the hash rule.

    Returns:
        A :class:`PairSet` with training and held-out pairs, counts of what was kept and dropped,
        the reader's memory (accepted impressions on training reports) and the held-out references.
    """
    rows = sorted((i if isinstance(i, FeedbackItem) else FeedbackItem.from_row(i) for i in items),
                  key=lambda r: r.id)
    counts: Counter = Counter({f"dropped_{r}": 0 for r in DROP_REASONS})
    ratings = _standing_ratings(rows, counts)
    held = set(heldout_reports or ())
    for r in ratings:
        if r.report_id not in held and is_heldout(r.reader_id, r.report_id, heldout_fraction):
            held.add(r.report_id)
    candidates = _Candidates(counts, critical_factor)
    memory: dict[int, dict] = {}
    refs: dict[int, dict] = {}
    for r in ratings:
        candidates.from_rating(r, held, memory, refs)
    candidates.ai_over_ai(ratings)
    kept = candidates.consistent()
    for p in kept:
        counts[f"kept_{p.kind}"] += 1
    counts["kept"] = len(kept)
    counts["dropped"] = sum(v for k, v in counts.items() if k.startswith("dropped_") and
                            k != "dropped")
    counts["critical_pairs"] = sum(p.critical for p in kept)
    rated = {r.report_id for r in ratings}
    return PairSet(train=[p for p in kept if p.report_id not in held],
                   heldout=[p for p in kept if p.report_id in held],
                   heldout_reports={r for r in held if r in rated}, counts=dict(counts),
                   memory=list(memory.values()), heldout_refs=list(refs.values()),
                   high_water=max((r.id for r in rows), default=0))


def pairs_for_reader(store, reader_id: int, heldout_fraction: float = 0.2,
                     critical_factor: float = 2.0, record_heldout: bool = True) -> PairSet:
    """Read a reader's feedback (one short read), build pairs, and remember the held-out reports.

    Args:
        store: a ``core.store.database.Store``.
        reader_id: the radiologist.
        heldout_fraction: share of reports held out (by report).
        critical_factor: weight multiplier for pairs involving a critical finding.
        record_heldout: write newly held-out reports to the store (so they stay held out).

    Returns:
        The :class:`PairSet`.
    """
    with store.tx():  # one consistent snapshot of feedback and held-out slice
        rows = store.feedback_for_training(reader_id)
        known = store.heldout_report_ids(reader_id)
    pairs = build_pairs(rows, heldout_fraction=heldout_fraction, critical_factor=critical_factor,
                        heldout_reports=known)
    if record_heldout:
        new = pairs.heldout_reports - known
        if new:
            store.assign_heldout(reader_id, new)
    return pairs


def prompt_messages(pair_or_report: Pair | dict) -> list[dict]:
    """The serving prompt of a report when no retrieval index is at hand (no coarse draft, no
    examples): :func:`core.generation.prompts.draft_messages` with no neighbours. The nightly job passes
    the full serving prompt (:func:`core.generation.pipeline.serving_prompts`) to :func:`to_trl` instead."""
    get = (lambda k: getattr(pair_or_report, k)) if isinstance(pair_or_report, Pair) else \
        pair_or_report.get
    return draft_messages({"findings": get("findings"), "indication": get("indication"),
                           "comparison": get("comparison")}, [], 0)


def report_of(pair: Pair) -> dict:
    """The pair's report as the pipeline reads one (for :func:`core.generation.pipeline.serving_prompts`)."""
    return {"findings": pair.findings, "indication": pair.indication, "comparison": pair.comparison,
            "id": pair.report_id, "uid": pair.external_id}


def to_trl(pair: Pair, prompt: list[dict] | None = None) -> dict[str, Any]:
    """A pair in TRL's conversational preference format (prompt/chosen/rejected) plus metadata.

    Args:
        pair: the pair.
        prompt: its serving prompt (:func:`core.generation.pipeline.serving_prompts`); default
            :func:`prompt_messages` (no index: no draft).
    """
    return {
        "prompt": prompt if prompt is not None else prompt_messages(pair),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "weight": pair.weight,
        "kind": pair.kind,
        "critical": pair.critical,
        "report_id": pair.report_id,
        "external_id": pair.external_id,
        "feedback_ids": pair.feedback_ids,
    }


def write_jsonl(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write pairs as JSONL in TRL's preference format (written to a temp file, then renamed).

    Returns:
        The number of lines written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    n = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as fh:
            for p in pairs:
                fh.write(json.dumps(to_trl(p), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PairsError(f"{path}: cannot write pairs ({exc})") from exc
    return n


def pair_dicts(pairs: Iterable[Pair]) -> list[dict]:
    """Plain dicts (for DataFrames and JSON reports)."""
    return [asdict(p) for p in pairs]
