"""DPO for one reader's adapter: TRL's ``DPOTrainer`` with per-pair weights and a per-pair beta.

Pair weights (rating gap, critical involvement) act through a weighted sampler: a pair of weight 2
is drawn twice as often as one of weight 1. Pairs on critical cases also get a stronger beta
(``beta * critical_beta_factor``, per row in the sigmoid loss): DPO's optimum is
``pi_ref * exp(r / beta)``, so a larger beta keeps the adapter closer to the reference where a
mistake is dangerous. Batches are grouped by length (:func:`length_grouped_order`) to cut padding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from core.errors import TrainError
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



class _WithBeta:
    """TRL's preference collator, plus each row's ``beta`` column as a (B,) tensor (TRL's
    collator keeps only the token columns and the precomputed reference log-probs)."""
    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        import torch  # deferred: heavy, and only a training process needs it

        batch = self.inner(examples)
        if examples and "beta" in examples[0]:
            batch["beta"] = torch.tensor([float(e["beta"]) for e in examples],
                                         dtype=torch.float32)
        return batch


def _weighted_orders(ds, args) -> list[list[int]] | None:
    """Each epoch's order of the pairs: drawn in proportion to their ``weight`` column (all
    epochs up front, so the seed fixes the order), then grouped by length; None when the
    dataset has no weights (TRL's own sampler then)."""
    import torch  # deferred: heavy, and only a training process needs it

    if ds is None or "weight" not in ds.column_names:
        return None
    weights = torch.tensor([max(float(w), 1e-6) for w in ds["weight"]], dtype=torch.double)
    gen = torch.Generator().manual_seed(args.seed)
    n = len(weights)
    epochs = max(1, math.ceil(args.num_train_epochs))
    order = torch.multinomial(weights, n * epochs, replacement=True, generator=gen).tolist()
    lengths = None
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(ds.column_names):
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                   zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    group = args.per_device_train_batch_size * max(1, args.world_size)
    parts = [order[k * n:(k + 1) * n] for k in range(epochs)]
    return [length_grouped_order(part, lengths, group) if lengths else part for part in parts]


def _weighted_dpo_trainer():
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from trl import DPOTrainer  # deferred: trl pulls in torch; only training needs it

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

        ref_cache: RefLogpCache | None = None

        def _precompute_ref_logps(self, dataset, name, batch_size):
            # TRL computes every row's reference log-probs before training; rows whose
            # reference, prompt and completions were seen before come from the cache.
            if self.ref_cache is None or name != "train":
                return super()._precompute_ref_logps(dataset, name, batch_size)
            dataset, self.ref_cache_hits = _cached_ref_logps(
                self.ref_cache, dataset, lambda part: _ref_logps(self, part, batch_size),
                save=self.accelerator.is_main_process)
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
            orders = _weighted_orders(self.train_dataset, self.args)
            if orders is None:
                return super()._get_train_sampler(train_dataset)
            return _Order(orders)

    return WeightedDPOTrainer



def _ref_logps(trainer, part, batch_size: int) -> tuple[list[float], list[float]]:
    """The reference log-probs of ``part``'s rows (tokenized pairs), every row in this process:
    TRL's precompute shares them between ranks through a datasets cache file in a per-process
    temporary folder, which the other ranks cannot open."""
    import torch  # deferred: heavy, and only a training process needs it

    model = trainer.ref_model or trainer.model
    chosen, rejected = [], []
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size,
                                         collate_fn=trainer.data_collator, shuffle=False)
    for batch in loader:
        batch = {k: v.to(trainer.accelerator.device) if hasattr(v, "to") else v
                 for k, v in batch.items()}
        c, r = trainer.compute_ref_log_probs(model, batch)
        chosen += c.float().cpu().tolist()
        rejected += r.float().cpu().tolist()
    return chosen, rejected


