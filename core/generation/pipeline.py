"""Coarse-to-fine impression generation: retrieve and vote a coarse draft, let the language model
write the impression for this report from it, check it clinically. Same code path for the CLI, the
app, the nightly job, the studies and the benchmarks.

Coarse (:meth:`CoarseToFine.coarse`, findings + indication -> draft and examples):
    1. retrieve the k most similar past reports (:mod:`core.generation.retrieval`: TF-IDF over character and
       word n-grams of the findings, plus the indication; reports of the same author/template, or
       of the requesting radiologist, get a small bonus);
    2. minimum-Bayes-risk vote: every neighbour's impression is a candidate; the winner (the
       coarse draft) agrees most (similarity-weighted ROUGE-L) with all neighbours' impressions,
       plus a bonus for each positive finding of *this* report's findings it states and a penalty
       for each finding it contradicts.

Fine (the text a radiologist sees):
    3. the language model, under the shared base adapter or the radiologist's own adapter, writes
       the impression from the one prompt of :func:`draft_messages` (findings, indication,
       comparison, the coarse draft, ``shots`` retrieved examples); SFT, DPO, GRPO and the gate
       train and judge on exactly this prompt;
    4. the clinical verifier (:func:`core.clinical.verifier.verify` via :func:`checked_text`) removes
       statements this report does not support, replaces a normal statement beside a major
       finding, adds missing critical findings, and flags what is left (``needs_review``);
    5. the coarse draft is shown instead when the model's text fails that check and the draft
       does not: always flagged, with the reason (``source: retrieval-fallback``); and, under
       ``llm="auto"`` without a reader's adapter, when the verified draft agrees more with the
       neighbours' impressions than the model's verified text (:meth:`CoarseToFine.prefers_model`:
       both scored alike; ``declined`` in the flags, the model's text kept beside it);
    6. style (:mod:`core.generation.styles`): default, brief, bullets or comprehensive, rendered by rules
       from the checked impression (a 135M model asked for a patient version invents findings),
       then checked again as shown.

Without a model (``generator=None``, or ``llm="off"``) the coarse draft goes through 4 and 6.

``flags`` of every output is a JSON-ready dict: ``source`` (model / model-only / retrieval /
retrieval-fallback), ``agreement``, ``neighbours`` (uids), ``llm``, ``adapter``, ``repaired``,
``removed``, ``check_ok``, ``missing_critical``, ``contradictions``, ``unsupported``,
``normal_despite``, ``messages``, ``needs_review``, ``low_confidence``, ``style`` (and
``model_text``, ``declined`` where the draft was shown instead of the model's text).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.adapters.base import use_base_adapter
from core.clinical.labeler import label, positive_findings
from core.clinical.vocabulary import Label
from core.errors import (
    ConfigError,
    GenerationError,  # noqa: F401 (defined in core.errors)
)
from core.generation.check import checked_text, fails
from core.generation.models import BATCH_SIZE
from core.generation.prompts import PRIOR_WORDS, clean_output, draft_messages, has_prior
from core.generation.retrieval import (
    RetrievalConfig,
    RetrievalError,
    RetrievalIndex,
    consensus,
    index_for_store,
    tidy,
)
from core.generation.styles import resolve_style

PIPELINE = "c2f-v1"
LLM_MODES = ("off", "auto", "always")


@dataclass
class GenerationOutput:
    """One generated impression, its cost and what the checks found."""
    text: str
    latency_ms: float
    flags: dict = field(default_factory=dict)


@dataclass
class C2FConfig:
    """Settings of the coarse-to-fine pipeline (defaults chosen on the dev split, see bench/quality.py).

    Attributes:
        k: neighbours retrieved and voting.
        power: neighbour weight = max(similarity, 0) ** power (sharpens the vote towards the closest).
        coverage_bonus: vote bonus per positive finding of this report's findings a candidate states.
        contradiction_penalty: vote penalty per finding a candidate asserts that the findings negate.
        prior_penalty: vote penalty for a candidate that refers to a prior study (stable, unchanged,
            interval, compared) when the report has no comparison.
        own_bonus: vote bonus for candidates written by the requesting radiologist (``reader``).
        llm: ``auto`` (the default: without a reader's adapter the model writes where the vote
            agreement is below ``llm_threshold``, and its text is shown where it agrees with the
            neighbours' impressions more than the verified draft does (:meth:`CoarseToFine.prefers_model`);
            under a reader's own adapter it writes every impression and its text is shown), ``always``
            (the model writes every impression and its text is shown) or ``off`` (retrieval only;
            an ablation).
        llm_threshold: vote agreement below which a text is flagged low-confidence (and below
            which ``auto`` asks the model).
        shots: retrieved examples in the model's prompt.
        draft_in_prompt: give the model the coarse draft (False: an ablation, the model alone).
        max_new_tokens: generation budget per draft.
        repair: add missing critical findings from the findings (else only flag them).
        retrieval: feature settings of the retrieval index.
    """
    k: int = field(default=20, metadata={"help": "neighbours retrieved and voting"})
    power: float = field(default=6.0, metadata={
        "help": "neighbour weight = max(similarity, 0) ** power"})
    coverage_bonus: float = field(default=0.2, metadata={
        "help": "vote bonus per positive finding of the report a candidate states"})
    # The next three: leave-one-out over train + dev (bench/quality.py --tune-loo, BENCHMARKS.md):
    # +0.31 ROUGE-L (CI +0.13..+0.51) over 0.2 / 0 / 0.05; "stable" with no prior study is wrong.
    contradiction_penalty: float = field(default=0.4, metadata={
        "help": "vote penalty per finding a candidate asserts that the findings negate"})
    prior_penalty: float = field(default=0.1, metadata={
        "help": "vote penalty for a candidate referring to a prior study when there is none"})
    own_bonus: float = field(default=0.1, metadata={
        "help": "vote bonus for candidates written by the requesting radiologist"})
    # "auto", chosen on the dev split (bench/tune_writer.py): the embedded 135M model under the
    # base adapter scores below the verified coarse draft where the neighbours agree (dev ROUGE-L
    # 65.5 vs 66.1 when it writes everything), about even where they disagree. A reader's own
    # adapter always writes (see _wants_draft).
    llm: str = field(default="auto", metadata={
        "help": "when the model writes: auto (the default: where the retrieved neighbours "
                "disagree, its text shown where it agrees with their impressions more than "
                "the draft; always for --reader with an adapter of their own), always "
                "(every impression, from the findings and the retrieved draft) or off "
                "(retrieval and vote only, an ablation; the model is not loaded)",
        "choices": LLM_MODES})
    # The consensus check of the model's text under "auto" (prefers_model): on dev + 500
    # leave-one-out train reports (bench/tune_writer.py; BENCHMARKS.md, "The model's text
    # against the draft", 2026-12-08) +0.24 ROUGE-L (CI -0.11..+0.61) and label F1 0.748 vs
    # 0.730 over showing the model's text wherever agreement < 0.45; a higher threshold asks
    # the model more often for no gain (0.6: +0.20).
    llm_threshold: float = field(default=0.45, metadata={
        "help": "vote agreement below which a text is flagged (and auto asks the model)"})
    # The shipped base adapter is trained on the draft-only prompt (shots=0): an example costs
    # +38% prompt tokens in every training step and every drafted impression on a CPU.
    shots: int = field(default=0, metadata={"help": "retrieved examples in the model's prompt"})
    draft_in_prompt: bool = field(default=True, metadata={
        "help": "give the model the coarse draft (off: an ablation, the model alone)"})
    max_new_tokens: int = field(default=48, metadata={"help": "generation budget per draft"})
    repair: bool = field(default=True, metadata={
        "help": "add missing critical findings from the findings (else only flag them)"})
    retrieval: RetrievalConfig = field(
        default_factory=lambda: RetrievalConfig(indication_weight=0.3, author_bonus=0.05),
        metadata={"help": "feature settings of the retrieval index"})

    def __post_init__(self) -> None:
        if self.llm not in LLM_MODES:
            raise ConfigError(f"C2FConfig.llm must be one of {LLM_MODES}, got {self.llm!r}")
        if self.k < 1 or self.shots < 0 or self.max_new_tokens < 1:
            raise ConfigError(f"C2FConfig: k ({self.k}) and max_new_tokens "
                              f"({self.max_new_tokens}) must be >= 1 and shots ({self.shots}) "
                              f">= 0")


@dataclass
class StageStats:
    """Where the time of the last :meth:`CoarseToFine.generate` call went."""
    n: int = 0
    retrieve_s: float = 0.0
    vote_s: float = 0.0
    llm_s: float = 0.0
    fine_s: float = 0.0
    n_llm: int = 0
    llm_prompt_tokens: int = 0
    llm_new_tokens: int = 0
    findings_tokens: int = 0  # whitespace tokens of the findings read by retrieval

    @property
    def total_s(self) -> float:
        return self.retrieve_s + self.vote_s + self.llm_s + self.fine_s

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_s"] = self.total_s
        d["impressions_per_s"] = self.n / self.total_s if self.total_s else 0.0
        return d


def serving_prompts(reports: Sequence[dict], index: RetrievalIndex | None, config: C2FConfig | None = None,
                    readers: Sequence | None = None, exclude_self: bool = True) -> list[list[dict]]:
    """The prompts the model is served for these reports: the coarse stage, then
    :func:`draft_messages`. SFT, DPO/GRPO pairs and the promotion gate build their prompts here,
    so a model is trained and judged on the bytes it is served.

    Args:
        reports: dicts with ``findings`` (``indication``, ``comparison``, ``author``, ``id``/``uid``).
        index: the retrieval index the pipeline drafts from (None: no draft, no examples).
        config: the pipeline settings (``shots``, the vote).
        readers: per report, the radiologist the text is for (their reports get the author bonus).
        exclude_self: leave the report itself out of its neighbours (it is in the index).

    Returns:
        One chat prompt per report.
    """
    config = config or C2FConfig()
    reports = list(reports)
    if index is None:
        return [draft_messages(r, [], 0) for r in reports]
    _, neighbours, votes = CoarseToFine(index, None, config).coarse(reports, readers, exclude_self)
    return [draft_messages(r, nb, config.shots, draft=v["text"]) for r, nb, v in zip(reports, neighbours, votes)]


class _LabelCache:
    """Labels of texts, cached (impressions repeat a lot across neighbourhoods)."""
    def __init__(self, size: int = 20000) -> None:
        self._cache: dict[str, Any] = {}
        self._size = size

    def __call__(self, text: str) -> dict:
        hit = self._cache.get(text)
        if hit is None:

            hit = label(text)
            if len(self._cache) > self._size:
                self._cache.clear()
            self._cache[text] = hit
        return hit


class CoarseToFine:
    """The generation pipeline: a retrieval index, optionally a model (with adapters), a config.

    Args:
        index: the retrieval index of past reports (None: model only).
        generator: a loaded ``core.generation.models.Generator`` (None: retrieval only).
        config: pipeline settings.
        base_adapter: name of a loaded adapter used for drafts when no reader adapter is given
            (e.g. the shipped ``base-iu-xray``); None uses the bare model.

    >>> c2f = CoarseToFine(RetrievalIndex.build(reports))            # doctest: +SKIP
    >>> c2f.generate([{"findings": "Lungs clear."}], style="brief")  # doctest: +SKIP
    """
    def __init__(self, index: RetrievalIndex | None = None, generator=None, config: C2FConfig | None = None,
                 base_adapter: str | None = None) -> None:
        self.index = index
        self.generator = generator
        self.config = config or C2FConfig()
        self.base_adapter = base_adapter
        self.last_stats = StageStats()
        self._labels = _LabelCache()
        if index is None and generator is None:
            raise GenerationError("CoarseToFine needs a retrieval index, a model, or both")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store, generator=None, config: C2FConfig | None = None, split=None,
                   base_adapter: str | None = None) -> CoarseToFine:
        """A pipeline whose index holds the store's reports with an impression (cached on disk).

        Args:
            store: a ``core.store.database.Store``.
            generator: a loaded model, or None for retrieval only.
            config: pipeline settings.
            split: restrict the index to a split of ``core.ingest.splits`` (e.g. ``("train", "dev")``).
            base_adapter: see the class.

        Returns:
            The pipeline; a model-only one when the store has no report with an impression.
        """
        config = config or C2FConfig()
        try:
            index = index_for_store(store, split=split, config=config.retrieval)
        except RetrievalError:
            if generator is None:
                raise
            index = None
        return cls(index, generator, config, base_adapter)

    def use_adapter(self, name: str, path: str | Path, base: bool = False) -> None:
        """Load a LoRA adapter into the model (once) so ``generate(adapter=name)`` can use it.

        Args:
            name: adapter name.
            path: PEFT adapter directory.
            base: also make it the adapter for drafts without a reader adapter.
        """
        if self.generator is None:
            raise GenerationError(f"adapter {name!r} ({path}): this pipeline has no model")
        self.generator.load_adapter(name, path)
        if base:
            self.base_adapter = name

    # -- the pipeline --------------------------------------------------------------------------------
    def generate(self, reports: Sequence[dict], style: str = "default", reader: str | Sequence | None = None,
                 adapter: str | Sequence | None = None, batch_size: int = BATCH_SIZE, progress: bool = False,
                 exclude_self: bool = True) -> list[GenerationOutput]:
        """Impressions for report dicts, coarse to fine.

        Args:
            reports: dicts with ``findings`` (required), ``indication``, ``comparison``, optionally
                ``author``, ``uid``/``external_id`` and ``id``.
            style: ``default``, ``brief``, ``bullets``, ``comprehensive`` (or an alias).
            reader: the radiologist the impression is for (one name, or one per report): their own
                past reports get a retrieval and vote bonus. Default: each report's ``author``.
            adapter: a loaded adapter name (one, or one per report; mixed batches are fine) for the
                model's draft; forces a draft for those rows.
            batch_size: model batch size.
            progress: show progress bars.
            exclude_self: never retrieve the report itself (matched by id, else uid).

        Returns:
            One :class:`GenerationOutput` per report, in order; ``latency_ms`` is the batch time
            divided by the number of reports (model rows are batched together).

        Raises:
            GenerationError: a report without findings, or a per-report list of the wrong length.
        """
        cfg = self.config
        style = resolve_style(style)
        reports = list(reports)
        n = len(reports)
        stats = StageStats(n=n)
        self.last_stats = stats
        if not n:
            return []
        for i, r in enumerate(reports):
            if not isinstance(r, dict) or not (r.get("findings") or "").strip():
                uid = r.get("uid", r.get("external_id", r.get("id"))) if isinstance(r, dict) else None
                raise GenerationError(f"report {i} (uid {uid!r}) has no findings: an impression needs findings")
        readers = _per_row(reader, n, "reader")
        adapters = _per_row(adapter, n, "adapter")
        if any(adapters) and self.generator is None:
            raise GenerationError(f"adapter {next(a for a in adapters if a)!r} requested but this pipeline has no model")
        stats.findings_tokens = sum(len(r["findings"].split()) for r in reports)

        # 1-2. coarse: retrieve, vote among the neighbours' impressions
        queries, neighbours, votes = self.coarse(reports, readers, exclude_self, stats)

        # 3. model drafts where needed
        t0 = time.perf_counter()
        want = [i for i in range(n) if self._wants_draft(votes[i], adapters[i], neighbours[i])]
        drafts: dict[int, Any] = {}
        if want:
            prompts, names = [], []
            for i in want:
                prompts.append(draft_messages(reports[i], neighbours[i], cfg.shots,
                                              draft=votes[i]["text"] if cfg.draft_in_prompt else None))
                names.append(adapters[i] or self.base_adapter)
            # the model keeps or edits the draft: its length is the best guess of the answer's
            hints = [len((votes[i]["text"] or "").split()) if cfg.draft_in_prompt else 0
                     for i in want]
            results = self.generator.generate(prompts, adapters=names, max_new_tokens=cfg.max_new_tokens,
                                              batch_size=batch_size, progress=progress,
                                              length_hint=hints)
            for i, res in zip(want, results):
                drafts[i] = res
                stats.llm_new_tokens += res.new_tokens
                stats.llm_prompt_tokens += res.prompt_tokens
            stats.n_llm = len(want)
        stats.llm_s = time.perf_counter() - t0

        # 4-6. context, clinical check and repair, style
        t0 = time.perf_counter()
        outputs = []
        for i, r in enumerate(reports):
            outputs.append(self._fine(r, votes[i], neighbours[i], drafts.get(i), adapters[i], style))
        stats.fine_s = time.perf_counter() - t0
        per = stats.total_s * 1000 / n
        for o in outputs:
            o.latency_ms = per
        return outputs

    def coarse(self, reports: Sequence[dict], readers: Sequence | None = None, exclude_self: bool = True,
               stats: StageStats | None = None) -> tuple[list[dict], list[list], list[dict]]:
        """The coarse stage: the neighbours of each report and the vote among their impressions.

        Serving and training both call this, so the draft an adapter is trained to edit is made
        exactly as the draft it edits when serving (training: ``exclude_self`` = leave-one-out).

        Args:
            reports: dicts with ``findings`` (``indication``, ``comparison``, ``author``, ``id``).
            readers: per report, the radiologist the text is for (None: the report's ``author``).
            exclude_self: never retrieve the report itself.
            stats: where to add the stage times.

        Returns:
            (queries, neighbours, votes): ``votes[i]["text"]`` is the coarse draft (None when
            nothing was retrieved).
        """
        reports = list(reports)
        readers = list(readers) if readers is not None else [None] * len(reports)
        queries = [{**r, "author": readers[i] or r.get("author")} for i, r in enumerate(reports)]
        t0 = time.perf_counter()
        if self.index is not None:
            neighbours = self.index.search(queries, k=self.config.k, exclude_self=exclude_self)
        else:
            neighbours = [[] for _ in reports]
        t1 = time.perf_counter()
        votes = [self._vote(q, nb) for q, nb in zip(queries, neighbours)]
        if stats is not None:
            stats.retrieve_s += t1 - t0
            stats.vote_s += time.perf_counter() - t1
        return queries, neighbours, votes

    def _wants_draft(self, vote: dict, adapter: str | None, neighbours: list) -> bool:
        if self.generator is None:
            return False
        if adapter or not neighbours:
            return True
        if self.config.llm == "always":
            return True
        return self.config.llm == "auto" and vote["agreement"] < self.config.llm_threshold

    def _vote(self, query: dict, neighbours: list) -> dict:
        """MBR vote among the neighbours' impressions: the coarse draft."""
        cfg = self.config
        cands: list[str] = []
        origin: list[str] = []
        own: list[bool] = []
        for nb in neighbours:
            text = tidy(nb.impression)
            if text not in cands:
                cands.append(text)
                origin.append(f"uid:{nb.uid}" if nb.uid is not None else f"row:{nb.row}")
                own.append(bool(query.get("author")) and nb.author == query.get("author"))
            elif bool(query.get("author")) and nb.author == query.get("author"):
                own[cands.index(text)] = True
        if not cands:
            return {"text": None, "agreement": 0.0, "margin": 0.0, "origin": None}
        prior = [self._prior(query, c) + (cfg.own_bonus if mine else 0.0) for c, mine in zip(cands, own)]
        support, weights = self.support(neighbours)
        if not support:  # model only: nothing to vote against
            return {"text": cands[0], "agreement": 0.0, "margin": 0.0, "origin": origin[0], "score": 0.0}
        res = consensus(cands, support, weights, prior)
        return {"text": cands[res.best], "agreement": res.scores[res.best] - prior[res.best],
                "margin": res.margin, "origin": origin[res.best], "score": res.scores[res.best]}

    def support(self, neighbours: list) -> tuple[list[str], list[float]]:
        """What the vote scores a text against: the neighbours' impressions, each weighted by
        its similarity ** ``power``."""
        return ([tidy(nb.impression) for nb in neighbours],
                [max(nb.score, 0.0) ** self.config.power for nb in neighbours])

    def _prior(self, report: dict, text: str) -> float:
        """The vote's clinical bonus of a candidate text: + each positive finding of the report's
        findings it states, - each finding it asserts that the findings negate, - a prior study
        named when there is no comparison."""
        cfg = self.config
        f_lab = self._labels(report["findings"])
        c_pos = set(positive_findings(self._labels(text)))
        contra = sum(1 for k in c_pos if f_lab.get(k) is Label.NEGATIVE)
        bonus = cfg.coverage_bonus * len(c_pos & set(positive_findings(f_lab))) - cfg.contradiction_penalty * contra
        if cfg.prior_penalty and not has_prior(report.get("comparison")) and PRIOR_WORDS.search(text):
            bonus -= cfg.prior_penalty
        return bonus

    def prefers_model(self, report: dict, neighbours: list, text: str, draft: str | None) -> bool:
        """Does the model's text agree with the neighbours' impressions more than the coarse
        draft? Both as shown (verified, default style), both scored alike: similarity-weighted
        ROUGE-L to the neighbours' impressions plus the vote's clinical bonus (no reader bonus:
        neither text is the reader's). ``auto`` shows the shared model's text only then: where it
        does not, the 135M model's rewrite scores below the draft on held-out reports
        (``bench/tune_writer.py``). The same text as the draft is the model's."""
        if not neighbours or not draft or tidy(text) == tidy(draft):
            return True
        texts = [tidy(text), tidy(draft)]
        scores = consensus(texts, *self.support(neighbours), [self._prior(report, t) for t in texts]).scores
        return scores[0] > scores[1]

    def _fine(self, report: dict, vote: dict, neighbours: list, draft, adapter: str | None,
              style: str) -> GenerationOutput:
        """Verify and style the text: the model's when it wrote one, else the coarse draft.

        The model's text is the impression. The coarse draft is shown instead when the model's
        text fails the clinical check even after repair (or is empty) and the draft does not
        fail it too (that fallback is always flagged for review with the reason), and, under
        ``auto`` without a reader's adapter, when the draft passes the check and agrees more
        with the neighbours (:meth:`prefers_model`; ``declined`` in the flags).
        """
        cfg = self.config
        coarse_text = vote["text"] or "No impression generated."
        flags: dict[str, Any] = {
            "pipeline": PIPELINE, "style": style,
            "source": ("model-only" if not neighbours else "retrieval"),
            "from": vote["origin"], "agreement": round(float(vote["agreement"]), 4),
            "neighbours": [nb.uid for nb in neighbours[:3]], "llm": draft is not None,
            "adapter": (adapter or self.base_adapter) if draft is not None else None,
        }
        # A model draft never clears a review flag: low agreement among the neighbours is flagged
        # whoever wrote the text.
        flags["low_confidence"] = (bool(neighbours) and vote["agreement"] < cfg.llm_threshold) or not neighbours
        if draft is None:
            styled, checked = checked_text(report, coarse_text, style, repair=cfg.repair)
        else:
            model_text = clean_output(draft.text)
            m_styled, m_checked = checked_text(report, model_text, style, repair=cfg.repair)
            m_fails = fails(m_checked) or model_text == "No impression generated." or draft.truncated
            gate = not m_fails and cfg.llm == "auto" and adapter is None and bool(neighbours)
            if (m_fails or gate) and neighbours:  # only then is the coarse draft checked at all
                styled, checked = checked_text(report, coarse_text, style, repair=cfg.repair)
            declined = False
            if gate and not fails(checked):  # both as shown in the default style
                shown = ((m_styled, styled) if style == "default" else
                         tuple(checked_text(report, t, repair=cfg.repair)[0] for t in (model_text, coarse_text)))
                declined = not self.prefers_model(report, neighbours, *shown)
            if declined:  # the draft agrees with the similar reports more: it stands
                flags.update(model_text=model_text, declined="the draft agrees more with the similar reports")
            elif not m_fails or not neighbours or fails(checked):
                styled, checked = m_styled, m_checked
                flags.update(source="model" if neighbours else "model-only", **{"from": "model"})
                if draft.truncated:
                    flags["truncated"] = True
            else:
                flags["source"] = "retrieval-fallback"
                checked["messages"] = ["the model's text failed the clinical check ("
                                       + "; ".join(m_checked["messages"] or ["empty or cut off"])
                                       + "): showing the retrieval draft instead"] + checked["messages"]
                checked["needs_review"] = True
                flags["model_text"] = model_text
        flags.update(checked)
        flags["needs_review"] = bool(flags["needs_review"] or flags["low_confidence"] or flags.get("truncated"))
        return GenerationOutput(styled, 0.0, flags)


def _per_row(value, n: int, what: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise GenerationError(f"{what}: got {len(value)} values for {n} reports")
    return value


# ---------------------------------------------------------------------------------------------
# Entry points used by the CLI, the app and the study module
# ---------------------------------------------------------------------------------------------

_PIPELINES: dict[tuple, CoarseToFine] = {}


def pipeline_for(store=None, generator=None, config: C2FConfig | None = None, base_adapter: str | None = None,
                 refresh: bool = False, shared_base: bool = True) -> CoarseToFine:
    """The process-wide pipeline for a store and a model (built once; the index is cached on disk too).

    Args:
        store: a ``core.store.database.Store`` whose reports form the retrieval index (None: model only).
        generator: a loaded model, or None for retrieval only.
        config: pipeline settings (default :class:`C2FConfig`).
        base_adapter: name of an adapter already loaded into ``generator`` for drafts without a
            reader adapter (None: the shared base adapter, see ``shared_base``).
        refresh: rebuild even when cached (e.g. after an import).
        shared_base: when ``base_adapter`` is None, draft with the shared base adapter
            (``core.adapters.base.use_base_adapter``: the active trained one, else the shipped one) when
            one fits the generator's model; False: the bare model.

    Returns:
        The pipeline.
    """
    config = config or C2FConfig()
    if base_adapter is None and shared_base and generator is not None:

        base_adapter = use_base_adapter(generator)
    key = (getattr(store, "path", None), id(generator), repr(config), base_adapter,
           store.count_reports() if store is not None else 0)
    if refresh or key not in _PIPELINES:
        if store is not None:
            _PIPELINES[key] = CoarseToFine.from_store(store, generator, config, base_adapter=base_adapter)
        else:
            _PIPELINES[key] = CoarseToFine(None, generator, config, base_adapter)
    return _PIPELINES[key]


def impressions_for(generator, reports: list[dict], batch_size: int = BATCH_SIZE, max_new_tokens: int = 64,
                    progress: bool = False, style: str = "default", adapter: str | Sequence | None = None,
                    reader: str | Sequence | None = None, store=None,
                    pipeline: CoarseToFine | None = None) -> list[GenerationOutput]:
    """Impressions for report dicts with the coarse-to-fine pipeline.

    Args:
        generator: a loaded model (or None for retrieval only).
        reports: dicts with ``findings`` (``indication``, ``comparison``, ``author``, ``id`` optional).
        batch_size: model batch size.
        max_new_tokens: model budget per draft.
        progress: show progress.
        style: audience style (``core.generation.styles``).
        adapter: a loaded adapter name, or one per report.
        reader: the radiologist the text is for, or one per report.
        store: the store whose reports are retrieved from; without it (and without ``pipeline``)
            the model writes alone (few-shot impossible: poorer, flagged ``model-only``).
        pipeline: a ready pipeline (overrides ``store``/``generator``).

    Returns:
        One :class:`GenerationOutput` per report.
    """
    if pipeline is None:
        cfg = C2FConfig(max_new_tokens=max_new_tokens)
        pipeline = pipeline_for(store, generator, cfg)
    return pipeline.generate(reports, style=style, reader=reader, adapter=adapter, batch_size=batch_size,
                             progress=progress)
