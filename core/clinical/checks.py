"""Rule-based chest X-ray report labeler and findings/impression consistency checks.

Pure Python (``re`` + ``dataclasses``); importing this module is instant.

The labeler follows the CheXpert/NegEx recipe:

1. split a report into sentences and each sentence into clauses (``;``, "but", "however",
   "although", "which", "except", ", there is", ...);
2. find *mentions* of each observation with hand-written regexes (``OBSERVATIONS``);
3. classify each mention from the words around it in the same clause:
   - negation before the mention ("no", "not", "without", "negative for", "free of",
     "clear of", "absence of", "resolution of", "resolved", "removal of", "removed", "non-"),
     after it ("is not seen", "has resolved", "has been removed", "is absent"),
     or inside it ("heart is not enlarged");
   - uncertainty before it ("may", "possible", "likely", "suggest", "questionable",
     "suspicious for", "versus", ...) or after it ("cannot be excluded", "versus", "?");
   - the nearest trigger before the mention wins ("likely no pneumonia" is negative);
   - pseudo-negations ("no change in the effusion", "no interval change") are ignored;
4. add *normal statements* ("heart size is normal", "lungs are clear", "costophrenic angles
   are sharp") as NEGATIVE mentions;
5. aggregate per observation: any POSITIVE -> POSITIVE, else any UNCERTAIN -> UNCERTAIN,
   else NEGATIVE; an observation never mentioned is absent from the result.

``No Finding`` is POSITIVE when the report has a global normal statement ("No acute
cardiopulmonary abnormality", "Normal chest x-ray") or at least one negated observation, and
no other observation except Support Devices is POSITIVE or UNCERTAIN (CheXpert's rule).

IU X-ray de-identification marks ("XXXX") are kept as an inert word, except "x-XXXX" which is
read as "x-ray".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from enum import Enum

from core.errors import ImpressionistError
from core.errors import ClinicalError  # noqa: F401 (defined in core.errors)

__all__ = [
    "Label",
    "ObservationSpec",
    "Mention",
    "CriticalFinding",
    "CheckResult",
    "ClinicalError",
    "OBSERVATIONS",
    "OBSERVATION_NAMES",
    "CHEXPERT_OBSERVATIONS",
    "CRITICAL_FINDINGS",
    "WEIGHTS",
    "RELATED",
    "extract",
    "label",
    "is_normal_statement",
    "criticality",
    "check_impression",
    "repair_impression",
    "consistency",
    "TYPO_TERMS",
    "correct_word",
    "correct_typos",
    "MAJOR_FINDINGS",
    "Verification",
    "major_findings",
    "verify",
]


class Label(str, Enum):
    """How an observation is mentioned; an observation that is not mentioned is absent."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"


PRESENT = (Label.POSITIVE, Label.UNCERTAIN)

# --------------------------------------------------------------------------------------------
# Observation vocabulary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationSpec:
    """Regexes (lower-case text) that recognise one observation.

    Attributes:
        name: observation name (CheXpert spelling for the 14 CheXpert labels).
        patterns: mentions; each match is classified positive/negative/uncertain.
        normals: statements that mean the observation is absent (yield NEGATIVE).
        negonly: mentions that only count when negated ("no acute bony abnormality").
        requires: the sentence must match this regex for ``patterns`` to count.
    """

    name: str
    patterns: tuple[str, ...]
    normals: tuple[str, ...] = ()
    negonly: tuple[str, ...] = ()
    requires: str | None = None


_HEART = r"(?:heart|cardiac(?: silhouette| shadow| size| contours?)?|heart size|heart shadow)"
_ENLARGED = r"(?:enlarged|enlargement|large|increased in size|prominent|cardiomegaly)"
_NORMAL = r"(?:normal|within normal limits|unremarkable|upper limits? of normal|not enlarged)"
_GAP = r"[^;]{0,45}?"
_LUNGS_CLEAR = (
    r"\b(?:lungs?|lung fields?|lung parenchyma)\b(?:(?!otherwise|except|but)[^;]){0,35}?\bclear\b(?! of)",
    r"\bclear lungs?\b",
    r"\blungs? (?:are |appear |remain )?(?:normal|unremarkable)\b",
)

