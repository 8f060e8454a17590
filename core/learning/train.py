"""What every trainer shares: the hyper-parameters, the policy model and its LoRA, threads,
saving, and the log-probability scoring the promotion gate uses.

The trainers are :mod:`core.learning.dpo`, :mod:`core.learning.grpo` and
:mod:`core.learning.sft_trainer`; all use TRL 1.16 with PEFT LoRA on the base checkpoint:

* **Initialisation**: from the shared base adapter when one is given (its weights are the
  starting point; TRL keeps a frozen copy of it as the reference), otherwise a fresh LoRA from
  :func:`core.generation.models.default_lora_config` passed as ``peft_config`` (TRL's reference is then the
  base model with the adapter switched off). Either way the reference is the model the reader
  started from, never the adapter being trained.
* **DPO** (:func:`train_dpo`): TRL's ``DPOTrainer``; pair weights (rating gap, critical
  involvement) act through a weighted sampler: a pair of weight 2 is drawn twice as often as one
  of weight 1. Pairs on critical cases also get a stronger beta (``beta * critical_beta_factor``,
  per row in the sigmoid loss): DPO's optimum is ``pi_ref * exp(r / beta)``, so a larger beta
  keeps the adapter closer to the reference where a mistake is dangerous. An optional SFT term
  on the chosen side (``sft_weight``, TRL's ``"sft"`` loss) helps small models pick up a style
  from few pairs.
* **GRPO** (:func:`train_grpo`): TRL's ``GRPOTrainer`` with the hierarchical clinical reward of
  :mod:`core.learning.rewards` (one reward function per part, weighted), ``beta`` the KL toward the
  reference; on critical cases the reward's anchor pulls toward the reference policy's own
  greedy impression of the prompt (:func:`reference_completions`, computed before training).
* **SFT** (:func:`train_sft`): TRL's ``SFTTrainer`` on conversational prompt-completion rows
  (the drafting prompt of :func:`core.generation.prompts.draft_messages` -> the report's impression), the
  loss on the completion only; trains the shared *base adapter* (``core.learning.sft`` runs it on the
  store's train split and versions the result).

Only the LoRA weights train; the base weights are frozen (tests check both). Nothing here
touches the database: the nightly job reads pairs first, trains with the file released, and
writes results after.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.errors import (
    ConfigError,
    TrainError,  # noqa: F401 (defined in core.errors)
)
from core.generation.checkpoint import CHAT_TEMPLATE
from core.generation.models import cpu_has_bf16, default_lora_config

# torch's OpenMP threads must not spin on the shared 2-core target (see core.generation.models): this must
# be set before the first `import torch`, which here may be TRL's or the trainer's.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["TrainConfig", "TrainResult", "load_policy", "lora_snapshot", "sequence_logps",
           "preference_accuracy", "write_manifest"]


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
        critical_beta_factor: DPO pairs on critical cases (``critical`` in the row) use
            ``beta * critical_beta_factor`` (>= 1; 1 treats them like any pair). Default 2.0:
            together with the sampler's doubled weight of critical pairs, the adapter learns
            from them as often but stays nearer the reference on them.
        sft_weight: weight of TRL's "sft" loss on the chosen side (0 disables).
        max_length: token cap of prompt + completion.
        lora_r / lora_alpha / lora_dropout: fresh-LoRA shape (ignored when starting from an
            adapter, whose shape is kept).
        lora_layers: train LoRA only in the top N transformer layers (None: all); on a CPU this
            saves the backward pass through the lower layers.
        num_generations / max_completion_length / temperature: GRPO sampling.
        seed: seeds data order, LoRA init and sampling.
        threads: torch threads (None: leave as is).
        ref_cache_dir: DPO keeps each pair's reference log-probs here, keyed by the reference
            (base model and starting adapter) and the pair's tokens: a pair trained on again
            the next night skips the reference forward pass (None: no cache).
        progress: show TRL's progress bar.
    """
    method: str = field(default="dpo", metadata={"help": "dpo or grpo",
                                                  "choices": ("dpo", "grpo")})
    # One pass by default: each night trains from the shared base adapter on the reader's most
    # recent pairs again (and the gate judges the result), so a pair is seen once a night.
    epochs: float = field(default=1.0, metadata={
        "help": "passes over the pairs (DPO) or prompts (GRPO)"})
    max_steps: int = field(default=-1, metadata={
        "help": "cap on optimizer steps (-1: from epochs)"})
    batch_size: int = field(default=4, metadata={
        "help": "pairs (DPO) or completions (GRPO) per optimizer step"})
    learning_rate: float = field(default=2e-4, metadata={
        "help": "AdamW learning rate of the LoRA weights"})
    beta: float = field(default=0.1, metadata={
        "help": "DPO beta / GRPO KL coefficient toward the reference"})
    critical_beta_factor: float = field(default=2.0, metadata={
        "help": "DPO pairs on critical cases use beta times this (>= 1)"})
    sft_weight: float = field(default=1.0, metadata={
        "help": "weight of TRL's sft loss on the chosen side (0 disables)"})
    # the serving prompt (findings + coarse draft) is up to ~420 IU tokens
    max_length: int = field(default=512, metadata={"help": "token cap of prompt + completion"})
    lora_r: int = field(default=16, metadata={"help": "fresh-LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "fresh-LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "fresh-LoRA dropout"})
    lora_layers: int | None = field(default=None, metadata={
        "help": "train LoRA in the top N layers only (default: all)"})
    num_generations: int = field(default=4, metadata={"help": "GRPO completions per prompt"})
    max_completion_length: int = field(default=40, metadata={
        "help": "GRPO completion token cap"})
    temperature: float = field(default=1.0, metadata={"help": "GRPO sampling temperature"})
    seed: int = field(default=0, metadata={"help": "seeds data order, LoRA init and sampling"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (default: leave as is)"})
    ref_cache_dir: str | None = field(default=None, metadata={
        "help": "DPO: cache the pairs' reference log-probs here across runs (default: none)"})
    progress: bool = field(default=True, metadata={"help": "show TRL's progress bar"})

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "grpo"):
            raise ConfigError(f"TrainConfig.method {self.method!r}: expected 'dpo' or 'grpo'")
        if self.batch_size < 1 or self.learning_rate <= 0 or self.epochs <= 0:
            raise ConfigError(f"TrainConfig: batch_size, learning_rate and epochs must be > 0 "
                              f"(got {self.batch_size}, {self.learning_rate}, {self.epochs})")
        if not self.critical_beta_factor >= 1.0:
            raise ConfigError(f"TrainConfig.critical_beta_factor {self.critical_beta_factor!r}: "
                              f"expected >= 1 (critical pairs stay at least as close to the "
                              f"reference as the others)")
        for name in ("lora_layers", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} {getattr(self, name)!r}: expected >= 1")

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
    from transformers import AutoTokenizer  # deferred: heavy

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _base_model(model_path: str | Path):
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from transformers import AutoModelForCausalLM  # deferred: heavy

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise TrainError(f"no model checkpoint at {path} (config.json missing)")
    # bf16 weights on a GPU (an 8B model in float32 would not fit beside its optimizer state);
    # float32 weights on a CPU, trained under bf16 autocast where the CPU has it (mixed_bf16).
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def _lora_config(model, config: TrainConfig):

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
        from peft import PeftModel  # deferred: peft pulls in torch; only model work needs it

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
        import torch  # deferred: torch takes seconds to import; only model work needs it

        torch.set_num_threads(config.threads)


def mixed_bf16() -> bool:
    """Whether training runs in bf16 mixed precision (float32 weights, bf16 autocast): on a GPU,
    and on a CPU with native bf16 (AVX512-BF16/AMX), where a DPO step on SmolLM2-135M is 1.4x
    faster than in float32 (BENCHMARKS.md, "The model writes 1.5x faster on the CPU"); float32 elsewhere."""
    import torch  # deferred: torch takes seconds to import; only model work needs it

    return torch.cuda.is_available() or cpu_has_bf16()


def _common_args(config: TrainConfig, out: Path, n_examples: int) -> dict:
    """Trainer arguments shared by every method: the CPU defaults, bf16 where the chip has it.

    On a GPU, Liger kernels are switched on when ``liger-kernel`` is installed (TRL's DPO/GRPO
    then also use its chunked log-probabilities). Under ``accelerate launch`` the Trainer spreads
    the batches over the GPUs by itself.
    """
    import torch  # deferred: torch takes seconds to import; only model work needs it

    gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", seed=config.seed,
        data_seed=config.seed, bf16=mixed_bf16(), fp16=False, activation_checkpointing=False,
        disable_tqdm=not config.progress, dataloader_num_workers=0, use_cpu=not gpu,
        use_liger_kernel=gpu and importlib.util.find_spec("liger_kernel") is not None,
    )


