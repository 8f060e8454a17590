"""DPO and GRPO on a tiny random-init model: the LoRA weights move, the base weights do not."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from core.pairs import FeedbackItem, build_pairs, to_trl
from core.train import (TrainConfig, TrainError, load_policy, lora_snapshot,
                        preference_accuracy, train_dpo, train_grpo)

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
def tiny(tmp_path_factory):
    from core.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


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
    result = train_dpo(tiny, examples, tmp_path / "dpo", cfg, callbacks=[watch])
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
    from core.prompts import impression_messages

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
    with pytest.raises(TrainError):
        TrainConfig(method="ppo")
    with pytest.raises(TrainError):
        train_dpo(tmp_path / "no-model", [{"prompt": [], "chosen": [], "rejected": []}],
                  tmp_path / "y")


def test_length_grouping_keeps_the_draw_and_cuts_padding():
    import random

    from core.train import length_grouped_order, padding_share

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
    import core.train as train

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
    from core.train import sequence_logps

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
