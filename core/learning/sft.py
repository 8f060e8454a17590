"""The shared *base adapter*: LoRA SFT of the embedded model on the imported reports.

Every radiologist starts from this adapter (``core.learning.nightly`` uses it as the DPO/GRPO starting
point and the reference), and the shared model drafts with it.

* **Data**: the store's reports with findings and an impression whose external id is in the
  ``train`` split of :mod:`core.ingest.splits` (never ``dev`` or ``test``; ``dev`` gives an eval loss).
* **Format**: exactly the prompt the pipeline drafts from (:func:`core.generation.prompts.draft_messages`):
  the ``shots`` most similar *other* training reports as few-shot examples (retrieved with the
  pipeline's own retrieval settings), then the report; the completion is its impression, the loss
  on the completion only.
* **Registry**: a run is a ``training_runs`` row (method ``"sft"``) of the shared-base pseudo
  account :data:`core.adapters.base.SHARED_READER` (disabled, no password, never signs in or gets a nightly run); the
  adapter is written under ``<adapters>/shared-base/.tmp-*`` and renamed to ``v<N>`` (the same
  versioned registry as the readers' adapters, :mod:`core.adapters.registry`), then promoted.
* **Lookup** (:func:`core.adapters.base.base_adapter_dir`): the active ``shared-base`` version,
  else the adapter shipped in ``core/assets/base-adapter`` - in both cases only when it fits the
  configured base model (a SmolLM2 adapter is never loaded into another model).

>>> run = run_sft(store, SFTTrainConfig(max_steps=300))   # doctest: +SKIP
>>> run.version, run.adapter_dir                           # doctest: +SKIP
(1, PosixPath('data/adapters/shared-base/v1'))
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from core.adapters.base import (
    SHARED_READER,
    export_adapter,
    fingerprint,
    shared_reader,
    write_model_card,
)
from core.adapters.registry import AdapterRegistryError, allocate_version, commit_version
from core.adapters.registry import promote as promote_version
from core.config import settings
from core.errors import SFTRunError  # noqa: F401 (defined in core.errors)
from core.evaluation.metrics import label_f1, rouge
from core.generation.pipeline import C2FConfig, CoarseToFine, serving_prompts
from core.generation.prompts import clean_output
from core.generation.retrieval import RetrievalIndex, tidy
from core.ingest.splits import split_of
from core.learning.sft_trainer import SFTResult, SFTTrainConfig, train_sft
from core.learning.train import TrainError, write_manifest
from core.util import now

__all__ = ["SFTRun", "sft_examples", "run_sft", "evaluate_drafts", "eval_reports"]



# ---------------------------------------------------------------------------------------------
# which base adapter, and does it fit the model
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def sft_examples(reports: Sequence[dict], shots: int = 3, index=None,
                 retrieval=None, config=None) -> list[dict]:
    """SFT rows in the serving format: the coarse draft and retrieved examples -> impression.

    The draft is the pipeline's own vote (:meth:`core.generation.pipeline.CoarseToFine.coarse`) among the
    report's neighbours with the report itself left out, so the model learns to keep what the
    draft gets right and to fix what this report's findings contradict or add.

    Args:
        reports: dicts with ``findings``, ``impression`` (``indication``, ``comparison``,
            ``author``, ``id``, ``external_id``/``uid`` optional).
        shots: retrieved examples per prompt (0 with no index: zero-shot prompts, no draft).
        index: the ``core.generation.retrieval.RetrievalIndex`` to retrieve from (default: one built over
            ``reports`` themselves); a report is never its own example nor its own draft.
        retrieval: ``core.generation.retrieval.RetrievalConfig`` for the default index (default: the
            pipeline's).
        config: the ``core.generation.pipeline.C2FConfig`` of the vote (default: the pipeline's).

    Returns:
        TRL conversational prompt-completion rows, one per report, in order.
    """
    config = config or C2FConfig()
    rows = [{**r, "uid": r.get("uid", r.get("external_id"))} for r in reports]
    if not rows:
        return []
    if index is None and shots > 0:
        index = RetrievalIndex.build(rows, retrieval or config.retrieval)
    prompts = serving_prompts(rows, index, replace(config, shots=shots))
    return [{"prompt": prompt, "completion": [{"role": "assistant", "content": tidy(r["impression"])}]}
            for r, prompt in zip(rows, prompts)]


def _split_reports(store, source: str | None = None) -> dict[str, list[dict]]:
    """The store's reports with findings and an impression, by split (one short read)."""
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for r in store.reports(source=source):  # one SELECT, its own short transaction
        if (r.get("findings") or "").strip() and (r.get("impression") or "").strip():
            out[split_of(r["external_id"])].append(r)
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


@dataclass
class SFTRun:
    """One recorded SFT run of the base adapter."""
    run_id: int
    version: int
    adapter_dir: Path
    result: SFTResult
    n_train_reports: int
    n_dev_reports: int
    promoted: bool
    exported_to: Path | None = None
    wall_s: float = 0.0
    manifest: dict = field(default_factory=dict)

    def summary(self) -> str:
        r = self.result
        ev = (f", dev loss {r.eval_loss_before:.3f} -> {r.eval_loss_after:.3f}"
              if r.eval_loss_before is not None and r.eval_loss_after is not None else "")
        return (f"SFT run {self.run_id}: {SHARED_READER} v{self.version} "
                f"({'active' if self.promoted else 'candidate'}) at {self.adapter_dir}; "
                f"{r.steps} steps on {r.n_examples} train reports ({r.epochs_done:.2f} epochs), "
                f"{r.train_s:.0f} s, {r.tokens_per_s:.0f} train tokens/s{ev}"
                + (f"; copied to {self.exported_to}" if self.exported_to else ""))


def _select(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(rows):
        return rows

    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def _check_sft_options(model_path, shots: int, max_examples: int | None,
                       eval_examples: int) -> Path:
    """The checkpoint to train, after checking the options (:class:`SFTRunError` names the bad one)."""
    if shots < 0:
        raise SFTRunError(f"shots must be >= 0 (got {shots})")
    if max_examples is not None and max_examples < 1:
        raise SFTRunError(f"max_examples must be >= 1 (got {max_examples})")
    if eval_examples < 0:
        raise SFTRunError(f"eval_examples must be >= 0 (got {eval_examples})")
    model_path = Path(model_path or settings().model_path)
    if not (model_path / "config.json").is_file():
        raise SFTRunError(f"no model checkpoint at {model_path} (config.json missing); run "
                          f"`python -m core setup` or pass --model")
    return model_path


def _manifest(version: int, run_id: int, model_path: Path, source: str | None,
              train_reports: list, dev_examples: list, max_examples: int | None, shots: int,
              cmd: str, config: SFTTrainConfig, result, wall_s: float) -> dict:
    """What ``manifest.json`` and the model card say about one SFT run."""
    return {
        "kind": "shared base adapter (SFT)", "reader": SHARED_READER, "version": version,
        "run_id": run_id, "method": "sft", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime()),
        "base_model": {"name": model_path.resolve().name, **fingerprint(model_path)},
        "data": {"source": source or "all sources in the store",
                 "split_rule": "core.ingest.splits: bucket = int(sha256(uid)[:8], 16) % 10; "
                               "0 test, 1 dev, 2-9 train; trained on train only",
                 "n_train_reports": len(train_reports), "n_examples": result.n_examples,
                 "n_too_long": result.n_too_long, "n_dev_eval": len(dev_examples),
                 "max_examples": max_examples,
                 "format": f"core.generation.prompts.draft_messages: the coarse draft (the pipeline's "
                           f"vote over train neighbours, self excluded) and {shots} "
                           f"retrieved train examples -> impression; loss on the "
                           f"completion only"},
        "command": cmd, "lineage": _lineage(config.init_adapter), "config": config.to_dict(),
        "shots": shots,
        "steps": result.steps, "epochs_done": result.epochs_done,
        "partial_epoch": result.epochs_done < config.epochs - 1e-6, "stopped_early": result.stopped_early,
        "train_s": round(result.train_s, 1), "wall_s": round(wall_s, 1),
        "train_tokens": result.train_tokens, "completion_tokens": result.completion_tokens,
        "tokens_per_s": round(result.tokens_per_s, 1), "losses": result.losses,
        "eval_loss_before": result.eval_loss_before, "eval_loss_after": result.eval_loss_after,
        "scores": {}, "host": socket.gethostname(),
    }


def _lineage(init_adapter: str | None) -> list[str]:
    """The commands that made the adapter a run goes on from (``init_adapter``), oldest first:
    with the run's own command, what reproduces the adapter from the base model."""
    if not init_adapter:
        return []
    path = Path(init_adapter) / "manifest.json"
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"(an adapter without a readable manifest.json: {init_adapter})"]
    return [*(earlier.get("lineage") or []), str(earlier.get("command"))]


def _examples(by_split: dict, train_reports: list, max_examples: int | None, eval_examples: int,
              shots: int, seed: int) -> tuple[list[dict], list[dict]]:
    """SFT rows for the chosen train reports and the dev reports measured before and after.
    Shots come from the whole train split (as the pipeline retrieves from everything that is
    not test), never from dev or test."""
    dev_reports = _select(by_split["dev"], eval_examples, seed) if eval_examples else []
    chosen = _select(train_reports, max_examples, seed)
    index = RetrievalIndex.build([{**r, "uid": r["external_id"]} for r in train_reports],
                                 C2FConfig().retrieval)
    examples = sft_examples(chosen, shots, index)
    return examples, sft_examples(dev_reports, shots, index) if dev_reports else []


def run_sft(store, config: SFTTrainConfig | None = None, model_path: str | Path | None = None,
            max_examples: int | None = None, shots: int = 3, eval_examples: int = 64,
            source: str | None = None, promote: bool = True, out: str | Path | None = None,
            command: str | None = None, callbacks: Sequence[Any] = ()) -> SFTRun:
    """Train the shared base adapter on the store's train split, record and version it.

    The reports are read in one short query; no transaction is open while training (DuckDB is
    single-process: the app and the nightly job keep working). The run is a ``training_runs``
    row (method ``sft``, reader :data:`SHARED_READER`) marked failed with the error when
    training raises.

    Args:
        store: the store.
        config: hyper-parameters (:class:`core.learning.sft_trainer.SFTTrainConfig`).
        model_path: the base checkpoint (default ``settings().model_path``).
        max_examples: train on a seeded random subset of this many train reports (None: all).
        shots: few-shot examples per prompt, as the pipeline drafts (``C2FConfig.shots``).
        eval_examples: dev reports whose completion loss is measured before and after (0: none).
        source: only reports of this source (e.g. ``iu-xray``); None: all.
        promote: make the new version the active base adapter.
        out: also copy the finished adapter (weights, config, manifest, model card) here,
            atomically (e.g. ``core/assets/base-adapter`` to ship it).
        command: the command line to record in the manifest (default: ``sys.argv``).
        callbacks: extra trainer callbacks.

    Returns:
        An :class:`SFTRun`.

    Raises:
        SFTRunError: no training reports, or a bad option.
        TrainError: training failed (the run is recorded as failed).
    """
    config = config or SFTTrainConfig()
    model_path = _check_sft_options(model_path, shots, max_examples, eval_examples)
    t_start = time.perf_counter()
    by_split = _split_reports(store, source)
    train_reports = by_split["train"]
    if not train_reports:
        raise SFTRunError(f"no train-split reports{f' of source {source!r}' if source else ''} "
                          f"with findings and an impression in {store.path}: import reports "
                          f"first (python -m core import FILE)")
    examples, dev_examples = _examples(by_split, train_reports, max_examples, eval_examples,
                                       shots, config.seed)
    reader = shared_reader(store)
    cmd = command or " ".join(shlex.quote(a) for a in ["python", "-m", "core", *sys.argv[1:]])
    run_id = store.start_run(reader.id, "sft", pid=os.getpid(), host=socket.gethostname(), config={
        "train": config.to_dict(), "shots": shots, "max_examples": max_examples,
        "eval_examples": eval_examples, "source": source, "model": str(model_path), "command": cmd})
    version, tmp = allocate_version(store, reader.id)
    try:
        result = train_sft(model_path, examples, tmp, config, dev_examples, callbacks)
        wall_s = time.perf_counter() - t_start
        metrics = {k: getattr(result, k) for k in ("eval_loss_before", "eval_loss_after",
                                                   "train_tokens", "tokens_per_s", "epochs_done")}
        manifest = _manifest(version, run_id, model_path, source, train_reports, dev_examples,
                             max_examples, shots, cmd, config, result, wall_s)
        write_manifest(tmp, **manifest)
        write_model_card(tmp, manifest)
        av = commit_version(store, reader.id, version, tmp, run_id, "sft", metrics,
                            status="candidate", base_model=str(model_path))
        if promote:
            promote_version(store, reader.id, version, actor="train-sft",
                            reason=f"SFT run {run_id}")
        store.update_run(run_id, status="succeeded", decision="promote" if promote else "keep",
                         finished_at=now(), steps=result.steps, wall_s=wall_s,
                         train_s=result.train_s, pairs_per_s=result.examples_per_s,
                         n_train_pairs=result.n_examples, n_heldout_pairs=len(dev_examples),
                         losses=result.losses, metrics=metrics, adapter_version=version,
                         adapter_path=str(av.path))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        store.update_run(run_id, status="failed", finished_at=now(),
                         error=f"{type(exc).__name__}: {exc}"[:2000])
        if isinstance(exc, (TrainError, AdapterRegistryError, KeyboardInterrupt)):
            raise
        raise TrainError(f"SFT run {run_id} failed: {exc}") from exc
    exported = export_adapter(av.path, out) if out else None
    return SFTRun(run_id, version, av.path, result, len(train_reports), len(dev_examples),
                  promote, exported, wall_s, manifest)


# ---------------------------------------------------------------------------------------------
# evaluation: the model's draft alone and the full pipeline, with and without an adapter
# ---------------------------------------------------------------------------------------------


class _Recorder:
    """Wraps a Generator and keeps the results of its generate calls (the raw drafts)."""
    def __init__(self, generator) -> None:
        self._g = generator
        self.calls: list = []

    def __getattr__(self, name):
        return getattr(self._g, name)

    def generate(self, *args, **kwargs):
        out = self._g.generate(*args, **kwargs)
        self.calls.append(out)
        return out


def evaluate_drafts(generator, index, reports: Sequence[dict], adapter: str | None,
                    batch_size: int = 8, max_new_tokens: int = 48, progress: bool = False
                    ) -> dict:
    """ROUGE-L and label F1 of the model's few-shot draft alone and of the full pipeline
    (``llm="always"``) against the reports' impressions, for one adapter (or the bare model).

    One pipeline pass gives both: the draft is the model's output before the vote and the fine
    stage (the pipeline's :func:`core.generation.prompts.clean_output` applied).

    Args:
        generator: a loaded Generator.
        index: the retrieval index (for test reports: built on train + dev only).
        reports: dicts with findings, impression (and indication, comparison, id, external_id).
        adapter: a loaded adapter name for the drafts, or None for the bare base model.
        batch_size / max_new_tokens: generation settings.
        progress: show a progress bar.

    Returns:
        ``{"n", "draft_rougeL", "pipeline_rougeL", "draft_label_f1", "pipeline_label_f1",
        "drafts", "finals", "s"}``.
    """
    rec = _Recorder(generator)
    pipe = CoarseToFine(index, rec, C2FConfig(llm="always", max_new_tokens=max_new_tokens),
                        base_adapter=adapter)
    rows = [{**r, "uid": r.get("uid", r.get("external_id"))} for r in reports]
    t0 = time.perf_counter()
    outs = pipe.generate(rows, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    drafts = [clean_output(res.text) for res in rec.calls[0]] if rec.calls else []
    refs = [tidy(r["impression"]) for r in rows]
    finals = [o.text for o in outs]
    return {"n": len(rows), "draft_rougeL": rouge(drafts, refs)["rougeL"],
            "pipeline_rougeL": rouge(finals, refs)["rougeL"],
            "draft_label_f1": 100 * label_f1(drafts, refs)["micro_f1"],
            "pipeline_label_f1": 100 * label_f1(finals, refs)["micro_f1"],
            "drafts": drafts, "finals": finals, "s": seconds}


def eval_reports(store, n: int | None = 100, seed: int = 0, source: str | None = None
                 ) -> tuple[list[dict], Any]:
    """(a seeded sample of ``n`` test-split reports, a retrieval index over train + dev)."""
    by_split = _split_reports(store, source)
    index = RetrievalIndex.build([{**r, "uid": r["external_id"]}
                                  for r in by_split["train"] + by_split["dev"]],
                                 C2FConfig().retrieval)
    return _select(by_split["test"], n, seed), index


def _asdict(run: SFTRun) -> dict:
    d = asdict(run)
    d["adapter_dir"] = str(run.adapter_dir)
    d["exported_to"] = str(run.exported_to) if run.exported_to else None
    return d