OBSERVATIONS: tuple[ObservationSpec, ...] = (
    ObservationSpec("No Finding", ()),
    ObservationSpec(
        "Enlarged Cardiomediastinum",
        (
            r"\b(?:cardio)?mediastinal (?:silhouette|contours?|shadow)\b[^;]{0,25}?\b(?:enlarged|widen\w*|wide|prominent|increased)\b",
            r"\b(?:enlarged|widened|wide|prominent|increased) (?:cardio)?mediastin\w*",
            r"\bmediastin\w* (?:is |appears )?(?:widened|enlarged|wide)\b",
            r"\b(?:widening|enlargement) of the (?:cardio)?mediastin\w*",
            r"\bmediastinal (?:widening|enlargement|mass)\b",
        ),
        normals=(
            r"\b(?:cardio)?mediastin\w*" + _GAP + r"\b(?:normal|within normal limits|unremarkable|not (?:widened|enlarged))\b",
            r"\b(?:normal|nonenlarged|unremarkable) (?:cardio)?mediastin\w*",
        ),
    ),
    ObservationSpec(
        "Cardiomegaly",
        (
            r"\bcardiomegaly\b",
            r"\bcardiac enlargement\b",
            r"\benlargement of the (?:cardiac|heart)\b",
            r"\b(?:enlarged|large|prominent|increased) (?:heart|cardiac (?:silhouette|shadow|size))\b",
            r"\b" + _HEART + r"\b[^;,]{0,30}?\b(?:enlarged|large|enlargement|increased)\b",
            r"\bcardiomediastinal silhouette[^;,]{0,25}?\benlarged\b",
            r"\benlarged cardiomediastinal silhouette\b",
        ),
        normals=(
            r"\b" + _HEART + r"\b" + _GAP + r"\b" + _NORMAL + r"\b",
            r"\b(?:normal|nonenlarged|non-enlarged) (?:heart|cardiac|cardiomediastinal)\b",
            r"\bcardiomediastinal (?:silhouette|contours?)\b" + _GAP + r"\b(?:normal|within normal limits|unremarkable)\b",
            r"\bheart\b[^;]{0,20}\bnonenlarged\b",
        ),
    ),
    ObservationSpec(
        "Lung Opacity",
        (
            r"\bopaci(?:ty|ties|fication|fied)\b",
            r"\binfiltrat(?:e|es|ion|ive)\b",
            r"\bair ?space (?:disease|process|opacit\w+|consolidation|filling)\b",
            r"\b(?:alveolar|parenchymal|airspace) (?:opacit\w+|infiltrat\w+|disease)\b",
            r"(?<!bone )(?<!soft tissue )(?<!mineral )\bdensit(?:y|ies)\b",
            r"\bhaz(?:y|iness)\b",
            r"\bground[- ]glass\b",
            r"\bwhite-?out\b",
        ),
        normals=_LUNGS_CLEAR,
    ),
    ObservationSpec(
        "Lung Lesion",
        (
            r"\b(?:lesions?|mass(?:es)?|nodul(?:e|es|ar|arity)|neoplasms?|tumou?rs?|malignan\w+|metasta\w+|cavit(?:y|ies|ary|ation))\b",
        ),
        normals=(r"\bno (?:suspicious |focal )?(?:pulmonary |lung )?(?:nodules? or masses|masses or nodules)\b",),
    ),
    ObservationSpec(
        "Edema",
        (
            r"(?<!soft tissue )(?<!subcutaneous )(?<!tissue )(?<!laryngeal )(?<!airway )(?<!pedal )(?<!facial )\bedema\b",
            r"\bfluid overload\b",
            r"\bchf\b",
            r"\b(?:congestive )?(?:heart|cardiac) failure\b",
            r"\bkerley b?\b",
        ),
        normals=_LUNGS_CLEAR,
    ),
    ObservationSpec(
        "Consolidation",
        (r"\bconsolidat(?:ion|ions|ed|ive)\b",),
        normals=_LUNGS_CLEAR,
    ),
    ObservationSpec(
        "Pneumonia",
        (
            r"\b(?:broncho)?pneumonias?\b",
            r"\bpneumonitis\b",
            r"(?<!granulomatous )(?<!viral )(?<!histoplasmosis )(?<!prior )(?<!old )\binfecti(?:on|ous|ve)\b(?! (?:granulom\w+|sequela\w*))",
            r"\baspiration\b",
        ),
        normals=_LUNGS_CLEAR,
    ),
    ObservationSpec(
        "Atelectasis",
        (
            r"\batelecta(?:sis|ses|tic)\b",
            r"\b(?:lobar|lobe|segmental) collapse\b",
            r"\bcollapse of the (?:right |left )?(?:upper |middle |lower )?(?:lobe|lung)\b",
        ),
    ),
    ObservationSpec(
        "Pneumothorax",
        (r"\b(?:hydro|hemo|haemo)?pneumothora(?:x|ces)\b", r"\bptx\b", r"\bpleural line\b"),
    ),
    ObservationSpec(
        "Pleural Effusion",
        (
            r"(?<!pericardial )\beffusions?\b",
            r"\bpleural fluid\b",
            r"\bhydrothorax\b",
            r"\bfluid (?:collection )?(?:in|within|tracking into|along) the (?:\w+ )?(?:fissure|pleural space)\b",
            r"\b(?:fissural|subpulmonic|loculated) fluid\b",
        ),
        normals=(
            r"\bcostophrenic (?:angles?|sulci|sulcus|recess\w*|xxxx)\b" + _GAP + r"\b(?:sharp\w*|clear|preserved|normal)\b",
            r"\bsharp costophrenic\b",
        ),
    ),
    ObservationSpec(
        "Pleural Other",
        (
            r"\bpleural (?:thickening|plaques?|calcifications?|scar\w*|fibrosis|reaction)\b",
            r"\bpleural[- ]parenchymal (?:scar\w*|thickening|opacit\w+)\b",
            r"\b(?:apical|biapical|pleural) (?:cap|caps)\b",
            r"\bthickening of the (?:\w+ )?pleura\b",
            r"\bfibrothorax\b",
            r"\bblunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ )?(?:\w+ )?costophrenic\b",
            r"\bcostophrenic (?:angles? |sulcus |xxxx )?(?:xxxx )?blunting\b",
            r"\bcostophrenic (?:angles? |sulcus |xxxx )?(?:are |is )?blunted\b",
        ),
    ),
    ObservationSpec(
        "Fracture",
        (r"(?<!catheter )(?<!lead )(?<!wire )(?<!line )\bfractur\w*\b", r"\bfx\b"),
        normals=(
            r"\b(?:osseous|bony|skeletal)(?: structures?| thorax| skeleton)?\b" + _GAP + r"\b(?:intact|normal|unremarkable)\b",
        ),
        negonly=(
            r"\b(?:acute )?(?:osseous|bony|skeletal|bone) (?:abnormalit\w+|injur\w+|findings?|lesions?|process)\b",
        ),
    ),
    ObservationSpec(
        "Support Devices",
        (
            r"\bcatheters?\b",
            r"\bpicc\b",
            r"\b(?:central|venous|midline|jugular|subclavian|arterial) (?:venous )?(?:line|catheter)s?\b",
            r"\bport(?:-a-cath|acath)?\b(?! of)",
            r"\bpace ?makers?\b",
            r"\bpacers?\b",
            r"\b(?:aicd|icd|defibrillator|loop recorder)\b",
            r"\b(?:endotracheal|et|ng|og|nasogastric|orogastric|enteric|feeding|chest|tracheostomy|dobhoff) tubes?\b",
            r"\btracheostomy\b",
            r"\bdrains?\b",
            r"\bstents?\b",
            r"\b(?:sternotomy|sternal|cerclage|surgical) (?:wires?|sutures?)\b",
            r"\bsuture material\b",
            r"\b(?:stimulator|occluder|embolization coils?|coils|vertebroplasty|kyphoplasty)\b",
            r"\btip (?:\w+ ){0,3}(?:svc|superior vena cava|cavoatrial|caval ?atrial|atriocaval|right atrium)\b",
            r"\b(?:gastrostomy|nephrostomy|enteric suction) (?:tube|catheter)s?\b",
            r"\b(?:surgical |vascular |cholecystectomy |mediastinal )?clips?\b",
            r"\bstaples?\b",
            r"\b(?:orthopedic |spinal |fixation )?hardware\b",
            r"\b(?:fixation|fusion) (?:rods?|screws?|plates?|hardware)\b",
            r"\bprosthe(?:sis|ses|tic)\b",
            r"\b(?:valve replacement|prosthetic valve|mechanical valve|annuloplasty)\b",
            r"\b(?:pacemaker |pacer |cardiac )?leads?\b(?! to)",
            r"\bgenerator\b",
            r"\bswan[- ]ganz\b",
            r"\b(?:medical|electronic|monitoring|cardiac|implanted) devices?\b",
            r"\bsupport devices?\b",
            r"\b(?:graft|surgical) markers?\b",
        ),
    ),
    # ---------------------------------------------------------------- IU X-ray extras
    ObservationSpec(
        "Granuloma",
        (
            r"\bgranulom(?:a|as|ata|atous)\b",
            r"\bcalcified (?:pulmonary |lung |parenchymal |hilar )?nodul\w*\b",
            r"\bhistoplasm\w*\b",
        ),
    ),
    ObservationSpec(
        "Nodule",
        (
            r"\bnodul(?:e|es|ar|arity)\b",
            r"\b(?:nodular|round|rounded) (?:densit\w+|opacit\w+|lucenc\w+)\b",
        ),
        normals=(r"\bno (?:suspicious |focal )?(?:pulmonary |lung )?(?:nodules? or masses|masses or nodules)\b",),
    ),
    ObservationSpec(
        "Mass",
        (r"\bmass(?:es)?\b(?! effect)", r"\b(?:neoplasm|tumou?r|carcinoma)s?\b"),
    ),
    ObservationSpec(
        "Emphysema",
        (
            r"(?<!subcutaneous )(?<!soft tissue )\bemphysema(?:tous)?\b",
            r"\bcopd\b",
            r"\bchronic obstructive\b",
            r"\bhyper ?(?:inflat\w+|expan\w+|aerat\w+|lucen\w+|disten\w+)\b",
            r"\bhyper-(?:inflat\w+|expan\w+|aerat\w+|lucen\w+)\b",
            r"\bover ?(?:inflat\w+|expan\w+|aerat\w+)\b",
            r"\bbull(?:a|ae|ous)\b",
            r"\bflatten\w* (?:of )?(?:the )?(?:\w+ )?(?:hemi)?diaphragm\w*",
            r"\b(?:hemi)?diaphragm\w* (?:are |is |appear )?(?:\w+ )?flatten\w*",
            r"\bincreased (?:ap|anteroposterior|retrosternal) (?:diameter|clear space|airspace)\b",
        ),
    ),
    ObservationSpec(
        "Low Lung Volumes",
        (
            r"\b(?:low|decreased|reduced|diminished|small) lung volumes?\b",
            r"\blung volumes? (?:are |is |remain )?(?:\w+ )?(?:low|decreased|reduced|diminished|small)\b",
            r"\bhypo ?(?:inflat\w+|expan\w+|aerat\w+|ventilat\w+)\b",
            r"\bunder ?(?:inflat\w+|expan\w+)\b",
            r"\b(?:poor|shallow|suboptimal|low) (?:inspiration|inspiratory effort|inspiratory)\b",
            r"\bpoorly (?:inflated|expanded)\b",
            r"\bbronchovascular crowding\b",
        ),
        normals=(
            r"\b(?:normal|adequate) lung volumes?\b",
            r"\blung volumes? (?:are |is )?(?:normal|adequate|within normal limits)\b",
            r"\blungs? (?:are |is )?(?:well|normally) (?:expanded|inflated|aerated)\b",
        ),
    ),
    ObservationSpec("Scoliosis", (r"\b(?:\w+)?scolio\w*\b", r"\b(?:dextro|levo)(?:convex|curvature)\w*\b", r"\bcurvature of the (?:\w+ )?spine\b")),
    ObservationSpec(
        "Degenerative Spine",
        (
            r"\bdegenerat\w+\b",
            r"\bspondyl(?:osis|otic|oarthropathy)\b",
            r"\bosteophyt\w+\b",
            r"\b(?:djd|dish)\b",
            r"\bdiffuse idiopathic skeletal hyperostosis\b",
            r"\b(?:osteo)?arthriti\w+\b",
            r"\barthropath\w+\b",
            r"\bdisc(?:s)? space (?:narrowing|loss)\b",
            r"\bspurring\b",
        ),
        requires=r"\b(?:spine|spinal|vertebra\w*|thoracic|lumbar|cervical|thoracolumbar|t-spine|endplates?|discs?|disk|spondyl\w*|dish|djd)\b",
    ),
    ObservationSpec(
        "Calcification",
        (
            r"\bcalcifi(?:ed|cation|cations)\b(?! (?:\w+ ){0,3}granulom\w+)",
            r"\batheroscler\w+\b",
            r"\bcalcinosis\b",
        ),
    ),
    ObservationSpec(
        "Tortuous Aorta",
        (r"\btortu\w+\b", r"\bectatic\b", r"\bectasia\b", r"\bunfold\w+\b", r"\belongat\w+\b"),
        requires=r"\baort\w*\b",
    ),
    ObservationSpec("Hernia", (r"\bhernia\w*\b",)),
    ObservationSpec(
        "Free Air",
        (
            r"\bpneumoperitoneum\b",
            r"\bfree (?:intraperitoneal |subdiaphragmatic |abdominal )?air\b",
            r"\bsubdiaphragmatic (?:free )?air\b",
            r"\bair (?:\w+ )?(?:beneath|under|below) the (?:right |left )?(?:hemi)?diaphragm\w*",
        ),
    ),
    ObservationSpec(
        "Interstitial Disease",
        (
            r"\binterstitial\b(?! edema)(?! pulmonary edema)",
            r"\bfibros\w+\b",
            r"\bfibrotic\b",
            r"\breticula\w+\b",
            r"\bhoneycomb\w*\b",
            r"\b(?:coarse|coarsened|increased|prominent) (?:\w+ )?(?:lung |pulmonary |bronchovascular )?markings\b",
            r"\bbronchiectasis\b",
        ),
    ),
    ObservationSpec(
        "Vascular Congestion",
        (
            r"(?<!nasal )(?<!sinus )\bcongest\w+\b(?! (?:heart|cardiac) failure)",
            r"\bcephaliz\w+\b",
            r"\bvascular (?:prominence|redistribution)\b",
            r"\b(?:pulmonary )?(?:vascularity|vasculature|vessels|vascular markings?) (?:is |are |appears? )?(?:\w+ )?(?:prominent|engorged|increased|indistinct|accentuated|congested|cephalized)\b",
            r"\b(?:prominent|engorged|increased|indistinct|accentuated|congested) (?:central )?(?:pulmonary )?(?:vascularity|vasculature|vessels|vascular markings?)\b",
            r"\bprominence of the (?:central )?(?:pulmonary )?(?:vascularity|vasculature|vessels|vascular markings?)\b",
            r"\b(?:venous|vascular) (?:hypertension|engorgement)\b",
        ),
        normals=(
            r"\b(?:pulmonary )?(?:vascularity|vasculature|vessels|vascular markings?)\b" + _GAP + r"\b(?:normal|within normal limits|unremarkable)\b",
            r"\bnormal (?:pulmonary )?(?:vascularity|vasculature)\b",
        ),
    ),
    ObservationSpec("Scarring", (r"\bscar(?:s|ring|red)?\b", r"\bcicatri\w+\b", r"\bfibrotic (?:changes|scarring|strand\w*)\b")),
    ObservationSpec(
        "Elevated Diaphragm",
        (
            r"\belevat(?:ed|ion) (?:of )?(?:the )?(?:right |left )?(?:hemi)?-?diaphragm\w*",
            r"\b(?:hemi)?-?diaphragm\w* (?:is |are |remains |appears )?(?:\w+ )?elevated\b",
            r"\beventration\b",
            r"\belevated (?:right |left )?(?:hemi)?diaphragm",
        ),
    ),
)

