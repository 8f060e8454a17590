"""The nightly job: train, evaluate and (maybe) promote one adapter per radiologist.

``python -m core nightly`` (cron: once a night). For each active radiologist with enough new
feedback since their last successful run:

1. read their feedback and build pairs (one short read transaction; the newly held-out reports
   are recorded in a second short one);
2. record a ``training_runs`` row (status ``running``);
3. write the candidate version under ``<adapters>/<reader>/.tmp-v<N>-<pid>``: their memory (accepted
   impressions) and LoRA weights trained with DPO (or GRPO) starting from the shared base adapter.
   **No database transaction is open while training**: the app keeps the file;
4. evaluate the candidate and the adapter it must beat (their active one, or the shared model) on
   their held-out reports and pairs: ROUGE-L against their own edits/originals, clinical label F1,
   critical-finding recall, and preference accuracy;
5. rename the folder to ``v<N>``, record it, and promote it only if the gate passes (ROUGE-L gain
   of at least ``min_rouge_gain`` points, preference accuracy and label F1 not lower beyond a small
   tolerance, critical-finding recall not lower at all); promotion is one transaction;
6. finish the run row (succeeded / failed, metrics, losses, decision and reason).

Then the promoted readers' next cases are pre-drafted with their new adapters, all readers in
mixed-adapter batches.

Safety: one nightly job at a time per database (``<database home>/nightly.lock``). At start,
runs left ``running`` by a killed job are marked ``abandoned``, half-written version folders are
removed, and the pointer files are re-synced from the database. A crash or kill at any point leaves the active
adapters and the database as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from core.adapters.base import (
    SHARED_ADAPTER_NAME,  # "@shared": never a valid username
    SHARED_READER,
    shared_adapter_dir,
    use_base_adapter,
)
from core.adapters.files import check_adapter_files
from core.adapters.registry import (
    AdapterVersion,
    active_adapter,
    allocate_version,
    cleanup_partial,
    commit_version,
    promote,
    sync_pointers,
    write_draft_settings,
    write_memory,
)
from core.config import settings
from core.errors import (
    AdapterError,
    ConfigError,
    ImpressionistError,
    NightlyBusy,  # noqa: F401 (defined in core.errors)
)
from core.generation.models import ModelSpec, load_generator
from core.generation.personal import (
    DraftConfig,
    Drafter,
    load_drafter,
    refresh_drafts,
    tune_memory_bonus,
)
from core.generation.pipeline import serving_prompts
from core.learning import distributed
from core.learning.dpo import train_dpo
from core.learning.gate import GateResult, evaluate_versions, gate
from core.learning.grpo import train_grpo
from core.learning.pairs import pairs_for_reader, report_of, to_trl
from core.learning.rewards import StyleProfile, grpo_reward_funcs
from core.learning.train import TrainConfig, write_manifest
from core.util import now

__all__ = ["NightlyBusy", "NightlyConfig", "ReaderOutcome", "NightlyReport", "GateResult",
           "run_nightly", "evaluate_versions", "gate", "SHARED_ADAPTER_NAME"]


@dataclass
class NightlyConfig:
    """What the nightly job trains and how it decides.

    Attributes:
        method: "dpo" (default), "grpo" (online RL with the hierarchical reward), or "memory"
            (no LoRA training: the new version updates the reader's memory and keeps the
            current version's LoRA weights, if any).
        min_new_feedback: train a reader only when this many ratings (or retractions) arrived
            since their last successful run.
        min_pairs: ...and when they have at least this many training pairs (LoRA methods).
        min_heldout_reports: a candidate is never promoted with fewer held-out reports.
        heldout_fraction: share of each reader's reports kept for evaluation.
        max_pairs: train on at most this many pairs (the most recent).
        eval_max_reports: evaluate on at most this many held-out reports.
        min_rouge_gain: ROUGE-L points the candidate must gain over the current adapter.
        pref_tolerance / label_tolerance: allowed drop in preference accuracy / label F1.
        readers: only these usernames (None: every active radiologist).
        force: ignore ``min_new_feedback``.
        refresh_per_reader: after promotion, pre-draft this many of the reader's next cases.
        model_path: the base checkpoint (default: the embedded model).
        train: training hyper-parameters.
        draft: drafting settings (evaluation and pre-drafting).
        nice: the job's CPU priority as a Unix nice value (0-19; default 10, or
            ``$IMPRESSIONIST_NIGHTLY_NICE``): on the app's server the app's threads run first.
        threads: the job's thread budget for torch (default ``$IMPRESSIONIST_NIGHTLY_THREADS``,
            else ``train.threads``, else every core but one): the app keeps a core.
    """
    method: str = field(default="dpo", metadata={
        "help": "dpo, grpo (online RL with the hierarchical reward) or memory (no LoRA "
                "training: only the reader's memory is updated)",
        "choices": ("dpo", "grpo", "memory")})
    min_new_feedback: int = field(default=20, metadata={
        "help": "train a reader only after this many new ratings"})
    min_pairs: int = field(default=8, metadata={
        "help": "...and only with at least this many training pairs (LoRA methods)"})
    # 4 held-out reports promoted versions that were 38 ROUGE-L points worse on a reader's
    # unseen reports (BENCHMARKS.md, "Personalization", real readers): demand more evidence.
    min_heldout_reports: int = field(default=10, metadata={
        "help": "never promote on fewer held-out reports of the reader"})
    heldout_fraction: float = field(default=0.2, metadata={
        "help": "share of each reader's reports kept for evaluation"})
    max_pairs: int = field(default=256, metadata={
        "help": "train on at most this many pairs (the most recent)"})
    eval_max_reports: int = field(default=32, metadata={
        "help": "evaluate on at most this many held-out reports"})
    min_rouge_gain: float = field(default=0.5, metadata={
        "help": "ROUGE-L points a candidate must gain over the current adapter"})
    pref_tolerance: float = field(default=0.02, metadata={
        "help": "allowed drop in preference accuracy"})
    label_tolerance: float = field(default=0.02, metadata={"help": "allowed drop in label F1"})
    readers: list[str] | None = field(default=None, metadata={
        "help": "only these usernames, a comma list (default: every active radiologist)"})
    force: bool = field(default=False, metadata={"help": "ignore --min-new-feedback"})
    refresh_per_reader: int = field(default=20, metadata={
        "help": "pre-draft this many next cases per promoted reader"})
    model_path: str | None = field(default=None, metadata={
        "help": "base checkpoint (default: the embedded model)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "training hyper-parameters"})
    draft: DraftConfig = field(default_factory=DraftConfig, metadata={
        "help": "drafting settings (evaluation and pre-drafting)"})
    nice: int = field(default_factory=lambda: settings().nightly_nice, metadata={
        "help": "CPU priority (nice 0-19; default $IMPRESSIONIST_NIGHTLY_NICE, else 10)"})
    threads: int | None = field(default_factory=lambda: settings().nightly_threads, metadata={
        "help": "torch threads (default: $IMPRESSIONIST_NIGHTLY_THREADS, else every core but "
                "one)"})

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "grpo", "memory"):
            raise ConfigError(f"NightlyConfig.method {self.method!r}: expected dpo, grpo "
                              f"or memory")
        for name in ("min_new_feedback", "min_pairs", "min_heldout_reports", "eval_max_reports",
                     "refresh_per_reader"):
            if getattr(self, name) < 0:
                raise ConfigError(f"NightlyConfig.{name} {getattr(self, name)!r}: expected >= 0")
        if self.max_pairs < 1:
            raise ConfigError(f"NightlyConfig.max_pairs {self.max_pairs!r}: expected >= 1")
        if not 0 <= self.heldout_fraction <= 1:
            raise ConfigError(f"NightlyConfig.heldout_fraction {self.heldout_fraction!r}: "
                              f"expected 0..1")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"NightlyConfig.nice {self.nice!r}: expected 0..19")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"NightlyConfig.threads {self.threads!r}: expected >= 1")

    def thread_budget(self) -> int:
        """Torch threads for this job: ``threads``, else ``train.threads``, else all cores of
        this process's CPU set but one (at least one)."""
        return self.threads or self.train.threads or max(1, len(os.sched_getaffinity(0)) - 1)

    def to_dict(self) -> dict:
        """The settings as JSON values (for the run's row and the adapter's manifest)."""
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return json.loads(json.dumps(d, default=str))  # a Path given as model_path, say


