"""SFT of a LoRA adapter: TRL's ``SFTTrainer`` on conversational prompt-completion rows.

The prompt is the serving prompt (:func:`core.generation.pipeline.serving_prompts`), the completion
the report's impression, the loss on the completion only. Trains the shared *base adapter*
(:mod:`core.learning.sft` runs it on the store's train split and versions the result) and a
reader's adapter before DPO.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.errors import ConfigError, TrainError
from core.learning.train import (
    TrainResult,
    _common_args,
    _lora_config,
    _losses,
    _quiet,
    _save_adapter,
    _set_threads,
    _tokenizer,
    load_policy,
)


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
        init_adapter: go on training this saved LoRA adapter (its shape wins over ``lora_*``)
            instead of a fresh one: a second epoch without redoing the first.
    """
    epochs: float = field(default=1.0, metadata={"help": "passes over the examples"})
    max_steps: int = field(default=-1, metadata={
        "help": "cap on optimizer steps (-1: epochs)"})
    batch_size: int = field(default=8, metadata={"help": "examples per optimizer step"})
    learning_rate: float = field(default=2e-4, metadata={
        "help": "AdamW learning rate of the LoRA weights"})
    warmup_steps: int = field(default=5, metadata={
        "help": "linear warm-up steps, then linear decay to 0"})
    max_length: int = field(default=1024, metadata={
        "help": "token cap of prompt + completion (longer examples are left out)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = field(default=None, metadata={
        "help": "LoRA alpha (default: 2 x rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_layers: int | None = field(default=None, metadata={
        "help": "LoRA in the top N layers only (default: all)"})
    dtype: str = field(default="float32", metadata={
        "help": "float32, or bfloat16 for bf16 mixed precision on the CPU",
        "choices": ("float32", "bfloat16")})
    seed: int = field(default=0, metadata={"help": "seeds data order and LoRA init"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (default: leave as is)"})
    progress: bool = field(default=True, metadata={"help": "show the trainer's progress bar"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop training after this wall time"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "go on training this saved adapter folder (e.g. core/assets/base-adapter) "
                "instead of a fresh LoRA"})

    def __post_init__(self) -> None:
        if self.init_adapter is not None:
            self._shape_of(self.init_adapter)
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
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
        for name in ("lora_layers", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if problems:
            raise ConfigError("SFTTrainConfig: " + "; ".join(problems))

    def _shape_of(self, folder: str) -> None:
        """Take the LoRA shape of the adapter training goes on from (what the run records)."""
        try:
            saved = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"SFTTrainConfig: init_adapter {folder!r} is not an adapter folder "
                              f"(no readable adapter_config.json in it: {exc})") from None
        layers = saved.get("layers_to_transform")
        self.lora_r, self.lora_alpha = saved.get("r", self.lora_r), saved.get("lora_alpha")
        self.lora_dropout = saved.get("lora_dropout", self.lora_dropout)
        self.lora_layers = len(layers) if isinstance(layers, list) else None

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
        from transformers import TrainerCallback  # deferred: heavy

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
    """Supervised fine-tuning of a LoRA adapter (TRL ``SFTTrainer``; fresh, or
    ``config.init_adapter`` trained further), saved to ``out_dir``.

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
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from datasets import Dataset  # deferred: datasets is slow to import; only training needs it
    from trl import SFTConfig, SFTTrainer  # deferred: trl pulls in torch; only training needs it

    out = Path(out_dir)
    tok = _tokenizer(model_path)

    rows, n_long, n_tok, n_comp = _rows(tok, examples, "SFT", config.max_length)
    eval_rows = _rows(tok, eval_examples, "eval", config.max_length)[0] if eval_examples else []
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = load_policy(model_path, config.init_adapter, trainable=True)[0]
    peft_config = None if config.init_adapter else _lora_config(model, config)  # type: ignore[arg-type]
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
    return _result(trainer, out, config, rows, n_long, n_tok, n_comp, train_s, before, after,
                   limit)


def _rows(tok, items: Sequence[dict], what: str, max_length: int
          ) -> tuple[list[dict], int, int, int]:
    """Prompt-completion rows that fit ``max_length`` tokens, and (rows too long, tokens,
    completion tokens)."""
    rows, n_long, n_tok, n_comp = [], 0, 0, 0
    for i, e in enumerate(items):
        prompt, completion = _completion_messages(e, i)
        p_ids = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
        f_ids = tok.apply_chat_template(prompt + completion, tokenize=True,
                                        return_dict=True)["input_ids"]
        if len(f_ids) > max_length:
            n_long += 1
            continue
        rows.append({"prompt": prompt, "completion": completion})
        n_tok += len(f_ids)
        n_comp += len(f_ids) - len(p_ids)
    if items and not rows:
        raise TrainError(f"every {what} example is longer than max_length={max_length} "
                         f"tokens; raise max_length or use fewer shots")
    return rows, n_long, n_tok, n_comp


def _result(trainer, out: Path, config: SFTTrainConfig, rows: list, n_long: int, n_tok: int,
            n_comp: int, train_s: float, before, after, limit) -> SFTResult:
    """What the run did: steps, examples and tokens seen, speed, losses."""
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