OBSERVATION_NAMES: tuple[str, ...] = tuple(o.name for o in OBSERVATIONS)
CHEXPERT_OBSERVATIONS: tuple[str, ...] = OBSERVATION_NAMES[:14]
_SPEC = {o.name: o for o in OBSERVATIONS}

# Observations that describe overlapping radiographic appearances: an impression that names one
# is supported by findings that name another, and a missing critical finding is covered by them.
RELATED: dict[str, frozenset[str]] = {
    "Lung Opacity": frozenset({"Consolidation", "Pneumonia", "Atelectasis", "Edema", "Interstitial Disease", "Scarring", "Nodule", "Lung Lesion", "Mass", "Granuloma"}),
    "Consolidation": frozenset({"Lung Opacity", "Pneumonia"}),
    "Pneumonia": frozenset({"Lung Opacity", "Consolidation"}),
    "Atelectasis": frozenset({"Lung Opacity", "Scarring", "Low Lung Volumes"}),
    "Edema": frozenset({"Vascular Congestion", "Interstitial Disease", "Lung Opacity"}),
    "Vascular Congestion": frozenset({"Edema"}),
    "Interstitial Disease": frozenset({"Lung Opacity", "Scarring", "Edema", "Emphysema"}),
    "Scarring": frozenset({"Lung Opacity", "Interstitial Disease", "Atelectasis", "Granuloma", "Pleural Other"}),
    "Lung Lesion": frozenset({"Nodule", "Mass", "Granuloma", "Lung Opacity"}),
    "Nodule": frozenset({"Lung Lesion", "Granuloma", "Lung Opacity", "Mass"}),
    "Mass": frozenset({"Lung Lesion", "Nodule"}),
    "Granuloma": frozenset({"Nodule", "Calcification", "Lung Lesion"}),
    "Calcification": frozenset({"Granuloma"}),
    "Cardiomegaly": frozenset({"Enlarged Cardiomediastinum"}),
    "Enlarged Cardiomediastinum": frozenset({"Cardiomegaly"}),
    "Pleural Effusion": frozenset({"Pleural Other"}),
    "Pleural Other": frozenset({"Pleural Effusion", "Scarring"}),
    "Emphysema": frozenset({"Interstitial Disease"}),
    "Degenerative Spine": frozenset({"Scoliosis"}),
    "Scoliosis": frozenset({"Degenerative Spine"}),
    "Elevated Diaphragm": frozenset({"Hernia", "Low Lung Volumes"}),
    "Hernia": frozenset({"Elevated Diaphragm"}),
}

