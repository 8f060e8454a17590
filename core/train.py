"""Train one radiologist's LoRA adapter: DPO on preference pairs, or online RL (GRPO).

Both use TRL 1.16 with PEFT LoRA on the base checkpoint:

* **Initialisation**: from the shared base adapter when one is given (its weights are the
  starting point; TRL keeps a frozen copy of it as the reference), otherwise a fresh LoRA from
  :func:`core.models.default_lora_config` passed as ``peft_config`` (TRL's reference is then the
  base model with the adapter switched off). Either way the reference is the model the reader
  started from, never the adapter being trained.
* **DPO** (:func:`train_dpo`): TRL's ``DPOTrainer``; pair weights (rating gap, critical
  involvement) act through a weighted sampler: a pair of weight 2 is drawn twice as often as one
  of weight 1. An optional SFT term on the chosen side (``sft_weight``, TRL's ``"sft"`` loss) helps
  small models pick up a style from few pairs.
* **GRPO** (:func:`train_grpo`): TRL's ``GRPOTrainer`` with the hierarchical clinical reward of
  :mod:`core.rewards` (one reward function per part, weighted), ``beta`` the KL toward the
  reference.

Only the LoRA weights train; the base weights are frozen (tests check both). Nothing here
touches the database: the nightly job reads pairs first, trains with the file released, and
writes results after.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import ImpressionistError

__all__ = ["TrainError", "TrainConfig", "TrainResult", "train_dpo", "train_grpo",
           "load_policy", "sequence_logps", "preference_accuracy", "lora_snapshot"]


class TrainError(ImpressionistError):
    """Training could not run (no pairs, missing model, bad configuration)."""


@dataclass
class TrainConfig:
    """Hyper-parameters for one reader's training run (CPU-friendly defaults).

    Attributes:
        method: "dpo" or "grpo".
        epochs: passes over the pairs (DPO) or prompts (GRPO).
        max_steps: hard cap on optimizer steps (-1: from epochs).
        batch_size: pairs (DPO) or completions (GRPO, a multiple of num_generations) per step.
        learning_rate: AdamW learning rate of the LoRA weights.
        beta: DPO beta / GRPO KL coefficient toward the reference.
        sft_weight: weight of TRL's "sft" loss on the chosen side (0 disables).
        max_length: token cap of prompt + completion.
        lora_r / lora_alpha / lora_dropout: fresh-LoRA shape (ignored when starting from an
            adapter, whose shape is kept).
        lora_layers: train LoRA only in the top N transformer layers (None: all); on a CPU this
            saves the backward pass through the lower layers.
        num_generations / max_completion_length / temperature: GRPO sampling.
        seed: seeds data order, LoRA init and sampling.
        threads: torch threads (None: leave as is).
        progress: show TRL's progress bar.
    """

    method: str = "dpo"
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 4
    learning_rate: float = 2e-4
    beta: float = 0.1
    sft_weight: float = 1.0
    max_length: int = 320
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    num_generations: int = 4
    max_completion_length: int = 40
    temperature: float = 1.0
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "grpo"):
            raise TrainError(f"TrainConfig.method {self.method!r}: expected 'dpo' or 'grpo'")
        if self.batch_size < 1 or self.learning_rate <= 0 or self.epochs <= 0:
            raise TrainError(f"TrainConfig: batch_size, learning_rate and epochs must be > 0 "
                             f"(got {self.batch_size}, {self.learning_rate}, {self.epochs})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What one training run did."""

    method: str
    adapter_dir: str
    n_examples: int
    steps: int
    train_s: float
    examples_per_s: float
    losses: list[dict] = field(default_factory=list)  # [{"step", "loss", ...}] from TRL's log
    init: str = "fresh"  # "fresh" or the path of the adapter it started from

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# model loading
# ---------------------------------------------------------------------------------------------


