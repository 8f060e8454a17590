"""Rule-based labeler, critical-finding checks and impression repair (core.clinical)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from core.clinical.critical import CRITICAL_FINDINGS, WEIGHTS, criticality
from core.clinical.labeler import extract, is_normal_statement, label
from core.clinical.verifier import check_impression, consistency, repair_impression
from core.clinical.vocabulary import OBSERVATION_NAMES, Label
from core.errors import ClinicalError

P, N, U = Label.POSITIVE, Label.NEGATIVE, Label.UNCERTAIN


# ------------------------------------------------------------------ negation and uncertainty

@pytest.mark.parametrize("text, obs, expected", [
    ("No pneumothorax.", "Pneumothorax", N),
    ("There is no pleural effusion or pneumothorax.", "Pleural Effusion", N),
    ("There is no pleural effusion or pneumothorax.", "Pneumothorax", N),
    ("No focal consolidation, pleural effusion, or pneumothorax.", "Pneumothorax", N),
    ("Lungs are clear without focal consolidation.", "Consolidation", N),
    ("Negative for pneumothorax or pleural effusion.", "Pneumothorax", N),
    ("The lungs are free of focal airspace disease.", "Lung Opacity", N),
    ("The costophrenic angles are clear of effusion.", "Pleural Effusion", N),
    ("No evidence of pneumonia.", "Pneumonia", N),
    ("The previously seen pneumothorax has resolved.", "Pneumothorax", N),
    ("Resolved left pleural effusion.", "Pleural Effusion", N),
    ("The right chest tube has been removed.", "Support Devices", N),
    ("Interval removal of the right chest tube.", "Support Devices", N),
    ("The heart is not enlarged.", "Cardiomegaly", N),
    ("Pneumothorax is not seen.", "Pneumothorax", N),
    ("There are no XXXX of a pleural effusion.", "Pleural Effusion", N),
    ("There is no focal air space opacity to suggest a pneumonia.", "Pneumonia", N),
    ("No suspicious pulmonary opacity, pleural effusion, or pneumothorax.", "Pneumothorax", N),
    ("Likely no pneumonia.", "Pneumonia", N),
    # pseudo-negation: "no change" does not negate
    ("No change in the moderate right pleural effusion.", "Pleural Effusion", P),
    # negation does not cross a clause boundary
    ("No pneumothorax, but there is a small left pleural effusion.", "Pleural Effusion", P),
    ("No effusion; mild cardiomegaly.", "Cardiomegaly", P),
    ("7 mm non calcified nodule in the lingula.", "Nodule", P),
    # uncertainty
    ("Pneumonia cannot be excluded.", "Pneumonia", U),
    ("Cannot exclude a small left effusion.", "Pleural Effusion", U),
    ("Possible left lower lobe pneumonia.", "Pneumonia", U),
    ("Findings may represent atelectasis.", "Atelectasis", U),
    ("Opacity likely representing atelectasis.", "Atelectasis", U),
    ("Findings suggest early pulmonary edema.", "Edema", U),
    ("Atelectasis versus scarring at the left base.", "Atelectasis", U),
    ("Atelectasis versus scarring at the left base.", "Scarring", U),
    ("Questionable small right midlung nodule.", "Nodule", U),
    ("Left lower lobe opacity suspicious for pneumonia.", "Pneumonia", U),
    # positives
    ("Small right apical pneumothorax.", "Pneumothorax", P),
    ("The heart size is enlarged.", "Cardiomegaly", P),
    ("Enlarged cardiac silhouette.", "Cardiomegaly", P),
    ("Moderate cardiomegaly.", "Cardiomegaly", P),
    ("Right lower lobe consolidation.", "Consolidation", P),
    ("Mild degenerative changes of the thoracic spine.", "Degenerative Spine", P),
    ("Calcified granuloma in the right upper lobe.", "Granuloma", P),
    ("The lungs are hyperexpanded.", "Emphysema", P),
    ("Low lung volumes with bronchovascular crowding.", "Low Lung Volumes", P),
    ("Tortuous thoracic aorta.", "Tortuous Aorta", P),
    ("Atherosclerotic calcification of the aortic arch.", "Calcification", P),
    ("Small hiatal hernia.", "Hernia", P),
    ("Free air under the right hemidiaphragm.", "Free Air", P),
    ("Moderate thoracolumbar dextroscoliosis.", "Scoliosis", P),
    ("Increased interstitial markings.", "Interstitial Disease", P),
    ("Mild pulmonary vascular congestion.", "Vascular Congestion", P),
    ("Left PICC with tip in the SVC.", "Support Devices", P),
    ("Old healed right rib fractures.", "Fracture", P),
])
def test_label_mention(text, obs, expected):
    assert label(text).get(obs) is expected, (text, label(text))


def test_not_mentioned_is_absent():
    labels = label("Small right pleural effusion.")
    assert "Pneumothorax" not in labels
    assert set(labels) <= set(OBSERVATION_NAMES)


def test_subcutaneous_emphysema_is_not_emphysema():
    assert "Emphysema" not in label("Subcutaneous emphysema along the left chest wall.")


def test_degenerative_needs_spine_context():
    assert "Degenerative Spine" not in label("Degenerative changes of both shoulders.")
    assert label("Degenerative changes of both shoulders and the thoracic spine.")["Degenerative Spine"] is P


def test_hypothetical_mentions_are_dropped():
    assert "Mass" not in label("Recommend CT to evaluate for mass.")


def test_positive_wins_over_negative_in_aggregate():
    assert label("No pneumothorax on the left. Small right pneumothorax.")["Pneumothorax"] is P


# ------------------------------------------------------------------ normal statements

@pytest.mark.parametrize("text", [
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary disease.",
    "No acute cardiopulmonary findings.",
    "No acute cardiopulmonary process.",
    "No active disease.",
    "No evidence of active disease.",
    "Normal chest x-XXXX.",
    "Negative chest x-XXXX.",
    "Negative for acute cardiopulmonary disease.",
    "No acute intrathoracic abnormality.",
    "Normal chest.",
    "Heart size is normal. Lungs are clear.",
    "No radiographic evidence of acute cardiopulmonary abnormality.",
])
def test_normal_phrasings_give_no_finding(text):
    labels = label(text)
    assert labels.get("No Finding") is P, labels
    assert not any(v in (P, U) for k, v in labels.items() if k != "No Finding")


def test_no_finding_not_positive_when_something_is_present():
    labels = label("Stable mild cardiomegaly. No acute cardiopulmonary abnormality.")
    assert labels["Cardiomegaly"] is P
    assert "No Finding" not in labels


def test_normal_statement_detection():
    assert is_normal_statement("1. No acute cardiopulmonary abnormality.")
    assert not is_normal_statement("Small right pneumothorax.")


def test_normal_organ_statements_are_negative():
    labels = label("The cardiomediastinal silhouette is within normal limits. The lungs are clear. "
                   "The costophrenic angles are sharp.")
    assert labels["Cardiomegaly"] is N
    assert labels["Enlarged Cardiomediastinum"] is N
    assert labels["Lung Opacity"] is N
    assert labels["Pleural Effusion"] is N


def test_xxxx_marks_are_inert():
    assert label("XXXX XXXX opacities in the right lower lobe.")["Lung Opacity"] is P
    assert label("Normal chest x-XXXX.") == {"No Finding": P}


def test_bad_input_type():
    with pytest.raises(ClinicalError):
        label(42)  # type: ignore[arg-type]


def test_empty_text():
    assert label("") == {}
    assert extract("") == []


# ------------------------------------------------------------------ critical findings

NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."

# (findings, expected missing observation, critical finding name that must match)
CRITICAL_CASES = [
    ("Small right apical pneumothorax. Heart size normal.", "Pneumothorax", "pneumothorax"),
    ("Large left tension pneumothorax with mediastinal shift to the right.", "Pneumothorax", "tension pneumothorax"),
    ("There is a tiny left pneumothorax, but no pleural effusion.", "Pneumothorax", "pneumothorax"),
    ("Free air under the right hemidiaphragm. Lungs are clear.", "Free Air", "free air (pneumoperitoneum)"),
    ("Pneumoperitoneum is present. Heart size normal.", "Free Air", "free air (pneumoperitoneum)"),
    ("Large right pleural effusion with adjacent atelectasis.", "Pleural Effusion", "large pleural effusion"),
    ("Moderate left pleural effusion. Heart is normal.", "Pleural Effusion", "large pleural effusion"),
    ("Complete white-out of the left hemithorax.", "Lung Opacity", "hemithorax white-out"),
    ("Cardiomegaly with interstitial pulmonary edema.", "Edema", "pulmonary edema"),
    ("Right lower lobe consolidation. No effusion.", "Consolidation", "consolidation"),
    ("Patchy airspace disease in the left lower lobe consistent with pneumonia.", "Pneumonia", "pneumonia"),
    ("Left lower lobe opacity, possible pneumonia.", "Pneumonia", "pneumonia"),
    ("The mediastinum is widened. Heart size normal.", "Enlarged Cardiomediastinum", "mediastinal widening"),
    ("Endotracheal tube tip in the right mainstem bronchus.", "Support Devices", "malpositioned tube or line"),
    ("Malpositioned right PICC with tip in the right internal jugular vein.", "Support Devices", "malpositioned tube or line"),
    ("The enteric tube is coiled in the esophagus.", "Support Devices", "malpositioned tube or line"),
    ("Acute displaced fracture of the left fifth rib.", "Fracture", "acute fracture"),
    ("There is a 4 cm mass in the right upper lobe.", "Mass", "mass"),
]


def test_every_critical_finding_has_a_case():
    names = {c[2] for c in CRITICAL_CASES}
    assert names == {cf.name for cf in CRITICAL_FINDINGS}
    assert len(CRITICAL_CASES) >= 15


def test_critical_findings_have_reasons():
    for cf in CRITICAL_FINDINGS:
        assert cf.reason and cf.reason.endswith("."), cf
        assert cf.observation in OBSERVATION_NAMES
        assert criticality(cf.observation, cf.name) == 5.0, cf.name


@pytest.mark.parametrize("findings, obs, name", CRITICAL_CASES)
def test_missing_critical_is_caught(findings, obs, name):
    r = check_impression(findings, NORMAL_IMPRESSION)
    assert obs in r.missing_critical, (findings, r.messages)
    assert not r.ok
    assert any(name in m for m in r.messages), r.messages
    assert consistency(findings, NORMAL_IMPRESSION) <= 0.5


@pytest.mark.parametrize("findings, obs, name", CRITICAL_CASES)
def test_critical_mentioned_in_impression_is_fine(findings, obs, name):
    fixed, added = repair_impression(findings, NORMAL_IMPRESSION)
    assert added, findings
    r = check_impression(findings, fixed)
    assert obs not in r.missing_critical, (fixed, r.messages)


@pytest.mark.parametrize("findings", [
    "Small right pleural effusion.",                      # small effusion is not critical
    "Old healed right rib fractures.",                    # old fracture
    "Endotracheal tube tip 4 cm above the carina.",       # well-positioned tube
    "No pneumothorax. No large pleural effusion.",        # negated
    "Calcified granuloma in the left upper lobe.",        # minor
    "Mild degenerative changes of the thoracic spine.",
    "Stable mild cardiomegaly.",                           # major, not critical
])
def test_non_critical_findings_are_not_flagged(findings):
    r = check_impression(findings, NORMAL_IMPRESSION)
    assert r.missing_critical == [], r.messages


def test_critical_satisfied_by_related_observation():
    # findings say consolidation, impression says pneumonia: covered
    r = check_impression("Right lower lobe consolidation.", "Right lower lobe pneumonia.")
    assert r.missing_critical == []


def test_criticality_weights():
    assert criticality("Pneumothorax") == 5.0
    assert criticality("Granuloma") == 0.5
    assert criticality("Degenerative Spine") == 0.5
    assert criticality("Pleural Effusion") == 2.0
    assert criticality("Pleural Effusion", "large right pleural effusion") == 5.0
    assert criticality("Fracture", "old healed rib fracture") == 2.0
    assert criticality("Fracture", "acute displaced rib fracture") == 5.0
    assert set(WEIGHTS) == set(OBSERVATION_NAMES)
    with pytest.raises(ClinicalError):
        criticality("Dragon")


# ------------------------------------------------------------------ contradictions, unsupported

def test_contradiction_impression_negates_finding():
    r = check_impression("Large right pleural effusion.", "No pleural effusion.")
    assert "Pleural Effusion" in r.contradictions
    assert not r.ok
    assert any("contradiction" in m for m in r.messages)


def test_contradiction_impression_asserts_negated_finding():
    r = check_impression("Heart size is normal. No pneumothorax.", "Small left pneumothorax.")
    assert "Pneumothorax" in r.contradictions
    r2 = check_impression("The heart is not enlarged.", "Cardiomegaly.")
    assert "Cardiomegaly" in r2.contradictions


def test_qualified_negative_is_not_a_contradiction():
    r = check_impression("Streaky left basilar opacity, likely atelectasis.", "No focal airspace disease.")
    assert "Lung Opacity" not in r.contradictions
    r2 = check_impression("Small left pleural effusion.", "No large pleural effusion.")
    assert r2.contradictions == []


def test_unsupported_positive():
    r = check_impression("Heart size is normal. No pneumothorax.", "Small hiatal hernia.")
    assert r.unsupported == ["Hernia"]
    assert not r.ok
    # related observation supports it: findings opacity, impression pneumonia
    r2 = check_impression("Patchy right lower lobe opacity.", "Possible right lower lobe pneumonia.")
    assert "Pneumonia" not in r2.unsupported


def test_consistent_pair_is_ok():
    findings = ("The heart is mildly enlarged. Small right pleural effusion. No pneumothorax. "
                "Degenerative changes of the thoracic spine.")
    impression = "Mild cardiomegaly with small right pleural effusion."
    r = check_impression(findings, impression)
    assert r.ok, r.messages
    assert consistency(findings, impression) == 1.0


def test_consistency_ordering_and_range():
    findings = "Large left pleural effusion. Right lower lobe consolidation. Small granuloma."
    good = "Large left pleural effusion and right lower lobe consolidation."
    one_missing = "Large left pleural effusion."
    none = "No acute cardiopulmonary abnormality."
    s_good, s_one, s_none = (consistency(findings, x) for x in (good, one_missing, none))
    assert s_good == 1.0
    assert s_one == pytest.approx(0.5)
    assert 0.0 < s_none < s_one < s_good


# ------------------------------------------------------------------ repair

def test_repair_adds_missing_critical_sentence():
    findings = ("Heart size is normal. There is a small right apical pneumothorax. "
                "No pleural effusion.")
    text, added = repair_impression(findings, "No acute cardiopulmonary abnormality.")
    assert added == ["Small right apical pneumothorax."]
    assert "Small right apical pneumothorax." in text
    assert "No acute cardiopulmonary abnormality" not in text  # false normal statement dropped
    assert check_impression(findings, text).missing_critical == []


def test_repair_keeps_existing_content_and_is_idempotent():
    findings = "Mild cardiomegaly. Large left pleural effusion. Free air under the right hemidiaphragm."
    text, added = repair_impression(findings, "Mild cardiomegaly.")
    assert text.startswith("Mild cardiomegaly.")
    assert len(added) == 2
    assert "Large left pleural effusion." in added
    again, added2 = repair_impression(findings, text)
    assert added2 == [] and again == text


def test_repair_numbered_style():
    findings = "Right lower lobe consolidation. Small left pneumothorax."
    text, added = repair_impression(findings, "1. Right lower lobe consolidation.")
    assert added == ["Small left pneumothorax."]
    assert text == "1. Right lower lobe consolidation. 2. Small left pneumothorax."
    plain, _ = repair_impression(findings, "Right lower lobe pneumonia.", style="plain")
    assert plain == "Right lower lobe pneumonia. Small left pneumothorax."


def test_repair_preserves_numbered_items():
    findings = "Diffuse parahilar and alveolar consolidations are present."
    text, _ = repair_impression(findings, "1. Soft tissue neck negative. 2. Chest. Heart failure with edema.")
    assert text == ("1. Soft tissue neck negative. 2. Chest. Heart failure with edema. "
                    "3. Diffuse parahilar and alveolar consolidations are present.")
    text2, _ = repair_impression("Small right pneumothorax.", "1. Cardiomegaly. 2. No acute cardiopulmonary abnormality.")
    assert text2 == "1. Cardiomegaly. 2. Small right pneumothorax."


def test_size_qualifier_must_describe_the_effusion():
    assert check_impression("Large hiatal hernia and small left effusion.", "Hiatal hernia.").missing_critical == []
    assert check_impression("The left pleural effusion is large.", "Normal.").missing_critical == ["Pleural Effusion"]


def test_repair_nothing_missing_returns_input():
    assert repair_impression("Heart size normal.", "Normal chest.") == ("Normal chest.", [])
    with pytest.raises(ClinicalError):
        repair_impression("x", "y", style="fancy")


# ------------------------------------------------------------------ real data

def _load_bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "labeler_agreement.py"
    spec = importlib.util.spec_from_file_location("labeler_agreement", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_agreement_with_iu_mesh_sample(iu_csv):
    """On 400 real IU reports the labeler agrees with the human MeSH indexing (micro-F1 > 0.85)."""
    import pandas as pd

    bench = _load_bench()
    df = pd.read_csv(iu_csv).fillna("").head(400)
    df = df[~df["MeSH"].str.contains("No Indexing", regex=False)]
    tp = fp = fn = 0
    for row in df.itertuples():
        pred = {k for k, v in label(f"{row.findings} {row.impression}").items() if v in (P, U)}
        truth = bench.truth_labels(row.MeSH)
        for o in bench.EVALUATED:
            tp += o in pred and o in truth
            fp += o in pred and o not in truth
            fn += o in truth and o not in pred
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 > 0.85, f1


def test_human_impressions_rarely_flagged(iu_csv):
    import pandas as pd

    df = pd.read_csv(iu_csv).fillna("").head(400)
    flagged = sum(not check_impression(r.findings, r.impression).ok for r in df.itertuples())
    assert flagged / len(df) < 0.08, flagged


def test_a_size_at_the_start_of_a_sentence_is_not_a_list_number():
    """"1.0 cm nodular opacity" is a size: read as the list number "1." it became "0 cm", and the
    verifier quoted that sentence into an impression."""
    from core.clinical.text import sentences

    assert sentences("Aorta calcified. 1.0 cm nodular opacity in the left midlung.") == [
        "Aorta calcified.", "1.0 cm nodular opacity in the left midlung."]
    assert sentences("1. No acute disease. 2.Small left effusion.") == ["No acute disease.", "Small left effusion."]