@dataclass
class ReaderOutcome:
    """What the nightly job did for one radiologist."""
    reader: str
    status: str  # skipped | succeeded | failed
    reason: str = ""
    run_id: int | None = None
    version: int | None = None
    promoted: bool = False
    n_pairs: int = 0
    n_train_pairs: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    pairs_per_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    # where the reader's wall time went: memory (and its bonus tuning), prompts, train, gate
    phases_s: dict = field(default_factory=dict)


@dataclass
class NightlyReport:
    outcomes: list[ReaderOutcome]
    abandoned: list[int]
    wall_s: float
    drafts_refreshed: int = 0

    def summary(self) -> str:
        lines = []
        if self.abandoned:
            lines.append(f"marked {len(self.abandoned)} interrupted run(s) as abandoned: "
                         f"{self.abandoned}")
        trained = [o for o in self.outcomes if o.status != "skipped"]
        lines.append(f"nightly: {len(trained)} trained, "
                     f"{sum(o.promoted for o in trained)} promoted, "
                     f"{sum(o.status == 'failed' for o in trained)} failed, "
                     f"{len(self.outcomes) - len(trained)} skipped")
        for o in self.outcomes:
            if o.status == "skipped":
                lines.append(f"{o.reader:20} skipped: {o.reason}")
                continue
            m, b = o.metrics, o.baseline
            scores = ("" if "ROUGE-L" in (o.reason or "") else  # the gate's reason names them
                      f"; ROUGE-L {b.get('rougeL', float('nan')):.1f} -> {m.get('rougeL', float('nan')):.1f}")
            lines.append(
                f"{o.reader:20} run {o.run_id} {o.status}: v{o.version} "
                f"{'PROMOTED' if o.promoted else 'not promoted'} ({o.reason}); "
                f"{o.n_train_pairs} pairs, train {o.train_s:.0f} s ({o.pairs_per_s:.2f} pairs/s), "
                f"wall {o.wall_s:.0f} s{scores}")
            if o.phases_s:
                lines.append(f"{'':20} time: " + ", ".join(f"{k} {v:.0f} s"
                                                          for k, v in o.phases_s.items()))
        lines.append(f"nightly finished in {self.wall_s:.0f} s; {self.drafts_refreshed} drafts "
                     f"pre-generated")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# evaluation and the gate
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def nightly_lock():
    """Hold ``<database home>/nightly.lock`` exclusively, or raise :class:`NightlyBusy`.

    One lock per database: nightly jobs of two databases run side by side.
    """
    path = settings().db_home / "nightly.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NightlyBusy(f"{path}: another nightly job is running") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _trl_rows(drafter: Drafter, pairs, reader: str) -> list[dict]:
    """Pairs as TRL rows whose prompt is the serving prompt of their report for this reader
    (the coarse draft and examples from the shared index, the report itself left out)."""
    pairs = list(pairs)
    prompts = serving_prompts([report_of(p) for p in pairs], drafter.shared_index, drafter.c2f,
                              readers=[reader] * len(pairs))
    return [{**to_trl(p, prompt), "findings": p.findings} for p, prompt in zip(pairs, prompts)]


