"""SFT of the shared base adapter on a tiny random-init model: LoRA moves, the base does not;
the run is recorded, versioned, promoted, loadable, and the pipeline drafts with it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from core.errors import ConfigError
from core.learning.sft_trainer import SFTTrainConfig, train_sft
from core.learning.train import TrainError, lora_snapshot

# Each test trains or runs the nightly job on a tiny model: seconds to minutes.
pytestmark = pytest.mark.slow

FAST = dict(max_steps=3, batch_size=4, learning_rate=5e-3, progress=False, warmup_steps=0)


class WeightWatch(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.lora0, self.base0 = lora_snapshot(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.lora1, self.base1 = lora_snapshot(model)


def _reports(n: int = 40) -> list[dict]:
    """Synthetic report dicts (seeded, fixed)."""
    from dataclasses import asdict

    from core.ingest.demo import synthetic_reports

    return [asdict(r) for r in synthetic_reports(n, seed=5)]


@pytest.fixture
def iu_like(store):
    """40 synthetic reports in the store; their external ids fall in every split."""
    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(40, seed=5), file="synthetic", fmt="demo")
    return store


def test_train_sft_moves_lora_only_and_loss_is_on_the_completion(tiny, tmp_path):
    from core.learning.sft import sft_examples

    rows = [r | {"uid": str(i)} for i, r in enumerate(_reports(12))]
    examples = sft_examples(rows, shots=2)
    assert examples[0]["prompt"][0]["role"] == "system"
    assert [m["role"] for m in examples[0]["prompt"]][-3:] == ["user", "assistant", "user"]
    assert examples[0]["completion"][0]["role"] == "assistant"
    # a report is never its own few-shot example
    for r, e in zip(rows, examples):
        shown = [m["content"] for m in e["prompt"][1:-1] if m["role"] == "assistant"]
        assert len(shown) == 2
    watch = WeightWatch()
    res = train_sft(tiny, examples, tmp_path / "a", SFTTrainConfig(**FAST),
                    eval_examples=examples[:4], callbacks=[watch])
    moved = [n for n in watch.lora0 if not torch.equal(watch.lora0[n], watch.lora1[n])]
    assert moved and all("lora_" in n for n in moved)
    assert [n for n in watch.base0 if not torch.equal(watch.base0[n], watch.base1[n])] == []
    assert res.steps == 3 and res.losses and res.train_tokens > res.completion_tokens > 0
    assert res.eval_loss_after < res.eval_loss_before  # lr 5e-3 on 4 rows seen 3 times
    assert 0 < res.epochs_done <= 1
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "model"  # no machine path in a shippable file
    assert not (tmp_path / "a" / "trainer").exists()


def test_a_second_epoch_goes_on_from_the_saved_adapter(tiny, tmp_path):
    """``init_adapter`` trains the saved LoRA further: it starts where the first run ended (same
    dev loss as that adapter's), keeps its shape, and a missing folder is refused up front."""
    from core.learning.sft import sft_examples

    rows = [r | {"uid": str(i)} for i, r in enumerate(_reports(12))]
    examples = sft_examples(rows, shots=0)
    first = train_sft(tiny, examples, tmp_path / "a", SFTTrainConfig(**FAST, lora_r=4),
                      eval_examples=examples[:4])
    watch = WeightWatch()
    second = train_sft(tiny, examples, tmp_path / "b",
                       SFTTrainConfig(**FAST, init_adapter=str(tmp_path / "a")),
                       eval_examples=examples[:4], callbacks=[watch])
    assert second.eval_loss_before == pytest.approx(first.eval_loss_after, rel=1e-4)
    assert second.eval_loss_after < second.eval_loss_before
    moved = [n for n in watch.lora0 if not torch.equal(watch.lora0[n], watch.lora1[n])]
    assert moved and all("lora_" in n for n in moved)
    assert [n for n in watch.base0 if not torch.equal(watch.base0[n], watch.base1[n])] == []
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 4
    assert SFTTrainConfig(init_adapter=str(tmp_path / "a")).lora_r == 4  # recorded as trained
    with pytest.raises(ConfigError, match="not an adapter folder"):
        SFTTrainConfig(init_adapter=str(tmp_path / "nowhere"))


def test_completion_mask_covers_the_impression_only(tiny, tmp_path):
    """What TRL trains on: the labels are the impression (and the end of turn), nothing else."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from core.generation.prompts import impression_messages
    from core.learning.train import _tokenizer

    tok = _tokenizer(tiny)
    row = {"prompt": impression_messages("The lungs are clear."),
           "completion": [{"role": "assistant", "content": "Normal chest."}]}
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    args = SFTConfig(output_dir=str(tmp_path / "unused"), completion_only_loss=True, report_to="none",
                     use_cpu=True, bf16=False, activation_checkpointing=False)
    tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([row]),
                    processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM",
                                                                 target_modules=["q_proj"]))
    ex = tr.train_dataset[0]
    labels = [t for t in ex["labels"] if t != -100]
    assert tok.decode(labels).startswith("Normal chest.<|im_end|>")
    assert len(labels) < len(ex["input_ids"]) / 3  # the prompt carries no loss


def test_bad_config_and_empty_data_are_refused_clearly(tiny, tmp_path, iu_like):
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        SFTTrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="dtype must be"):
        SFTTrainConfig(dtype="int8")
    with pytest.raises(ConfigError, match="max_steps must be -1 or >= 1"):
        SFTTrainConfig(max_steps=0)
    with pytest.raises(TrainError, match="no SFT examples"):
        train_sft(tiny, [], tmp_path / "x")
    with pytest.raises(TrainError, match="example 0: expected a dict with 'prompt'"):
        train_sft(tiny, [{"text": "hi"}], tmp_path / "x")
    with pytest.raises(TrainError, match="completion .*blank"):
        train_sft(tiny, [{"prompt": [{"role": "user", "content": "x"}], "completion": " "}],
                  tmp_path / "x")
    with pytest.raises(TrainError, match="longer than max_length=16"):
        train_sft(tiny, [{"prompt": [{"role": "user", "content": "The heart is normal. " * 9}],
                          "completion": "Normal."}], tmp_path / "x",
                  SFTTrainConfig(max_length=16, progress=False))


def test_run_sft_refuses_an_empty_store(store, tiny):
    from core.learning.sft import SFTRunError, run_sft

    with pytest.raises(SFTRunError, match="no train-split reports .* import reports first"):
        run_sft(store, SFTTrainConfig(**FAST), model_path=tiny)
    with pytest.raises(SFTRunError, match="no model checkpoint"):
        run_sft(store, SFTTrainConfig(**FAST), model_path=tiny.parent / "nowhere")
    assert store.training_runs() == []  # nothing recorded for a run that never started


def test_run_sft_records_versions_promotes_and_the_pipeline_drafts_with_it(
        iu_like, tiny, tmp_path, monkeypatch):
    from core.adapters.base import shared_adapter_dir
    from core.generation.pipeline import pipeline_for
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.base import (SHARED_ADAPTER_NAME, SHARED_READER, adapter_fits, base_adapter_dir)
    from core.learning.sft import run_sft
    from core.ingest.splits import split_of

    store = iu_like
    monkeypatch.setenv("IMPRESSIONIST_MODEL", str(tiny))
    assert base_adapter_dir() is None or base_adapter_dir().name == "base-adapter"
    run = run_sft(store, SFTTrainConfig(**FAST), max_examples=20, shots=1, eval_examples=3,
                  command="python -m core train-sft --max-steps 3", out=tmp_path / "ship")
    assert run.version == 1 and run.promoted and run.adapter_dir.name == "v1"
    assert run.adapter_dir.parent.name == SHARED_READER
    # the run row: method sft, reader = the shared base, succeeded, with steps and losses
    row = store.get_run(run.run_id)
    reader = store.get_reader(SHARED_READER)
    assert (row["reader_id"], row["method"], row["status"]) == (reader.id, "sft", "succeeded")
    assert row["steps"] == 3 and row["losses"] and row["adapter_version"] == 1
    assert row["config"]["command"] == "python -m core train-sft --max-steps 3"
    assert not reader.active and store.password_hash(SHARED_READER) is None  # cannot sign in
    # trained on train-split reports only
    manifest = json.loads((run.adapter_dir / "manifest.json").read_text())
    n_train = sum(split_of(r["external_id"]) == "train" for r in store.reports())
    assert manifest["data"]["n_train_reports"] == n_train and manifest["data"]["n_examples"] == 20
    assert manifest["partial_epoch"] and manifest["steps"] == 3
    assert "train-sft --max-steps 3" in (run.adapter_dir / "README.md").read_text()
    # versioned and active: the registry and the lookup agree
    assert store.active_adapter_row(reader.id)["version"] == 1
    assert base_adapter_dir() == run.adapter_dir == shared_adapter_dir()
    assert adapter_fits(run.adapter_dir, tiny)
    run2 = run_sft(store, SFTTrainConfig(**FAST), max_examples=4, shots=0, eval_examples=0,
                   promote=False)
    assert run2.version == 2 and base_adapter_dir() == run.adapter_dir  # v2 is a candidate
    # the exported copy holds the shippable files only
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    # loadable by the Generator, and the pipeline drafts with it by default
    gen = load_generator(ModelSpec(tiny, dtype="float32", device="cpu", name="tiny"))
    gen.load_adapter("check", run.adapter_dir)
    gen.unload_adapter("check")
    from core.generation.pipeline import C2FConfig

    pipe = pipeline_for(store, gen, C2FConfig(llm="always", max_new_tokens=4))
    assert pipe.base_adapter == SHARED_ADAPTER_NAME and SHARED_ADAPTER_NAME in gen.adapters
    out = pipe.generate([{"findings": "The lungs are clear.", "uid": "zz"}])
    assert out[0].flags["llm"] and out[0].flags["adapter"] == SHARED_ADAPTER_NAME
    bare = pipeline_for(store, gen, C2FConfig(llm="always", max_new_tokens=4), shared_base=False)
    assert bare.base_adapter is None
    gen.unload_adapter(SHARED_ADAPTER_NAME)


def test_a_base_adapter_of_another_model_is_never_used(tiny, tmp_path, monkeypatch):
    from core.generation.checkpoint import make_tiny_model
    from core.adapters.base import adapter_fits, base_adapter_dir
    from core.learning.sft import sft_examples

    res = train_sft(tiny, sft_examples(_reports(4), shots=0), tmp_path / "a",
                    SFTTrainConfig(**FAST | {"max_steps": 1}))
    bigger = tmp_path / "other"
    make_tiny_model(bigger)
    cfg = json.loads((bigger / "config.json").read_text())
    cfg["hidden_size"] = 48
    (bigger / "config.json").write_text(json.dumps(cfg))
    assert adapter_fits(res.adapter_dir, tiny)  # no manifest: LoRA widths vs hidden size
    assert not adapter_fits(res.adapter_dir, bigger)
    assert not adapter_fits(tmp_path / "nothing", tiny)
    monkeypatch.setenv("IMPRESSIONIST_MODEL", str(tmp_path / "absent"))
    assert base_adapter_dir() is None  # no configured model: nothing can fit


def test_shipped_adapter_fits_the_embedded_model():
    """The adapter in core/assets/base-adapter (when shipped) is for SmolLM2-135M-Instruct."""
    from core.generation.checkpoint import DEFAULT_MODEL_DIR
    from core.adapters.base import SHIPPED_ADAPTER_DIR, adapter_fits

    if not (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
        pytest.skip("no shipped base adapter")
    manifest = json.loads((SHIPPED_ADAPTER_DIR / "manifest.json").read_text())
    assert manifest["base_model"]["hidden_size"] == 576
    assert manifest["base_model"]["num_hidden_layers"] == 30
    assert (SHIPPED_ADAPTER_DIR / "adapter_model.safetensors").stat().st_size < 10_000_000
    assert "## Scores" in (SHIPPED_ADAPTER_DIR / "README.md").read_text()
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        assert adapter_fits(SHIPPED_ADAPTER_DIR, DEFAULT_MODEL_DIR)


def test_cli_train_sft(iu_like, tiny, capsys):
    from core.cli.main import main

    rc = main(["train-sft", "--max-steps", "2", "--batch-size", "2", "--max-examples", "4",
               "--shots", "1", "--eval-examples", "0", "--model", str(tiny), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "shared-base v1 (active)" in out and "2 steps" in out
    with pytest.raises(SystemExit) as bad:  # bad input: argparse refuses it, exit 2
        main(["train-sft", "--batch-size", "0", "--model", str(tiny), "--quiet"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "--batch-size" in err and "batch_size must be >= 1" in err


def test_a_continued_adapter_names_every_command_that_made_it(tmp_path):
    """The model card of an adapter trained on from another lists the earlier runs' commands,
    oldest first, so the chain is reproducible from the base model."""
    from core.adapters.base import write_model_card
    from core.learning.sft import _lineage

    first, second = tmp_path / "ep1", tmp_path / "ep2"
    first.mkdir()
    second.mkdir()
    (first / "manifest.json").write_text(json.dumps({"command": "train-sft --seed 0"}))
    (second / "manifest.json").write_text(json.dumps(
        {"command": "train-sft --init-adapter ep1 --seed 1", "lineage": _lineage(str(first))}))
    chain = _lineage(str(second))
    assert chain == ["train-sft --seed 0", "train-sft --init-adapter ep1 --seed 1"]
    assert _lineage(None) == []
    assert "without a readable manifest" in _lineage(str(tmp_path))[0]
    card = write_model_card(tmp_path, {"command": "train-sft --init-adapter ep2 --seed 2",
                                       "lineage": chain, "config": {}}).read_text()
    assert "went on from run 1 of 2: `train-sft --seed 0`" in card
    assert card.index("--seed 1") < card.index("command: `train-sft --init-adapter ep2")
    assert "run the commands above, in order," in card