def _cached_ref_logps(cache: RefLogpCache, dataset, compute, save: bool = True):
    """``dataset`` (tokenized pairs) with TRL's ``ref_chosen_logps`` / ``ref_rejected_logps``
    columns: from ``cache`` where a row is known, from ``compute(rows) -> (chosen, rejected)``
    on the others, which are then cached (written when ``save``: rank 0). Returns (dataset,
    rows from the cache)."""
    keys = [cache.key(p, c, r) for p, c, r in zip(
        dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    missing = [i for i, k in enumerate(keys) if k not in cache]
    if missing:
        chosen, rejected = compute(dataset.select(missing))
        for i, c, r in zip(missing, chosen, rejected):
            cache[keys[i]] = (float(c), float(r))
        if save:
            cache.save()
    values = [cache[k] for k in keys]
    dataset = dataset.add_column("ref_chosen_logps", [v[0] for v in values])
    dataset = dataset.add_column("ref_rejected_logps", [v[1] for v in values])
    return dataset, len(keys) - len(missing)


REF_CACHE_MAX_ENTRIES = 200_000  # ~16 MB of JSON; a reader's pairs of many months
REF_CACHE_STALE_DAYS = 30


class RefLogpCache:
    """Reference log-probs of preference pairs, kept across training runs in one JSON file per
    reference (:meth:`for_reference`): the nightly job re-trains each reader on their recent
    pairs, most of them seen the night before, and the reference (base model + the shared
    base adapter) changes only when the base adapter does.

    Keys hash the exact token ids TRL feeds the model (after its truncation to
    ``max_length``), so a changed prompt, tokenizer or cap is a new key.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, tuple[float, float]] = {}
        if path.exists():
            try:
                self._values = {k: (float(v[0]), float(v[1]))
                                for k, v in json.loads(path.read_text()).items()}
                os.utime(path)  # in use: not stale for another reference's save (see save)
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                self._values = {}  # a damaged cache is only a slower night

    @classmethod
    def for_reference(cls, cache_dir: str | Path, model_path: str | Path,
                      adapter: str | Path | None, max_length: int, bf16: bool = False) -> RefLogpCache:
        """The cache file of one reference: the base checkpoint's files and the starting
        adapter's weights (by size and content hash), the length cap and the precision."""
        h = hashlib.sha256(f"{Path(model_path).resolve()}|{max_length}".encode())
        if bf16:  # float32 keys stay as they were
            h.update(b"|bf16")
        # the base weights are large: their size and time; adapters and configs: their bytes
        folders = [(Path(model_path), False), *([(Path(adapter), True)] if adapter else [])]
        for folder, whole in folders:
            for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
                stat = f.stat()
                h.update(f"{f.name}:{stat.st_size}".encode())
                h.update(f.read_bytes() if whole or f.suffix == ".json"
                         else str(stat.st_mtime_ns).encode())
        return cls(Path(cache_dir) / f"ref-logps-{h.hexdigest()[:16]}.json")

    @staticmethod
    def key(prompt_ids, chosen_ids, rejected_ids) -> str:
        return hashlib.sha256(json.dumps([list(prompt_ids), list(chosen_ids),
                                          list(rejected_ids)]).encode()).hexdigest()[:32]

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> tuple[float, float]:
        value = self._values.pop(key)  # moved to the end: the newest entries are the ones in use
        self._values[key] = value
        return value

    def __setitem__(self, key: str, value: tuple[float, float]) -> None:
        self._values[key] = value

    def __len__(self) -> int:
        return len(self._values)

    def save(self) -> None:
        """Write atomically (a temporary file renamed over the old one), keeping the newest
        :data:`REF_CACHE_MAX_ENTRIES` entries, and remove the files of other references that no
        run has written for :data:`REF_CACHE_STALE_DAYS` days (a replaced base adapter, another
        precision: their keys can never be asked for again)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        values = self._values  # in memory all stay: this run may still read any of them
        if len(values) > REF_CACHE_MAX_ENTRIES:  # insertion (and read) order: oldest first
            values = dict(list(values.items())[-REF_CACHE_MAX_ENTRIES:])
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(values))
        os.replace(tmp, self.path)
        cutoff = time.time() - REF_CACHE_STALE_DAYS * 86400
        for other in [*self.path.parent.glob("ref-logps-*.json"), *self.path.parent.glob("ref-logps-*.tmp*")]:
            try:
                if other != self.path and other.stat().st_mtime < cutoff:
                    other.unlink()
            except OSError:
                pass  # another process removed it, or it is not ours to remove


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
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from datasets import Dataset  # deferred: datasets is slow to import; only training needs it
    from trl import DPOConfig  # deferred: trl pulls in torch; only training needs it

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
    # The reference log-probs once up front (not once per epoch), from the cache where a pair
    # was trained on before against the same reference.
    common = _common_args(config, out, len(rows))
    cache = (RefLogpCache.for_reference(config.ref_cache_dir, model_path, init_adapter,
                                        config.max_length, common["bf16"])
             if config.ref_cache_dir else None)
    args = DPOConfig(**common, beta=config.beta,
                     max_length=config.max_length, loss_type=loss_type, loss_weights=loss_weights,
                     precompute_ref_log_probs=config.epochs > 1 or cache is not None,
                     remove_unused_columns=False)
    trainer_cls = _weighted_dpo_trainer()
    trainer_cls.ref_cache = cache  # read in DPOTrainer.__init__ (the precompute runs there)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset,
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
