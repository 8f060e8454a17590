"""Retrieval of similar past reports, and minimum-Bayes-risk consensus over their impressions.

Why: in IU X-ray (and in any department) impressions are written from a few dictation templates,
so the impression of the most similar findings is a strong answer (on the fixed test split,
bench/quality.py: word TF-IDF 1-NN ROUGE-L 59.4 against 42.0 for a constant normal impression and
62.7 for the coarse-to-fine default; ~5-7 for SmolLM2-135M drafting alone). Two things make
retrieval better than copying the single nearest neighbour:

1. Robust features: TF-IDF over character n-grams (3-5, inside word boundaries) plus word uni- and
   bi-grams of the findings (and, with a small weight, the indication). Character n-grams make a
   typo ("pneumothroax") cost a few shared n-grams instead of the whole word.
2. Consensus: the top-k neighbours vote. Each candidate impression (a neighbour's impression, or a
   model's draft) is scored by its similarity-weighted agreement (ROUGE-L F, the metric that is
   reported) with the neighbours' impressions; the candidate that agrees most with the weighted
   neighbourhood wins (minimum Bayes risk decoding, Kumar & Byrne 2004). A lone odd neighbour
   loses against five neighbours that agree.

The index is built once from the reports in the store and cached under ``data/retrieval/`` keyed by
the reports' count, max id and the split filter (:func:`index_for_store`).

>>> idx = RetrievalIndex.build([{"findings": "Lungs clear.", "impression": "Normal."},
...                             {"findings": "Large right effusion.", "impression": "Effusion."}])
>>> idx.search([{"findings": "The lungs are clear."}], k=1)[0][0].impression
'Normal.'
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import settings
from core.errors import RetrievalError  # noqa: F401 (defined in core.errors)
from core.evaluation.metrics import rouge_l
from core.ingest.splits import in_split

INDEX_VERSION = 1


@dataclass(frozen=True)
class RetrievalConfig:
    """How reports are turned into vectors. Chosen on the dev split (bench/quality.py --tune).

    Attributes:
        char_ngrams: (min, max) character n-gram range (``char_wb`` analyzer); None disables.
        word_ngrams: (min, max) word n-gram range; None disables.
        char_weight: weight of the character block (blocks are L2-normalised, then weighted).
        word_weight: weight of the word block.
        indication_weight: weight of a word TF-IDF block of the indication (0 disables).
        comparison_weight: weight of a word TF-IDF block of the comparison (0 disables); how the
            comparison is worded ("None.", "None available", a date) identifies the template.
        author_bonus: added to the cosine similarity when the neighbour has the same author
            (dictation template / radiologist) as the query; 0 disables.
    """
    char_ngrams: tuple[int, int] | None = field(default=(3, 5), metadata={
        "help": "(min, max) character n-gram range (char_wb analyzer); None disables"})
    word_ngrams: tuple[int, int] | None = field(default=(1, 2), metadata={
        "help": "(min, max) word n-gram range; None disables"})
    char_weight: float = field(default=1.0, metadata={
        "help": "weight of the character block (blocks are L2-normalised, then weighted)"})
    word_weight: float = field(default=1.0, metadata={"help": "weight of the word block"})
    indication_weight: float = field(default=0.0, metadata={
        "help": "weight of a word TF-IDF block of the indication (0 disables)"})
    comparison_weight: float = field(default=0.0, metadata={
        "help": "weight of a word TF-IDF block of the comparison (0 disables)"})
    author_bonus: float = field(default=0.0, metadata={
        "help": "added to the similarity of a neighbour by the same author (0 disables)"})


@dataclass
class Neighbour:
    """One retrieved report."""
    row: int  # position in the index
    score: float  # cosine similarity (plus the author bonus), higher is closer
    findings: str
    impression: str
    uid: str | None = None
    report_id: int | None = None
    author: str | None = None


_WS = re.compile(r"\s+")
_XXXX = re.compile(r"\bX{2,}\b")


def normalise(text: str | None) -> str:
    """Lower-case, collapse whitespace, turn IU "XXXX" de-identification marks into one token."""
    return _WS.sub(" ", _XXXX.sub(" xxxx ", text or "")).strip().lower()


_DOUBLE_DOT = re.compile(r"(?<=[.!?])(?:\s*\.)+")


def tidy(text: str) -> str:
    """Clean a stored impression for display: collapse whitespace and stray repeated periods.

    >>> tidy("No acute cardiopulmonary abnormality. .")
    'No acute cardiopulmonary abnormality.'
    """
    text = _WS.sub(" ", text or "").strip()
    return _DOUBLE_DOT.sub("", text).strip()


class RetrievalIndex:
    """TF-IDF vectors of the findings of past reports, searchable by cosine similarity.

    Build it with :meth:`build` (or :func:`index_for_store` for the store's reports, cached).
    """
    def __init__(self, docs: list[dict], config: RetrievalConfig, vectorizers: dict, matrix) -> None:
        self.docs = docs
        self.config = config
        self.vectorizers = vectorizers
        self.matrix = matrix  # scipy CSR, rows L2-normalised
        self._uid_rows: dict[str, list[int]] = {}
        self._id_rows: dict[int, list[int]] = {}
        for i, d in enumerate(docs):
            if d.get("uid") is not None:
                self._uid_rows.setdefault(str(d["uid"]), []).append(i)
            if d.get("id") is not None:
                self._id_rows.setdefault(int(d["id"]), []).append(i)

    def __len__(self) -> int:
        return len(self.docs)

    @classmethod
    def build(cls, reports: Iterable[dict], config: RetrievalConfig | None = None) -> RetrievalIndex:
        """Fit the vectorizers on the reports' findings and index them.

        Args:
            reports: dicts with ``findings`` and ``impression`` (both non-blank), optionally
                ``indication``, ``author``, ``uid`` (or ``external_id``) and ``id``.
            config: feature settings; the tuned defaults when None.

        Returns:
            The index.

        Raises:
            RetrievalError: no usable report, or a report without findings/impression.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer  # deferred: heavy

        config = config or RetrievalConfig()
        docs = []
        for i, r in enumerate(reports):
            findings, impression = (r.get("findings") or "").strip(), (r.get("impression") or "").strip()
            if not findings or not impression:
                raise RetrievalError(
                    f"report {i} (uid {r.get('uid', r.get('external_id'))!r}) has a blank "
                    f"{'findings' if not findings else 'impression'}; only complete reports can be retrieved")
            uid = r.get("uid", r.get("external_id"))
            docs.append({"findings": findings, "impression": impression,
                         "indication": (r.get("indication") or "").strip(),
                         "comparison": (r.get("comparison") or "").strip(),
                         "author": r.get("author"), "uid": None if uid is None else str(uid),
                         "id": r.get("id")})
        if not docs:
            raise RetrievalError("no reports to build a retrieval index from: import reports first")
        vectorizers = {}
        texts = [normalise(d["findings"]) for d in docs]
        if config.char_ngrams:
            vectorizers["char"] = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(config.char_ngrams),
                                                  sublinear_tf=True, min_df=2 if len(docs) > 50 else 1,
                                                  dtype=_float32()).fit(texts)
        if config.word_ngrams:
            vectorizers["word"] = TfidfVectorizer(ngram_range=tuple(config.word_ngrams), sublinear_tf=True,
                                                  dtype=_float32()).fit(texts)
        if config.indication_weight > 0:
            ind = [normalise(d["indication"]) or "none" for d in docs]
            vectorizers["indication"] = TfidfVectorizer(sublinear_tf=True, dtype=_float32()).fit(ind)
        if config.comparison_weight > 0:
            cmp_ = [normalise(d["comparison"]) or "absent" for d in docs]
            vectorizers["comparison"] = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2),
                                                        dtype=_float32()).fit(cmp_)
        if not vectorizers:
            raise RetrievalError("RetrievalConfig disables every feature block")
        index = cls(docs, config, vectorizers, None)
        index.matrix = index._vectors(docs)
        return index

    def _vectors(self, reports: Sequence[dict]):
        """L2-normalised, weighted, stacked feature blocks for report dicts."""
        from scipy.sparse import hstack  # deferred: heavy
        from sklearn.preprocessing import normalize as l2  # deferred: heavy

        texts = [normalise(r.get("findings")) for r in reports]
        blocks = []
        if "char" in self.vectorizers:
            blocks.append(l2(self.vectorizers["char"].transform(texts)) * self.config.char_weight)
        if "word" in self.vectorizers:
            blocks.append(l2(self.vectorizers["word"].transform(texts)) * self.config.word_weight)
        if "indication" in self.vectorizers:
            ind = [normalise(r.get("indication")) or "none" for r in reports]
            blocks.append(l2(self.vectorizers["indication"].transform(ind)) * self.config.indication_weight)
        if "comparison" in self.vectorizers:
            cmp_ = [normalise(r.get("comparison")) or "absent" for r in reports]
            blocks.append(l2(self.vectorizers["comparison"].transform(cmp_)) * self.config.comparison_weight)
        return l2(hstack(blocks).tocsr())

    def similarities(self, reports: Sequence[dict]):
        """Dense (len(reports), len(index)) cosine similarity matrix (float32), author bonus added."""
        import numpy as np  # deferred: numpy is slow to import for a CLI's --help

        sims = (self._vectors(reports) @ self.matrix.T).toarray().astype(np.float32)
        if self.config.author_bonus:
            authors = np.array([d.get("author") or "" for d in self.docs], dtype=object)
            for i, r in enumerate(reports):
                a = r.get("author")
                if a:
                    sims[i, authors == a] += self.config.author_bonus
        return sims

    def search(self, reports: Sequence[dict], k: int = 10, exclude_uids: Sequence[Iterable[str]] | None = None,
               exclude_self: bool = False) -> list[list[Neighbour]]:
        """The k most similar indexed reports for each query report.

        Args:
            reports: dicts with ``findings`` (and ``indication``/``author`` when the config uses them).
            k: neighbours per query.
            exclude_uids: per query, uids that must not be returned (e.g. the query itself when it
                is indexed: leave-one-out evaluation).
            exclude_self: exclude the query itself when it is indexed: rows with the query's ``id``
                (store report id) when both have one, else rows with its ``uid``/``external_id``.

        Returns:
            One list of :class:`Neighbour` per query, best first.
        """
        import numpy as np  # deferred: numpy is slow to import for a CLI's --help

        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        reports = list(reports)
        if not reports:
            return []
        for i, r in enumerate(reports):
            if not (r.get("findings") or "").strip():
                raise RetrievalError(f"query {i} (uid {r.get('uid', r.get('external_id'))!r}) has blank findings")
        out: list[list[Neighbour]] = []
        for start in range(0, len(reports), 512):  # bounded memory for big batches
            part = reports[start:start + 512]
            sims = self.similarities(part)
            for j, r in enumerate(part):
                row = sims[j]
                banned: set[str] = set()
                if exclude_uids is not None:
                    banned |= {str(u) for u in exclude_uids[start + j]}
                if exclude_self and not (r.get("id") is not None and self._id_rows):
                    uid = r.get("uid", r.get("external_id"))
                    if uid is not None:
                        banned.add(str(uid))
                for uid in banned:
                    row[self._uid_rows.get(uid, [])] = -np.inf
                if exclude_self and r.get("id") is not None and self._id_rows:
                    row[self._id_rows.get(int(r["id"]), [])] = -np.inf
                kk = min(k, len(self.docs))
                top = np.argpartition(-row, kk - 1)[:kk]
                top = top[np.argsort(-row[top], kind="stable")]
                out.append([self._neighbour(int(t), float(row[t])) for t in top if np.isfinite(row[t])])
        return out

    def _neighbour(self, row: int, score: float) -> Neighbour:
        d = self.docs[row]
        return Neighbour(row, score, d["findings"], d["impression"], d["uid"], d["id"], d["author"])


