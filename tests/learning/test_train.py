"""DPO and GRPO on a tiny random-init model: the LoRA weights move, the base weights do not;
critical pairs get a stronger DPO beta, and GRPO's critical anchor is the reference's own output."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from core.errors import ConfigError
from core.learning.dpo import build_dpo_trainer, train_dpo
from core.learning.grpo import train_grpo
from core.learning.pairs import FeedbackItem, build_pairs, to_trl
from core.learning.train import (
    TrainConfig,
    TrainError,
    load_policy,
    lora_snapshot,
    mixed_bf16,
    preference_accuracy,
)

# Each test trains or runs the nightly job on a tiny model: seconds to minutes.
pytestmark = pytest.mark.slow

FINDINGS = "The heart is normal in size. The lungs are clear."


class WeightWatch(TrainerCallback):
    """Snapshots the trained model's LoRA and base weights at the start and the end."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.lora0, self.base0 = lora_snapshot(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.lora1, self.base1 = lora_snapshot(model)


def assert_only_lora_moved(w: WeightWatch) -> None:
    assert w.lora0 and w.base0
    assert set(w.lora0) == set(w.lora1) and set(w.base0) == set(w.base1)
    moved = [n for n in w.lora0 if not torch.equal(w.lora0[n], w.lora1[n])]
    assert moved, "no LoRA weight changed"
    # the trained adapter's weights moved; a frozen reference copy ("ref") may not
    assert any(".default." in n for n in moved)
    changed_base = [n for n in w.base0 if not torch.equal(w.base0[n], w.base1[n])]
    assert changed_base == []


@pytest.fixture(scope="module")
def examples():
    items = [FeedbackItem(id=i, reader_id=1, report_id=i, rating=-2,
                          edited_text="No acute cardiopulmonary abnormality.", findings=FINDINGS,
                          original="Normal chest x-ray.", ai_text="Mild cardiomegaly.")
             for i in range(1, 7)]
    return [to_trl(p) for p in build_pairs(items, heldout_fraction=0).train]


def test_dpo_trains_lora_only(tiny, examples, tmp_path):
    watch = WeightWatch()
    cfg = TrainConfig(epochs=2, batch_size=4, progress=False, learning_rate=5e-3)
    # half of them critical: per-pair betas through the whole run (precomputed reference too)
    mixed = [dict(e, critical=k % 2 == 0) for k, e in enumerate(examples)]
    result = train_dpo(tiny, mixed, tmp_path / "dpo", cfg, callbacks=[watch])
    assert_only_lora_moved(watch)
    assert result.steps > 0 and result.losses and result.init == "fresh"
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "dpo" / "ref").exists()  # only the trained adapter is saved
    # the trained adapter prefers the chosen side more often than the bare base model does
    base, tok = load_policy(tiny)
    trained, _ = load_policy(tiny, tmp_path / "dpo")
    assert preference_accuracy(trained, tok, examples) >= preference_accuracy(base, tok, examples)
    assert preference_accuracy(trained, tok, examples) == 1.0


def test_dpo_from_an_existing_adapter_keeps_it_as_the_reference(tiny, examples, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, learning_rate=5e-3)
    first = train_dpo(tiny, examples, tmp_path / "base-adapter", cfg)
    watch = WeightWatch()
    second = train_dpo(tiny, examples, tmp_path / "reader", cfg,
                       init_adapter=first.adapter_dir, callbacks=[watch])
    assert second.init == first.adapter_dir
    assert_only_lora_moved(watch)
    # the frozen reference copy of the starting adapter did not move
    ref = [n for n in watch.lora0 if ".ref." in n]
    assert ref and all(torch.equal(watch.lora0[n], watch.lora1[n]) for n in ref)


def test_grpo_trains_lora_only_with_the_clinical_reward(tiny, tmp_path):
    from core.generation.prompts import impression_messages

    prompts = [{"prompt": impression_messages(f), "findings": f,
                "references": ["No acute cardiopulmonary abnormality."],
                "reference_completion": "No acute cardiopulmonary abnormality."}
               for f in (FINDINGS, "Small right pneumothorax. The heart is normal in size.")]
    watch = WeightWatch()
    cfg = TrainConfig(method="grpo", epochs=1, batch_size=4, num_generations=4,
                      max_completion_length=8, progress=False, learning_rate=5e-3)
    result = train_grpo(tiny, prompts, tmp_path / "grpo", cfg, callbacks=[watch])
    assert_only_lora_moved(watch)
    assert result.method == "grpo" and result.steps == 2
    assert all("reward" in entry for entry in result.losses)
    assert (tmp_path / "grpo" / "adapter_config.json").is_file()


