"""The language model: load it once, attach LoRA adapters, generate in batches.

The default model is SmolLM2-135M-Instruct, prepared once from its GGUF by
:func:`core.generation.checkpoint.prepare_default_model`.

:func:`load_generator` loads a checkpoint once per process and returns a :class:`Generator`.
Adapters are attached once with :meth:`Generator.load_adapter`; one call to
:meth:`Generator.generate` can mix rows for several adapters (and the bare base model) in the
same batch, using PEFT's ``adapter_names=`` mixed-batch inference.

Throughput (``python bench/generation_speed.py``: 30 IU findings, zero-shot prompt,
max_new_tokens=48, ~35 new tokens per impression, 2 CPU cores shared with other work at load
average ~4-5, so an idle machine does better):

    dtype     batch 1          batch 8          batch 16
    float32   0.27 impr/s      0.62 impr/s      0.84 impr/s   (10 / 23 / 31 new tokens/s)
    bfloat16  0.29 impr/s      0.82 impr/s      0.97 impr/s   (10 / 28 / 35 new tokens/s)

Batch 8-16 gives 2.3-3.3x the throughput of batch 1, so callers should hand whole worklists to
one ``generate`` call. Each row's ``latency_s`` is its batch's wall time.

The pipeline's serving prompts are the other way round: ~160 prompt tokens for ~10 new ones, so
the prompt's forward pass dominates. Two things halve it (BENCHMARKS.md, "The model writes 1.5x faster on the CPU"):
bfloat16 on a CPU with native bf16 (``dtype="auto"``), and running the rows' shared prefix (the
system prompt, ~60 tokens) once per batch and adapter.

>>> gen = load_generator(ModelSpec())                      # doctest: +SKIP
>>> gen.load_adapter("dr_a", "data/adapters/dr_a/v3")      # doctest: +SKIP
>>> msgs = impression_messages("Heart size normal. Lungs clear.")   # core.generation.prompts
>>> gen.generate([msgs, msgs], adapters=["dr_a", None])    # doctest: +SKIP
[GenerationResult(text='No acute cardiopulmonary abnormality.', ...), ...]
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from core.adapters.files import check_adapter_files
from core.errors import (  # noqa: F401 (defined in core.errors)
    AdapterError,
    ImpressionistError,
    ModelConversionError,
    ModelError,
    ModelNotPrepared,
)
from core.generation.checkpoint import CHAT_TEMPLATE, DEFAULT_MODEL_DIR

# libgomp (torch's OpenMP) spins its worker threads between parallel regions by default. On the
# 2-core target, with the app, the nightly job and tests sharing the cores, that spinning made
# 2-thread generation 6x SLOWER than 1 thread (bf16 batch 8: 3.1 vs 19.5 new tokens/s at load
# average 6); PASSIVE gave 32.1 tokens/s. It is read once when torch loads, so it must be set
# before the first `import torch` anywhere in the process (an explicit setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import LoraConfig

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches
# Rows per generation batch. On 2 CPU cores with SmolLM2-135M, the model writing every IU test
# impression: batch 8 2.59, 16 3.07, 32 3.19 impressions/s end to end, the same texts
# (BENCHMARKS.md, "Coarse to fine ... speed"); decoding is per-step overhead at small batches.
BATCH_SIZE = 32
# Below this many shared prompt tokens a batch is run without a shared prefix cache.
MIN_SHARED_PREFIX = 8
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- preparation


# --------------------------------------------------------------------------- tiny test model


# --------------------------------------------------------------------------- generation


@dataclass
class ModelSpec:
    """Which checkpoint to load, and how."""
    path: str | Path = field(default=DEFAULT_MODEL_DIR, metadata={"help": "Hugging Face checkpoint directory."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto | bfloat16 | float32. auto: bfloat16 on CUDA and on CPUs with native "
                          "bfloat16 (AVX512-BF16/AMX), else float32."},
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda. auto: cuda when available."})
    name: str | None = field(default=None, metadata={"help": "Display name; defaults to the directory name."})

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"ModelSpec.dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ModelSpec.device must be auto, cpu or cuda, got {self.device!r}")
        self.path = Path(self.path)
        if self.name is None:
            self.name = self.path.name


@dataclass(frozen=True)
class GenerationResult:
    """One generated text and what it cost."""
    text: str
    new_tokens: int  # tokens generated, including the end-of-turn token when one was produced
    latency_s: float  # wall time of the batch this row was generated in
    adapter: str | None = None  # the adapter the row was generated with; None = base model
    truncated: bool = False  # True when max_new_tokens was reached before an end-of-turn token
    prompt_tokens: int = 0  # tokens of the prompt the row was generated from


def _resolve_device(device: str) -> str:
    import torch  # deferred: torch takes seconds to import; only model work needs it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("ModelSpec.device is 'cuda' but torch sees no CUDA device")
    return device


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch  # deferred: torch takes seconds to import; only model work needs it

    if dtype == "auto":
        # CPU: bfloat16 where the CPU computes it natively (AVX512-BF16 / AMX), else float32 (an
        # emulated bf16 matmul is slower than fp32). A serving prompt is ~160 tokens for ~10 new
        # ones, so the prompt's forward pass dominates: on the 2-core target (AMX) it runs 2.3x
        # faster in bf16 (BENCHMARKS.md, "The model writes 1.5x faster on the CPU"), with the same test-split quality.
        return torch.bfloat16 if device == "cuda" or cpu_has_bf16() else torch.float32
    return getattr(torch, dtype)


@functools.lru_cache(maxsize=None)
def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has native bfloat16 instructions (Linux ``flags``; False where unknown).
    Read once per file: every model load and every trainer asks."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Generator:
    """A loaded base model with its tokenizer and LoRA adapters; thread-safe batched generation.

    Build it with :func:`load_generator`, which caches one per checkpoint/dtype/device.
    """
    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec, device: str, dtype: Any) -> None:
        self.model = model  # the base model; wrapped in place by PEFT once an adapter is loaded
        self.tokenizer = tokenizer
        self.spec = spec
        self.name: str = spec.name or Path(spec.path).name
        self.device = device
        self.dtype = dtype
        self._peft = None  # PeftModel, created by the first load_adapter
        self._adapters: dict[str, Path] = {}
        self._lock = threading.RLock()
        self.eos_token_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        """Token ids that end a turn: the configured EOS plus ChatML's <|im_end|> when present."""
        ids: set[int] = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(ids)

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: name -> directory."""
        return dict(self._adapters)

    def format_chat(self, messages: list[dict]) -> str:
        """The prompt text for chat messages, ending with the assistant turn opener.

        Args:
            messages: ``[{"role": ..., "content": ...}, ...]``.

        Returns:
            The templated prompt string (what :meth:`generate` feeds the model for these messages).
        """
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Attach a LoRA adapter under ``name`` (once; a no-op if already loaded from the same path).

        Loading a different path under a loaded name replaces that adapter (a new version).

        Args:
            name: the adapter's name, used in ``generate(adapters=[...])``.
            path: a directory saved by PEFT (``adapter_config.json`` + weights).

        Raises:
            AdapterError: the directory is not a PEFT adapter, or the name is reserved.
        """
        path = Path(path).resolve()
        if not name or name == BASE_ADAPTER:
            raise AdapterError(f"adapter name {name!r} is reserved or empty (adapter at {path})")
        check_adapter_files(path)
        with self._lock:
            if self._adapters.get(name) == path:
                return
            if name in self._adapters:
                self.unload_adapter(name)
            try:
                if self._peft is None:
                    from peft import PeftModel  # deferred: heavy

                    self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
                else:
                    self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                raise AdapterError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
            self._peft.to(self.device)
            self._peft.eval()
            self._adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        """Remove a loaded adapter and free its weights.

        Args:
            name: a name given to :meth:`load_adapter`.
        """
        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded (loaded: {sorted(self._adapters)})")
            if len(self._adapters) == 1:
                # PEFT refuses to delete the last adapter; swap in nothing by unwrapping instead.
                self.model = self._peft.unload()
                self._peft = None
            else:
                if self._peft.active_adapter == name:  # a one-adapter batch activated it
                    self._peft.set_adapter(next(n for n in self._adapters if n != name), inference_mode=True)
                self._peft.delete_adapter(name)
            del self._adapters[name]

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 64,
        batch_size: int = BATCH_SIZE,
        temperature: float = 0.0,
        progress: bool = False,
        seed: int | None = None,
        length_hint: Sequence[int] | None = None,
    ) -> list[GenerationResult]:
        """Generate one completion per prompt, batched, with a possibly different adapter per row.

        Prompts are sorted by length before batching (less padding; with ``length_hint``, by the
        expected completion length first: a batch decodes until its longest row ends) and
        results returned in input order. Rows of one batch may use different adapters; PEFT applies each row's LoRA weights
        to that row only. Decoding is greedy unless ``temperature > 0``; it stops at end-of-turn.

        Args:
            prompts: raw prompt strings (fed as-is, already templated) or chat message lists
                (templated with the model's chat template, assistant turn opened).
            adapters: one adapter name (loaded with :meth:`load_adapter`) or None (base model) per
                prompt; None for all rows when omitted.
            max_new_tokens: upper bound on generated tokens per row.
            batch_size: rows per forward pass.
            temperature: 0 for greedy decoding, otherwise sampling temperature.
            progress: show a tqdm bar over batches.
            seed: seeds torch before sampling (only used when temperature > 0).
            length_hint: per prompt, a guess of its completion's length (e.g. the words of the
                draft it edits); only the batching order uses it.

        Returns:
            One :class:`GenerationResult` per prompt, in order; text stripped of special tokens and
            surrounding whitespace.

        Raises:
            AdapterError: a named adapter is not loaded.
            ModelError: a prompt is too long for the model's context.
        """
        adapters = check_generate_args(prompts, adapters, max_new_tokens, temperature, batch_size)
        if not prompts:
            return []
        with self._lock:
            check_loaded(adapters, self._adapters)
            ids = self._token_ids(prompts, max_new_tokens)
            if length_hint is not None and len(length_hint) != len(prompts):
                raise ValueError(f"{len(length_hint)} length hints for {len(prompts)} prompts")
            hint = length_hint if length_hint is not None else [0] * len(ids)
            order = sorted(range(len(ids)), key=lambda i: (-hint[i], -len(ids[i])))
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            if progress:
                from tqdm.auto import tqdm  # deferred: only a progress bar needs it

                batches = tqdm(batches, desc=f"generating ({self.name})", unit="batch")
            gen_kwargs = self._sampling(max_new_tokens, temperature, seed)
            results: list[GenerationResult | None] = [None] * len(prompts)
            for batch in batches:
                for i, result in zip(batch, self._generate_batch(ids, batch, adapters, gen_kwargs)):
                    results[i] = result
            return results  # type: ignore[return-value]

    def _token_ids(self, prompts: list, max_new_tokens: int) -> list[list[int]]:
        """Each prompt's token ids (chat prompts templated); refuses one too long for the model."""
        texts = [p if isinstance(p, str) else self.format_chat(p) for p in prompts]
        # Templates carry their own special tokens; SmolLM2 adds no BOS either.
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for i, row in enumerate(ids):
            if limit is not None and len(row) + max_new_tokens > limit:
                raise ModelError(
                    f"prompt {i} has {len(row)} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                    f"the model's context of {limit} tokens"
                )
        return ids

    def _pad_id(self) -> int:
        pad_id = self.tokenizer.pad_token_id
        return self.eos_token_ids[0] if pad_id is None else pad_id

    def _sampling(self, max_new_tokens: int, temperature: float, seed: int | None) -> dict:
        """``model.generate`` keyword arguments: greedy, or sampling at ``temperature``."""
        import torch  # deferred: heavy

        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens, "eos_token_id": self.eos_token_ids,
            "pad_token_id": self._pad_id(),
        }
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return gen_kwargs

    def _prefix_cache(self, model: Any, prefix: Any, names: list[str], mixed: bool) -> Any:
        """The key/value cache of ``prefix`` for every row of a batch: one forward per distinct
        adapter (LoRA changes the keys and values), copied to the rows that use it; None when
        the model returns no cache (e.g. gradient checkpointing during GRPO). ``mixed``: the
        batch names its adapters per row (else the active adapter, or none, applies)."""
        import torch  # deferred: heavy

        distinct = list(dict.fromkeys(names))
        kwargs = {"adapter_names": distinct} if mixed else {}
        x = prefix.unsqueeze(0).expand(len(distinct), -1).to(self.device)
        cache = model(input_ids=x, use_cache=True, **kwargs).past_key_values
        if cache is None or not hasattr(cache, "batch_select_indices"):
            return None
        cache.batch_select_indices(torch.tensor([distinct.index(n) for n in names], device=self.device))
        return cache

    def _generate_batch(self, ids: list[list[int]], batch: list[int], adapters: list,
                        gen_kwargs: dict) -> list[GenerationResult]:
        """One batch (shared prefix, padding, each row's own tokens); each row's text up to its
        first end-of-turn token."""
        import torch  # deferred: heavy

        pad_id = self._pad_id()
        rows = [ids[i] for i in batch]
        width = max(len(row) for row in rows)
        # The rows' common prefix (the system prompt: ~60 of ~160 tokens of a serving prompt) is
        # run once and its key/value cache shared. Each row is laid out as prefix, padding, rest:
        # the padding is masked and position ids follow the mask, so every row sees exactly the
        # positions it would with left padding alone (the same greedy texts, ~25% faster).
        shared = common_prefix(rows)
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(rows):  # left padding: generation continues from the right edge
            input_ids[r, :shared] = torch.tensor(row[:shared])
            input_ids[r, width - len(row) + shared :] = torch.tensor(row[shared:])
            mask[r, :shared] = 1
            mask[r, width - len(row) + shared :] = 1
        kwargs = dict(gen_kwargs)
        names = [adapters[i] or BASE_ADAPTER for i in batch]
        model = self._peft if self._peft is not None else self.model
        scope: Any = contextlib.nullcontext()
        if self._peft is not None and len(set(names)) > 1:
            kwargs["adapter_names"] = names  # PEFT applies each row's LoRA weights to that row
        elif self._peft is not None and names[0] == BASE_ADAPTER:
            scope = self._peft.disable_adapter()
        elif self._peft is not None:  # one adapter: 5-8% faster than the mixed-batch path
            self._peft.set_adapter(names[0], inference_mode=True)  # under self._lock
        start = time.perf_counter()
        with torch.inference_mode(), scope:
            cache = (self._prefix_cache(model, input_ids[0, :shared], names, "adapter_names" in kwargs)
                     if shared else None)
            if cache is not None:  # None: the model keeps no cache (the layout alone is still right)
                kwargs["past_key_values"] = cache
            out = model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
            )
        latency = time.perf_counter() - start
        new = out[:, width:].cpu()
        stop = torch.tensor(self.eos_token_ids)
        results = []
        for r, i in enumerate(batch):
            row = new[r]
            is_stop = torch.isin(row, stop)
            truncated = not bool(is_stop.any())
            n = len(row) if truncated else int(is_stop.nonzero()[0, 0]) + 1
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            results.append(GenerationResult(text, n, latency, adapters[i], truncated, len(ids[i])))
        return results


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all rows share, leaving each row at least one token of its own."""
    if not rows:
        return 0
    first, limit = rows[0], min(len(row) for row in rows) - 1
    n = 0
    while n < limit and all(row[n] == first[n] for row in rows):
        n += 1
    return n


def check_generate_args(prompts: list, adapters: list | None, max_new_tokens: int,
                        temperature: float, batch_size: int = 1) -> list:
    """Validate the arguments every backend's ``generate`` takes; returns one adapter per prompt.

    Raises:
        ValueError: a bound is out of range, or adapters and prompts differ in length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    adapters = [None] * len(prompts) if adapters is None else list(adapters)
    if len(adapters) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(adapters)} adapters")
    return adapters