def _eval_examples(drafter: Drafter, pairs, limit: int, reader: str) -> list[dict]:
    return _trl_rows(drafter, pairs[:limit], reader)


def _memory_version(drafter: Drafter, reader, pairs, config: NightlyConfig, version: int,
                    tmp: Path) -> tuple[AdapterVersion, dict]:
    """Write the candidate's memory and tune how strongly it outranks the shared index
    (leave-one-out on the memory; the held-out slice stays for the gate)."""
    write_memory(tmp, pairs.memory)
    candidate = AdapterVersion(reader.username, reader.id, version, tmp,
                               method=config.method, alias=f"{reader.username}__candidate")
    draft_settings = tune_memory_bonus(drafter, candidate)
    write_draft_settings(tmp, draft_settings)
    drafter.forget(candidate)
    return candidate, draft_settings


def _train_weights(drafter: Drafter, reader, pairs, train_pairs: list, config: NightlyConfig,
                   tmp: Path, current: AdapterVersion | None, init: Path | None):
    """The candidate's LoRA weights: trained (DPO/GRPO), or the current ones kept on a
    memory-only night. Returns the training result, or None when nothing trained."""
    if config.method == "memory" and current is not None and current.has_lora and \
            _adapter_intact(current.path):
        # a memory-only night refreshes the memory and keeps the current LoRA weights
        # (never copies damaged ones: the new version then has memory only)
        for f in current.path.iterdir():
            if f.name.startswith("adapter_"):
                shutil.copy2(f, tmp / f.name)
    if config.method not in ("dpo", "grpo"):
        return None
    task = {"method": config.method, "model_path": str(config.model_path or
                                                      settings().model_path),
            "examples": _trl_rows(drafter, train_pairs, reader.username),
            "out": str(tmp),
            # the reference log-probs of pairs trained on before: kept beside the database
            "train": config.train if config.train.ref_cache_dir else replace(
                config.train, ref_cache_dir=str(settings().db_home / "ref-logps")),
            "init": str(init) if init else None,
            "style_texts": [m["impression"] for m in pairs.memory]}
    # under `accelerate launch` the other ranks train the same run with this process
    distributed.broadcast(task)
    return run_task(task)