def _float32():
    import numpy as np  # deferred: numpy is slow to import for a CLI's --help

    return np.float32


@dataclass
class ConsensusResult:
    """Which candidate won the vote, and how clearly."""
    best: int  # index into the candidates
    scores: list[float]  # expected agreement of each candidate with the neighbourhood, in [0, 1]
    margin: float  # best score minus the runner-up (0 when only one distinct candidate)
    agreement: float  # the best score itself: 1 = every neighbour says the same


def consensus(candidates: Sequence[str], support: Sequence[str], weights: Sequence[float],
              candidate_prior: Sequence[float] | None = None) -> ConsensusResult:
    """Minimum-Bayes-risk choice: the candidate with the highest weighted ROUGE-L to the support set.

    Args:
        candidates: texts to choose from (neighbours' impressions, model drafts).
        support: the "pseudo-references" (usually the neighbours' impressions).
        weights: one non-negative weight per support text (e.g. similarity ** power).
        candidate_prior: optional additive bonus per candidate (e.g. for the radiologist's own
            past impressions or a model draft); in ROUGE-L units [0, 1].

    Returns:
        A :class:`ConsensusResult`.

    Raises:
        RetrievalError: no candidates, or support and weights of different lengths.
    """
    if not candidates:
        raise RetrievalError("consensus needs at least one candidate")
    if len(support) != len(weights):
        raise RetrievalError(f"consensus: {len(support)} support texts but {len(weights)} weights")
    # Identical support texts are merged (IU impressions repeat a lot).
    merged: dict[str, float] = {}
    for s, w in zip(support, weights):
        merged[s] = merged.get(s, 0.0) + max(float(w), 0.0)
    total = sum(merged.values()) or 1.0
    cache: dict[str, float] = {}
    scores = []
    for i, c in enumerate(candidates):
        if c not in cache:
            cache[c] = sum(w * (1.0 if c == s else rouge_l(c, s)) for s, w in merged.items()) / total
        scores.append(cache[c] + (candidate_prior[i] if candidate_prior is not None else 0.0))
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    others = [s for i, s in enumerate(scores) if candidates[i] != candidates[best]]
    margin = scores[best] - max(others) if others else 0.0
    return ConsensusResult(best, scores, margin, scores[best])