def _quiet(trainer, config: TrainConfig) -> None:
    """Keep the console readable: transformers prints every log dict (``{'loss': ...}``), one
    line per step, under its bar (ProgressCallback) or without one (PrinterCallback). Without a
    bar nothing is printed; with one, the latest loss is shown beside it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback  # deferred: heavy

    if not config.progress:
        trainer.remove_callback(PrinterCallback)
        return

    class LossBar(ProgressCallback):
        """transformers' training bar, with the loss as its postfix instead of printed dicts."""
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if state.is_world_process_zero and self.training_bar is not None \
                    and isinstance(loss, (int, float)):
                self.training_bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossBar())


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


def _save_on_main(trainer, out: Path) -> None:
    """Under ``accelerate launch`` every rank trains; only rank 0 writes the adapter, and the
    others wait until it is on disk."""
    if trainer.is_world_process_zero():
        _save_adapter(trainer.model, out)
        shutil.rmtree(out / "trainer", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


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


# ---------------------------------------------------------------------------------------------
# GRPO (online RL with the hierarchical clinical reward)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# SFT (the shared base adapter)
# ---------------------------------------------------------------------------------------------


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
    import torch  # deferred: torch takes seconds to import; only model work needs it

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
            # Left-pad so that every completion ends at the right edge: the LM head and the
            # log-softmax then run over the completion positions only (``logits_to_keep``),
            # not over every prompt token times the whole vocabulary.
            width = max(len(r[0]) for r in part)
            keep = max(len(f) - n for f, n in part) + 1
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for i, (f_ids, _) in enumerate(part):
                ids[i, width - len(f_ids):] = torch.tensor(f_ids)
                mask[i, width - len(f_ids):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {}
            if adapter_names is not None:
                kwargs["adapter_names"] = list(adapter_names[start:start + batch_size])
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           logits_to_keep=keep, **kwargs).logits.float()
            # logits[:, j] predicts token width - keep + j + 1
            tgt = ids[:, width - keep + 1:]
            lp = logits[:, :-1]
            tok_lp = lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lp, dim=-1)
            for i, (f_ids, n_prompt) in enumerate(part):
                n_comp = len(f_ids) - n_prompt
                span = tok_lp[i, tok_lp.shape[1] - n_comp:]
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
