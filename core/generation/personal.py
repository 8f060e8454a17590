"""Personalised drafting: many readers' drafts in one batch, each with their own adapter.

A reader's active adapter version (:mod:`core.adapters.registry`) has LoRA weights and a memory of
their accepted impressions. :class:`Drafter` drafts for many readers at once: one
``Generator.generate`` call with a per-row adapter name (PEFT mixed-adapter batches), each row's
coarse stage retrieving from its reader's memory and the shared index (:class:`RoutedIndex`).
:func:`refresh_drafts` pre-drafts a reader's next cases (the nightly job, never while they wait),
:func:`fill_missing` the shared drafts of reports that have none (``generate``, ``demo``);
:func:`reader_adapter` names the LoRA folder a reader's drafts use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from core.adapters.base import use_base_adapter
from core.adapters.registry import (
    AdapterVersion,
    active_adapter,
    read_draft_settings,
    read_pointer,
    reader_dir,
)
from core.clinical.labeler import label, positive_findings
from core.config import settings
from core.errors import AdapterError, ImpressionistError, RetrievalError, ValidationError
from core.evaluation.metrics import rouge
from core.generation.check import checked_text
from core.generation.models import BATCH_SIZE, ModelSpec, load_generator
from core.generation.pipeline import PIPELINE, C2FConfig, CoarseToFine, pipeline_for
from core.generation.retrieval import RetrievalIndex, index_for_store, tidy
from core.generation.styles import resolve_style


@dataclass
class DraftConfig:
    """How drafts are written.

    Attributes:
        min_memory: a reader memory smaller than this falls back to the shared memory.
        memory_bonus: similarity added to neighbours from the reader's own memory, for versions
            without their own (the nightly job chooses one per version by leave-one-out on
            the memory, :func:`tune_memory_bonus`, and stores it in the version's draft.json).
        guard: content guard: a personalised text must state every positive finding of the
            shared model's text for the row, and nothing more than that plus what the Findings
            state (``core.clinical.labeler.label``); otherwise the reader's own impression of the most
            similar report that does is used, else the shared text. Personalisation changes how
            things are said, never what is found.
        c2f: settings of :class:`core.generation.pipeline.CoarseToFine` (None: its defaults, the app's).
    """
    min_memory: int = field(default=3, metadata={
        "help": "a reader memory smaller than this falls back to the shared memory"})
    memory_bonus: float = field(default=0.3, metadata={
        "help": "similarity added to neighbours from the reader's own memory (versions without "
                "their own tuned bonus)"})
    guard: bool = field(default=True, metadata={
        "help": "a personalised text states exactly the shared text's positive findings, else "
                "a fallback is used"})
    c2f: Any = field(default=None, metadata={
        "help": "settings of the coarse-to-fine pipeline (None: its defaults, the app's)"})


@dataclass
class DraftOutput:
    text: str
    latency_ms: float
    flags: dict = field(default_factory=dict)


def _memory_uid(m: dict):
    """How a memory item is named in its retrieval index (and left out of its own search)."""
    return m.get("external_id") or m.get("uid") or m.get("report_id")


class RoutedIndex:
    """A retrieval index that answers each query from its reader's memory *and* the shared index.

    ``CoarseToFine`` calls ``index.search(queries, ...)``; a query dict may carry ``_memory`` (a
    key of ``memories``). Its neighbours are then the reader's own accepted impressions, their
    similarity raised by ``memory_bonus``, merged with the shared index's neighbours (the same
    report in both counts once, as the reader's version): the reader's phrasing wins wherever
    they have written about similar findings, and the shared index still covers findings they
    have not. Queries without a memory use the shared index alone.
    """
    def __init__(self, shared, memories: dict[str, Any], memory_bonus: float = 0.3,
                 bonuses: dict[str, float] | None = None) -> None:
        self.shared = shared
        self.memories = memories
        self.memory_bonus = memory_bonus
        self.bonuses = bonuses or {}

    def __len__(self) -> int:
        return len(self.shared) if self.shared is not None else 0

    def search(self, reports, k: int = 10, exclude_uids=None, exclude_self: bool = False):
        reports = list(reports)
        excl = exclude_uids if exclude_uids else None
        shared = (self.shared.search(reports, k=k, exclude_uids=excl, exclude_self=exclude_self)
                  if self.shared is not None else [[] for _ in reports])
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(reports):
            key = r.get("_memory")
            if key in self.memories:
                groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            found = self.memories[key].search(
                [reports[i] for i in rows], k=k,
                exclude_uids=[excl[i] for i in rows] if excl else None, exclude_self=exclude_self)
            bonus = self.bonuses.get(key, self.memory_bonus)
            for i, own in zip(rows, found):
                for nb in own:
                    nb.score += bonus
                mine = {nb.uid for nb in own if nb.uid is not None}
                merged = own + [nb for nb in shared[i] if nb.uid is None or nb.uid not in mine]
                merged.sort(key=lambda nb: -nb.score)
                shared[i] = merged[:k]
        return shared


class Drafter:
    """Writes impressions for (report, reader adapter) rows with the app's coarse-to-fine pipeline.

    Every row may belong to another reader: their LoRA weights draft the row (PEFT mixed-adapter
    batches, one ``generate`` call for all rows) and their memory is the row's retrieval index
    (few-shot examples and the consensus vote). Rows without a reader adapter get the shared
    model: the shared index, and the shared base adapter for drafts.

    Args:
        generator: a ``core.generation.models.Generator`` (None: retrieval only; LoRA parts are then off).
        shared_index: a ``core.generation.retrieval.RetrievalIndex`` over past reports, or a list of report
            dicts to build one from.
        config: drafting settings.
        shared_adapter: name of the shared base adapter loaded in the generator (None: bare base).
    """
    def __init__(self, generator, shared_index=None, config: DraftConfig | None = None,
                 shared_adapter: str | None = None) -> None:
        self.generator = generator
        self.config = config or DraftConfig()
        self.c2f = self.config.c2f or C2FConfig()
        self.shared_adapter = shared_adapter
        if shared_index is not None and not hasattr(shared_index, "search"):
            shared_index = self._index(list(shared_index), None)
        self.shared_index = shared_index
        self._indexes: dict[str, Any] = {}
        self._bonuses: dict[str, float] = {}

    def _index(self, memory: Sequence[dict], reader: str | None):
        rows = [m for m in memory if (m.get("findings") or "").strip() and
                (m.get("impression") or "").strip()]
        if not rows:
            return None
        return RetrievalIndex.build(
            [{**m, "uid": _memory_uid(m), "author": reader or m.get("author")} for m in rows],
            self.c2f.retrieval)

    @staticmethod
    def _key(av: AdapterVersion) -> str:
        return f"{av.reader}@{av.path}"

    def _memory_key(self, av: AdapterVersion) -> str | None:
        key = self._key(av)
        if key not in self._indexes:
            mem = av.memory()
            self._indexes[key] = (self._index(mem, av.reader) if len(mem) >= self.config.min_memory
                                  else None)
            bonus = read_draft_settings(av.path).get("memory_bonus")
            if isinstance(bonus, (int, float)) and not isinstance(bonus, bool):
                self._bonuses[key] = float(bonus)
        return key if self._indexes[key] is not None else None

    def forget(self, av: AdapterVersion) -> None:
        """Drop what is cached for a version (its memory index and settings were rewritten)."""
        key = self._key(av)
        self._indexes.pop(key, None)
        self._bonuses.pop(key, None)

    def draft(self, reports: Sequence[dict], adapters: Sequence[AdapterVersion | None],
              use_lora: bool = True, use_memory: bool = True, style: str = "default",
              batch_size: int = BATCH_SIZE, progress: bool = False,
              memory_bonus: float | None = None, llm: str | None = None) -> list[DraftOutput]:
        """Draft one impression per report with that row's reader adapter.

        Args:
            reports: dicts with findings (and indication, comparison, external_id/uid, id).
            adapters: per row the reader's adapter version, or None for the shared model.
            use_lora: apply the rows' LoRA weights (False: shared weights; ablation).
            use_memory: retrieve from the rows' reader memory (False: shared memory; ablation).
            style: the audience style (``core.generation.styles``).
            batch_size: model batch size.
            progress: show a progress bar over generation batches.
            memory_bonus: use this bonus for every row's memory (tuning); None: each version's
                own (its ``draft.json``), else ``DraftConfig.memory_bonus``.
            llm: the pipeline's ``llm`` mode for this call (None: the drafter's own). "off":
                the verified coarse draft alone, no model and no LoRA (tuning what retrieval
                proposes); "always": the model writes every row (an ablation's control).

        Returns:
            One :class:`DraftOutput` per report, in order; ``flags`` are the pipeline's flags plus
            ``adapter_version`` and ``memory`` (which memory the row retrieved from).
        """
        if len(reports) != len(adapters):
            raise ValidationError(f"{len(reports)} reports but {len(adapters)} adapters")
        if not reports:
            return []
        names: list[str | None] = []
        rows: list[dict] = []
        readers: list[str | None] = []
        memories: list[str] = []
        broken: dict[int, str] = {}
        model = llm != "off"
        for i, (r, av) in enumerate(zip(reports, adapters)):
            name = None
            if av is not None and use_lora and model and av.has_lora and \
                    self.generator is not None:
                try:
                    if self.generator.adapters.get(av.gen_name) != av.path.resolve():
                        self.generator.load_adapter(av.gen_name, av.path)
                    name = av.gen_name
                except AdapterError as exc:
                    # A damaged version (truncated weights): draft with the shared weights and
                    # say so in the row's flags instead of failing every row of the batch.
                    broken[i] = str(exc)
            names.append(name)
            key = self._memory_key(av) if av is not None and use_memory else None
            memories.append(key.split("@")[0] + f"@v{av.version}" if key else "shared")
            rows.append({**r, "uid": r.get("uid", r.get("external_id")), "_memory": key})
            readers.append(av.reader if av is not None else None)
        index = RoutedIndex(self.shared_index, {k: v for k, v in self._indexes.items()
                                                if v is not None},
                            self.config.memory_bonus if memory_bonus is None else memory_bonus,
                            {} if memory_bonus is not None else self._bonuses)
        pipeline = CoarseToFine(index if (self.shared_index is not None or index.memories)
                                else None, self.generator if model else None,
                                self.c2f if llm is None else replace(self.c2f, llm=llm),
                                base_adapter=self.shared_adapter)
        t0 = time.perf_counter()
        outputs = pipeline.generate(rows, style=style, reader=readers, adapter=names,
                                    batch_size=batch_size, progress=progress)
        personal = [i for i, (n, r) in enumerate(zip(names, rows)) if n or r["_memory"]]
        guarded: dict[int, tuple[str, str]] = {}
        if self.config.guard and personal and self.shared_index is not None:
            guarded = self._guard(personal, rows, outputs, style)
        per_ms = (time.perf_counter() - t0) * 1000 / len(rows)
        out = []
        for i, (o, av, mem) in enumerate(zip(outputs, adapters, memories)):
            flags = dict(o.flags)
            flags["adapter_version"] = av.version if av is not None else None
            flags["memory"] = mem
            text = o.text
            if i in broken:
                flags["adapter_error"] = broken[i]
            if i in guarded:
                text, flags["guard"], checked = guarded[i]
                flags.update(checked)  # the replacement's own clinical check, as shown
            out.append(DraftOutput(text, per_ms, flags))
        return out

    def _guard(self, personal: list[int], rows: list[dict], outputs: list, style: str
               ) -> dict[int, tuple[str, str, dict]]:
        """Rows whose personalised text states other findings than the shared model's text:
        row -> (replacement, how, check flags) with how = "memory" (the reader's own impression
        of a similar report that states the shared findings, verified and styled as any shown
        text) or "shared"."""
        def positives(text: str) -> frozenset:
            return frozenset(positive_findings(label(text)))

        shared_rows = [{**rows[i], "_memory": None} for i in personal]
        retrieval_only = CoarseToFine(self.shared_index, None, replace(self.c2f, llm="off"))
        shared_out = retrieval_only.generate(shared_rows, style=style)
        result: dict[int, tuple[str, str]] = {}
        for i, s in zip(personal, shared_out):
            want = positives(s.text)
            # A personal text may state more than the shared one only where the Findings do:
            # a reader's draft that names the effusion the shared text missed is kept.
            supported = want | positives(rows[i]["findings"])

            def faithful(text: str) -> bool:
                found = positives(text)
                return want <= found <= supported

            if faithful(outputs[i].text):
                continue
            key = rows[i]["_memory"]
            check_keys = ("repaired", "removed", "check_ok", "missing_critical", "contradictions",
                          "unsupported", "normal_despite", "messages", "needs_review")
            choice = (s.text, "shared", {k: s.flags[k] for k in check_keys if k in s.flags})
            if key is not None:
                own = self._indexes[key].search([rows[i]], k=self.c2f.k, exclude_self=True)[0]
                for nb in own:
                    if faithful(nb.impression):
                        text, checked = checked_text(rows[i], tidy(nb.impression), style,
                                                     repair=self.c2f.repair)
                        checked["needs_review"] = bool(checked["needs_review"]
                                                       or outputs[i].flags.get("low_confidence"))
                        choice = (text, "memory", checked)
                        break
            result[i] = choice
        return result


BONUS_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def tune_memory_bonus(drafter: Drafter, av: AdapterVersion, grid: Sequence[float] = BONUS_GRID,
                      max_items: int = 200) -> dict:
    """Choose how strongly a reader's memory outranks the shared index, by leave-one-out on
    the memory itself (never on the held-out slice, which the gate then judges on).

    Each of the (at most ``max_items`` most recent) memory reports is drafted with that report
    left out of both the memory and the shared index, once per bonus in ``grid``, and scored by
    ROUGE-L against the reader's own accepted impression; the best bonus wins, ties going to the
    smaller one (closer to the shared model). Readers who write like the department get a small
    bonus (their memory then only breaks ties); readers with a style of their own get a large
    one (BENCHMARKS.md, "Personalization").

    Returns:
        ``{"memory_bonus": best, "loo_rougeL": {bonus: score}, "loo_n": n}`` (``memory_bonus``
        is ``DraftConfig.memory_bonus`` when the memory is too small to judge).
    """
    mem = [m for m in av.memory() if (m.get("findings") or "").strip() and
           (m.get("impression") or "").strip()][-max_items:]
    if len(mem) < max(drafter.config.min_memory, 5):
        return {"memory_bonus": drafter.config.memory_bonus, "loo_rougeL": {}, "loo_n": len(mem)}
    rows = [{"findings": m["findings"], "indication": m.get("indication"),
             "comparison": m.get("comparison"), "id": m.get("report_id"),
             "uid": _memory_uid(m)} for m in mem]
    refs = [m["impression"] for m in mem]
    scores: dict[float, float] = {}
    for bonus in grid:
        # The bonus decides what retrieval proposes (the draft and the examples): judged on the
        # coarse draft, without the model (6 x 200 model drafts were minutes of a CPU night).
        outs = drafter.draft(rows, [av] * len(rows), use_lora=False, memory_bonus=bonus,
                             llm="off")
        scores[float(bonus)] = rouge([o.text for o in outs], refs)["rougeL"]
    best = max(sorted(scores), key=lambda b: (round(scores[b], 6), -b))
    return {"memory_bonus": best, "loo_rougeL": {str(b): round(v, 3) for b, v in scores.items()},
            "loo_n": len(mem)}


def refresh_drafts(store, drafter: Drafter, readers: Sequence[str], per_reader: int = 20,
                   model_name: str | None = None, progress: bool = False) -> int:
    """Pre-generate drafts with each reader's active adapter for their next unrated reports,
    all readers in one mixed-adapter batch, and store them (``generations.adapter`` = username,
    ``adapter_version`` = version). Returns how many were stored."""
    rows: list[dict] = []
    avs: list[AdapterVersion] = []
    for name in readers:
        av = active_adapter(store, name)
        if av is None:
            continue
        r = store.get_reader(name)
        for rep in store.pending_reports_for(r.id, av.name, per_reader):
            rows.append(rep)
            avs.append(av)
    if not rows:
        return 0
    outputs = drafter.draft(rows, avs, progress=progress)
    model = model_name or getattr(drafter.generator, "name", None) or "retrieval"
    store.add_generations({"report_id": rep["id"], "model": model, "adapter": av.name,
                           "adapter_version": av.version, "style": "default", "text": o.text,
                           "flags": o.flags, "latency_ms": o.latency_ms}
                          for rep, av, o in zip(rows, avs, outputs))
    return len(rows)


def fill_missing(store, generator, limit: int | None = None, batch_size: int = BATCH_SIZE,
                 chunk: int = 64, progress: bool = True, style: str = "default",
                 pipeline: CoarseToFine | None = None) -> int:
    """Generate and store impressions for reports that have none yet. Returns how many.

    Works in chunks so that each chunk is stored (and visible in the app) as soon as it is
    done, and the database is held only for the short insert. A report is never retrieved
    as its own neighbour.

    Args:
        store: the store.
        generator: a loaded model, or None for retrieval only.
        limit: at most this many reports.
        batch_size: model batch size.
        chunk: reports per stored chunk.
        progress: show a progress bar.
        style: the style to generate (stored in ``generations.style``).
        pipeline: a ready pipeline (default: :func:`pipeline_for` of this store and model).

    Returns:
        The number of generated impressions.
    """
    from tqdm.auto import tqdm  # deferred: tqdm is only needed for a progress bar

    style = resolve_style(style)
    todo = store.reports_without_generation(style=style, limit=limit)
    if not todo:
        return 0
    pipeline = pipeline or pipeline_for(store, generator)
    name = getattr(generator, "name", None) or f"retrieval-{PIPELINE}"
    bar = tqdm(total=len(todo), desc="generate", unit="report", disable=not progress)
    done = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        outputs = pipeline.generate(part, style=style, batch_size=batch_size)
        # drafts of the shared base adapter are the shared model's (generations.adapter NULL)
        store.add_generations({"report_id": r["id"], "model": name, "text": o.text, "style": style,
                               "adapter": (None if o.flags.get("adapter") == pipeline.base_adapter
                                           else o.flags.get("adapter")), "flags": o.flags,
                               "latency_ms": o.latency_ms} for r, o in zip(part, outputs))
        done += len(part)
        bar.update(len(part))
    bar.close()
    return done


def _load_generator(model_path: str | None):
    # the gate's drafts on a GPU when there is one (an 8B model on a CPU would take hours)
    return load_generator(ModelSpec(path=model_path or settings().model_path, device="auto"))


def load_drafter(store, config: DraftConfig | None = None, generator=None, with_model: bool = True,
                 model_path: str | None = None) -> Drafter:
    """A drafter over the embedded (or configured) model, with the store's reports as the
    shared retrieval index (the app's) and the shared base adapter loaded when there is one.
    ``with_model=False`` (memory-only nights) drafts by retrieval alone until a LoRA adapter
    has to be evaluated; the model is then loaded on demand.

    Args:
        store: the store whose reports form the shared index.
        config: drafting settings (default :class:`DraftConfig`).
        generator: a loaded model; None loads ``model_path`` when ``with_model``.
        with_model: load a model when none is given.
        model_path: the checkpoint to load (default: the configured one).
    """
    config = config or DraftConfig()
    if generator is None and with_model:
        generator = _load_generator(model_path)
    shared_name = use_base_adapter(generator)
    c2f = config.c2f or C2FConfig()
    try:
        index = index_for_store(store, config=c2f.retrieval)
    except RetrievalError:
        index = None
    return Drafter(generator, index, config, shared_adapter=shared_name)


def reader_drafts(store, generator, reports: list[dict], reader: str, style: str, batch_size: int,
                   config: C2FConfig | None) -> list | None:
    """Drafts with the reader's whole active adapter (memory of their accepted impressions and
    LoRA weights), the app's path (:class:`Drafter`); None when the reader has no
    active version (the shared pipeline then drafts, with their own past reports favoured)."""
    version = active_adapter(store, reader)  # NotFound names an unknown reader
    if version is None:
        return None
    drafter = load_drafter(store, DraftConfig(c2f=config) if config is not None else None,
                           generator=generator, with_model=generator is not None)
    return drafter.draft(reports, [version] * len(reports), style=style, batch_size=batch_size,
                         progress=True)


def reader_adapter(reader: str, store=None) -> Path | None:
    """The radiologist's *active* (promoted) adapter directory holding ``adapter_config.json``;
    None when their drafts use the shared model or the active version has no LoRA weights.

    A rejected or not yet promoted version is never used, even when it is the newest folder.
    The database is the authority (:func:`core.adapters.registry.active_adapter`) when ``store``
    is given; otherwise the reader's pointer file (:func:`core.adapters.registry.read_pointer`,
    the database's mirror) names the version. A flat ``<adapters>/<reader>/adapter_config.json``
    (an adapter copied in by hand, no versions) is used when there is no active version.

    Args:
        reader: the radiologist's username.
        store: the store whose ``active_adapters`` table decides (None: the pointer file).

    Returns:
        The directory, or None.
    """
    base = reader_dir(reader)
    flat = base if (base / "adapter_config.json").is_file() else None
    if store is not None:
        try:
            av = active_adapter(store, reader)
        except ImpressionistError:
            av = None
        if av is not None:
            return av.path if av.has_lora else None
        return flat
    version = read_pointer(reader)
    if version is None:
        return flat
    folder = base / f"v{version}"
    return folder if (folder / "adapter_config.json").is_file() else None
