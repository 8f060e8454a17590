"""The fast ROUGE-L (core.evaluation.metrics.rouge_l, used by the vote and the rewards) gives
exactly Google's ``rouge_score`` value, with the Porter stemmer as ``metrics.rouge`` uses it.

Hand-made pairs cover what the tokeniser and the stemmer do (plurals, -ed/-ing, case,
punctuation, numbers, IU "XXXX" marks, empty and symbol-only texts); a seeded sample of real
IU X-ray impressions covers the texts the vote actually compares.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from core.evaluation.metrics import lcs_length, rouge, rouge_l, rouge_tokens
from core.ingest.splits import load_iu_csv

ROOT = Path(__file__).resolve().parents[2]
IU_CSV = ROOT.parent / "shared/data/iu_xray/reports.csv"
TOLERANCE = 1e-12  # both sides compute 2PR/(P+R) from the same integer counts

PAIRS = [
    ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary disease."),
    ("Small right pleural effusion. No pneumothorax.", "No pneumothorax. Small right effusion."),
    ("1. Cardiomegaly. 2. Mild pulmonary edema.", "Cardiomegaly with mild interstitial edema."),
    ("Left lower lobe pneumonia.", "Left basilar airspace disease, likely pneumonia."),
    ("Stable postoperative chest.", "No acute process; stable sternotomy wires."),
    ("T8 compression fracture, age-indeterminate.", "Age indeterminate T8 compression deformity."),
    # the stemmer: plurals and verb forms match their stems
    ("Bilateral pleural effusions.", "Bilateral pleural effusion."),
    ("Increased opacities in the bases.", "Increasing opacity in the base."),
    ("Lungs are hyperexpanded and clear.", "The lung is hyperexpanded, clear."),
    # case, punctuation, numbers and de-identification marks
    ("NO ACUTE DISEASE!!!", "no acute disease"),
    ("Heart size normal; lungs clear.", "heart-size normal, lungs: clear"),
    ("XXXX XXXX of the right 5th rib.", "Healed fracture of the right 5th and 6th ribs."),
    ("Opacity 2.5 cm in the RUL.", "2 5 cm RUL opacity"),
    ("Same text.", "Same text."),
    ("Pneumothorax.", "No pneumothorax."),
    ("Effusion.", "Cardiomegaly."),  # nothing in common
    # empty and symbol-only texts score 0, as rouge_score does
    ("", "No acute disease."),
    ("No acute disease.", ""),
    ("...", "No acute disease."),
    ("", ""),
]


@pytest.fixture(scope="module")
def scorer():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _reference(scorer, a: str, b: str) -> float:
    return scorer.score(b, a)["rougeL"].fmeasure  # score(target, prediction)


@pytest.mark.parametrize("a, b", PAIRS)
def test_equals_rouge_score_on_hand_made_pairs(scorer, a, b):
    assert rouge_l(a, b) == pytest.approx(_reference(scorer, a, b), abs=TOLERANCE)
    assert rouge_l(a, b) == pytest.approx(rouge_l(b, a), abs=TOLERANCE)  # F is symmetric


def test_the_stemmer_is_on():
    """Without the stemmer "effusions" and "effusion" would differ and the score would be 2/3."""
    assert rouge_tokens("Pleural effusions.") == rouge_tokens("pleural effusion")
    assert rouge_l("Bilateral pleural effusions.", "Bilateral pleural effusion.") == 1.0


def test_lcs_length():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0 and lcs_length(["a"], []) == 0


def test_equals_the_corpus_metric_for_one_pair():
    pred, ref = "Small right pleural effusion.", "Small right effusions, no pneumothorax."
    assert 100 * rouge_l(pred, ref) == pytest.approx(rouge([pred], [ref])["rougeL"], abs=1e-9)


def test_equals_rouge_score_on_real_impressions(scorer):
    """400 seeded pairs of IU X-ray impressions (findings + impression texts the vote compares)."""
    if not IU_CSV.is_file():
        pytest.skip(f"{IU_CSV} absent")
    texts = [t for r in load_iu_csv(IU_CSV) for t in (r["impression"], r["findings"])]
    rng = random.Random(11)
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(400)]
    pairs += [(t, t.replace(".", "s.")) for t in rng.sample(texts, 50)]  # near-duplicates
    worst = max(abs(rouge_l(a, b) - _reference(scorer, a, b)) for a, b in pairs)
    assert worst <= TOLERANCE