# Global normal statements -> No Finding.
_NORMAL_STATEMENTS = re.compile(
    r"\bno (?:evidence of |radiographic evidence of |signs? of |xxxx of |definite )?(?:acute|active|significant|acute or active)"
    r" (?:(?:cardiopulmonary|cardiothoracic|intrathoracic|pulmonary|chest|thoracic|radiographic|lung|cardiac)"
    r"(?: or (?:cardiopulmonary|pulmonary|osseous|intrathoracic))? )?"
    r"(?:abnormalit\w+|disease|process\w*|findings?|pathology|changes?|infiltrates?|abnormal findings?|diseases?)\b"
    r"|\bno (?:cardiopulmonary|intrathoracic) (?:abnormalit\w+|disease|process|findings?)\b"
    r"|\bno (?:acute )?(?:cardiopulmonary|intrathoracic) (?:abnormalit\w+|disease|process|findings?)\b"
    r"|\bnegative for acute (?:\w+ )?(?:disease|process|abnormalit\w+|findings?)\b"
    r"|\b(?:normal|negative|unremarkable|clear) (?:\w+ )?(?:chest|study|exam\w*|radiograph\w*|x-ray|cxr|films?)\b"
    r"|\b(?:chest|study|exam\w*|radiograph\w*|x-ray|cxr)\b(?: is| appears)? (?:normal|negative|unremarkable|within normal limits)\b"
    r"|^\W*(?:normal|negative|unremarkable)\W*$"
    r"|\bno (?:active|acute) (?:disease|process)\b"
    r"|\bheart and lungs (?:are |appear )?(?:normal|within normal limits|unremarkable)\b"
    # added 2026-12-02 from the train split only (the normal impressions the rules above missed):
    # "no acute radiographic cardiopulmonary process" (59 train impressions), "no acute or active
    # cardiac, pulmonary or pleural disease" (15), "no acute preoperative findings" (5), ...
    r"|\bno (?:evidence (?:of|for) )?(?:acute|active)(?: or (?:acute|active))? "
    r"(?:(?:radiographic|visualized|preoperative|traumatic|parenchymal) )?"
    r"(?:(?:cardiopulmonary|cardiac, pulmonary or pleural|pulmonary|thoracic|intrathoracic) )?"
    r"(?:abnormalit\w+|disease|process\w*|findings?|injur\w+)\b"
    r"|\bno evidence (?:of|for) (?:cardiopulmonary|thoracic) injur\w+"
    r"|\bnegative acute cardiopulmonary abnormalit\w+"
)

# --------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------

# Phrases that look like negation but are not ("no change in the effusion").
_PSEUDO = re.compile(
    r"\bno (?:significant |appreciable |substantial |definite |interval |significant interval |radiographic |xxxx )*change\w*\b"
    r"|\bnot (?:significantly |substantially )?changed\b|\bwithout (?:significant |interval )?change\b"
    r"|\bno (?:significant |interval )?(?:increase|decrease|progression|improvement)\b|\bnot only\b|\bno longer\b(?= (?:than|as))"
)
# Uncertainty phrases that contain a negation word; checked before negation.
_UNC_NEG = re.compile(
    r"\b(?:cannot|can ?not|can't|could not|difficult to|hard to|not) (?:be )?(?:entirely |completely |definitely |totally )?"
    r"(?:exclude[sd]?|ruled? out)\b"
)
_PRE_NEG = re.compile(
    r"\b(?:no|not|non|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|removal of|removed"
    r"|never|nor|neither|rather than|ruled out|no longer|clearing of)\b"
)
_PRE_UNC = re.compile(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|unlikely|questionabl[ey]|question of|questioned|suspicious (?:for|of)|suspect\w*|suspicion"
    r"|concern for|concerning|worrisome|question|concerns? (?:is|are) raised|(?<!to )suggest\w*|equivocal|differential|consider\w*|versus|vs|rule out|r/o|presum\w+|perhaps|uncertain|indeterminate"
    r"|(?:cannot|can ?not|can't) (?:be )?(?:entirely )?(?:exclude|excluded|ruled? out)|not (?:be )?(?:entirely )?excluded|cannot exclude"
    r"|compatible with|representing|represents?|reflect\w*|borderline|ddx)\b"
)
_POST_NEG = re.compile(
    r"^(?:[^,;]{0,40}?)\b(?:is |are |was |were |has been |have been |being )?(?:not|no longer)\b"
    r"(?: \w+ly)? (?:seen|identified|present|visualized|visible|demonstrated|appreciated|evident|noted|detected|apparent|definite\w*|shown|suggested|observed)\b"
    r"|^(?:[^,;]{0,30}?)\b(?:has|have)(?: since| now)? (?:resolved|cleared|been removed|been resolved|disappeared)\b"
    r"|^(?:[^,;]{0,20}?)\b(?:resolved|removed|absent)\b"
    r"|^\s*(?:\w+\s){0,3}?(?:is|are|appears?|remains?)\s+(?:within (?:the )?(?:normal )?limits(?: of normal)?|normal)\b"
    r"|^\s*within (?:the )?(?:normal )?limits\b"
)
_POST_UNC = re.compile(
    r"^(?:[^,;]{0,40}?)\b(?:versus|vs)\b"
    r"|^(?:[^;]{0,60}?)\b(?:cannot|can ?not|can't|could not|not) (?:be )?(?:entirely |completely )?(?:excluded|exclude|ruled out)\b"
    r"|^(?:[^,;]{0,20}?)\b(?:is|are) (?:possible|suspected|questioned|not excluded|likely|probable|favored|considered|uncertain)\b"
    r"|^[^,;]{0,20}\?"
)

