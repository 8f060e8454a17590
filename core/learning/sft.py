"""The shared *base adapter*: LoRA SFT of the embedded model on the imported reports.

Every radiologist starts from this adapter (``core.learning.nightly`` uses it as the DPO/GRPO starting
point and the reference), and the shared model drafts with it.

* **Data**: the store's reports with findings and an impression whose external id is in the
  ``train`` split of :mod:`core.ingest.splits` (never ``dev`` or ``test``; ``dev`` gives an eval loss).
* **Format**: exactly the prompt the pipeline drafts from (:func:`core.generation.pipeline.draft_messages`):
  the ``shots`` most similar *other* training reports as few-shot examples (retrieved with the
  pipeline's own retrieval settings), then the report; the completion is its impression, the loss
  on the completion only.
* **Registry**: a run is a ``training_runs`` row (method ``"sft"``) of the shared-base pseudo
  account :data:`SHARED_READER` (disabled, no password, never signs in or gets a nightly run); the
  adapter is written under ``<adapters>/shared-base/.tmp-*`` and renamed to ``v<N>`` (the same
  versioned registry as the readers' adapters, :mod:`core.adapters.registry`), then promoted.
* **Lookup** (:func:`base_adapter_dir`): the active ``shared-base`` version when there is one,
  else the adapter shipped in ``core/assets/base-adapter`` - in both cases only when it fits the
  configured base model (a SmolLM2 adapter is never loaded into another model).

>>> run = run_sft(store, SFTTrainConfig(max_steps=300))   # doctest: +SKIP
>>> run.version, run.adapter_dir                           # doctest: +SKIP
(1, PosixPath('data/adapters/shared-base/v1'))
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from core.config import settings
from core.errors import ImpressionistError
from core.learning.train import SFTResult, SFTTrainConfig, TrainError
from core.util import now
from core.errors import SFTRunError  # noqa: F401 (defined in core.errors)

__all__ = ["SFTRunError", "SFTRun", "SHARED_READER", "SHARED_ADAPTER_NAME", "SHIPPED_ADAPTER_DIR",
           "base_adapter_dir", "adapter_fits", "use_base_adapter", "sft_examples",
           "shared_reader", "run_sft", "evaluate_drafts", "write_model_card"]

SHARED_READER = "shared-base"  # the pseudo account that owns the base adapter's runs/versions
SHARED_ADAPTER_NAME = "@shared"  # its name inside a Generator (= core.learning.nightly.SHARED_ADAPTER_NAME)
SHIPPED_ADAPTER_DIR = Path(__file__).resolve().parents[1] / "assets" / "base-adapter"
FINGERPRINT_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "vocab_size")


# ---------------------------------------------------------------------------------------------
# which base adapter, and does it fit the model
# ---------------------------------------------------------------------------------------------


def _model_config(model: Any) -> dict | None:
    """The config dict of a model, a Generator, a checkpoint directory, or a config dict."""
    if model is None:
        return None
    if isinstance(model, dict):
        return model
    if isinstance(model, (str, Path)):
        try:
            return json.loads((Path(model) / "config.json").read_text())
        except (OSError, ValueError):
            return None
    inner = getattr(model, "model", model) if hasattr(model, "tokenizer") else model
    cfg = getattr(inner, "config", None)
    return cfg.to_dict() if cfg is not None else None


def fingerprint(model: Any) -> dict:
    """The shape of a base model that an adapter depends on (``FINGERPRINT_KEYS``)."""
    cfg = _model_config(model) or {}
    return {k: cfg.get(k) for k in FINGERPRINT_KEYS}


def adapter_fits(adapter_dir: str | Path, model: Any) -> bool:
    """Whether a LoRA adapter was trained for a base model of this shape.

    Compares the ``base_model`` fingerprint in the adapter's ``manifest.json`` with the model's
    config; without a manifest, the LoRA matrix widths in the weights file with the model's
    hidden/intermediate sizes.

    Args:
        adapter_dir: a PEFT adapter directory.
        model: a model, a ``core.generation.models.Generator``, a checkpoint directory or a config dict.

    Returns:
        True when it fits; False when it does not, or either side cannot be read.
    """
    adapter_dir = Path(adapter_dir)
    cfg = _model_config(model)
    if cfg is None or not (adapter_dir / "adapter_config.json").is_file():
        return False
    try:
        manifest = json.loads((adapter_dir / "manifest.json").read_text())
        want = manifest.get("base_model") or {}
    except (OSError, ValueError):
        want = {}
    if want:
        have = fingerprint(cfg)
        return all(want.get(k) == have.get(k) for k in FINGERPRINT_KEYS if k in want)
    try:
        from safetensors import safe_open

        seen = 0
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as fh:
            for key in fh.keys():
                if "lora_A" not in key:
                    continue
                # LoRA A is (r, in_features): down_proj reads the MLP width, the rest the hidden
                want_in = cfg.get("intermediate_size") if ".down_proj." in key else \
                    cfg.get("hidden_size")
                if fh.get_slice(key).get_shape()[-1] != want_in:
                    return False
                seen += 1
        return seen > 0
    except Exception:  # a damaged file (SafetensorError is no builtin subclass)
        return False


def _active_registry_dir() -> Path | None:
    """The active ``shared-base`` version named by its pointer file (no database needed)."""
    from core.adapters.registry import read_pointer, reader_dir

    version = read_pointer(SHARED_READER)
    if version is None:
        return None
    path = reader_dir(SHARED_READER) / f"v{version}"
    return path if (path / "adapter_config.json").is_file() else None


def base_adapter_dir(model: Any = None) -> Path | None:
    """The shared base adapter for drafts and as every reader's starting point, or None.

    The active version of the trained registry (``<adapters>/shared-base/ACTIVE.json``) comes
    first, then the adapter shipped with the code. Either is returned only if it fits ``model``
    (default: the configured checkpoint ``settings().model_path``).
    :func:`core.adapters.registry.shared_adapter_dir` calls this (after ``$IMPRESSIONIST_BASE_ADAPTER``).

    Args:
        model: what it must fit (see :func:`adapter_fits`); None: the configured checkpoint.

    Returns:
        The adapter directory, or None.
    """
    target = model if model is not None else settings().model_path
    for candidate in (_active_registry_dir(), SHIPPED_ADAPTER_DIR):
        if candidate is not None and adapter_fits(candidate, target):
            return candidate
    return None


def use_base_adapter(generator) -> str | None:
    """Load the shared base adapter into a Generator (once) and return its name, or None when
    there is none that fits this generator's model.

    Args:
        generator: a ``core.generation.models.Generator``.

    Returns:
        :data:`SHARED_ADAPTER_NAME` when loaded, else None.
    """
    if generator is None or not hasattr(generator, "load_adapter"):
        return None
    from core.adapters.registry import shared_adapter_dir

    path = shared_adapter_dir()
    if path is None or not adapter_fits(path, generator):
        return None
    generator.load_adapter(SHARED_ADAPTER_NAME, path)
    return SHARED_ADAPTER_NAME


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
    from core.generation.pipeline import C2FConfig, serving_prompts
    from core.generation.retrieval import RetrievalIndex, tidy

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
    from core.ingest.splits import split_of

    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for r in store.reports(source=source):  # one SELECT, its own short transaction
        if (r.get("findings") or "").strip() and (r.get("impression") or "").strip():
            out[split_of(r["external_id"])].append(r)
    return out


def shared_reader(store):
    """The disabled pseudo account that owns the base adapter's runs and versions (created once).

    Returns:
        Its ``core.store.database.Reader``.
    """
    from core.errors import NotFound, StoreError

    try:
        return store.get_reader(SHARED_READER)
    except NotFound:
        pass
    try:
        # "!" is no bcrypt hash, and the account is disabled: nobody can sign in as it.
        store.add_reader(SHARED_READER, "coordinator", "!")
        store.set_reader_active(SHARED_READER, False)
        store.audit("system", "user_created", {"username": SHARED_READER,
                                               "why": "owner of the shared base adapter"})
    except StoreError:  # created concurrently
        pass
    return store.get_reader(SHARED_READER)


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
    import random

    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


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
        config: hyper-parameters (:class:`core.learning.train.SFTTrainConfig`).
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
    from core.adapters.registry import (AdapterRegistryError, allocate_version, commit_version,
                               promote as promote_version)
    from core.generation.retrieval import RetrievalIndex
    from core.generation.pipeline import C2FConfig

    config = config or SFTTrainConfig()
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
    t_start = time.perf_counter()
    by_split = _split_reports(store, source)
    train_reports = by_split["train"]
    if not train_reports:
        where = f" of source {source!r}" if source else ""
        raise SFTRunError(f"no train-split reports{where} with findings and an impression in "
                          f"{store.path}: import reports first (python -m core import FILE)")
    dev_reports = _select(by_split["dev"], eval_examples, config.seed) if eval_examples else []
    chosen = _select(train_reports, max_examples, config.seed)
    retrieval = C2FConfig().retrieval
    # Shots come from the whole train split (as the pipeline retrieves from everything that is
    # not test), never from dev or test.
    index = RetrievalIndex.build([{**r, "uid": r["external_id"]} for r in train_reports], retrieval)
    examples = sft_examples(chosen, shots, index)
    dev_examples = sft_examples(dev_reports, shots, index) if dev_reports else []

    reader = shared_reader(store)
    cmd = command or " ".join(shlex.quote(a) for a in ["python", "-m", "core", *sys.argv[1:]])
    run_config = {"train": config.to_dict(), "shots": shots, "max_examples": max_examples,
                  "eval_examples": eval_examples, "source": source, "model": str(model_path),
                  "command": cmd}
    run_id = store.start_run(reader.id, "sft", pid=os.getpid(), host=socket.gethostname(),
                             config=run_config)
    version, tmp = allocate_version(store, reader.id)
    try:
        from core.learning.train import train_sft

        result = train_sft(model_path, examples, tmp, config, dev_examples, callbacks)
        wall_s = time.perf_counter() - t_start
        metrics = {"eval_loss_before": result.eval_loss_before,
                   "eval_loss_after": result.eval_loss_after,
                   "train_tokens": result.train_tokens, "tokens_per_s": result.tokens_per_s,
                   "epochs_done": result.epochs_done}
        manifest = {
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
                     "format": f"core.generation.pipeline.draft_messages: the coarse draft (the pipeline's "
                               f"vote over train neighbours, self excluded) and {shots} "
                               f"retrieved train examples -> impression; loss on the "
                               f"completion only"},
            "command": cmd, "config": config.to_dict(), "shots": shots,
            "steps": result.steps, "epochs_done": result.epochs_done,
            "partial_epoch": result.epochs_done < config.epochs - 1e-6, "stopped_early": result.stopped_early,
            "train_s": round(result.train_s, 1), "wall_s": round(wall_s, 1),
            "train_tokens": result.train_tokens, "completion_tokens": result.completion_tokens,
            "tokens_per_s": round(result.tokens_per_s, 1), "losses": result.losses,
            "eval_loss_before": result.eval_loss_before, "eval_loss_after": result.eval_loss_after,
            "scores": {}, "host": socket.gethostname(),
        }
        from core.learning.train import write_manifest

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


SHIP_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md")


def export_adapter(src: str | Path, dest: str | Path) -> Path:
    """Copy an adapter's shippable files to ``dest``, replacing it atomically.

    Args:
        src: a version directory.
        dest: the target directory (e.g. ``core/assets/base-adapter``).

    Returns:
        ``dest``.
    """
    src, dest = Path(src), Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in SHIP_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
            (tmp / name).chmod(0o644)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def write_model_card(folder: str | Path, manifest: dict) -> Path:
    """Write ``README.md``: what the adapter is, its data, command, training and scores.

    Args:
        folder: the adapter directory.
        manifest: the dict written to ``manifest.json`` (``scores`` may be filled in later).

    Returns:
        The README path.
    """
    m = manifest
    cfg = m.get("config", {})
    data = m.get("data", {})
    losses = m.get("losses") or []
    first = losses[0]["loss"] if losses and "loss" in losses[0] else None
    last = [x["loss"] for x in losses[-10:] if "loss" in x]
    lines = [
        f"# Impressionist shared base adapter (SFT) v{m.get('version')}",
        "",
        f"LoRA adapter (r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}, all attention and "
        f"MLP projections"
        + (f" of the top {cfg['lora_layers']} of {m.get('base_model', {}).get('num_hidden_layers')}"
           f" layers" if cfg.get("lora_layers") else "")
        + f") for `{m.get('base_model', {}).get('name')}`, trained with TRL's "
        "SFTTrainer to write the IMPRESSION of a chest X-ray report from its findings, "
        "indication and comparison. The shared model drafts with it, and every radiologist's "
        "personal adapter starts from it.",
        "",
        "## Data",
        f"- source: {data.get('source')}; {data.get('n_train_reports')} train-split reports, "
        f"{data.get('n_examples')} in the training set"
        + (f" (a seeded subset of {data.get('max_examples')})" if data.get("max_examples") else "")
        + f", {data.get('n_too_long', 0)} left out as too long; "
        f"{round((m.get('epochs_done') or 0) * (data.get('n_examples') or 0))} of them seen "
        f"(steps x batch, the first of a seeded shuffle)",
        f"- split: {data.get('split_rule')}",
        f"- format: {data.get('format')}",
        "",
        "## Training",
        f"- command: `{m.get('command')}`",
        f"- seed {cfg.get('seed')}, batch {cfg.get('batch_size')}, learning rate "
        f"{cfg.get('learning_rate')} (linear decay, {cfg.get('warmup_steps')} warm-up steps), "
        f"max_length {cfg.get('max_length')}, dtype {cfg.get('dtype')}",
        f"- {m.get('steps')} optimizer steps = {m.get('epochs_done')} epochs"
        + (" (**partial epoch**: CPU time budget)" if m.get("partial_epoch") else "")
        + (" (stopped by --max-minutes)" if m.get("stopped_early") else ""),
        f"- {m.get('train_s')} s training ({m.get('wall_s')} s wall with data preparation and "
        f"the dev loss before and after), {m.get('train_tokens')} "
        f"train tokens ({m.get('tokens_per_s')} tokens/s) on {m.get('host')}",
    ]
    if first is not None and last:
        lines.append(f"- train loss {first:.3f} (step 1) -> {sum(last) / len(last):.3f} "
                     f"(mean of the last {len(last)} logged steps)")
    if m.get("eval_loss_before") is not None:
        lines.append(f"- dev completion loss {m['eval_loss_before']:.3f} (fresh LoRA = base "
                     f"model) -> {m['eval_loss_after']:.3f}")
    scores = m.get("scores") or {}
    if scores:
        lines += ["", "## Scores", ""]
        if scores.get("note"):
            lines += [scores["note"], ""]
        lines += ["| measure | base model | with this adapter |", "|---|---|---|"]
        for key, label in (("draft_rougeL", "ROUGE-L, model draft alone"),
                           ("pipeline_rougeL", "ROUGE-L, full pipeline (llm=always)"),
                           ("draft_label_f1", "label micro-F1, model draft alone"),
                           ("pipeline_label_f1", "label micro-F1, full pipeline")):
            if key in scores.get("base", {}):
                lines.append(f"| {label} | {scores['base'][key]:.1f} | "
                             f"{scores['adapter'][key]:.1f} |")
        if scores.get("command"):
            lines += ["", f"Measured with `{scores['command']}`."]
    if m.get("reproduce"):
        lines += ["", m["reproduce"]]
    lines += ["", "Reproduce: run the command above on the same reports (the split and the "
              "example order are seeded; CPU float32 training is deterministic up to thread "
              "scheduling of reductions).", ""]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


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
    stage (the pipeline's :func:`core.generation.pipeline.clean_output` applied).

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
    from core.generation.pipeline import C2FConfig, CoarseToFine, clean_output
    from core.evaluation.metrics import label_f1, rouge
    from core.generation.retrieval import tidy

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
    from core.generation.pipeline import C2FConfig
    from core.generation.retrieval import RetrievalIndex

    by_split = _split_reports(store, source)
    index = RetrievalIndex.build([{**r, "uid": r["external_id"]}
                                  for r in by_split["train"] + by_split["dev"]],
                                 C2FConfig().retrieval)
    return _select(by_split["test"], n, seed), index


def record_scores(adapter_dir: str | Path, scores: dict) -> None:
    """Add measured scores to an adapter's manifest and rewrite its model card."""
    path = Path(adapter_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["scores"] = scores
    path.write_text(json.dumps(manifest, indent=2, default=str))
    write_model_card(adapter_dir, manifest)


def _asdict(run: SFTRun) -> dict:
    d = asdict(run)
    d["adapter_dir"] = str(run.adapter_dir)
    d["exported_to"] = str(run.exported_to) if run.exported_to else None
    return d
