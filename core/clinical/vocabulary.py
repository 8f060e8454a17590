"""The observation vocabulary: what the labeler can recognise and how observations relate.

Declarative tables only (regexes over lower-case text): the observations with their mention,
normal-statement and negation-only patterns (``OBSERVATIONS``), the observations that describe
overlapping appearances (``RELATED``), the global normal statements (``NORMAL_STATEMENTS``) and the
critical terms whose misspellings are read as the term (``TYPO_TERMS``, ``KNOWN_WORDS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Label", "PRESENT", "ObservationSpec", "OBSERVATIONS", "OBSERVATION_NAMES",
    "CHEXPERT_OBSERVATIONS", "RELATED", "NORMAL_STATEMENTS", "TYPO_TERMS", "KNOWN_WORDS",
    "DEVICE_KINDS", "device_kinds",
]


class Label(str, Enum):
    """How an observation is mentioned; an observation that is not mentioned is absent."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"


PRESENT = (Label.POSITIVE, Label.UNCERTAIN)


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
            r"\benlargement of (?:the )?(?:cardiac|heart)\b",
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
            r"\b(?:ett|ngt|ogt|dobhoff|pigtail(?: catheter| drain)?|trach)\b",  # short names
            r"\b(?:right |left )?ij (?:central |venous )?(?:line|catheter)s?\b",
            r"\b(?:lines? (?:and|or|/) tubes?|tubes? (?:and|or|/) lines?)\b",  # MIMIC: "lines and tubes"
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
# The kinds of tube and line: "Support Devices" alone cannot tell another patient's endotracheal
# tube from this patient's nasogastric tube, nor a PICC from an internal jugular line. A text
# naming a kind the report never names asserts a device it does not have; a malpositioned one is
# only stated by naming its kind (any kind where the findings name none).
DEVICE_KINDS: dict[str, re.Pattern] = {name: re.compile(rx) for name, rx in {
    "endotracheal tube": r"\b(?:endotracheal|ett|et tube)\b",
    "nasogastric or feeding tube": r"\b(?:ngt|ogt)\b|\b(?:nasogastric|orogastric|ng|og|enteric|feeding|dobhoff|gastric|duodenal) "
                    r"(?:tubes?|catheters?)\b|\bdobhoff\b",
    "PICC line": r"\bpicc\b|\bperipherally inserted central\b",
    "central venous line": r"\bcentral (?:venous )?(?:line|catheter)s?\b|\bcvc\b|\b(?:right |left )?"
                           r"(?:internal jugular|ij|subclavian|femoral)(?: central| venous| vein)* "
                           r"(?:line|catheter|introducer|sheath)s?\b|\bswan[- ]ganz\b|\bpulmonary "
                           r"artery catheter\b|\bport-?a-?cath\b|\b(?:chest |power |subcutaneous )?port(?: catheter)?\b(?! of)"
                           r"|\bhickman\b|\b(?:hemo)?dialysis catheters?\b|\btunnell?ed (?:line|catheter)s?\b|\bpermcath\b",
    "chest tube": r"\b(?:chest|thoracostomy) tubes?\b|\bpleural (?:drain|catheter)s?\b|\bpigtail\b",
    "tracheostomy": r"\btracheostomy\b|\btrach\b",
    "pacemaker or defibrillator": r"\b(?:pace ?makers?|pacers?|aicd|icd|defibrillator|pacing (?:wires?|leads?))\b",
}.items()}


def device_kinds(text: str) -> set[str]:
    """The kinds of tube, line or implanted device a (normalised, lower-case) text names.

    >>> sorted(device_kinds("right ij catheter tip in the svc. ng tube in the stomach."))
    ['central venous line', 'nasogastric or feeding tube']
    """
    return {name for name, rx in DEVICE_KINDS.items() if rx.search(text)}


NORMAL_STATEMENTS = re.compile(
    r"\bno (?:evidence of |radiographic evidence of |signs? of |xxxx of |definite )?(?:acute|active|significant|acute or active)"
    r" (?:(?:cardiopulmonary|cardiothoracic|intrathoracic|pulmonary|chest|thoracic|radiographic|lung|cardiac)"
    r"(?: or (?:cardiopulmonary|pulmonary|osseous|intrathoracic|other))? )?"
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
KNOWN_WORDS = frozenset({
    "engorgement", "congestive", "consolidating", "consolidated", "pleura", "features", "empyema",
    "pneumonic", "pneumonias", "infiltrative", "infiltrated", "passes", "enema", "module",
    "modules", "nodular", "diffusion", "infusion", "effusive", "fractured", "fracturing",
    "enlarges", "enlarging", "widener", "emphysematous", "edematous", "mention", "mentioned",
    "opacified", "capacity", "mediastinum", "hemithoraces", "pleurae", "nodularity", "widens",
})