def _judge(drafter: Drafter, reader, pairs, config: NightlyConfig, candidate: AdapterVersion,
           current: AdapterVersion | None):
    """Candidate vs current on the reader's held-out slice (no transaction open), and the gate."""
    if drafter.generator is None and current is not None and current.has_lora:
        drafter.generator = load_generator(ModelSpec(
            path=config.model_path or settings().model_path, device="auto"))
        drafter.shared_adapter = use_base_adapter(drafter.generator)
    refs = sorted(pairs.heldout_refs, key=lambda r: r["report_id"])[:config.eval_max_reports]
    examples = _eval_examples(drafter, pairs.heldout, 4 * config.eval_max_reports,
                              reader.username)
    cand_m, cur_m = evaluate_versions(drafter, refs, [candidate, current], examples)
    with contextlib.suppress(Exception):
        drafter.generator.unload_adapter(candidate.gen_name)
    return gate(cand_m, cur_m, config), cand_m, cur_m


def _lap(outcome: ReaderOutcome, phase: str, since: float) -> float:
    """Add the seconds since ``since`` to the outcome's ``phase``; returns now."""
    now_s = time.perf_counter()
    outcome.phases_s[phase] = round(outcome.phases_s.get(phase, 0.0) + now_s - since, 1)
    return now_s


def _train_reader(store, drafter: Drafter, reader, pairs, config: NightlyConfig, run_id: int,
                  progress: bool) -> ReaderOutcome:
    """One reader's night: memory, weights, the gate, then commit (and promote or reject)."""
    t0 = time.perf_counter()
    version, tmp = allocate_version(store, reader.id)
    outcome = ReaderOutcome(reader.username, "failed", run_id=run_id, version=version,
                            n_pairs=len(pairs.train) + len(pairs.heldout))
    try:
        t = time.perf_counter()
        candidate, draft_settings = _memory_version(drafter, reader, pairs, config, version, tmp)
        t = _lap(outcome, "memory", t)
        train_pairs = sorted(pairs.train, key=lambda p: max(p.feedback_ids))[-config.max_pairs:]
        outcome.n_train_pairs = len(train_pairs)
        init = shared_adapter_dir()
        current = active_adapter(store, reader.id)
        result = _train_weights(drafter, reader, pairs, train_pairs, config, tmp, current, init)
        t = _lap(outcome, "weights", t)
        if result is not None:
            outcome.train_s = result.train_s
            outcome.phases_s["train"] = round(result.train_s, 1)  # of "weights"
            # pairs actually trained on (steps * batch_size over-counts a partial last batch)
            seen = min(len(train_pairs) * config.train.epochs,
                       result.steps * config.train.batch_size)
            outcome.pairs_per_s = seen / result.train_s if result.train_s else 0.0
        decision, cand_m, cur_m = _judge(drafter, reader, pairs, config, candidate, current)
        _lap(outcome, "gate", t)
        outcome.metrics = {k: v for k, v in cand_m.items() if k != "drafts"}
        outcome.metrics["memory_bonus"] = draft_settings["memory_bonus"]
        outcome.metrics["phases_s"] = dict(outcome.phases_s)
        outcome.baseline = {k: v for k, v in cur_m.items() if k != "drafts"}
        write_manifest(tmp, reader=reader.username, version=version, run_id=run_id,
                       method=config.method, metrics=outcome.metrics, baseline=outcome.baseline,
                       baseline_version=current.version if current else None,
                       gate={"promote": decision.promote, "reason": decision.reason,
                             **decision.checks},
                       train=result.to_dict() if result else None,
                       init_adapter=str(init) if init else None,
                       memory_size=len(pairs.memory), draft=draft_settings,
                       config=config.to_dict())
        _commit(store, reader, version, tmp, run_id, config, decision, outcome, result, current, t0)
        return outcome
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        outcome.reason = f"{type(exc).__name__}: {exc}"
        outcome.wall_s = time.perf_counter() - t0
        store.update_run(run_id, status="failed", error=outcome.reason[:2000],
                         finished_at=now(), wall_s=outcome.wall_s)
        return outcome


