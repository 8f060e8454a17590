"""Train one radiologist's LoRA adapter: DPO on preference pairs, or online RL (GRPO).

Both use TRL 1.16 with PEFT LoRA on the base checkpoint:

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
  (the drafting prompt of :func:`core.generation.pipeline.draft_messages` -> the report's impression), the
  loss on the completion only; trains the shared *base adapter* (``core.learning.sft`` runs it on the
  store's train split and versions the result).

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
from core.errors import TrainError  # noqa: F401 (defined in core.errors)

# torch's OpenMP threads must not spin on the shared 2-core target (see core.generation.models): this must
# be set before the first `import torch`, which here may be TRL's or the trainer's.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["TrainError", "TrainConfig", "TrainResult", "train_dpo", "train_grpo",
           "build_dpo_trainer", "pair_beta", "reference_completions", "load_policy",
           "sequence_logps", "preference_accuracy", "lora_snapshot",
           "SFTTrainConfig", "SFTResult", "train_sft", "length_grouped_order", "padding_share"]


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
        progress: show TRL's progress bar.
    """

    method: str = "dpo"
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 4
    learning_rate: float = 2e-4
    beta: float = 0.1
    critical_beta_factor: float = 2.0
    sft_weight: float = 1.0
    max_length: int = 512  # the serving prompt (findings + coarse draft) is up to ~420 IU tokens
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
        if not self.critical_beta_factor >= 1.0:
            raise TrainError(f"TrainConfig.critical_beta_factor {self.critical_beta_factor!r}: "
                             f"expected >= 1 (critical pairs stay at least as close to the "
                             f"reference as the others)")

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

    from core.generation.models import CHAT_TEMPLATE

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
    # bf16 weights on a GPU (an 8B model in float32 would not fit beside its optimizer state);
    # float32 on a CPU, where bf16 matmuls are slow without AMX.
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def _lora_config(model, config: TrainConfig):
    from core.generation.models import default_lora_config

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
    """Trainer arguments shared by every method: the CPU defaults, bf16 on a GPU.

    On a GPU, Liger kernels are switched on when ``liger-kernel`` is installed (TRL's DPO/GRPO
    then also use its chunked log-probabilities). Under ``accelerate launch`` the Trainer spreads
    the batches over the GPUs by itself.
    """
    import importlib.util

    import torch

    gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", seed=config.seed,
        data_seed=config.seed, bf16=gpu, fp16=False, activation_checkpointing=False,
        disable_tqdm=not config.progress, dataloader_num_workers=0, use_cpu=not gpu,
        use_liger_kernel=gpu and importlib.util.find_spec("liger_kernel") is not None,
    )