# Hypothetical context: the mention is not a statement about this image ("to evaluate for mass").
_HYPO = re.compile(
    r"\b(?:evaluat\w+ (?:for|of)|to evaluate|assess\w* (?:for|of)|to (?:exclude|identify|assess|rule out|document|detect)"
    r"|rule-out|(?<!cannot )(?<!not )(?<!can't )exclude an?|history of|risk factors? for|if (?:the )?(?:patient|clinically|there)|in a patient with"
    r"|correlat\w+ (?:clinically )?(?:with|for)|please note|if (?:further|there is)|follow-?up (?:for|of)|screen\w* for|recommend\w*|would be helpful)\b"
)
_CLAUSE_SPLIT = re.compile(
    r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhich\b|\bwhereas\b|\bexcept\b|\baside from\b|\bapart from\b"
    r"|\bwith the exception of\b|\bother than\b|\bsecondary to\b|\bdue to\b"
    r"|,(?=\s*(?:there (?:is|are|has|have)|the |stable |persistent |again |unchanged |otherwise ))"
    r"|\band (?=there (?:is|are)\b)",
    re.IGNORECASE,
)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[a-z]{2}\.)(?=[A-Z])|\n+|(?<=\s)(?=\d{1,2}\.\s)")
_ENUM = re.compile(r"^\s*\d{1,2}[.)]\s*,?\s*")


@dataclass(frozen=True)
class Mention:
    """One recognised mention of an observation.

    Attributes:
        observation: observation name.
        label: POSITIVE / NEGATIVE / UNCERTAIN.
        text: the matched words (normalised lower-case).
        clause: the clause (original spelling) that contains it.
        sentence: the sentence (original spelling) that contains it.
        start/end: span of ``text`` within the normalised clause.
        critical: the mention matches one of ``CRITICAL_FINDINGS`` (and is not negated).
        source: "mention", "normal" (a normal statement) or "negonly".
        qualified: a negation limited by a qualifier or a side ("no *focal* consolidation",
            "no *acute* bony abnormality", "the *right* lung is clear"); such negatives do not
            count as contradictions of a positive finding.
    """

    observation: str
    label: Label
    text: str
    clause: str
    sentence: str
    start: int
    end: int
    critical: bool = False
    source: str = "mention"
    qualified: bool = False


# --------------------------------------------------------------------------------------------
# Typos in the critical vocabulary
# --------------------------------------------------------------------------------------------

# Words whose misspelling would hide a finding that matters ("pneumothroax", "pnuemothorax",
# "efusion"). A word of a report that is not one of them, not a known word, and within one edit
# (two for words of 10+ letters; a transposition is one edit) of exactly one of them is read as it.
TYPO_TERMS: tuple[str, ...] = (
    "pneumothorax", "pneumothoraces", "pneumoperitoneum", "effusion", "effusions", "consolidation",
    "consolidations", "consolidative", "edema", "cardiomegaly", "pneumonia", "atelectasis",
    "atelectatic", "fracture", "fractures", "nodule", "nodules", "opacity", "opacities",
    "infiltrate", "infiltrates", "mediastinum", "mediastinal", "hemithorax", "hydrothorax",
    "hemothorax", "congestion", "emphysema", "widened", "widening", "enlarged", "enlargement",
    "pleural", "malpositioned", "cardiomediastinal",
)
# Real words within reach of a term. Found on the train split (every word of 5+ letters within
# the edit limit of a term, bench/clinical_safety.py --vocab) plus common English neighbours.
_KNOWN_WORDS = frozenset({
    "engorgement", "congestive", "consolidating", "consolidated", "pleura", "features", "empyema",
    "pneumonic", "pneumonias", "infiltrative", "infiltrated", "passes", "enema", "module",
    "modules", "nodular", "diffusion", "infusion", "effusive", "fractured", "fracturing",
    "enlarges", "enlarging", "widener", "emphysematous", "edematous", "mention", "mentioned",
    "opacified", "capacity", "mediastinum", "hemithoraces", "pleurae", "nodularity", "widens",
})
_TERM_SET = frozenset(TYPO_TERMS)


def _osa(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (edits incl. adjacent transposition), capped at limit+1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@functools.lru_cache(maxsize=1 << 16)
def correct_word(word: str) -> str:
    """The critical term a (lower-case) word misspells, or the word itself.

    >>> correct_word("pneumothroax"), correct_word("pnuemothorax"), correct_word("effusoin")
    ('pneumothorax', 'pneumothorax', 'effusion')
    >>> correct_word("enema"), correct_word("heart")
    ('enema', 'heart')
    """
    if len(word) < 4 or word in _TERM_SET or word in _KNOWN_WORDS:
        return word
    found: list[tuple[int, str]] = []
    for term in TYPO_TERMS:
        limit = 2 if len(term) >= 10 else 1
        # one edit (at most two) leaves the first letter or the last two intact
        if abs(len(term) - len(word)) > limit or not (term[0] == word[0] or term[-2:] == word[-2:]):
            continue
        d = _osa(word, term, limit)
        if d <= limit:
            found.append((d, term))
    if not found:
        return word
    best = min(d for d, _ in found)
    terms = sorted({t for d, t in found if d == best}, key=len)
    # a tie between a term and its plural reads as the singular; any other tie is left alone
    return terms[0] if all(t.rstrip("s") == terms[0].rstrip("s") for t in terms) else word


_WORD = re.compile(r"[a-z]{4,}")


def correct_typos(text: str) -> str:
    """Lower-case text with misspelt critical terms spelt right (see :data:`TYPO_TERMS`).

    >>> correct_typos("small right pnuemothorax and a left efusion")
    'small right pneumothorax and a left effusion'
    """
    return _WORD.sub(lambda m: correct_word(m.group(0)), text)


def _normalise(text: str) -> str:
    """Lower-case, read 'x-XXXX' as 'x-ray', squeeze whitespace, spell critical terms right."""
    t = text.lower()
    t = re.sub(r"\bx-\s?xxxx\b", "x-ray", t)
    t = re.sub(r"\s+", " ", t)
    return correct_typos(t)


def _sentences(text: str) -> list[str]:
    out = []
    for s in _SENT_SPLIT.split(text or ""):
        s = _ENUM.sub("", s).strip()
        if s and re.search(r"[A-Za-z]", s):
            out.append(s)
    return out


def _clauses(sentence: str) -> list[str]:
    return [c for c in (p.strip(" ,") for p in _CLAUSE_SPLIT.split(sentence)) if c]


_SHORT_SCOPE = re.compile(r"^(?:removal of|removed|resolution of|resolved|absent|clearing of|rather than)$")
_REMOVAL = re.compile(r"^(?:removal of|removed)$")
_QUALIFIER = re.compile(
    r"\b(?:focal|acute|large|significant|definite|definitive|suspicious|new|gross|grossly|visible|visualized|discrete|convincing"
    r"|displaced|frank|overt|confluent|typical|active|dominant|sizable|moderate|substantial|appreciable|obvious|evident"
    r"|near-complete|nearly|almost|partial|partially|upper limits?|top normal|borderline)\b"
)
_LATERAL_NORMAL = re.compile(r"\b(?:right|left) (?:lung|hemithorax|base|apex|upper|lower|middle|mid)\b|\b(?:remainder|rest|remaining|otherwise)\b")
MAX_SCOPE_WORDS = 14
SHORT_SCOPE_WORDS = 4


def _words_between(text: str) -> int:
    return len(re.findall(r"[a-z0-9]+", text))


def _classify(clause: str, start: int, end: int) -> tuple[Label, bool] | None:
    """NegEx-style classification of the span [start, end) of a normalised clause.

    Returns:
        ``(label, qualified)`` where ``qualified`` marks a negation restricted by a qualifier
        ("no *focal* consolidation", "no *large* effusion"), or None for hypothetical mentions
        ("recommend CT to evaluate for mass").
    """
    span = clause[start:end]
    if re.search(r"\b(?:not|no|non)\b", span):
        return Label.NEGATIVE, bool(_QUALIFIER.search(span))
    pre = clause[:start]
    post = clause[end:]
    if _HYPO.search(pre):
        return None
    if _POST_UNC.search(post):
        return Label.UNCERTAIN, False
    masked = _PSEUDO.sub(lambda m: " " * len(m.group(0)), pre)
    best_pos, best, removal = -1, None, False
    for m in _UNC_NEG.finditer(masked):
        if m.end() > best_pos and _words_between(pre[m.end():]) <= MAX_SCOPE_WORDS:
            best_pos, best = m.end(), Label.UNCERTAIN
    masked_unc = _UNC_NEG.sub(lambda m: " " * len(m.group(0)), masked)
    for m in _PRE_NEG.finditer(masked_unc):
        trig = m.group(0)
        cap = 0 if trig == "non" else SHORT_SCOPE_WORDS if _SHORT_SCOPE.match(trig) else MAX_SCOPE_WORDS
        if m.end() > best_pos and _words_between(pre[m.end():]) <= cap:
            best_pos, best, removal = m.end(), Label.NEGATIVE, bool(_REMOVAL.match(trig))
    for m in _PRE_UNC.finditer(masked_unc):
        if m.end() > best_pos and _words_between(pre[m.end():]) <= MAX_SCOPE_WORDS:
            best_pos, best = m.end(), Label.UNCERTAIN
    if best is Label.NEGATIVE:
        return best, removal or bool(_QUALIFIER.search(pre[best_pos:]))
    if best is not None:
        return best, False
    if _POST_NEG.search(post):
        return Label.NEGATIVE, False
    return Label.POSITIVE, False


# --------------------------------------------------------------------------------------------
# Critical findings and weights
# --------------------------------------------------------------------------------------------


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
            r"|\breposition\w*\b|\bin the (?:right |left )?(?:main )?bronchus\b|\b(?:into|in|within) the (?:esophagus|hypopharynx|neck|azygos|internal jugular)\b"
            r"|\bterminat\w+ (?:in|within|at|over) the (?:neck|right ventricle|internal jugular|azygos|esophagus|hypopharynx|pharynx)\b"
            r"|\babove the (?:thoracic inlet|clavicles?)\b|\bperforat\w+\b|\bextravascular\b"
        ),
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