def check_loaded(adapters: list, loaded: dict) -> None:
    """Raise :class:`AdapterError` naming every requested adapter that is not loaded."""
    unknown = sorted({a for a in adapters if a is not None and a not in loaded})
    if unknown:
        raise AdapterError(f"adapters {unknown} are not loaded (loaded: {sorted(loaded)})")


_CACHE: dict[tuple[str, str, str], Generator] = {}
_CACHE_LOCK = threading.Lock()


def load_generator(spec: ModelSpec | None = None) -> Generator:
    """Load a checkpoint once per process (per path, dtype and device) and return its Generator.

    Args:
        spec: which checkpoint and how; the prepared default model on the best device when None.

    Returns:
        The cached :class:`Generator` for this spec. One model per checkpoint is kept in memory:
        a later load of the same checkpoint under another ``name`` gets the first load's
        Generator, and its name.

    Raises:
        ModelNotPrepared: the checkpoint directory is missing (for the default: run make setup).

    >>> gen = load_generator(ModelSpec(dtype="float32", device="cpu"))  # doctest: +SKIP
    """
    spec = spec or ModelSpec()
    path = Path(spec.path).resolve()
    if not (path / "config.json").is_file():
        hint = "; run make setup" if path == DEFAULT_MODEL_DIR.resolve() else ""
        raise ModelNotPrepared(f"no model checkpoint at {path} (config.json missing){hint}")
    device = _resolve_device(spec.device)
    dtype = _resolve_dtype(spec.dtype, device)
    key = (str(path), str(dtype), device)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHAT_TEMPLATE
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        gen = Generator(model, tokenizer, spec, device, dtype)
        _CACHE[key] = gen
        return gen


def clear_generator_cache() -> None:
    """Forget every cached Generator (tests; freeing memory after a nightly run)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def default_lora_config(model: Any = None, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> LoraConfig:
    """A fresh LoRA config for training a reader's adapter on the base model.

    Args:
        model: the model (or a :class:`Generator`) the adapter is for; when given, target modules
            are limited to the projection layers it actually has.
        r: LoRA rank.
        alpha: LoRA alpha (scaling = alpha / r).
        dropout: LoRA dropout during training.

    Returns:
        A ``peft.LoraConfig`` for a causal LM targeting the attention and MLP projections.

    >>> default_lora_config().r  # doctest: +SKIP
    16
    """
    from peft import LoraConfig  # deferred: peft pulls in torch; only model work needs it

    targets = list(LORA_TARGET_MODULES)
    if model is not None:
        module = model.model if isinstance(model, Generator) else model
        names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
        targets = [t for t in targets if t in names]
        if not targets:
            raise ModelError(f"model {type(module).__name__} has none of the LoRA target modules {LORA_TARGET_MODULES}")
    return LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