def _tokenizer(model_path: str | Path):
    from transformers import AutoTokenizer

    from core.models import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _base_model(model_path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise TrainError(f"no model checkpoint at {path} (config.json missing)")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _lora_config(model, config: TrainConfig):
    from core.models import default_lora_config

    lora = default_lora_config(model, r=config.lora_r, alpha=config.lora_alpha,
                               dropout=config.lora_dropout)
    if config.lora_layers:
        n = model.config.num_hidden_layers
        lora.layers_to_transform = list(range(max(0, n - config.lora_layers), n))
    return lora


def load_policy(model_path: str | Path, adapter_dir: str | Path | None = None,
                trainable: bool = False):
    """The base model with an adapter attached (or the bare base model), and its tokenizer.

    Args:
        model_path: the base checkpoint.
        adapter_dir: a PEFT adapter directory, or None for the base model alone.
        trainable: load the adapter's weights as trainable.

    Returns:
        (model, tokenizer).
    """
    model = _base_model(model_path)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise TrainError(f"{adapter_dir} is not a PEFT adapter (adapter_config.json missing)")
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    return model, _tokenizer(model_path)


def lora_snapshot(model) -> tuple[dict, dict]:
    """Copies of (LoRA weights, base weights) of a model, by parameter name (tests)."""
    lora, base = {}, {}
    for name, p in model.named_parameters():
        (lora if "lora_" in name else base)[name] = p.detach().clone()
    return lora, base


def _set_threads(config: TrainConfig) -> None:
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)


def _common_args(config: TrainConfig, out: Path, n_examples: int) -> dict:
    return dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", seed=config.seed,
        data_seed=config.seed, bf16=False, fp16=False, activation_checkpointing=False,
        disable_tqdm=not config.progress, dataloader_num_workers=0, use_cpu=True,
    )


def _quiet(trainer, config: TrainConfig) -> None:
    """Without a progress bar, transformers prints every log dict; keep stdout clean instead."""
    if not config.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)


def _save_adapter(model, out: Path) -> None:
    """Save only the trained ("default") adapter as a plain PEFT directory."""
    tmp = out / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["default"])
    for p in tmp.iterdir():
        target = out / p.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(p, target)
    tmp.rmdir()


def _losses(log_history: list[dict]) -> list[dict]:
    keep = ("step", "loss", "rewards/accuracies", "rewards/margins", "reward", "kl",
            "learning_rate", "epoch")
    out = []
    for entry in log_history:
        if "loss" in entry or "reward" in entry:
            out.append({k: entry[k] for k in keep if k in entry and isinstance(entry[k], (int, float))})
    return out


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------


def _weighted_dpo_trainer():
    import torch
    from trl import DPOTrainer

    class WeightedDPOTrainer(DPOTrainer):
        """DPOTrainer whose sampler draws pairs in proportion to their ``weight`` column."""

        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset
            if ds is None or "weight" not in ds.column_names:
                return super()._get_train_sampler(train_dataset)
            weights = torch.tensor([max(float(w), 1e-6) for w in ds["weight"]],
                                   dtype=torch.double)
            gen = torch.Generator().manual_seed(self.args.seed)
            return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights),
                                                          replacement=True, generator=gen)

    return WeightedDPOTrainer