def test_refuses_empty_data_and_bad_config(tiny, tmp_path):
    with pytest.raises(TrainError):
        train_dpo(tiny, [], tmp_path / "x")
    with pytest.raises(ConfigError):
        TrainConfig(method="ppo")
    with pytest.raises(ConfigError, match="critical_beta_factor 0.5"):
        TrainConfig(critical_beta_factor=0.5)
    pair = {"prompt": [{"role": "user", "content": FINDINGS}],
            "chosen": [{"role": "assistant", "content": "No acute disease."}],
            "rejected": [{"role": "assistant", "content": "Cardiomegaly."}]}
    with pytest.raises(TrainError, match="max_length=8 tokens"):  # TRL would drop every pair
        train_dpo(tiny, [pair], tmp_path / "z", TrainConfig(max_length=8, progress=False))
    with pytest.raises(TrainError):
        train_dpo(tmp_path / "no-model", [{"prompt": [], "chosen": [], "rejected": []}],
                  tmp_path / "y")


def test_length_grouping_keeps_the_draw_and_cuts_padding():
    import random

    from core.learning.dpo import length_grouped_order, padding_share

    rng = random.Random(0)
    lengths = [rng.randint(40, 400) for _ in range(60)]
    order = [rng.randrange(60) for _ in range(240)]  # a weighted draw, with repeats
    grouped = length_grouped_order(order, lengths, batch_size=4, mega=8)
    assert sorted(grouped) == sorted(order)  # the same pairs, as often as drawn
    assert padding_share(grouped, lengths, 4) < 0.5 * padding_share(order, lengths, 4)
    # every sorted chunk stays inside its own slice of the draw (randomness kept across chunks)
    for start in range(0, 240, 32):
        assert sorted(grouped[start:start + 32]) == sorted(order[start:start + 32])
    assert padding_share([0, 1], [5, 5], 2) == 0.0


def test_dpo_batches_are_length_grouped_from_the_tokenized_pairs(tiny, examples, tmp_path,
                                                                 monkeypatch):
    import core.learning.dpo as train

    seen = []
    real = train.length_grouped_order

    def spy(order, lengths, batch_size, mega=32):
        seen.append((list(order), list(lengths), batch_size))
        return real(order, lengths, batch_size, mega)

    monkeypatch.setattr(train, "length_grouped_order", spy)
    long = dict(examples[0], chosen=[{"role": "assistant", "content": "No acute disease. " * 20}])
    cfg = TrainConfig(epochs=1, batch_size=2, progress=False)
    train.train_dpo(tiny, examples + [long], tmp_path / "dpo", cfg)
    assert len(seen) == 1
    order, lengths, bs = seen[0]
    assert bs == 2 and len(order) == len(examples) + 1 and len(lengths) == len(examples) + 1
    assert max(lengths) > min(lengths) + 40  # real token lengths of prompt + longer answer


def test_sequence_logps_matches_a_one_row_full_vocabulary_reference(tiny):
    from core.learning.train import sequence_logps

    model, tok = load_policy(tiny)
    prompts = [[{"role": "user", "content": "Findings: " + FINDINGS * k}] for k in (1, 3, 2)]
    texts = ["No acute disease.", "Mild cardiomegaly with a small left pleural effusion.", "Ok."]
    fast = sequence_logps(model, tok, prompts, texts, batch_size=3)
    for msgs, text, got in zip(prompts, texts, fast):
        p = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(msgs + [{"role": "assistant", "content": text}],
                                           tokenize=False), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits.float(), -1)
        want = torch.stack([logp[0, j - 1, full[j]] for j in range(len(p), len(full))]).mean()
        assert abs(got - float(want)) < 1e-4, (got, float(want))


def _hand_margins(model, batch) -> torch.Tensor:
    """Per pair, by hand: (log pi - log ref)(chosen) - (log pi - log ref)(rejected), log-probs
    summed over the completion tokens; the reference is the model with its LoRA switched off."""
    ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    tgt, keep = ids[:, 1:].unsqueeze(-1), comp[:, 1:].float()

    def logps():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        return (torch.log_softmax(logits[:, :-1], -1).gather(-1, tgt).squeeze(-1) * keep).sum(1)

    with torch.no_grad():
        policy = logps()
        with model.disable_adapter():
            ref = logps()
    chosen, rejected = (policy - ref).chunk(2)
    return chosen - rejected


