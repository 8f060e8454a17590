"""A hand-made test set for the critical-finding safety net (issue 4).

tests/clinical/test_clinical.py has one case per entry of ``core.clinical.critical.CRITICAL_FINDINGS``, each against
the normal impression. This file adds what it does not cover:

- several phrasings per critical finding, missing from a normal *and* from a non-normal impression;
- several critical findings in one report: every one is caught and every one is repaired;
- repair keeps what the impression already said and the repaired text passes the check;
- negated / resolved / non-critical mentions are never flagged;
- the pipeline (retrieval whose neighbours all say "normal") adds the finding in every style, or
  flags the report for review when repair is off.
"""

from __future__ import annotations

import pytest

from core.clinical.critical import CRITICAL_FINDINGS
from core.clinical.labeler import label
from core.clinical.verifier import check_impression, repair_impression
from core.clinical.vocabulary import PRESENT

NORMAL = "No acute cardiopulmonary abnormality."
OTHER = "Mild cardiomegaly."  # a non-normal impression that still omits the critical finding

# findings -> the observation(s) that must be reported missing. Grouped by CRITICAL_FINDINGS name.
PHRASINGS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "pneumothorax": [
        ("Large right pneumothorax.", ("Pneumothorax",)),
        ("Right-sided pneumothorax is present.", ("Pneumothorax",)),
        ("Pneumothorax on the left measuring 2 cm.", ("Pneumothorax",)),
        ("Possible small right pneumothorax.", ("Pneumothorax",)),  # hedged still counts
    ],
    "tension pneumothorax": [
        ("Tension pneumothorax on the right.", ("Pneumothorax",)),
        ("Left pneumothorax with shift of the mediastinum to the right.", ("Pneumothorax",)),
    ],
    "free air (pneumoperitoneum)": [
        ("Free intraperitoneal air beneath the diaphragm.", ("Free Air",)),
        ("Subdiaphragmatic free air.", ("Free Air",)),
        ("There is pneumoperitoneum.", ("Free Air",)),
    ],
    "large pleural effusion": [
        ("Massive left pleural effusion.", ("Pleural Effusion",)),
        ("Large bilateral pleural effusions.", ("Pleural Effusion",)),
        ("Moderate-sized right effusion.", ("Pleural Effusion",)),
        ("The right pleural effusion has increased, now large.", ("Pleural Effusion",)),
        ("Loculated right pleural effusion.", ("Pleural Effusion",)),
        ("Large left pleural effusion with complete white-out of the left hemithorax.", ("Pleural Effusion",)),
    ],
    "hemithorax white-out": [
        ("Complete white-out of the left hemithorax.", ("Lung Opacity",)),
        ("There is complete opacification of the right hemithorax.", ("Lung Opacity",)),
        ("Opacified left hemithorax with tracheal deviation.", ("Lung Opacity",)),
    ],
    "pulmonary edema": [
        ("Pulmonary edema.", ("Edema",)),
        ("Diffuse interstitial edema with Kerley B lines.", ("Edema",)),
        ("Alveolar edema bilaterally.", ("Edema",)),
    ],
    "consolidation": [
        ("Airspace consolidation in the right middle lobe.", ("Consolidation",)),
        ("Dense left lower lobe consolidation with air bronchograms.", ("Consolidation",)),
    ],
    "pneumonia": [
        ("Right upper lobe pneumonia.", ("Pneumonia",)),
        ("Findings concerning for pneumonia in the left lower lobe.", ("Pneumonia",)),
        ("Pneumonia cannot be excluded.", ("Pneumonia",)),
    ],
    "mediastinal widening": [
        ("Widened mediastinum.", ("Enlarged Cardiomediastinum",)),
        ("Mediastinal widening is present.", ("Enlarged Cardiomediastinum",)),
    ],
    "malpositioned tube or line": [
        ("Endotracheal tube is in the right main stem bronchus.", ("Support Devices",)),
        ("Nasogastric tube tip is in the esophagus and should be advanced.", ("Support Devices",)),
        ("Central line terminates in the neck.", ("Support Devices",)),
    ],
    "acute fracture": [
        ("Acute fracture of the right clavicle.", ("Fracture",)),
        ("Displaced fracture of the left 7th rib.", ("Fracture",)),
    ],
    "mass": [
        ("Right hilar mass.", ("Mass",)),
        ("3 cm mass in the left lower lobe.", ("Mass",)),
        ("Large mass in the right upper lobe, suspicious for malignancy.", ("Mass",)),
    ],
}
COMBINED = [
    ("Large left pneumothorax. Moderate right pleural effusion. Right lower lobe consolidation.",
     ("Pneumothorax", "Pleural Effusion", "Consolidation")),
    ("Pulmonary edema and free air under the diaphragm.", ("Edema", "Free Air")),
    ("Widened mediastinum. Acute fracture of the left clavicle. Right hilar mass.",
     ("Enlarged Cardiomediastinum", "Fracture", "Mass")),
]
CASES = [(f, obs) for group in PHRASINGS.values() for f, obs in group] + COMBINED


def test_every_documented_critical_finding_has_phrasings():
    assert set(PHRASINGS) == {cf.name for cf in CRITICAL_FINDINGS}
    assert all(len(v) >= 1 for v in PHRASINGS.values())
    assert len(CASES) >= 35