def train_dpo(model_path: str | Path, examples: Sequence[dict], out_dir: str | Path,
              config: TrainConfig | None = None, init_adapter: str | Path | None = None,
              callbacks: Sequence[Any] = ()) -> TrainResult:
    """DPO-train a LoRA adapter on preference examples and save it to ``out_dir``.

    Args:
        model_path: the base checkpoint (Hugging Face directory).
        examples: TRL conversational preference rows (``core.pairs.to_trl``): prompt, chosen,
            rejected, and optionally weight.
        out_dir: directory to write the adapter into (created; PEFT files at its top level).
        config: hyper-parameters.
        init_adapter: start from this adapter's weights (the shared base adapter), or None.
        callbacks: extra ``transformers.TrainerCallback`` objects (progress, cancellation).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainError: no examples or no model.
    """
    config = config or TrainConfig()
    if not examples:
        raise TrainError("no preference pairs to train on")
    _set_threads(config)
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rows = [{"prompt": e["prompt"], "chosen": e["chosen"], "rejected": e["rejected"],
             "weight": float(e.get("weight", 1.0))} for e in examples]
    dataset = Dataset.from_list(rows)
    model, tok = load_policy(model_path, init_adapter, trainable=True)
    peft_config = None if init_adapter is not None else _lora_config(model, config)
    loss_type, loss_weights = ["sigmoid"], [1.0]
    if config.sft_weight > 0:
        loss_type, loss_weights = ["sigmoid", "sft"], [1.0, config.sft_weight]
    args = DPOConfig(**_common_args(config, out, len(rows)), beta=config.beta,
                     max_length=config.max_length, loss_type=loss_type, loss_weights=loss_weights,
                     precompute_ref_log_probs=config.epochs > 1, remove_unused_columns=False)
    trainer = _weighted_dpo_trainer()(model=model, args=args, train_dataset=dataset,
                                      processing_class=tok, peft_config=peft_config,
                                      callbacks=list(callbacks) or None)
    _quiet(trainer, config)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    _save_adapter(trainer.model, out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    steps = int(trainer.state.global_step)
    n_seen = steps * config.batch_size
    return TrainResult("dpo", str(out), len(rows), steps, train_s,
                       n_seen / train_s if train_s > 0 else 0.0, _losses(trainer.state.log_history),
                       str(init_adapter) if init_adapter else "fresh")


# ---------------------------------------------------------------------------------------------
# GRPO (online RL with the hierarchical clinical reward)
# ---------------------------------------------------------------------------------------------


def train_grpo(model_path: str | Path, prompts: Sequence[dict], out_dir: str | Path,
               config: TrainConfig | None = None, init_adapter: str | Path | None = None,
               reward_funcs: Sequence[Callable] | None = None,
               reward_weights: Sequence[float] | None = None,
               callbacks: Sequence[Any] = ()) -> TrainResult:
    """GRPO-train a LoRA adapter with the hierarchical reward and save it to ``out_dir``.

    Args:
        model_path: the base checkpoint.
        prompts: rows with ``prompt`` (chat messages), ``findings``, ``references`` (list of the
            reader's reference impressions) and ``reference_completion`` (the reference policy's
            impression, for the critical-case anchor).
        out_dir: directory to write the adapter into.
        config: hyper-parameters (``num_generations`` completions per prompt).
        init_adapter: start from this adapter, or None for a fresh LoRA.
        reward_funcs / reward_weights: default :func:`core.rewards.grpo_reward_funcs` and
            :func:`core.rewards.grpo_reward_weights`.
        callbacks: extra trainer callbacks.

    Returns:
        A :class:`TrainResult` (``losses`` carry TRL's logged reward and KL too).
    """
    config = config or TrainConfig(method="grpo")
    if not prompts:
        raise TrainError("no prompts to train on")
    _set_threads(config)
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from core.rewards import grpo_reward_funcs, grpo_reward_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rows = [{"prompt": p["prompt"], "findings": p.get("findings") or "",
             "references": list(p.get("references") or []),
             "reference_completion": p.get("reference_completion") or ""} for p in prompts]
    dataset = Dataset.from_list(rows)
    funcs = list(reward_funcs) if reward_funcs is not None else grpo_reward_funcs()
    weights = list(reward_weights) if reward_weights is not None else grpo_reward_weights()
    model, tok = load_policy(model_path, init_adapter, trainable=True)
    tok.padding_side = "left"
    peft_config = None if init_adapter is not None else _lora_config(model, config)
    batch = max(config.num_generations,
                math.ceil(config.batch_size / config.num_generations) * config.num_generations)
    common = _common_args(config, out, len(rows))
    common["per_device_train_batch_size"] = batch
    args = GRPOConfig(**common, beta=config.beta, num_generations=config.num_generations,
                      max_completion_length=config.max_completion_length,
                      temperature=config.temperature, reward_weights=weights,
                      remove_unused_columns=False, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                          processing_class=tok, peft_config=peft_config,
                          callbacks=list(callbacks) or None)
    _quiet(trainer, config)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    _save_adapter(trainer.model, out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    steps = int(trainer.state.global_step)
    n_prompts = steps * batch // config.num_generations
    return TrainResult("grpo", str(out), len(rows), steps, train_s,
                       n_prompts / train_s if train_s > 0 else 0.0,
                       _losses(trainer.state.log_history),
                       str(init_adapter) if init_adapter else "fresh")


# ---------------------------------------------------------------------------------------------
# evaluation helpers
# ---------------------------------------------------------------------------------------------


def sequence_logps(model, tok, prompts: Sequence[list[dict]], completions: Sequence[str],
                   batch_size: int = 8, max_length: int = 512,
                   adapter_names: Sequence[str] | None = None) -> list[float]:
    """Mean per-token log-probability of each completion given its chat prompt.

    Args:
        model: a causal LM (with or without adapters), in eval mode.
        tok: its tokenizer (chat template set).
        prompts: chat messages per row.
        completions: assistant texts per row.
        batch_size: rows per forward pass.
        max_length: longer rows are cut from the left of the prompt.
        adapter_names: per row, the PEFT adapter to apply (``"__base__"`` for none), for a
            PeftModel holding several adapters (mixed-adapter forward passes).

    Returns:
        One float per row (higher = more likely).
    """
    import torch

    rows = []
    for msgs, text in zip(prompts, completions):
        p = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": text}],
                                       tokenize=False)
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(p_ids)
        if len(f_ids) > max_length:
            cut = len(f_ids) - max_length
            f_ids, n_prompt = f_ids[cut:], max(1, n_prompt - cut)
        rows.append((f_ids, n_prompt))
    out: list[float] = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            width = max(len(r[0]) for r in part)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for i, (f_ids, _) in enumerate(part):
                ids[i, :len(f_ids)] = torch.tensor(f_ids)
                mask[i, :len(f_ids)] = 1
            kwargs = {}
            if adapter_names is not None:
                kwargs["adapter_names"] = list(adapter_names[start:start + batch_size])
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:]
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            for i, (f_ids, n_prompt) in enumerate(part):
                span = tok_lp[i, n_prompt - 1:len(f_ids) - 1]
                out.append(float(span.mean()) if span.numel() else 0.0)
    if was_training:
        model.train()
    return out