def _quiet(trainer, config: TrainConfig) -> None:
    """Keep the console readable: transformers prints every log dict (``{'loss': ...}``), one
    line per step, under its bar (ProgressCallback) or without one (PrinterCallback). Without a
    bar nothing is printed; with one, the latest loss is shown beside it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

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


def length_grouped_order(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                         mega: int = 32) -> list[int]:
    """Reorder sampled indices so each batch holds pairs of similar length (less padding).

    TRL 1.16 switched DPO's ``padding_free`` off ("temporarily unavailable after a refactor"; it
    warns and pads), so padding is cut the other way: the sampled order is cut into chunks of
    ``mega`` batches, each chunk is sorted by length (longest first) and cut into batches, and
    the batches of a chunk are shuffled back in a fixed way. The multiset of indices, hence
    what the weights drew, is unchanged; only which pairs share a batch changes.

    Args:
        order: sampled dataset indices (with repeats, from the weighted sampler).
        lengths: per dataset index, the padded length its pair needs (prompt + longer answer).
        batch_size: per-device batch size.
        mega: batches per sorted chunk (larger: less padding, less randomness).
    """
    order = list(order)
    size = max(1, batch_size) * max(1, mega)
    out: list[int] = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches = [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        # interleave long and short batches (deterministic): memory peaks stay spread out
        mixed = batches[0::2] + batches[1::2][::-1]
        for b in mixed:
            out.extend(b)
    return out


def padding_share(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> float:
    """Share of padded positions when ``order`` is cut into batches padded to their longest."""
    total = pad = 0
    order = list(order)
    for j in range(0, len(order), batch_size):
        b = [lengths[i] for i in order[j:j + batch_size]]
        total += max(b) * len(b)
        pad += max(b) * len(b) - sum(b)
    return pad / total if total else 0.0


def _weighted_dpo_trainer():
    import torch
    from trl import DPOTrainer

    class _Order(torch.utils.data.Sampler):
        """Yields the precomputed order of epoch 1, then 2, ... (one list per epoch)."""

        def __init__(self, epochs: list[list[int]]) -> None:
            self.epochs = epochs
            self.calls = 0

        def __iter__(self):
            order = self.epochs[self.calls % len(self.epochs)]
            self.calls += 1
            return iter(order)

        def __len__(self) -> int:
            return len(self.epochs[0])

    class _WithBeta:
        """TRL's preference collator, plus each row's ``beta`` column as a (B,) tensor (TRL's
        collator keeps only the token columns and the precomputed reference log-probs)."""

        def __init__(self, inner) -> None:
            self.inner = inner

        def __call__(self, examples: list[dict]) -> dict:
            batch = self.inner(examples)
            if examples and "beta" in examples[0]:
                batch["beta"] = torch.tensor([float(e["beta"]) for e in examples],
                                             dtype=torch.float32)
            return batch

    class WeightedDPOTrainer(DPOTrainer):
        """DPOTrainer whose sampler draws pairs in proportion to their ``weight`` column and
        groups pairs of similar length into a batch (:func:`length_grouped_order`), and whose
        loss uses each pair's own ``beta`` column (critical pairs: a stronger beta).

        Under ``accelerate launch`` every rank draws the same order (same seed) and accelerate
        hands each rank its own batches of it.
        """

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.data_collator = _WithBeta(self.data_collator)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            n = len(dataset)
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if n and not len(dataset):  # TRL drops rows whose prompt alone fills max_length
                raise TrainError(f"all {n} preference pairs have a prompt of max_length="
                                 f"{args.max_length} tokens or more; raise max_length or "
                                 f"shorten the prompt")
            return dataset

        def compute_ref_log_probs(self, model, inputs):
            # the reference forward passes every other key to the model
            return super().compute_ref_log_probs(
                model, {k: v for k, v in inputs.items() if k != "beta"})

        def _compute_loss(self, model, inputs, return_outputs):
            # TRL 1.16 has one global beta: ``_compute_loss`` reads ``self.beta`` in the loss
            # (``-logsigmoid(self.beta * delta_score)``) and in the logged implicit rewards,
            # nowhere else. Setting it to the batch's (B,) beta for this call broadcasts it
            # against the per-pair margins, and keeps the rest of TRL's loss (SFT term,
            # precomputed reference log-probs, metrics) as it is.
            if "beta" not in inputs:
                return super()._compute_loss(model, inputs, return_outputs)
            inputs = dict(inputs)
            beta = inputs.pop("beta")
            scalar = self.beta
            self.beta = beta.to(self.accelerator.device)
            try:
                return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self.beta = scalar

        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset
            if ds is None or "weight" not in ds.column_names:
                return super()._get_train_sampler(train_dataset)
            weights = torch.tensor([max(float(w), 1e-6) for w in ds["weight"]],
                                   dtype=torch.double)
            gen = torch.Generator().manual_seed(self.args.seed)
            n = len(weights)
            # one draw per epoch, all epochs drawn up front so the order is fixed by the seed
            epochs = max(1, math.ceil(self.args.num_train_epochs))
            order = torch.multinomial(weights, n * epochs, replacement=True,
                                      generator=gen).tolist()
            lengths = None
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(ds.column_names):
                lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                           zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
            group = self.args.per_device_train_batch_size * max(1, self.args.world_size)
            per_epoch = []
            for k in range(epochs):
                part = order[k * n:(k + 1) * n]
                per_epoch.append(length_grouped_order(part, lengths, group) if lengths else part)
            return _Order(per_epoch)

    return WeightedDPOTrainer


def pair_beta(example: dict, config: TrainConfig) -> float:
    """The DPO beta of one preference row: ``config.beta``, times ``critical_beta_factor``
    when the row is on a critical case (its ``critical`` field, :func:`core.learning.pairs.to_trl`).

    >>> pair_beta({"critical": True}, TrainConfig(beta=0.1, critical_beta_factor=4.0))
    0.4
    """
    return config.beta * (config.critical_beta_factor if example.get("critical") else 1.0)


def build_dpo_trainer(model_path: str | Path, examples: Sequence[dict], out_dir: str | Path,
                      config: TrainConfig | None = None, init_adapter: str | Path | None = None,
                      callbacks: Sequence[Any] = ()):
    """The DPO trainer :func:`train_dpo` runs, built but not trained (tests inspect its loss).

    Args and Raises: as :func:`train_dpo`.

    Returns:
        A ``DPOTrainer`` (subclass) whose dataset carries ``weight`` and ``beta`` per row.
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
             "weight": float(e.get("weight", 1.0)), "beta": pair_beta(e, config)}
            for e in examples]
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
    return trainer