def test_dpo_critical_pairs_use_a_stronger_beta_in_the_loss(tiny, examples, tmp_path):
    import torch.nn.functional as F

    pair = examples[0]
    swapped = dict(pair, chosen=pair["rejected"], rejected=pair["chosen"])
    rows = [dict(pair, critical=False), dict(pair, critical=True),
            dict(swapped, critical=False), dict(swapped, critical=True)]
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, beta=0.1, critical_beta_factor=4.0,
                      sft_weight=0.0)
    trainer = build_dpo_trainer(tiny, rows, tmp_path / "dpo", cfg)
    # a fresh LoRA is zero, so policy == reference and every margin 0: move it off the reference
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    # the beta travels with the rows: dataset column -> collator -> the training dataloader
    assert trainer.train_dataset["beta"] == pytest.approx([0.1, 0.4, 0.1, 0.4])
    loaded = next(iter(trainer.get_train_dataloader()))  # a weighted draw, with repeats
    assert loaded["beta"].shape == (4,)
    assert all(b == pytest.approx(0.1) or b == pytest.approx(0.4) for b in loaded["beta"].tolist())

    def batch(idx):
        return trainer.data_collator([trainer.train_dataset[i] for i in idx])

    def loss(idx):
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch(idx)))

    margin = float(_hand_margins(trainer.model, batch([0]))[0])
    assert abs(margin) > 1e-2  # a real margin, so beta can matter
    # the same pair, critical or not: beta * margin grows with beta, so with a positive margin
    # the critical loss is lower, and for the swapped pair (margin negated) higher
    plain, critical, plain_sw, critical_sw = loss([0]), loss([1]), loss([2]), loss([3])
    assert critical != pytest.approx(plain, abs=1e-4)
    if margin > 0:
        assert critical < plain and critical_sw > plain_sw
    else:
        assert critical > plain and critical_sw < plain_sw
    # the whole batch: TRL's loss equals mean_i -logsigmoid(beta_i * margin_i), computed by hand
    full = batch([0, 1, 2, 3])
    margins = _hand_margins(trainer.model, full)
    assert margins.tolist() == pytest.approx([margin, margin, -margin, -margin], abs=1e-4)
    beta = torch.tensor([0.1, 0.4, 0.1, 0.4])
    want = float((-F.logsigmoid(beta * margins)).mean())
    assert loss([0, 1, 2, 3]) == pytest.approx(want, abs=1e-5)
    assert trainer.beta == 0.1  # the global beta is back after each loss
    # ...and is not what one global beta would give
    assert want != pytest.approx(float((-F.logsigmoid(0.1 * margins)).mean()), abs=1e-4)