_CRITICAL_BY_OBS: dict[str, list[CriticalFinding]] = {}
for _cf in CRITICAL_FINDINGS:
    _CRITICAL_BY_OBS.setdefault(_cf.observation, []).append(_cf)

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


def _window(clause: str, start: int, end: int) -> str:
    return clause[max(0, start - 45): end + 30]


def _critical_match(observation: str, window: str) -> CriticalFinding | None:
    for cf in _CRITICAL_BY_OBS.get(observation, ()):
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
    if context is not None and _critical_match(observation, _normalise(context)):
        return WEIGHT_CRITICAL
    return WEIGHTS[observation]


# --------------------------------------------------------------------------------------------
# Labeling
# --------------------------------------------------------------------------------------------

_COMPILED = {
    o.name: (
        [re.compile(p) for p in o.patterns],
        [re.compile(p) for p in o.normals],
        [re.compile(p) for p in o.negonly],
        re.compile(o.requires) if o.requires else None,
    )
    for o in OBSERVATIONS
}


def is_normal_statement(text: str) -> bool:
    """Whether ``text`` contains a global normal statement ("No acute cardiopulmonary abnormality").

    Args:
        text: a sentence or a whole report section.

    Returns:
        True when a normal statement is present.
    """
    return any(_NORMAL_STATEMENTS.search(_normalise(s)) for s in _sentences(text))