# --------------------------------------------------------------------------------------------
# The store's index, cached on disk
# --------------------------------------------------------------------------------------------


def _cache_key(reports: list[dict], config: RetrievalConfig, split: object) -> str:
    ids = [r.get("id") or 0 for r in reports]
    raw = repr((INDEX_VERSION, len(reports), max(ids) if ids else 0, sum(ids), sorted(asdict(config).items()),
                split))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def index_for_store(store, split: str | Iterable[str] | None = None, config: RetrievalConfig | None = None,
                    cache_dir: str | Path | None = None, exclude_ids: Iterable[int] = ()) -> RetrievalIndex:
    """The retrieval index of the store's reports that have an impression, cached on disk.

    The cache file is ``<data>/retrieval/index-<key>.pkl`` where the key hashes the number of
    reports, their max and summed ids, the config and the split: importing reports makes a new
    key (the old file is simply not used again; stale files are removed).

    Args:
        store: a ``core.store.database.Store``.
        split: index only reports whose external id is in this split (``core.ingest.splits``), e.g.
            ``("train", "dev")`` when evaluating on test; None for all reports.
        config: feature settings; the tuned defaults when None.
        cache_dir: where to keep the pickle (default ``settings().db_home / "retrieval"``, beside
            the database).
        exclude_ids: report ids never to index (e.g. the reports being generated for, so a report
            is not its own neighbour).

    Returns:
        The index.

    Raises:
        RetrievalError: the store has no report with an impression.
    """
    config = config or RetrievalConfig()
    excluded = set(exclude_ids)
    rows = [r for r in store.reports() if (r.get("impression") or "").strip() and (r.get("findings") or "").strip()
            and r["id"] not in excluded]
    if split is not None:
        rows = [r for r in rows if in_split(r["external_id"], split)]
    if not rows:
        raise RetrievalError(f"no reports with an impression in the store {getattr(store, 'path', '')}"
                             f"{f' (split {split})' if split else ''}: import reports first")
    split_key = None if split is None else (split if isinstance(split, str) else tuple(sorted(split)))
    key = _cache_key(rows, config, split_key)
    folder = Path(cache_dir) if cache_dir else settings().db_home / "retrieval"
    path = folder / f"index-{key}.pkl"
    if path.is_file():
        try:
            with path.open("rb") as fh:
                index = pickle.load(fh)
            if isinstance(index, RetrievalIndex) and len(index) == len(rows):
                return index
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            pass  # a broken or outdated cache file is rebuilt below
    index = RetrievalIndex.build([{**r, "uid": r["external_id"]} for r in rows], config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(index)}")
        with tmp.open("wb") as fh:
            pickle.dump(index, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        for old in folder.glob("index-*.pkl"):
            if old != path and old.stat().st_mtime < path.stat().st_mtime - 3600:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # caching is an optimisation; a read-only data folder still works
    return index


__all__ = [
    "RetrievalError", "RetrievalConfig", "RetrievalIndex", "Neighbour", "ConsensusResult",
    "consensus", "index_for_store", "normalise", "tidy",
]