def _commit(store, reader, version: int, tmp: Path, run_id: int, config: NightlyConfig,
            decision: GateResult, outcome: ReaderOutcome, result, current, t0: float) -> None:
    """Rename the version into place, promote or reject it, and record the run."""
    av = commit_version(store, reader.id, version, tmp, run_id, config.method,
                        outcome.metrics, base_model=str(config.model_path or
                                                        settings().model_path))
    if decision.promote:
        promote(store, reader.id, version, actor="nightly", reason=decision.reason)
    else:
        store.set_adapter_status(reader.id, version, "rejected")
    outcome.status, outcome.promoted, outcome.reason = "succeeded", decision.promote, \
        decision.reason
    outcome.wall_s = time.perf_counter() - t0
    store.update_run(
        run_id, status="succeeded", decision="promoted" if decision.promote else "rejected",
        reason=decision.reason, finished_at=now(), steps=result.steps if result else 0,
        wall_s=outcome.wall_s, train_s=outcome.train_s, pairs_per_s=outcome.pairs_per_s,
        losses=result.losses if result else [], metrics=outcome.metrics,
        baseline_metrics={**outcome.baseline, "version": current.version if current
                          else None}, adapter_version=version, adapter_path=str(av.path))


def run_task(task: dict):
    """Run one training task (what rank 0 broadcasts; every rank runs it). Returns the
    ``core.learning.train.TrainResult``."""
    if task["method"] == "dpo":
        return train_dpo(task["model_path"], task["examples"], task["out"], task["train"],
                         init_adapter=task["init"])

    style = StyleProfile.from_texts(task["style_texts"])
    return train_grpo(task["model_path"], grpo_prompts(task["examples"]), task["out"],
                      task["train"], init_adapter=task["init"],
                      reward_funcs=grpo_reward_funcs(style))


def grpo_prompts(examples: Sequence[dict]) -> list[dict]:
    """GRPO prompt rows from training pairs: the pair's prompt and Findings, the reader's chosen
    text as their reference impression. No ``reference_completion``: ``core.learning.grpo.train_grpo``
    fills in the reference policy's own greedy impression before training (the critical
    anchor pulls toward what the reference writes, never toward the rejected text)."""
    return [{"prompt": e["prompt"], "findings": e["findings"],
             "references": [e["chosen"][0]["content"]]} for e in examples]


def follow() -> int:
    """A rank other than 0 under ``accelerate launch``: train every task rank 0 sends, until
    it sends None. Never opens the database. Returns how many tasks were trained."""
    n = 0
    while (task := distributed.broadcast(None)) is not None:
        run_task(task)
        n += 1
    return n


def _adapter_intact(path: Path) -> bool:

    try:
        check_adapter_files(path)
        return True
    except AdapterError:
        return False


def _waits(store, candidate: dict, config: NightlyConfig, record_heldout: bool = True):
    """Why the nightly job would not train this candidate (``store.training_candidates`` row)
    now, or "" and their pairs. ``record_heldout``: remember newly held-out reports."""
    new = store.count_new_ratings(candidate["reader_id"], candidate["last_high_water"])
    if not config.force and new < config.min_new_feedback:
        return f"{new} new ratings (< {config.min_new_feedback})", None
    pairs = pairs_for_reader(store, candidate["reader_id"], config.heldout_fraction,
                             record_heldout=record_heldout)
    if config.method != "memory" and len(pairs.train) < config.min_pairs:
        return f"{len(pairs.train)} training pairs (< {config.min_pairs})", pairs
    if not pairs.memory and config.method == "memory":
        return "no accepted edits", pairs
    n_heldout = len(pairs.heldout_refs)
    if n_heldout < config.min_heldout_reports:
        # the gate would refuse any candidate: do not spend a training run on it
        if not config.heldout_fraction:
            return (f"only {n_heldout} held-out reports (the gate needs {config.min_heldout_reports}) "
                    f"and the held-out fraction is 0: no version can be promoted"), pairs
        more = math.ceil((config.min_heldout_reports - n_heldout) / config.heldout_fraction)
        return (f"only {n_heldout} held-out reports (the gate needs {config.min_heldout_reports}): "
                f"about {more} more rated reports before a version can be promoted"), pairs
    return "", pairs


