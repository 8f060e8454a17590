"""Generation backends behind one interface: transformers + PEFT (default) and vLLM multi-LoRA.

Both backends offer what :class:`core.generation.pipeline.CoarseToFine` and the nightly job call:
``generate(prompts, adapters=..., max_new_tokens=..., batch_size=..., temperature=...)`` returning
:class:`core.generation.models.GenerationResult` per prompt in order, ``load_adapter(name, path)``,
``unload_adapter(name)``, ``adapters``, ``format_chat(messages)``, ``tokenizer`` and ``name``.

- ``transformers`` (:class:`core.generation.models.Generator`): CPU or GPU; PEFT mixed-adapter batches
  (``adapter_names=`` per row). The laptop default.
- ``vllm`` (:class:`VLLMGenerator`): a GPU server with many radiologists' adapters in one
  continuous batch; each prompt carries its own ``LoRARequest``. vLLM schedules and batches by
  itself, so ``batch_size`` is ignored; ``max_loras`` bounds how many distinct adapters share a
  step (the others wait for a slot, they are not refused).

vLLM is not a dependency of the CPU install (it pulls CUDA builds of torch); on a GPU node install
it next to the project (``pip install vllm``) and pick it with ``IMPRESSIONIST_BACKEND=vllm`` or
``--backend vllm``.

>>> gen = load_backend("vllm", "/models/Llama-3.1-8B-Instruct", max_loras=8)   # doctest: +SKIP
>>> gen.load_adapter("dr_a", "data/adapters/dr_a/v3")                          # doctest: +SKIP
>>> gen.generate([msgs_a, msgs_b], adapters=["dr_a", None])                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from core.config import BACKENDS
from core.errors import (
    AdapterError,
    BackendUnavailable,  # noqa: F401 (defined in core.errors)
)
from core.generation.checkpoint import DEFAULT_MODEL_DIR
from core.generation.models import (
    GenerationResult,
    ModelError,
    ModelSpec,
    check_generate_args,
    check_loaded,
    load_generator,
)


def load_backend(backend: str = "transformers", path: str | Path | None = None, **options: Any):
    """Load a generation backend for a checkpoint (cached per process by each backend).

    Args:
        backend: ``transformers`` or ``vllm``.
        path: Hugging Face checkpoint directory (default: the embedded model).
        **options: ``dtype``/``device`` for transformers; ``max_loras``, ``max_lora_rank``,
            ``gpu_memory_utilization``, ``dtype``, ``max_model_len`` for vLLM.

    Returns:
        An object with the :class:`core.generation.models.Generator` interface.

    Raises:
        ValueError: unknown backend.
        BackendUnavailable: vLLM requested but not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path) if path else DEFAULT_MODEL_DIR
    if backend == "transformers":
        return load_generator(ModelSpec(path=path, **{k: v for k, v in options.items()
                                                      if k in ("dtype", "device", "name")}))
    return VLLMGenerator.load(path, **options)