def train_dpo(model_path: str | Path, examples: Sequence[dict], out_dir: str | Path,
              config: TrainConfig | None = None, init_adapter: str | Path | None = None,
              callbacks: Sequence[Any] = ()) -> TrainResult:
    """DPO-train a LoRA adapter on preference examples and save it to ``out_dir``.

    Args:
        model_path: the base checkpoint (Hugging Face directory).
        examples: TRL conversational preference rows (``core.learning.pairs.to_trl``): prompt, chosen,
            rejected, and optionally weight (sampling) and critical (a stronger beta,
            :func:`pair_beta`).
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
    out = Path(out_dir)
    trainer = build_dpo_trainer(model_path, examples, out, config, init_adapter, callbacks)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    _save_on_main(trainer, out)
    steps = int(trainer.state.global_step)
    n_seen = steps * config.batch_size
    return TrainResult("dpo", str(out), len(examples), steps, train_s,
                       n_seen / train_s if train_s > 0 else 0.0, _losses(trainer.state.log_history),
                       str(init_adapter) if init_adapter else "fresh")


# ---------------------------------------------------------------------------------------------
# GRPO (online RL with the hierarchical clinical reward)
# ---------------------------------------------------------------------------------------------


def reference_completions(model, tok, prompts: Sequence[list[dict]], max_new_tokens: int,
                          batch_size: int = 8, device: str = "cpu") -> list[str]:
    """The reference policy's greedy impression of each chat prompt (the GRPO critical anchor).

    Decoded as serving decodes (:meth:`core.generation.models.Generator.generate`: greedy, stops at the
    end of the turn, special tokens stripped). Identical prompts are generated once.

    Args:
        model: the reference policy: the model the reader starts from, before any training
            (the base model, or the base with the starting adapter active).
        tok: its tokenizer (chat template set).
        prompts: chat messages per row.
        max_new_tokens: token cap of each impression (GRPO's ``max_completion_length``, so the
            anchor compares texts of the same reach).
        batch_size: prompts per generation batch.
        device: where to run ``model`` (it is moved there).

    Returns:
        One impression per prompt, in order.

    >>> reference_completions(model, tok, [[{"role": "user", "content": "Findings: ..."}]],
    ...                       40)  # doctest: +SKIP
    ['No acute cardiopulmonary abnormality.']
    """
    from core.generation.models import Generator, ModelSpec

    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    unique = list(dict.fromkeys(keys))
    by_key = dict(zip(keys, prompts))
    was_training = model.training
    model.to(device).eval()
    path = getattr(model.config, "_name_or_path", "") or "policy"
    gen = Generator(model, tok, ModelSpec(path=path, device="cpu" if device == "cpu" else "cuda"),
                    device, next(model.parameters()).dtype)
    texts = [r.text for r in gen.generate([by_key[k] for k in unique],
                                          max_new_tokens=max_new_tokens, batch_size=batch_size)]
    if was_training:
        model.train()
    out = dict(zip(unique, texts))
    return [out[k] for k in keys]


def train_grpo(model_path: str | Path, prompts: Sequence[dict], out_dir: str | Path,
               config: TrainConfig | None = None, init_adapter: str | Path | None = None,
               reward_funcs: Sequence[Callable] | None = None,
               reward_weights: Sequence[float] | None = None,
               callbacks: Sequence[Any] = ()) -> TrainResult:
    """GRPO-train a LoRA adapter with the hierarchical reward and save it to ``out_dir``.

    Args:
        model_path: the base checkpoint.
        prompts: rows with ``prompt`` (chat messages), ``findings``, ``references`` (list of the
            reader's reference impressions) and optionally ``reference_completion`` (the
            reference policy's impression, for the critical-case anchor). Rows without one get
            the starting model's greedy impression (:func:`reference_completions`), generated
            once before training: the model the reader starts from is the reference.
        out_dir: directory to write the adapter into.
        config: hyper-parameters (``num_generations`` completions per prompt).
        init_adapter: start from this adapter, or None for a fresh LoRA.
        reward_funcs / reward_weights: default :func:`core.learning.rewards.grpo_reward_funcs` and
            :func:`core.learning.rewards.grpo_reward_weights`.
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

    from core.learning.rewards import grpo_reward_funcs, grpo_reward_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rows = [{"prompt": p["prompt"], "findings": p.get("findings") or "",
             "references": list(p.get("references") or []),
             "reference_completion": p.get("reference_completion")} for p in prompts]
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
    # Before the trainer wraps it, ``model`` is the reference (the base, or the base with the
    # starting adapter, which TRL copies as its frozen "ref"): what it writes is the anchor.
    todo = [k for k, r in enumerate(rows) if r["reference_completion"] is None]
    if todo:
        texts = reference_completions(model, tok, [rows[k]["prompt"] for k in todo],
                                      config.max_completion_length,
                                      batch_size=max(1, config.batch_size),
                                      device=str(args.device))
        for k, text in zip(todo, texts):
            rows[k]["reference_completion"] = text
    dataset = Dataset.from_list(rows)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                          processing_class=tok, peft_config=peft_config,
                          callbacks=list(callbacks) or None)
    _quiet(trainer, config)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    _save_on_main(trainer, out)
    steps = int(trainer.state.global_step)
    n_prompts = steps * batch // config.num_generations
    return TrainResult("grpo", str(out), len(rows), steps, train_s,
                       n_prompts / train_s if train_s > 0 else 0.0,
                       _losses(trainer.state.log_history),
                       str(init_adapter) if init_adapter else "fresh")


