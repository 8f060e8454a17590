"""The hierarchical clinical reward on hand-made cases."""

from __future__ import annotations

import pytest

from core.learning.rewards import (RewardError, RewardWeights, StyleProfile, critical_awareness,
                          findings_level, global_consistency, grpo_reward_funcs,
                          grpo_reward_weights, hierarchical_reward, impression_level,
                          is_critical_case)

BOTH = "Small right apical pneumothorax. Calcified granuloma in the left upper lobe."
NORMAL = "The heart is normal in size. The lungs are clear."


def test_missed_pneumothorax_scores_worse_than_missed_granuloma():
    misses_ptx = "Calcified granuloma in the left upper lobe."
    misses_granuloma = "Small right pneumothorax."
    assert findings_level(BOTH, misses_ptx) < findings_level(BOTH, misses_granuloma) < 1.0
    assert findings_level(BOTH, "Small right pneumothorax. Left upper lobe granuloma.") == 1.0
    assert critical_awareness(BOTH, misses_ptx) == 0.0
    assert critical_awareness(BOTH, misses_granuloma) == 1.0
    r_ptx = hierarchical_reward(BOTH, misses_ptx)
    r_gran = hierarchical_reward(BOTH, misses_granuloma)
    assert r_ptx.total < r_gran.total
    assert r_ptx.critical_case and r_gran.critical_case


def test_negation_flip_is_penalised():
    findings = "There is a small left pleural effusion. The heart is normal in size."
    right = "Small left pleural effusion."
    flipped = "No pleural effusion."
    assert global_consistency(findings, right) == 1.0
    assert global_consistency(findings, flipped) < 1.0
    assert hierarchical_reward(findings, flipped).total < hierarchical_reward(findings, right).total


def test_unsupported_finding_is_penalised():
    findings = "Heart size normal. Mediastinal contours are unremarkable."
    honest = "No acute cardiopulmonary abnormality."
    invented = "Right lower lobe pneumonia."
    assert global_consistency(findings, honest) == 1.0
    assert global_consistency(findings, invented) < 1.0
    assert hierarchical_reward(findings, invented).total < hierarchical_reward(findings, honest).total


def test_normal_study_has_nothing_to_cover():
    assert findings_level(NORMAL, "No acute disease.") == 1.0
    assert not is_critical_case(NORMAL) and is_critical_case(BOTH)


def test_impression_level_prefers_the_readers_own_words_and_style():
    refs = ["1. No acute cardiopulmonary process."]
    style = StyleProfile.from_texts(["1. No acute cardiopulmonary process.",
                                     "1. Mild cardiomegaly. 2. No effusion.",
                                     "1. No acute cardiopulmonary process."])
    assert style.features["numbered"] == 1.0
    assert style.normal_phrase == "1. No acute cardiopulmonary process."
    mine = impression_level("1. No acute cardiopulmonary process.", refs, style)
    other = impression_level("The heart and lungs are within normal limits.", refs, style)
    assert mine > other
    assert impression_level("anything", [], None) == 0.5
    assert StyleProfile().score("x") == 0.5


def test_critical_cases_are_pulled_toward_the_reference():
    reference = "Small right apical pneumothorax. Calcified granuloma."
    close = hierarchical_reward(BOTH, "Small right apical pneumothorax. Calcified granuloma.",
                                reference_completion=reference)
    far = hierarchical_reward(BOTH, "Right pneumothorax noted; left upper lobe granuloma too.",
                              reference_completion=reference)
    assert close.anchor_penalty == 0.0 < far.anchor_penalty
    calm = hierarchical_reward(NORMAL, "Lungs clear, nothing acute.",
                               reference_completion="No acute disease.")
    assert calm.anchor_penalty == 0.0  # no anchor on non-critical cases


def test_grpo_reward_functions_follow_trls_signature():
    funcs = grpo_reward_funcs()
    weights = grpo_reward_weights()
    assert len(funcs) == len(weights) == 5
    completions = [[{"role": "assistant", "content": "Calcified granuloma."}],
                   [{"role": "assistant", "content": "Small right pneumothorax."}]]
    kwargs = {"findings": [BOTH, BOTH], "references": [["Small right pneumothorax."]] * 2,
              "reference_completion": ["Small right pneumothorax.", "Small right pneumothorax."]}
    scores = [f(prompts=[None, None], completions=completions, **kwargs) for f in funcs]
    total = [sum(w * s[i] for w, s in zip(weights, scores)) for i in range(2)]
    assert total[0] < total[1]
    assert scores[3] == [0.0, 1.0]  # critical awareness


def test_bad_inputs():
    with pytest.raises(RewardError):
        findings_level(42, "x")
    with pytest.raises(RewardError):
        RewardWeights(findings=-1)