def extract(text: str) -> list[Mention]:
    """All observation mentions in a report section, in reading order.

    Args:
        text: findings or impression text (may contain IU "XXXX" marks).

    Returns:
        A list of ``Mention``; normal statements give NEGATIVE mentions with source "normal".
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise ClinicalError(f"text must be a str, got {type(text).__name__}")
    out: list[Mention] = []
    for sent in _sentences(text):
        sent_norm = _normalise(sent)
        for clause in _clauses(sent):
            c = _normalise(clause)
            for name, (pats, normals, negonly, requires) in _COMPILED.items():
                if requires is not None and not requires.search(sent_norm):
                    pats = []
                seen: list[tuple[int, int]] = []
                for p in pats:
                    for m in p.finditer(c):
                        s, e = m.span()
                        if any(s < e2 and s2 < e for s2, e2 in seen):
                            continue
                        seen.append((s, e))
                        cls = _classify(c, s, e)
                        if cls is None:
                            continue
                        lab, qualified = cls
                        crit = lab in PRESENT and _critical_match(name, _window(c, s, e)) is not None
                        out.append(Mention(name, lab, m.group(0), clause, sent, s, e, crit, "mention", qualified))
                for p in negonly:
                    for m in p.finditer(c):
                        s, e = m.span()
                        cls = _classify(c, s, e)
                        if cls is not None and cls[0] is Label.NEGATIVE:
                            out.append(Mention(name, Label.NEGATIVE, m.group(0), clause, sent, s, e, False, "negonly", True))
                for p in normals:
                    for m in p.finditer(c):
                        s, e = m.span()
                        if not re.search(r"\b(?:may|possibl\w+|probabl\w+|likely|questionabl\w+)\b", c[:s]):
                            lateral = bool(_LATERAL_NORMAL.search(c) or _QUALIFIER.search(m.group(0)))
                            out.append(Mention(name, Label.NEGATIVE, m.group(0), clause, sent, s, e, False, "normal", lateral))
    return out


def _aggregate(mentions: list[Mention]) -> dict[str, Label]:
    res: dict[str, Label] = {}
    for m in mentions:
        cur = res.get(m.observation)
        if cur is Label.POSITIVE:
            continue
        if m.label is Label.POSITIVE or cur is None:
            res[m.observation] = m.label
        elif m.label is Label.UNCERTAIN:
            res[m.observation] = Label.UNCERTAIN
    return res


def label(text: str) -> dict[str, Label]:
    """Label a report section with the observations it mentions.

    Args:
        text: findings and/or impression text.

    Returns:
        ``{observation: Label}`` for every mentioned observation (unmentioned ones are absent),
        in ``OBSERVATION_NAMES`` order. ``No Finding`` is POSITIVE when a global normal statement
        or a negated observation is present and nothing but Support Devices is positive/uncertain.
    """
    mentions = extract(text)
    res = _aggregate(mentions)
    abnormal = any(v in PRESENT for k, v in res.items() if k != "No Finding")
    normal_stmt = bool(text) and is_normal_statement(text)
    if not abnormal and (normal_stmt or any(v is Label.NEGATIVE for v in res.values())):
        res["No Finding"] = Label.POSITIVE
    return {k: res[k] for k in OBSERVATION_NAMES if k in res}


# --------------------------------------------------------------------------------------------
# Findings vs impression
# --------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """Outcome of comparing an impression with its findings.

    Attributes:
        missing_critical: observations critical in the findings but not present in the impression.
        contradictions: observations POSITIVE on one side and NEGATIVE on the other.
        unsupported: observations present in the impression and never mentioned (nor a related
            observation) in the findings; No Finding is excluded.
        ok: True when all three lists are empty.
        messages: one human-readable line per problem.
        evidence: observation -> the findings sentence that reports it (for missing ones).
        findings_labels / impression_labels: the labels used.
    """

    missing_critical: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    ok: bool = True
    messages: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)
    findings_labels: dict[str, Label] = field(default_factory=dict)
    impression_labels: dict[str, Label] = field(default_factory=dict)


def _check_text(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ClinicalError(f"{what} must be a str, got {type(value).__name__}")
    return value


def check_impression(findings: str, impression: str) -> CheckResult:
    """Check that an impression is consistent with its findings.

    Args:
        findings: the findings section.
        impression: the impression to check (human- or model-written).

    Returns:
        A ``CheckResult``; ``ok`` is False when a critical finding is missing, a label flips
        between positive and negative, or the impression asserts something the findings never mention.
    """
    findings = _check_text(findings, "findings")
    impression = _check_text(impression, "impression")
    f_mentions = extract(findings)
    i_mentions = extract(impression)
    f_lab = label(findings)
    i_lab = label(impression)
    # Contradictions only count firm statements: qualified negatives ("no focal opacity") are left out.
    f_firm = _aggregate([m for m in f_mentions if not m.qualified])
    i_firm = _aggregate([m for m in i_mentions if not m.qualified])
    res = CheckResult(findings_labels=f_lab, impression_labels=i_lab)

    def covered(obs: str, extra: tuple[str, ...] = ()) -> bool:
        return i_lab.get(obs) in PRESENT or any(i_lab.get(o) in PRESENT for o in extra)

    for m in f_mentions:
        if not m.critical or m.observation in res.missing_critical:
            continue
        if f_lab.get(m.observation) not in PRESENT:
            continue
        cf = _critical_match(m.observation, _window(_normalise(m.clause), m.start, m.end))
        extra = cf.satisfied_by if cf else ()
        if not covered(m.observation, extra):
            res.missing_critical.append(m.observation)
            res.evidence[m.observation] = m.sentence
            res.messages.append(
                f"missing critical finding: {cf.name if cf else m.observation} "
                f"(findings: {m.sentence.strip()!r}) - {cf.reason if cf else ''}".rstrip(" -")
            )
    for obs in OBSERVATION_NAMES:
        if obs == "No Finding":
            continue
        f, i = f_firm.get(obs), i_firm.get(obs)
        if f is Label.POSITIVE and i is Label.NEGATIVE:
            res.contradictions.append(obs)
            res.messages.append(f"contradiction: findings report {obs}, the impression negates it")
        elif f is Label.NEGATIVE and i is Label.POSITIVE:
            res.contradictions.append(obs)
            res.messages.append(f"contradiction: the impression reports {obs}, the findings negate it")
    for obs, i in i_lab.items():
        if obs == "No Finding" or i not in PRESENT or obs in f_lab:
            continue
        if any(o in f_lab for o in RELATED.get(obs, ())):
            continue
        res.unsupported.append(obs)
        res.messages.append(f"unsupported: the impression reports {obs}, which the findings never mention")
    res.ok = not (res.missing_critical or res.contradictions or res.unsupported)
    return res


def consistency(findings: str, impression: str) -> float:
    """Findings/impression consistency score in (0, 1]; 1 means no problem found.

    The score is ``1 / (1 + P / 5)`` with the penalty ``P`` = sum of the criticality weights of
    missing critical findings (5 each) and contradictions, plus half the weight of unsupported
    observations. One missing critical finding gives 0.5; one contradicted minor finding 0.91.

    Args:
        findings: the findings section.
        impression: the impression.

    Returns:
        A float in (0, 1].
    """
    r = check_impression(findings, impression)
    p = sum(WEIGHT_CRITICAL for _ in r.missing_critical)
    p += sum(WEIGHTS[o] for o in r.contradictions)
    p += sum(0.5 * WEIGHTS[o] for o in r.unsupported)
    return 1.0 / (1.0 + p / WEIGHT_CRITICAL)


_LEAD_IN = re.compile(
    r"^(?:and |also |again |but |however |otherwise |,\s*)*"
    r"(?:there (?:is|are|has been|have been) (?:(?:now|again|also) )?(?:seen |noted )?(?:a |an |the )?"
    r"|(?:again )?(?:seen|noted|demonstrated|identified) (?:is|are) (?:a |an |the )?)?",
    re.IGNORECASE,
)


_ENUM_START = re.compile(r"^\s*1[.)]\s")
_ENUM_SPLIT = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)]\s+")


def _end(text: str) -> str:
    """Strip trailing spaces/periods and end the text with one period (keeps ? and !)."""
    text = text.strip().rstrip(" .")
    return text if text.endswith(("?", "!")) else text + "."


def _sentence_for(m: Mention) -> str:
    text = _LEAD_IN.sub("", m.clause.strip()).strip(" ,;:")
    if not text:
        text = m.sentence.strip()
    return _end(text[0].upper() + text[1:])


def repair_impression(findings: str, impression: str, style: str = "auto") -> tuple[str, list[str]]:
    """Append a short sentence for each critical finding that the impression omits.

    The sentence is the findings clause that mentions the finding, minus lead-ins such as
    "there is a" ("There is a small right apical pneumothorax." -> "Small right apical
    pneumothorax."). Global normal statements ("No acute cardiopulmonary abnormality.") are
    removed from the impression when something is added, since they would become false.

    Args:
        findings: the findings section.
        impression: the impression to repair.
        style: "auto" (numbered when the impression is numbered), "numbered" or "plain".

    Returns:
        ``(repaired_text, added_sentences)``; ``added_sentences`` is empty and the text unchanged
        when nothing is missing.

    Raises:
        ClinicalError: unknown style.
    """
    if style not in ("auto", "numbered", "plain"):
        raise ClinicalError(f"style must be 'auto', 'numbered' or 'plain', got {style!r}")
    findings = _check_text(findings, "findings")
    impression = _check_text(impression, "impression")
    result = check_impression(findings, impression)
    if not result.missing_critical:
        return impression, []
    mentions = [m for m in extract(findings) if m.critical]
    added: list[str] = []
    for obs in result.missing_critical:
        m = next(x for x in mentions if x.observation == obs)
        s = _sentence_for(m)
        if s not in added:
            added.append(s)
    numbered = style == "numbered" or (style == "auto" and bool(_ENUM_START.match(impression)))
    items = []
    for item in (_ENUM_SPLIT.split(impression) if numbered else [impression]):
        item = item.strip()
        sents = _sentences(item)
        kept = [x for x in sents if not _NORMAL_STATEMENTS.search(_normalise(x))]
        if not kept:
            continue
        text = item if len(kept) == len(sents) else " ".join(_end(x) for x in kept)
        items.append(_end(re.sub(r"(?:\s*\.)+$", ".", text)))
    items += added
    if numbered:
        text = " ".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    else:
        text = " ".join(items)
    return text, added


# --------------------------------------------------------------------------------------------
# The verifier: every text a radiologist or patient sees goes through it
# --------------------------------------------------------------------------------------------

# Major findings: a normal statement ("No acute disease.") beside any of them in the findings is
# wrong. Qualified as the radiologist would: a calcified nodule is a granuloma, an old or healed
# fracture is not news, and of the devices only lines and tubes count (not wires or clips).
MAJOR_FINDINGS: dict[str, str | None] = {
    "Pleural Effusion": None,
    "Pneumothorax": None,
    "Consolidation": None,
    "Pneumonia": None,
    "Edema": None,
    "Cardiomegaly": None,
    "Mass": None,
    "Nodule": r"^(?!.*\bcalcifi\w*).*$",
    "Fracture": None,
    "Free Air": None,
    "Support Devices": r"\b(?:catheters?|picc|line|tubes?|tracheostomy|drains?)\b",
}
_MAJOR_EXCLUDE = {"Fracture": next(cf.exclude for cf in CRITICAL_FINDINGS if cf.observation == "Fracture")}


@dataclass
class Verification:
    """What the verifier did to a text and what is left for a person to look at.

    Attributes:
        text: the text to show (repaired when ``repair`` was asked and possible).
        original: the text as given.
        needs_review: a problem is left that the verifier could not repair: show the text flagged.
        reasons: one line per problem left (for the reviewer).
        added: sentences added from the findings (missing critical or major findings).
        removed: sentences removed (findings this report does not state, or contradicts).
        unsupported / contradictions / missing_critical / normal_despite: problems left.
        check: the final :class:`CheckResult`.
    """

    text: str
    original: str
    needs_review: bool = False
    reasons: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    missing_critical: list[str] = field(default_factory=list)
    normal_despite: list[str] = field(default_factory=list)
    check: CheckResult | None = None

    @property
    def repaired(self) -> bool:
        return bool(self.added or self.removed)


def major_findings(findings: str) -> dict[str, Mention]:
    """The major findings the findings state firmly (POSITIVE), each with its first mention.

    >>> sorted(major_findings("Small bilateral pleural effusions. Calcified nodule in the left apex."))
    ['Pleural Effusion']
    """
    out: dict[str, Mention] = {}
    for m in extract(_check_text(findings, "findings")):
        if m.label is not Label.POSITIVE or m.observation not in MAJOR_FINDINGS or m.observation in out:
            continue
        window = _window(_normalise(m.clause), m.start, m.end)
        need = MAJOR_FINDINGS[m.observation]
        if need and not re.search(need, window):
            continue
        excl = _MAJOR_EXCLUDE.get(m.observation)
        if excl and re.search(excl, window):
            continue
        out[m.observation] = m
    return out


def _stated(obs: str, labels: dict[str, Label]) -> bool:
    cf_extra = _CRITICAL_BY_OBS[obs][0].satisfied_by if obs in _CRITICAL_BY_OBS else ()
    return labels.get(obs) in PRESENT or any(labels.get(o) in PRESENT for o in (*cf_extra, *RELATED.get(obs, ())))


def _context_labels(indication: str | None, comparison: str | None) -> dict[str, Label]:
    return label(" ".join(x for x in (indication, comparison) if x))


def _problems(findings: str, text: str, context: dict[str, Label]) -> tuple[CheckResult, list[str], list[str]]:
    """(check, unsupported not stated in the context either, major findings a normal text denies)."""
    check = check_impression(findings, text)
    unsupported = [o for o in check.unsupported
                   if not (context.get(o) in PRESENT or any(context.get(r) in PRESENT for r in RELATED.get(o, ())))]
    t_lab = check.impression_labels
    says_normal = t_lab.get("No Finding") is Label.POSITIVE or is_normal_statement(text)
    denied = []
    for obs in major_findings(findings):
        if _stated(obs, t_lab):
            continue
        if says_normal or t_lab.get(obs) is Label.NEGATIVE:
            denied.append(obs)
    return check, unsupported, denied


def verify(findings: str, text: str, indication: str | None = None, comparison: str | None = None,
           repair: bool = True) -> Verification:
    """Check a text against its report and, with ``repair``, fix what can be fixed.

    Rules, on every text shown (any style, a reader's draft, a memory text, a study arm):

    1. A finding the text asserts that this report's findings, indication and comparison never
       state (another patient's chest tube) is removed with its sentence; a text that would be
       left empty is flagged instead.
    2. A sentence that asserts what the findings negate is removed the same way.
    3. A normal statement ("No acute disease.") or a negation while the findings state a major
       finding (:data:`MAJOR_FINDINGS`) is replaced: the normal statement goes, the finding's own
       sentence from the findings is added.
    4. A critical finding of the findings that the text omits is added (:func:`repair_impression`).
    5. Whatever is left sets ``needs_review`` with a reason. Misspelt critical terms are read
       through :func:`correct_typos` in both texts.

    Args:
        findings: the report's findings.
        text: the text to check.
        indication, comparison: the report's other sections (a finding they state is supported).
        repair: apply rules 1-4 (False: only report the problems).

    Returns:
        A :class:`Verification`.

    >>> v = verify("Small bilateral pleural effusions.", "No acute disease.")
    >>> v.text, v.needs_review
    ('Small bilateral pleural effusions.', False)
    >>> v = verify("Lungs are clear.", "Right chest tube in place. No pneumothorax.")
    >>> v.text, v.removed
    ('No pneumothorax.', ['Right chest tube in place.'])
    """
    findings = _check_text(findings, "findings")
    original = _check_text(text, "text")
    context = _context_labels(indication, comparison)
    out = Verification(text=original, original=original)
    check, unsupported, denied = _problems(findings, original, context)
    current = original
    if repair:
        bad = set(unsupported) | {o for o in check.contradictions if check.impression_labels.get(o) in PRESENT}
        denied_set = set(denied)
        numbered = bool(_ENUM_START.match(current))
        kept: list[str] = []
        for sent in (_ENUM_SPLIT.split(current) if numbered else _sentences(current)):
            sent = sent.strip()
            if not sent:
                continue
            s_lab = label(sent)
            asserts_bad = any(s_lab.get(o) in PRESENT for o in bad)
            denies = denied_set and (is_normal_statement(sent) or any(s_lab.get(o) is Label.NEGATIVE for o in denied_set))
            if asserts_bad or denies:
                out.removed.append(_end(sent))
            else:
                kept.append(_end(sent))
        majors = major_findings(findings)
        added = []
        for obs in denied:
            s = _sentence_for(majors[obs])
            if s not in added and s not in kept:
                added.append(s)
        if not kept and not added:  # nothing true left to show: keep the text, flag it
            out.removed = []
        else:
            items = kept + added
            current = " ".join(f"{i}. {x}" for i, x in enumerate(items, 1)) if numbered else " ".join(items)
            out.added = added
        current, more = repair_impression(findings, current)
        out.added += more
        out.text = current
        check, unsupported, denied = _problems(findings, current, context)
    out.check = check
    out.unsupported = unsupported
    out.normal_despite = denied
    out.missing_critical = list(check.missing_critical)
    out.contradictions = list(check.contradictions)
    for obs in unsupported:
        out.reasons.append(f"unsupported: the text states {obs}, which this report never mentions")
    for msg in check.messages:
        if msg.startswith(("missing critical", "contradiction")):
            out.reasons.append(msg)
    for obs in denied:
        out.reasons.append(f"normal statement although the findings report {obs}")
    out.needs_review = bool(out.reasons)
    return out