# ---------------------------------------------------------------------------------------------
# SFT (the shared base adapter)
# ---------------------------------------------------------------------------------------------


@dataclass
class SFTTrainConfig:
    """Hyper-parameters of supervised fine-tuning of the shared base adapter (CPU defaults).

    Attributes:
        epochs: passes over the examples.
        max_steps: hard cap on optimizer steps (-1: from epochs); with a partial epoch the
            examples seen are the first ``max_steps * batch_size`` of a seeded shuffle.
        batch_size: examples per optimizer step.
        learning_rate: AdamW learning rate of the LoRA weights.
        warmup_steps: linear warm-up steps, then linear decay to 0 at the last step.
        max_length: token cap of prompt + completion; longer examples are left out (never
            truncated: truncation would cut the completion the loss is on).
        lora_r / lora_alpha / lora_dropout: LoRA shape (r=8 on all seven projections of
            SmolLM2-135M is 2.44M parameters, a 9.8 MB float32 file).
        lora_layers: LoRA only in the top N transformer layers (None: all).
        dtype: "float32", or "bfloat16" for bf16 mixed precision (autocast) on the CPU.
        seed: seeds data order and LoRA init.
        threads: torch threads (None: leave as is).
        progress: show the trainer's tqdm progress bar.
        max_minutes: stop after this much training wall time (None: no limit); the steps done
            are recorded, so a time-limited run is honest but not bit-reproducible.
    """

    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    learning_rate: float = 2e-4
    warmup_steps: int = 5
    max_length: int = 1024
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    dtype: str = "float32"
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs <= 0:
            problems.append(f"epochs must be > 0 (got {self.epochs})")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be -1 or >= 1 (got {self.max_steps})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0 (got {self.learning_rate})")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.max_length < 16:
            problems.append(f"max_length must be >= 16 (got {self.max_length})")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            problems.append(f"lora_r must be >= 1 and lora_alpha > 0 (got {self.lora_r}, "
                            f"{self.lora_alpha})")
        if self.dtype not in ("float32", "bfloat16"):
            problems.append(f"dtype must be 'float32' or 'bfloat16' (got {self.dtype!r})")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"max_minutes must be > 0 (got {self.max_minutes})")
        if problems:
            raise TrainError("SFTTrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SFTResult(TrainResult):
    """What one SFT run did (adds token counts and dev losses to :class:`TrainResult`)."""

    train_tokens: int = 0  # prompt + completion tokens of the examples trained on (non-padding)
    completion_tokens: int = 0  # of those, the tokens the loss is on
    tokens_per_s: float = 0.0  # train_tokens / train_s
    n_too_long: int = 0  # examples left out for exceeding max_length
    epochs_done: float = 0.0  # fraction of an epoch when max_steps cut it short
    eval_loss_before: float | None = None  # completion loss on the eval rows, fresh adapter
    eval_loss_after: float | None = None
    stopped_early: bool = False  # max_minutes reached


def _completion_messages(example: dict, i: int) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) of one SFT row, validated."""
    if not isinstance(example, dict) or "prompt" not in example or "completion" not in example:
        raise TrainError(f"SFT example {i}: expected a dict with 'prompt' and 'completion', "
                         f"got {type(example).__name__} with keys "
                         f"{sorted(example) if isinstance(example, dict) else '-'}")
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        raise TrainError(f"SFT example {i}: 'prompt' must be a non-empty list of chat messages")
    text = (completion[0].get("content") if completion and isinstance(completion[0], dict)
            else None)
    if not (text or "").strip():
        raise TrainError(f"SFT example {i}: the completion (the impression) is blank")
    return prompt, [{"role": "assistant", "content": text}]


class _TimeLimit:
    """A trainer callback that stops training after ``seconds`` of wall time."""

    def __new__(cls, seconds: float):
        from transformers import TrainerCallback

        class TimeLimit(TrainerCallback):
            def __init__(self) -> None:
                self.t0 = None
                self.hit = False

            def on_train_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if self.t0 is not None and time.perf_counter() - self.t0 >= seconds:
                    self.hit = True
                    control.should_training_stop = True
                return control

        return TimeLimit()


def train_sft(model_path: str | Path, examples: Sequence[dict], out_dir: str | Path,
              config: SFTTrainConfig | None = None, eval_examples: Sequence[dict] = (),
              callbacks: Sequence[Any] = ()) -> SFTResult:
    """Supervised fine-tuning of a fresh LoRA adapter (TRL ``SFTTrainer``), saved to ``out_dir``.

    The rows are conversational prompt-completion pairs, so TRL tokenizes the prompt with the
    assistant turn opened (exactly what :meth:`core.generation.models.Generator.generate` feeds the model)
    and the loss is on the completion tokens only (``completion_only_loss=True``).

    Args:
        model_path: the base checkpoint (Hugging Face directory); its weights stay frozen.
        examples: rows ``{"prompt": [messages], "completion": [{"role": "assistant",
            "content": impression}]}`` (a plain string completion is accepted).
        out_dir: directory to write the adapter into (created; PEFT files at its top level).
        config: hyper-parameters.
        eval_examples: rows of the same shape (the dev split) whose completion loss is measured
            before and after training; empty to skip.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        An :class:`SFTResult`.

    Raises:
        TrainError: no examples, a malformed row, every row too long, or no model.
    """
    config = config or SFTTrainConfig()
    if not examples:
        raise TrainError("no SFT examples to train on (import reports with findings and an "
                         "impression first)")
    _set_threads(config)  # type: ignore[arg-type]
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    tok = _tokenizer(model_path)

    def rows_of(items: Sequence[dict], what: str) -> tuple[list[dict], int, int, int]:
        rows, n_long, n_tok, n_comp = [], 0, 0, 0
        for i, e in enumerate(items):
            prompt, completion = _completion_messages(e, i)
            p_ids = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
            f_ids = tok.apply_chat_template(prompt + completion, tokenize=True,
                                            return_dict=True)["input_ids"]
            if len(f_ids) > config.max_length:
                n_long += 1
                continue
            rows.append({"prompt": prompt, "completion": completion})
            n_tok += len(f_ids)
            n_comp += len(f_ids) - len(p_ids)
        if items and not rows:
            raise TrainError(f"every {what} example is longer than max_length={config.max_length} "
                             f"tokens; raise max_length or use fewer shots")
        return rows, n_long, n_tok, n_comp

    rows, n_long, n_tok, n_comp = rows_of(examples, "SFT")
    eval_rows = rows_of(eval_examples, "eval")[0] if eval_examples else []
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = _base_model(model_path)
    peft_config = _lora_config(model, config)  # type: ignore[arg-type]
    common = _common_args(config, out, len(rows))  # type: ignore[arg-type]
    common.update(lr_scheduler_type="linear", warmup_steps=config.warmup_steps,
                  gradient_accumulation_steps=1, bf16=config.dtype == "bfloat16",
                  per_device_eval_batch_size=config.batch_size, eval_strategy="no")
    # Length-grouped batches (random megabatches, sorted inside): the serving prompt's length
    # varies 2x with its examples, and padding every batch to its longest row wasted ~1/3 of CPU.
    common["train_sampling_strategy"] = "group_by_length"
    args = SFTConfig(**common, max_length=config.max_length, completion_only_loss=True,
                     packing=False, shuffle_dataset=False, dataset_num_proc=None,
                     include_num_input_tokens_seen="non_padding")
    extra = list(callbacks)
    limit = _TimeLimit(config.max_minutes * 60) if config.max_minutes else None
    if limit is not None:
        extra.append(limit)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                         processing_class=tok, peft_config=peft_config,
                         callbacks=extra or None)
    _quiet(trainer, config)  # type: ignore[arg-type]
    before = trainer.evaluate()["eval_loss"] if eval_rows else None
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    after = trainer.evaluate()["eval_loss"] if eval_rows else None
    _save_adapter(trainer.model, out)
    _neutral_base_name(out, model_path)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    steps = int(trainer.state.global_step)
    seen = min(len(rows) * math.ceil(config.epochs), steps * config.batch_size)
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    if not tokens:  # estimate from the mean example length
        tokens = round(n_tok / len(rows) * seen)
    comp = round(n_comp / len(rows) * seen)
    losses = [x for x in _losses(trainer.state.log_history) if "eval_loss" not in x]
    return SFTResult("sft", str(out), len(rows), steps, train_s,
                     seen / train_s if train_s > 0 else 0.0, losses, "fresh",
                     train_tokens=tokens, completion_tokens=comp,
                     tokens_per_s=tokens / train_s if train_s > 0 else 0.0, n_too_long=n_long,
                     epochs_done=round(seen / len(rows), 4),
                     eval_loss_before=before, eval_loss_after=after,
                     stopped_early=bool(limit is not None and limit.hit))


def _neutral_base_name(out: Path, model_path: str | Path) -> None:
    """Record the base checkpoint by its folder name, not this machine's absolute path."""
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = Path(model_path).resolve().name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


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
