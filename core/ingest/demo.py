"""Synthetic chest X-ray reports for the demo database and for tests.

The demo data is written by the project itself (no real patient text is shipped). Reports are
assembled from sentence templates so that findings and impression agree, with a realistic mix:
about half normal, the rest with one to three abnormalities, a few of them critical.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NORMAL_FINDINGS = [
    "The heart is normal in size.",
    "The cardiomediastinal silhouette is within normal limits.",
    "The lungs are clear.",
    "There is no focal airspace consolidation.",
    "No pleural effusion or pneumothorax.",
    "No acute osseous abnormality.",
    "Pulmonary vascularity is within normal limits.",
]
NORMAL_IMPRESSIONS = [
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
    "No active disease.",
]
# (finding sentence, impression phrase, replaces-normal-sentence index or None)
ABNORMAL = [
    ("The heart is mildly enlarged.", "Mild cardiomegaly.", 0),
    ("There is a small right pleural effusion.", "Small right pleural effusion.", 4),
    ("There is a large left pleural effusion.", "Large left pleural effusion.", 4),
    ("There is a small right apical pneumothorax.", "Small right apical pneumothorax.", 4),
    ("There is a moderate left pneumothorax.", "Moderate left pneumothorax.", 4),
    ("There is focal consolidation in the right lower lobe.",
     "Right lower lobe consolidation, concerning for pneumonia.", 3),
    ("Streaky opacities at the left base likely represent atelectasis.",
     "Left basilar atelectasis.", 2),
    ("There is a calcified granuloma in the right upper lobe.",
     "Calcified right upper lobe granuloma.", None),
    ("There is a 1.5 cm nodule in the left upper lobe.",
     "Left upper lobe nodule; recommend CT for further evaluation.", 2),
    ("Degenerative changes of the thoracic spine.", "Degenerative changes of the spine.", 5),
    ("Diffuse interstitial opacities with vascular congestion.",
     "Pulmonary edema.", 6),
    ("The lungs are hyperexpanded with flattened diaphragms.",
     "Hyperexpanded lungs consistent with emphysema.", 2),
    ("Free air is seen beneath the right hemidiaphragm.",
     "Free intraperitoneal air; findings communicated to the referring physician.", None),
    ("A right-sided central venous catheter terminates in the superior vena cava.",
     "Right central venous catheter in the superior vena cava.", None),
]
INDICATIONS = ["Cough.", "Shortness of breath.", "Chest pain.", "Fever.", "Preoperative exam.",
               "Follow-up pneumonia.", "Trauma.", "Positive TB test."]
COMPARISONS = ["None.", "Prior chest radiograph from last year.", "None available.",
               "Chest x-ray from 3 months ago."]


@dataclass(frozen=True)
class DemoReport:
    """Same fields as ``core.ingest.common.ReportRecord`` so the store can import it."""

    source: str
    external_id: str
    findings: str
    impression: str
    indication: str | None
    comparison: str | None
    author: str | None = None
    row: int | None = None
    extra: dict = field(default_factory=dict)


def synthetic_reports(n: int, seed: int = 0, source: str = "demo") -> list[DemoReport]:
    """Make ``n`` consistent synthetic reports, deterministic for a seed.

    >>> r = synthetic_reports(2, seed=1)[0]; bool(r.findings and r.impression)
    True
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = list(NORMAL_FINDINGS)
        impressions: list[str] = []
        k = 0 if rng.random() < 0.5 else rng.choice([1, 1, 2, 3])
        for finding, impression, replaces in rng.sample(ABNORMAL, k):
            if replaces is not None and sentences[replaces] in NORMAL_FINDINGS:
                sentences[replaces] = finding
            else:
                sentences.append(finding)
            impressions.append(impression)
        rng.shuffle(sentences)
        if impressions:
            text = " ".join(f"{j}. {s}" for j, s in enumerate(impressions, 1)) \
                if len(impressions) > 1 else impressions[0]
        else:
            text = rng.choice(NORMAL_IMPRESSIONS)
        out.append(DemoReport(source=source, external_id=f"demo-{seed}-{i:05d}",
                              findings=" ".join(sentences), impression=text,
                              indication=rng.choice(INDICATIONS),
                              comparison=rng.choice(COMPARISONS),
                              author=f"template-{rng.randint(1, 3)}"))
    return out
