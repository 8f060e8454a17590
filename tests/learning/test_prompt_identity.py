"""One prompt for training and serving (issue 12): SFT rows, DPO/GRPO rows and the pipeline's own
model call carry byte-identical chat prompts for the same report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from core.generation.pipeline import C2FConfig, CoarseToFine, serving_prompts
from core.learning.pairs import Pair, report_of, to_trl
from core.generation.retrieval import RetrievalIndex
from core.learning.sft import sft_examples

REPORTS = [
    {"id": 1, "uid": "a", "findings": "Small right pleural effusion. Heart normal.", "impression": "Small right effusion.",
     "indication": "Dyspnea.", "comparison": "None."},
    {"id": 2, "uid": "b", "findings": "Small left pleural effusion. Heart normal.", "impression": "Small left effusion."},
    {"id": 3, "uid": "c", "findings": "Lungs clear. Heart normal.", "impression": "No acute disease."},
    {"id": 4, "uid": "d", "findings": "The lungs are clear. Heart size normal.", "impression": "Normal chest."},
    {"id": 5, "uid": "e", "findings": "Right pleural effusion, small. Heart size normal.", "impression": "Right effusion."},
]


class _Recorder:
    """A stand-in model that records the prompts it is served."""

    def __init__(self):
        self.prompts = []
        self.tokenizer = lambda s, add_special_tokens=False: {"input_ids": s.split()}

    def format_chat(self, messages):
        return json.dumps(messages)

    def generate(self, prompts, adapters=None, max_new_tokens=48, batch_size=8, progress=False,
                 length_hint=None):
        self.prompts += prompts
        return [SimpleNamespace(text="Small right effusion.", new_tokens=3, truncated=False, prompt_tokens=9) for _ in prompts]


@pytest.mark.parametrize("shots", [0, 2])
def test_training_and_serving_prompts_are_identical(shots):
    config = C2FConfig(k=3, shots=shots, llm="always")
    index = RetrievalIndex.build(REPORTS, config.retrieval)
    report = REPORTS[0]
    model = _Recorder()
    CoarseToFine(index, model, config).generate([report])  # the report is in the index: left out
    served = model.prompts[0]
    assert any("DRAFT:" in m["content"] for m in served), "the coarse draft is in the prompt"
    assert "Small right effusion." not in json.dumps(served), "the report's own impression must not leak"

    sft = sft_examples([report], shots=shots, index=index, config=config)[0]["prompt"]
    pair = Pair(report_id=1, external_id="a", findings=report["findings"], indication=report["indication"],
                comparison=report["comparison"], chosen="Small right effusion.", rejected="No acute disease.",
                kind="edit", weight=1.0, gap=2, critical=False, feedback_ids=[1])
    dpo = to_trl(pair, serving_prompts([report_of(pair)], index, config)[0])["prompt"]
    assert json.dumps(sft) == json.dumps(served) == json.dumps(dpo)
