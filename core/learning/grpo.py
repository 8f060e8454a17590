"""GRPO for one reader's adapter: TRL's ``GRPOTrainer`` under the hierarchical clinical reward.

The reward is :mod:`core.learning.rewards` (one reward function per part, weighted); ``beta`` is
the KL toward the reference. On critical cases the reward's anchor pulls toward the reference
policy's own greedy impression of the prompt (:func:`reference_completions`, computed first).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import TrainError
from core.generation.models import Generator, ModelSpec
from core.learning.rewards import grpo_reward_funcs, grpo_reward_weights
from core.learning.train import (
    TrainConfig,
    TrainResult,
    _common_args,
    _lora_config,
    _losses,
    _quiet,
    _save_on_main,
    _set_threads,
    load_policy,
)


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
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from datasets import Dataset  # deferred: datasets is slow to import; only training needs it
    from trl import GRPOConfig, GRPOTrainer  # deferred: trl pulls in torch; only training needs it

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
