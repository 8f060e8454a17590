"""The shared base adapter's one home: where it is, whether it fits a model, loading it, shipping it.

Every radiologist's adapter starts from the shared base LoRA adapter, and the shared model drafts
with it. Its versions live in the same registry as the readers' (:mod:`core.adapters.registry`),
owned by the disabled pseudo account :data:`SHARED_READER`; the adapter shipped with the code
(``core/assets/base-adapter``) is the fallback. Training it is :mod:`core.learning.sft`.

Lookup order (:func:`shared_adapter_dir`): ``$IMPRESSIONIST_BASE_ADAPTER``, then the active
``shared-base`` version, then the shipped adapter; each only when its files are intact and it
fits the configured base model (a SmolLM2 adapter is never loaded into another model).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.adapters.files import check_adapter_files
from core.adapters.registry import read_pointer, reader_dir
from core.config import settings
from core.errors import AdapterError, NotFound, StoreError

__all__ = ["SHARED_READER", "SHARED_ADAPTER_NAME", "SHIPPED_ADAPTER_DIR", "adapter_fits",
           "base_adapter_dir", "shared_adapter_dir", "use_base_adapter", "shared_reader",
           "export_adapter", "write_model_card", "record_scores"]

SHARED_READER = "shared-base"  # the pseudo account that owns the base adapter's runs/versions
SHARED_ADAPTER_NAME = "@shared"  # its name inside a Generator
SHIPPED_ADAPTER_DIR = Path(__file__).resolve().parents[1] / "assets" / "base-adapter"


FINGERPRINT_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "vocab_size")



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
        from safetensors import safe_open  # deferred: heavy

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
    :func:`shared_adapter_dir` calls this (after ``$IMPRESSIONIST_BASE_ADAPTER``).

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
    path = shared_adapter_dir()
    if path is None or not adapter_fits(path, generator):
        return None
    generator.load_adapter(SHARED_ADAPTER_NAME, path)
    return SHARED_ADAPTER_NAME



def shared_reader(store):
    """The disabled pseudo account that owns the base adapter's runs and versions (created once).

    Returns:
        Its ``core.store.accounts.Reader``.
    """
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
        *[f"- went on from run {i} of {len(m['lineage'])}: `{c}`"
          for i, c in enumerate(m.get("lineage") or [], 1)],
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
        start = (f"the adapter it went on from, {cfg['init_adapter']}" if cfg.get("init_adapter")
                 else "fresh LoRA = base model")
        lines.append(f"- dev completion loss {m['eval_loss_before']:.3f} ({start}) -> "
                     f"{m['eval_loss_after']:.3f}")
    lines += _score_lines(m.get("scores") or {})
    if m.get("reproduce"):
        lines += ["", m["reproduce"]]
    lines += ["", f"Reproduce: run the command{'s above, in order,' if m.get('lineage') else ' above'} on the same reports (the split and the "
              "example order are seeded; CPU float32 training is deterministic up to thread "
              "scheduling of reductions).", ""]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _score_lines(scores: dict) -> list[str]:
    """The model card's ``## Scores`` section (empty when nothing was measured)."""
    if not scores:
        return []
    lines = ["", "## Scores", ""]
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
    return lines



def record_scores(adapter_dir: str | Path, scores: dict) -> None:
    """Add measured scores to an adapter's manifest and rewrite its model card."""
    path = Path(adapter_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["scores"] = scores
    path.write_text(json.dumps(manifest, indent=2, default=str))
    write_model_card(adapter_dir, manifest)


def shared_adapter_dir() -> Path | None:
    """The shared base LoRA adapter (every reader's starting point), or None when absent.

    ``$IMPRESSIONIST_BASE_ADAPTER`` first, then :func:`base_adapter_dir` (the active trained
    version, else the shipped one, when it fits the configured model). A damaged folder is
    skipped: the bare base model is better than a half-loaded adapter.
    """
    env = os.environ.get("IMPRESSIONIST_BASE_ADAPTER")
    candidates = [Path(env)] if env else []
    found = base_adapter_dir()
    if found is not None:
        candidates.append(found)
    for c in candidates:
        if (c / "adapter_config.json").is_file():
            try:
                check_adapter_files(c)
            except AdapterError:
                continue
            return c
    return None