def plan(store, config: NightlyConfig | None = None) -> dict[str, str]:
    """What the next nightly run would do for each radiologist, without training or writing
    anything: ``"trains"`` or why they wait (the reasons the run's summary gives)."""
    config = config or NightlyConfig()
    return {c["username"]: _waits(store, c, config, record_heldout=False)[0] or "trains"
            for c in store.training_candidates()
            if not config.readers or c["username"] in config.readers}


def run_nightly(store, config: NightlyConfig | None = None, generator=None,
                progress: bool = True) -> NightlyReport:
    """Run the nightly job once (see the module docstring).

    Args:
        store: the shared store (the app may be using the same file meanwhile).
        config: thresholds, method and hyper-parameters.
        generator: a loaded ``core.generation.models.Generator`` to reuse (tests, benchmarks); loaded
            from ``config.model_path`` when None and needed.
        progress: tqdm bars (training steps, drafting), one at a time.

    Returns:
        A :class:`NightlyReport`.

    Raises:
        NightlyBusy: another nightly job is running.
    """
    config = config or NightlyConfig()
    config.train.progress = progress and config.train.progress
    if not distributed.is_main():
        raise ImpressionistError("run_nightly runs on rank 0 only; other ranks call follow()")
    restore = distributed.lower_priority(config.nice, config.thread_budget())
    t0 = time.perf_counter()
    try:
        return _run_nightly(store, config, generator, progress, t0)
    finally:
        distributed.broadcast(None)  # under a launcher: the other ranks stop waiting
        restore()  # the thread budget only (a process cannot raise its priority again)


def _run_nightly(store, config: NightlyConfig, generator, progress: bool, t0: float
                 ) -> NightlyReport:

    with nightly_lock():
        abandoned = store.abandon_running("the process running it stopped before finishing")
        cleanup_partial()
        sync_pointers(store)
        outcomes: list[ReaderOutcome] = []
        todo = []
        for c in store.training_candidates():
            if config.readers and c["username"] not in config.readers:
                continue
            reason, pairs = _waits(store, c, config)
            if reason:
                outcomes.append(ReaderOutcome(c["username"], "skipped", reason))
            else:
                todo.append((c, pairs))
        drafter = None
        promoted = []
        # No bar over readers: it would nest with the trainer's bar; the summary lists them.
        for c, pairs in todo:
            reader = store.get_reader_by_id(c["reader_id"])
            run_id = store.start_run(reader.id, config.method, pid=os.getpid(),
                                     host=socket.gethostname(), config=config.to_dict())
            store.update_run(run_id, feedback_high_water=pairs.high_water,
                             n_feedback=pairs.counts.get("ratings", 0),
                             n_pairs=len(pairs.train) + len(pairs.heldout),
                             n_train_pairs=min(len(pairs.train), config.max_pairs),
                             n_heldout_pairs=len(pairs.heldout), pair_counts=pairs.counts)
            if drafter is None:
                try:
                    drafter = load_drafter(store, config.draft, generator, model_path=config.model_path,
                                           with_model=config.method != "memory")
                except Exception as exc:  # e.g. no model checkpoint: the run failed, say so
                    store.update_run(run_id, status="failed", finished_at=now(),
                                     error=f"{type(exc).__name__}: {exc}"[:2000])
                    raise
            outcome = _train_reader(store, drafter, reader, pairs, config, run_id, progress)
            outcomes.append(outcome)
            if outcome.promoted:
                promoted.append(reader.username)
        refreshed = 0
        # Every reader with an active adapter of their own (promoted tonight or before) finds
        # their next cases drafted by it in the morning: the app never generates while they wait.

        personal = sorted({a["reader"] for a in store.active_adapters()} - {SHARED_READER})
        if config.readers:
            personal = [u for u in personal if u in config.readers]
        if personal and config.refresh_per_reader > 0:
            if drafter is None:  # the model only when some adapter has LoRA weights to apply
                lora = any(getattr(active_adapter(store, u), "has_lora", False) for u in personal)
                drafter = load_drafter(store, config.draft, generator, with_model=lora,
                                       model_path=config.model_path)
            refreshed = refresh_drafts(store, drafter, personal, config.refresh_per_reader,
                                       progress=progress)
    return NightlyReport(outcomes, abandoned, time.perf_counter() - t0, refreshed)