def _lora_rank(path: Path) -> int:
    try:
        return int(json.loads((path / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"adapter {path}: adapter_config.json is missing or has no rank 'r' ({exc})") from exc


class VLLMGenerator:
    """vLLM offline engine with per-prompt LoRA adapters (multi-LoRA continuous batching).

    Build it with :meth:`load` (or :func:`load_backend`); tests pass a stand-in ``llm`` object.

    Args:
        llm: a ``vllm.LLM`` built with ``enable_lora=True``.
        tokenizer: the checkpoint's tokenizer (for chat templating and token counts).
        name: display name (the checkpoint directory's name).
        max_lora_rank: the engine's ``max_lora_rank``; adapters of a higher rank are refused at
            load time rather than failing mid-batch.
    """
    _cache: dict[tuple, VLLMGenerator] = {}
    _cache_lock = threading.Lock()

    def __init__(self, llm: Any, tokenizer: Any, name: str, max_lora_rank: int = 64) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.device = "cuda"
        self.max_lora_rank = max_lora_rank
        self._adapters: dict[str, Path] = {}
        self._ids: dict[str, int] = {}  # vLLM caches LoRA weights by this integer id
        self._next_id = 1
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, max_loras: int = 8, max_lora_rank: int = 64,
             gpu_memory_utilization: float = 0.85, dtype: str = "bfloat16",
             max_model_len: int = 4096) -> VLLMGenerator:
        """Start a vLLM engine for ``path`` once per process.

        Raises:
            BackendUnavailable: vLLM is not installed.
            ModelError: no checkpoint at ``path``.
        """
        if importlib.util.find_spec("vllm") is None:
            raise BackendUnavailable("the vllm backend needs the vllm package on a GPU node "
                                     "(pip install vllm); use --backend transformers on a CPU")
        path = Path(path).resolve()
        if not (path / "config.json").is_file():
            raise ModelError(f"no model checkpoint at {path} (config.json missing)")
        key = (str(path), max_loras, max_lora_rank, dtype, max_model_len)
        with cls._cache_lock:
            if key not in cls._cache:
                from vllm import LLM  # deferred: vLLM is optional and GPU-only

                llm = LLM(model=str(path), enable_lora=True, max_loras=max_loras,
                          max_lora_rank=max_lora_rank, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization)
                cls._cache[key] = cls(llm, llm.get_tokenizer(), path.name, max_lora_rank)
            return cls._cache[key]

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapter names and their directories."""
        return dict(self._adapters)

    def format_chat(self, messages: list[dict]) -> str:
        """The prompt string of chat messages with the assistant turn opened."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Register a PEFT adapter directory under ``name`` (vLLM loads it on first use).

        Re-registering the same name with the same path is a no-op; with a new path (a newly
        promoted version) it gets a new id, so vLLM does not serve the old weights from its cache.

        Raises:
            AdapterError: not a PEFT adapter directory, or its rank exceeds the engine's limit.
        """
        path = Path(path).resolve()
        if not (path / "adapter_model.safetensors").is_file():
            raise AdapterError(f"adapter {name!r}: {path} has no adapter_model.safetensors")
        rank = _lora_rank(path)
        if rank > self.max_lora_rank:
            raise AdapterError(f"adapter {name!r} ({path}) has rank {rank}, above the engine's "
                               f"max_lora_rank {self.max_lora_rank}")
        with self._lock:
            if self._adapters.get(name) == path:
                return
            self._adapters[name] = path
            self._ids[name] = self._next_id
            self._next_id += 1

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter (its id is never reused)."""
        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            del self._adapters[name]
            del self._ids[name]

    def generate(self, prompts: list[str] | list[list[dict]], adapters: list[str | None] | None = None,
                 max_new_tokens: int = 64, batch_size: int = 32, temperature: float = 0.0,
                 progress: bool = False, seed: int | None = None,
                 length_hint: Sequence[int] | None = None) -> list[GenerationResult]:
        """One completion per prompt, each with its own adapter, in one vLLM call.

        Same contract as :meth:`core.generation.models.Generator.generate`; ``batch_size`` and
        ``length_hint`` are ignored (vLLM batches continuously). ``latency_s`` of every row is the call's wall time.
        """
        adapters = check_generate_args(prompts, adapters, max_new_tokens, temperature)
        if not prompts:
            return []
        from vllm import SamplingParams  # deferred: vLLM is optional and GPU-only
        from vllm.lora.request import LoRARequest  # deferred: vLLM is optional and GPU-only

        with self._lock:
            check_loaded(adapters, self._adapters)
            requests = [None if a is None else LoRARequest(a, self._ids[a], str(self._adapters[a]))
                        for a in adapters]
        texts = [p if isinstance(p, str) else self.format_chat(p) for p in prompts]
        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature,
                                seed=seed if temperature > 0 else None)
        start = time.perf_counter()
        outs = self.llm.generate(texts, params, lora_request=requests, use_tqdm=progress)
        latency = time.perf_counter() - start
        results = []
        for out, adapter in zip(outs, adapters):
            best = out.outputs[0]
            results.append(GenerationResult(best.text.strip(), len(best.token_ids), latency, adapter,
                                            truncated=best.finish_reason == "length",
                                            prompt_tokens=len(out.prompt_token_ids or ())))
        return results