@pytest.fixture(scope="module")
def start_adapter(tiny, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights: a starting point that writes differently
    from the bare base model, as the shared base adapter does."""
    from peft import get_peft_model

    from core.generation.models import default_lora_config

    model, _ = load_policy(tiny)
    peft = get_peft_model(model, default_lora_config(model, r=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("start-adapter")
    peft.save_pretrained(out)
    return out


@pytest.mark.parametrize("start", ["fresh", "adapter"])
def test_grpo_anchor_is_the_reference_policys_own_impression(tiny, start_adapter, start,
                                                             tmp_path):
    """The critical anchor pulls toward what the starting model (the reference: the base, or
    the base with the starting adapter) writes for the prompt, not toward the rejected text."""
    from core.generation.models import ModelSpec, load_generator
    from core.learning.nightly import grpo_prompts
    from core.learning.rewards import grpo_reward_funcs, grpo_reward_weights

    critical = "Small right pneumothorax. The heart is normal in size."
    items = [FeedbackItem(id=i, reader_id=1, report_id=i, rating=-2, findings=f,
                          edited_text="Small right pneumothorax.", original="Right pneumothorax.",
                          ai_text="No acute cardiopulmonary abnormality.")
             for i, f in ((1, critical), (2, critical + " Mild cardiomegaly."))]
    pairs = build_pairs(items, heldout_fraction=0).train
    prompts = grpo_prompts([{**to_trl(p), "findings": p.findings} for p in pairs])
    rejected = {p.rejected for p in pairs}
    assert all("reference_completion" not in p for p in prompts)

    seen: list[tuple] = []

    def spy(prompts, completions, reference_completion, **kwargs):
        seen.extend(zip([json.dumps(p) for p in prompts], reference_completion))
        return [0.0] * len(completions)

    cfg = TrainConfig(method="grpo", epochs=1, batch_size=4, num_generations=4,
                      max_completion_length=8, progress=False)
    init = start_adapter if start == "adapter" else None
    train_grpo(tiny, prompts, tmp_path / "grpo", cfg, init_adapter=init,
               reward_funcs=grpo_reward_funcs() + [spy],
               reward_weights=grpo_reward_weights() + [0.0])
    # the reference's greedy output, from the serving generator loaded on its own
    gen = load_generator(ModelSpec(path=tiny, device="cpu", dtype="float32"))
    texts = [p["prompt"] for p in prompts]
    base = [r.text for r in gen.generate(texts, max_new_tokens=8)]
    if init is not None:
        gen.load_adapter("start", init)
        started = [r.text for r in gen.generate(texts, ["start"] * len(texts), max_new_tokens=8)]
        gen.unload_adapter("start")  # the generator is cached for the module's tiny model
        assert started != base  # the test tells the two references apart
        base = started
    want = {json.dumps(p["prompt"]): text for p, text in zip(prompts, base)}
    assert seen and {k for k, _ in seen} == set(want)
    for key, anchor in seen:
        assert anchor and anchor == want[key]
        assert anchor not in rejected


def test_reference_log_probs_are_cached_across_runs(tiny, tmp_path):
    """Issue 12: the nightly job re-trains a reader on pairs it saw the night before; their
    reference log-probs come from the cache (the same values TRL computes), and another
    reference (a different starting adapter) is another cache."""
    from core.learning.dpo import RefLogpCache

    items = [FeedbackItem(id=i, reader_id=1, report_id=i, rating=-2,
                          edited_text=f"No acute abnormality {i}.", findings=f"{FINDINGS} {i}.",
                          original="Normal chest x-ray.", ai_text=f"Mild cardiomegaly {i}.")
             for i in range(1, 6)]
    pairs = [to_trl(p) for p in build_pairs(items, heldout_fraction=0).train]
    cached = TrainConfig(epochs=1, batch_size=2, progress=False,
                         ref_cache_dir=str(tmp_path / "cache"))

    def ref_logps(trainer):
        return list(zip(trainer.train_dataset["ref_chosen_logps"],
                        trainer.train_dataset["ref_rejected_logps"]))

    trl_own = build_dpo_trainer(tiny, pairs, tmp_path / "trl",
                                TrainConfig(epochs=2, batch_size=2, progress=False))
    first = build_dpo_trainer(tiny, pairs, tmp_path / "first", cached)
    assert first.ref_cache_hits == 0
    assert torch.allclose(torch.tensor(ref_logps(first)), torch.tensor(ref_logps(trl_own)),
                          atol=1e-5)
    again = build_dpo_trainer(tiny, pairs[:3] + [pairs[0]], tmp_path / "again", cached)
    assert again.ref_cache_hits == 4
    assert ref_logps(again) == ref_logps(first)[:3] + ref_logps(first)[:1]
    # another reference: a starting adapter of its own, so nothing is reused
    adapter = train_dpo(tiny, pairs, tmp_path / "adapter",
                        TrainConfig(epochs=1, batch_size=2, progress=False, learning_rate=5e-2))
    other = build_dpo_trainer(tiny, pairs, tmp_path / "other", cached,
                              init_adapter=adapter.adapter_dir)
    assert other.ref_cache_hits == 0
    assert len(list((tmp_path / "cache").glob("ref-logps-*.json"))) == 2
    assert ref_logps(other) != ref_logps(first)
    # a damaged cache file is only a slower run
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{not json")
    assert build_dpo_trainer(tiny, pairs, tmp_path / "damaged", cached).ref_cache_hits == 0
    assert len(RefLogpCache.for_reference(tmp_path / "cache", tiny, None, 512, mixed_bf16())) == len(pairs)
    # the other precision is another file
    assert RefLogpCache.for_reference(tmp_path / "cache", tiny, None, 512, not mixed_bf16()).path.name not in {
        f.name for f in (tmp_path / "cache").glob("*.json")}


def test_reference_log_prob_cache_is_bounded(tmp_path, monkeypatch):
    """The cache keeps its newest entries under the cap, and a save removes the files of other
    references that nothing has written for a month (a replaced base adapter, the other
    precision), never a recent one."""
    import os
    import time

    from core.learning import dpo

    monkeypatch.setattr(dpo, "REF_CACHE_MAX_ENTRIES", 3)
    stale = tmp_path / "ref-logps-0000000000000000.json"
    recent = tmp_path / "ref-logps-1111111111111111.json"
    for f in (stale, recent):
        f.write_text("{}")
    month_ago = time.time() - 31 * 86400
    os.utime(stale, (month_ago, month_ago))
    cache = dpo.RefLogpCache(tmp_path / "ref-logps-2222222222222222.json")
    for i in range(5):
        cache[f"k{i}"] = (float(-i), float(-2 * i))
    assert cache["k0"] == (0.0, 0.0)  # read this run: the newest now
    cache.save()
    assert not stale.exists() and recent.exists()
    assert all(f"k{i}" in cache for i in range(5))  # this run can still read every entry
    again = dpo.RefLogpCache(cache.path)
    assert len(again) == 3 and "k1" not in again and again["k0"] == (0.0, 0.0) and again["k4"] == (-4.0, -8.0)
    # a reference that is only read (every pair cached) is in use: its file is not stale
    os.utime(recent, (month_ago, month_ago))
    dpo.RefLogpCache(recent)
    cache.save()
    assert recent.exists()