@pytest.mark.parametrize("findings, missing", CASES)
@pytest.mark.parametrize("impression", [NORMAL, OTHER])
def test_check_catches_and_repair_adds_every_missing_critical_finding(findings, missing, impression):
    r = check_impression(findings, impression)
    assert set(missing) <= set(r.missing_critical), (findings, impression, r.messages)
    assert not r.ok and all(obs in r.evidence for obs in missing)
    fixed, added = repair_impression(findings, impression)
    assert added, (fixed, added)
    after = check_impression(findings, fixed)
    assert after.missing_critical == [], (fixed, after.messages)
    labels = label(fixed)
    for obs in missing:  # the repaired text states each finding (or one that covers it)
        cf = next(c for c in CRITICAL_FINDINGS if c.observation == obs)
        assert labels.get(obs) in PRESENT or any(labels.get(o) in PRESENT for o in cf.satisfied_by), (obs, fixed)
    if impression == OTHER:
        assert fixed.startswith("Mild cardiomegaly."), fixed  # what was said is kept
    else:
        assert NORMAL not in fixed, fixed  # the false normal statement is dropped
    assert repair_impression(findings, fixed) == (fixed, [])  # idempotent


@pytest.mark.parametrize("findings, missing", COMBINED)
def test_several_critical_findings_each_get_a_sentence(findings, missing):
    fixed, added = repair_impression(findings, NORMAL)
    assert 1 <= len(added) <= len(missing), added  # one sentence per clause; a shared clause once
    stated = label(" ".join(added))
    assert all(stated.get(obs) in PRESENT for obs in missing), added
    assert check_impression(findings, "1. Mild cardiomegaly.").missing_critical == list(missing)
    numbered, _ = repair_impression(findings, "1. Mild cardiomegaly.")
    assert numbered.startswith("1. Mild cardiomegaly. 2. ") and f"{len(added) + 1}. " in numbered, numbered


@pytest.mark.parametrize("findings", [
    "No pneumoperitoneum.",
    "No free air under the diaphragm.",
    "Pneumothorax has resolved.",
    "Resolution of the previously seen pneumothorax.",
    "Endotracheal tube in satisfactory position.",
    "No acute fracture.",
    "No mediastinal widening.",
    "No pulmonary edema.",
    "No focal consolidation.",
    "No evidence of pneumonia.",
    "No large pleural effusion.",
    "Chronic interstitial edema.",
    "Lungs clear. No pneumothorax, effusion or consolidation. Heart size normal.",
])
def test_negated_resolved_or_chronic_mentions_are_not_flagged(findings):
    r = check_impression(findings, NORMAL)
    assert r.missing_critical == [], r.messages
    assert repair_impression(findings, NORMAL) == (NORMAL, [])


@pytest.mark.parametrize("findings, missing", CASES)
def test_critical_finding_stated_in_the_impression_passes(findings, missing):
    r = check_impression(findings, findings)  # the findings sentence itself as the impression
    assert r.missing_critical == [], r.messages


def test_bare_white_out_is_caught():
    for findings in ("Complete white-out of the left hemithorax.",
                     "There is complete opacification of the right hemithorax."):
        assert check_impression(findings, NORMAL).missing_critical, findings
    assert not check_impression("Complete white-out of the left hemithorax.",
                                "Left hemithorax white-out, likely large effusion.").missing_critical


# ------------------------------------------------------------------ through the generation pipeline

@pytest.fixture(scope="module")
def normal_pipeline():
    from core.generation.pipeline import C2FConfig, CoarseToFine
    from core.generation.retrieval import RetrievalIndex

    normals = [
        ("Heart size normal. Lungs are clear. No pneumothorax.", NORMAL),
        ("The heart is normal in size. The lungs are clear.", "Normal chest."),
        ("Lungs are clear bilaterally. No effusion.", NORMAL),
        ("Heart and mediastinum normal. Lungs clear.", "No acute cardiopulmonary disease."),
        ("Normal heart size. Clear lungs.", NORMAL),
        ("Cardiomediastinal silhouette is normal. Lungs are clear.", NORMAL),
    ]
    index = RetrievalIndex.build([{"uid": str(i), "findings": f, "impression": imp}
                                  for i, (f, imp) in enumerate(normals)])
    return (CoarseToFine(index, None, C2FConfig(k=5)),
            CoarseToFine(index, None, C2FConfig(k=5, repair=False)))


@pytest.mark.parametrize("style", ["default", "brief", "bullets", "comprehensive"])
def test_pipeline_adds_critical_findings_that_retrieval_missed(normal_pipeline, style):
    c2f, _ = normal_pipeline
    reports = [{"uid": "q1", "findings": "Heart size normal. Large right pneumothorax. Lungs otherwise clear."},
               {"uid": "q2", "findings": "Heart size normal. Free air under the right hemidiaphragm."},
               {"uid": "q3", "findings": COMBINED[0][0]}]
    outs = c2f.generate(reports, style=style)
    for r, o, want in zip(reports, outs, [("Pneumothorax",), ("Free Air",), COMBINED[0][1]]):
        assert o.flags["repaired"], (style, o.text)
        assert o.flags["missing_critical"] == [], (style, o.text, o.flags["messages"])
        body = o.text.split("\nSUPPORTING FINDINGS")[0]  # comprehensive: the impression part itself
        labels = label(body)
        for obs in want:
            assert labels.get(obs) in PRESENT, (style, obs, o.text)


def test_pipeline_without_repair_flags_for_review(normal_pipeline):
    _, no_repair = normal_pipeline
    o = no_repair.generate([{"uid": "q", "findings": "Heart size normal. Large right pneumothorax."}])[0]
    assert o.flags["repaired"] == [] and o.flags["missing_critical"] == ["Pneumothorax"]
    assert o.flags["needs_review"] and not o.flags["check_ok"]
    assert any("pneumothorax" in m for m in o.flags["messages"])