def preference_accuracy(model, tok, examples: Sequence[dict], batch_size: int = 8,
                        adapter_name: str | None = None) -> float:
    """Share of preference rows whose chosen side the model finds more likely (mean token
    log-probability) than the rejected side; NaN without rows.

    Args:
        model: the policy to evaluate (base model, or with the adapter under test active).
        tok: its tokenizer.
        examples: TRL preference rows (prompt messages, chosen/rejected assistant turns).
        batch_size: rows per forward pass.
        adapter_name: with a multi-adapter PeftModel, the adapter to evaluate (``"__base__"``
            for the bare base model).
    """
    if not examples:
        return float("nan")
    prompts = [e["prompt"] for e in examples]
    chosen = [e["chosen"][0]["content"] if isinstance(e["chosen"], list) else e["chosen"]
              for e in examples]
    rejected = [e["rejected"][0]["content"] if isinstance(e["rejected"], list) else e["rejected"]
                for e in examples]
    names = [adapter_name] * len(examples) if adapter_name else None
    lc = sequence_logps(model, tok, prompts, chosen, batch_size, adapter_names=names)
    lr = sequence_logps(model, tok, prompts, rejected, batch_size, adapter_names=names)
    return sum(c > r for c, r in zip(lc, lr)) / len(examples)


def write_manifest(out_dir: str | Path, **info: Any) -> Path:
    """Write ``manifest.json`` (what made this adapter) next to the adapter files."""
    path = Path(out_dir) / "manifest.json"
    path.write_text(json.dumps(info, indent=2, default=str))
    return path
