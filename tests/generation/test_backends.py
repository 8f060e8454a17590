"""The vLLM backend's contract with a stand-in engine (vLLM itself needs a GPU node).

The stand-in records what the backend hands vLLM: one LoRARequest per prompt (or None for the
base model), stable integer ids per adapter version, and results mapped back in input order.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from core.generation.backends import BackendUnavailable, VLLMGenerator, load_backend
from core.errors import AdapterError


@dataclass
class _LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class _SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None


class _FakeLLM:
    """Echoes which adapter each prompt ran with; 'long' prompts hit max_tokens."""

    def __init__(self):
        self.calls = []

    def generate(self, texts, params, lora_request=None, use_tqdm=False):
        self.calls.append((texts, params, lora_request))
        outs = []
        for text, req in zip(texts, lora_request):
            who = req.lora_name if req else "base"
            length = params.max_tokens if "long" in text else 3
            outs.append(types.SimpleNamespace(prompt_token_ids=list(text), outputs=[types.SimpleNamespace(
                text=f" {who}: {text} ", token_ids=list(range(length)),
                finish_reason="length" if "long" in text else "stop")]))
        return outs


class _Tok:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "|".join(m["content"] for m in messages) + "|assistant:"


@pytest.fixture
def fake_vllm(monkeypatch):
    """A minimal ``vllm`` package: SamplingParams and vllm.lora.request.LoRARequest."""
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = _LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)


def _adapter(tmp_path, name, r=8):
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r}))
    (d / "adapter_model.safetensors").write_bytes(b"\0")
    return d


def test_each_prompt_gets_its_own_adapter_in_one_call(fake_vllm, tmp_path):
    llm = _FakeLLM()
    gen = VLLMGenerator(llm, _Tok(), "llama", max_lora_rank=16)
    gen.load_adapter("dr_a", _adapter(tmp_path, "a"))
    gen.load_adapter("dr_b", _adapter(tmp_path, "b"))
    out = gen.generate(["p1", [{"role": "user", "content": "p2"}], "long p3"],
                       adapters=["dr_b", None, "dr_a"], max_new_tokens=7)
    assert len(llm.calls) == 1
    texts, params, reqs = llm.calls[0]
    assert texts[1] == "p2|assistant:" and params.max_tokens == 7
    assert [r and r.lora_name for r in reqs] == ["dr_b", None, "dr_a"]
    assert reqs[0].lora_int_id != reqs[2].lora_int_id
    assert [o.text for o in out] == ["dr_b: p1", "base: p2|assistant:", "dr_a: long p3"]
    assert [o.adapter for o in out] == ["dr_b", None, "dr_a"]
    assert [o.truncated for o in out] == [False, False, True] and out[2].new_tokens == 7
    assert [o.prompt_tokens for o in out] == [len(t) for t in texts]


def test_a_new_version_gets_a_new_id_and_same_path_is_a_no_op(fake_vllm, tmp_path):
    gen = VLLMGenerator(_FakeLLM(), _Tok(), "llama")
    v1, v2 = _adapter(tmp_path, "v1"), _adapter(tmp_path, "v2")
    gen.load_adapter("dr_a", v1)
    first = gen._ids["dr_a"]
    gen.load_adapter("dr_a", v1)
    assert gen._ids["dr_a"] == first
    gen.load_adapter("dr_a", v2)  # promoted: vLLM must not serve v1 from its cache
    assert gen._ids["dr_a"] != first and gen.adapters["dr_a"] == v2.resolve()


def test_refuses_unknown_adapters_bad_dirs_and_too_high_ranks(fake_vllm, tmp_path):
    gen = VLLMGenerator(_FakeLLM(), _Tok(), "llama", max_lora_rank=16)
    with pytest.raises(AdapterError, match="not loaded"):
        gen.generate(["p"], adapters=["nobody"])
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        gen.load_adapter("x", tmp_path)
    with pytest.raises(AdapterError, match="rank 32"):
        gen.load_adapter("big", _adapter(tmp_path, "big", r=32))
    with pytest.raises(ValueError, match="2 adapters"):
        gen.generate(["p"], adapters=[None, None])


def test_vllm_missing_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(BackendUnavailable, match="pip install vllm"):
        load_backend("vllm", tmp_path)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend("tgi", tmp_path)
