"""Critical findings and clinical weights: what an impression must never leave out, and how much
each observation weighs when a text gets it wrong.

``CRITICAL_FINDINGS`` refines observations with qualifiers read in a window around a mention
("*large* pleural effusion", "*tension* pneumothorax"); ``WEIGHTS`` grades every observation
(critical 5, major 2, moderate 1, minor 0.5) for rewards and the consistency score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.clinical.text import normalise
from core.clinical.vocabulary import OBSERVATION_NAMES
from core.errors import ClinicalError

__all__ = [
    "CriticalFinding", "CRITICAL_FINDINGS", "CRITICAL_BY_OBSERVATION", "WEIGHT_CRITICAL",
    "WEIGHT_MAJOR", "WEIGHT_MODERATE", "WEIGHT_MINOR", "WEIGHTS", "mention_window", "qualifier_window",
    "critical_match", "criticality",
]

@dataclass(frozen=True)
class CriticalFinding:
    """A finding that must appear in the impression when the findings report it.

    Attributes:
        name: short name ("large pleural effusion").
        observation: the observation it refines.
        reason: why it is critical (one line, shown to radiologists).
        qualifier: regex that must occur near the mention (None: any positive mention).
        exclude: regex that must not occur near the mention.
        satisfied_by: other observations that cover it when present in the impression.
    """

    name: str
    observation: str
    reason: str
    qualifier: str | None = None
    exclude: str | None = None
    satisfied_by: tuple[str, ...] = ()


_BIG = r"(?:large|massive|moderate|moderate-sized|moderate-to-large|significant|sizable|substantial|increas\w+|enlarging|tension|loculated)"

CRITICAL_FINDINGS: tuple[CriticalFinding, ...] = (
    CriticalFinding(
        "tension pneumothorax", "Pneumothorax",
        "Tension physiology (mediastinal shift) is immediately life-threatening and needs decompression.",
        qualifier=r"\btension\b|\bmediastinal shift\b|\bshift of the mediastinum\b",
    ),
    CriticalFinding(
        "pneumothorax", "Pneumothorax",
        "Air in the pleural space can collapse the lung; a pneumothorax is a critical result to communicate.",
    ),
    CriticalFinding(
        "free air (pneumoperitoneum)", "Free Air",
        "Free intraperitoneal air means a perforated viscus until proven otherwise; it needs surgery review.",
    ),
    CriticalFinding(
        "large pleural effusion", "Pleural Effusion",
        "A moderate-to-large effusion can compromise ventilation and may need drainage.",
        qualifier=(
            r"\b" + _BIG + r"\b(?:[ ,-]+[\w-]+){0,3}?[ ,-]+(?:pleural )?(?:effusions?|fluid|hydrothorax)\b"
            r"|\b(?:effusions?|fluid|hydrothorax)\b (?:(?:is|are|has|have|remains?|appears?|become|been)\s)*(?:\w+ )?" + _BIG + r"\b"
            r"|\bwhite-?out\b"
        ),
        exclude=r"\b(?:no|without)\b[^.;]{0,20}\blarge\b",
    ),
    CriticalFinding(
        "hemithorax white-out", "Lung Opacity",
        "A whited-out hemithorax (massive effusion, whole-lung collapse or consolidation) needs "
        "urgent explanation and often drainage or bronchoscopy.",
        qualifier=(r"\bwhite-?out\b|\b(?:complete|total|entire|whole)\w* (?:opacif\w+|opacity) of the "
                   r"(?:right |left )?hemithorax\b|\bopacified (?:right |left )?hemithorax\b"),
        satisfied_by=("Pleural Effusion", "Atelectasis", "Consolidation"),
    ),
    CriticalFinding(
        "pulmonary edema", "Edema",
        "Pulmonary edema signals acute heart failure or fluid overload that needs treatment now.",
        exclude=r"\bchronic\b",
        satisfied_by=("Vascular Congestion",),
    ),
    CriticalFinding(
        "consolidation", "Consolidation",
        "New consolidation usually means pneumonia or aspiration and changes management.",
        satisfied_by=("Pneumonia", "Lung Opacity"),
    ),
    CriticalFinding(
        "pneumonia", "Pneumonia",
        "Pneumonia needs antibiotics; omitting it from the impression delays treatment.",
        satisfied_by=("Consolidation", "Lung Opacity"),
    ),
    CriticalFinding(
        "mediastinal widening", "Enlarged Cardiomediastinum",
        "A widened mediastinum may indicate aortic injury, dissection or a mediastinal mass.",
        qualifier=r"\bwiden\w*|\bwide\b|(?<!cardio)mediastin\w* (?:is |appears )?(?:enlarg\w+|mass)|(?<!cardio)mediastinal (?:enlargement|mass|shift)|enlarged mediastin\w*",
    ),
    CriticalFinding(
        "malpositioned tube or line", "Support Devices",
        "A malpositioned tube or line (e.g. right mainstem intubation) needs immediate repositioning.",
        qualifier=(
            r"\bmal-?posi\w+|\bmisplac\w+|\bmain ?stem\b|\b(?:too|very) (?:high|low|deep|distal|proximal)\b|\bcoiled\b|\bkinked\b"
            r"|\bshould be (?:advanced|withdrawn|retracted|repositioned|pulled back)\b|\b(?:recommend|suggest) (?:repositioning|retraction|advancing|advancement|withdrawal)\b"
            r"|\b(?:recommend\w*|suggest\w*|consider|advise\w*|needs?|requires?) (?:\w+ ){0,2}reposition\w*"
            r"|\breposition\w* (?:is |are )?(?:recommended|suggested|advised|needed|required)\b"
            r"|\bin the (?:right |left )?(?:main )?bronchus\b|\b(?:into|in|within) the (?:esophagus|hypopharynx|neck|azygos|internal jugular)\b"
            r"|\b(?:terminat\w+|project\w*|lies|lying|extends?|extending|courses?|coursing|tip) (?:is )?(?:in|within|at|over|into) the "
            r"(?:right |left )?(?:neck|right ventricle|internal jugular|azygos|esophagus|hypopharynx|pharynx)\b"
            r"|\babove the (?:thoracic inlet|clavicles?)\b|\bperforat\w+\b|\bextravascular\b"
        ),
        # a tube already put right ("has been repositioned and now terminates 4 cm above the
        # carina", "no longer coiled")
        exclude=r"\bno longer\b|\bhas been (?:repositioned|advanced|withdrawn|retracted|pulled back)\b"
                r"|\bnow (?:terminat\w+|lies|projects?|in (?:good|standard|satisfactory|appropriate))",
    ),
    CriticalFinding(
        "acute fracture", "Fracture",
        "An acute fracture needs clinical correlation and may signal trauma complications.",
        exclude=(
            r"\b(?:old|healed|healing|chronic|remote|prior|previous|known|stable|unchanged|ununited|age-indeterminate|indeterminate age"
            r"|again|redemonstrat\w*|similar|comparison|postsurgical|surgical|fixation|fixated|orif|sternotomy|wires?)\b"
        ),
    ),
    CriticalFinding(
        "mass", "Mass",
        "A mass may be malignant and needs follow-up imaging or tissue sampling.",
        satisfied_by=("Lung Lesion", "Nodule"),
    ),
)

CRITICAL_BY_OBSERVATION: dict[str, list[CriticalFinding]] = {}
for _cf in CRITICAL_FINDINGS:
    CRITICAL_BY_OBSERVATION.setdefault(_cf.observation, []).append(_cf)

WEIGHT_CRITICAL = 5.0
WEIGHT_MAJOR = 2.0
WEIGHT_MODERATE = 1.0
WEIGHT_MINOR = 0.5

# Weight of an observation when a report gets it wrong; critical findings are weighted by mention.
WEIGHTS: dict[str, float] = {
    "No Finding": WEIGHT_MODERATE,
    "Pneumothorax": WEIGHT_CRITICAL,
    "Free Air": WEIGHT_CRITICAL,
    "Edema": WEIGHT_CRITICAL,
    "Consolidation": WEIGHT_CRITICAL,
    "Pneumonia": WEIGHT_CRITICAL,
    "Mass": WEIGHT_CRITICAL,
    "Enlarged Cardiomediastinum": WEIGHT_MAJOR,
    "Cardiomegaly": WEIGHT_MAJOR,
    "Lung Opacity": WEIGHT_MAJOR,
    "Lung Lesion": WEIGHT_MAJOR,
    "Atelectasis": WEIGHT_MAJOR,
    "Pleural Effusion": WEIGHT_MAJOR,
    "Fracture": WEIGHT_MAJOR,
    "Nodule": WEIGHT_MAJOR,
    "Interstitial Disease": WEIGHT_MAJOR,
    "Vascular Congestion": WEIGHT_MAJOR,
    "Support Devices": WEIGHT_MODERATE,
    "Emphysema": WEIGHT_MODERATE,
    "Low Lung Volumes": WEIGHT_MODERATE,
    "Pleural Other": WEIGHT_MODERATE,
    "Hernia": WEIGHT_MODERATE,
    "Elevated Diaphragm": WEIGHT_MODERATE,
    "Scarring": WEIGHT_MODERATE,
    "Granuloma": WEIGHT_MINOR,
    "Degenerative Spine": WEIGHT_MINOR,
    "Scoliosis": WEIGHT_MINOR,
    "Calcification": WEIGHT_MINOR,
    "Tortuous Aorta": WEIGHT_MINOR,
}


def mention_window(clause: str, start: int, end: int) -> str:
    """The words around a mention (45 characters before, 30 after) where qualifiers are read."""
    return clause[max(0, start - 45): end + 30]


_SHIFT = re.compile(r"\bmediastinal shift\b|\bshift of the mediastinum\b")
_PACING = re.compile(r"\b(?:pace ?makers?|pacers?|pacing|aicd|icd|defibrillator|generator|leads?)\b(?! to)")
_TUBE_OR_LINE = re.compile(r"\b(?:tubes?|lines?|catheters?|picc|ett|ngt|ogt|dobhoff|drains?|pigtail|trach\w*)\b")


def qualifier_window(observation: str, clause: str, start: int, end: int) -> str:
    """Where a mention's critical qualifiers are read: :func:`mention_window`, but the whole
    clause for a tube or line, whose position comes well after its name ("Right PICC tip
    projects over the right internal jugular vein") - unless the clause is only about a
    pacemaker or defibrillator, whose lead belongs in the right ventricle (IU uids 3353, 3838) -
    and for a pneumothorax beside a mediastinal shift (tension)."""
    if observation == "Pneumothorax" and _SHIFT.search(clause):
        return clause  # "Large right pneumothorax with leftward mediastinal shift": tension
    if observation != "Support Devices":
        return mention_window(clause, start, end)
    if _PACING.search(clause) and not _TUBE_OR_LINE.search(clause):
        return mention_window(clause, start, end)
    return clause


def critical_match(observation: str, window: str) -> CriticalFinding | None:
    """The first critical finding of ``observation`` whose qualifier (and no exclusion) is in ``window``."""
    for cf in CRITICAL_BY_OBSERVATION.get(observation, ()):
        if cf.qualifier and not re.search(cf.qualifier, window):
            continue
        if cf.exclude and re.search(cf.exclude, window):
            continue
        return cf
    return None


def criticality(observation: str, context: str | None = None) -> float:
    """Weight of an observation for rewards and consistency (critical 5, major 2, moderate 1, minor 0.5).

    Args:
        observation: an observation name from ``OBSERVATION_NAMES``.
        context: optional words around a mention ("large right pleural effusion"); when they match a
            ``CRITICAL_FINDINGS`` qualifier the weight is raised to 5.

    Returns:
        The weight as a float.

    Raises:
        ClinicalError: the observation is unknown.
    """
    if observation not in WEIGHTS:
        raise ClinicalError(f"unknown observation {observation!r}; expected one of {', '.join(OBSERVATION_NAMES)}")
    if context is not None and critical_match(observation, normalise(context)):
        return WEIGHT_CRITICAL
    return WEIGHTS[observation]

