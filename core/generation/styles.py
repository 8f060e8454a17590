"""Audience styles for an impression: default, brief (patients, non-native readers), bullets,
comprehensive (specialists).

Every style is rendered from the impression and the report's own findings/indication/comparison by
rules, not by the language model: a 135M-parameter model asked to "explain this to a patient"
invents findings, while a rule can only say what the labeler (:mod:`core.clinical`) read in the
impression. So each style is clinically faithful by construction and visibly different:

- ``default``: the impression as chosen/generated (numbering and stray periods tidied).
- ``bullets``: one ``- `` bullet per impression sentence (numbering removed).
- ``brief``: plain, short sentences for patients and non-native readers, one per finding, each
  with the medical term in parentheses ("There is fluid around the lung (pleural effusion).");
  critical findings get "This needs prompt attention."; a normal study is one sentence.
- ``comprehensive``: for specialists: the impression, then the findings sentences that support
  each impression statement, pertinent negatives (pneumothorax, effusion, consolidation, edema,
  cardiomegaly when the findings negate them), the comparison and an answer to the clinical
  question named in the indication.

Aliases: ``patient``/``plain``/``simple`` -> brief, ``bullet``/``list`` -> bullets,
``specialist``/``detailed``/``full`` -> comprehensive, ``auto``/``standard`` -> default.

>>> apply_style("Small left pleural effusion. No pneumothorax.", "brief", findings="Small left pleural effusion.")
'There is fluid around the lung (pleural effusion).'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.clinical.labeler import extract, is_normal_statement, label, positive_findings
from core.clinical.text import ABBREVIATIONS as _ABBREV, normalise
from core.clinical.vocabulary import PRESENT, Label, device_kinds
from core.errors import StyleError  # noqa: F401 (defined in core.errors)

STYLES: dict[str, str] = {
    "default": "The impression as the radiologist would dictate it.",
    "brief": "Plain, short sentences for patients and non-native readers.",
    "bullets": "One bullet point per statement.",
    "comprehensive": "For specialists: impression, supporting findings, pertinent negatives, comparison, "
                     "clinical question.",
}
ALIASES = {
    "patient": "brief", "plain": "brief", "simple": "brief", "lay": "brief",
    "bullet": "bullets", "list": "bullets", "bulleted": "bullets",
    "specialist": "comprehensive", "detailed": "comprehensive", "full": "comprehensive",
    "auto": "default", "standard": "default", "": "default",
}

# Lay noun phrase per observation, with the term the labeler (and the reader) recognises.
LAY: dict[str, str] = {
    "Enlarged Cardiomediastinum": "a widened middle part of the chest (widened mediastinum)",
    "Cardiomegaly": "an enlarged heart (cardiomegaly)",
    "Lung Opacity": "a hazy area in the lung (opacity)",
    "Lung Lesion": "a spot in the lung (lesion)",
    "Edema": "fluid in the lungs (pulmonary edema)",
    "Consolidation": "a filled-in area of the lung (consolidation)",
    "Pneumonia": "signs of a lung infection (pneumonia)",
    "Atelectasis": "a small area of partly collapsed lung (atelectasis)",
    "Pneumothorax": "air between the lung and the chest wall (pneumothorax)",
    "Pleural Effusion": "fluid around the lung (pleural effusion)",
    "Pleural Other": "thickening of the lining around the lung (pleural thickening)",
    "Fracture": "a broken bone (fracture)",
    "Support Devices": "a medical tube, line or device (support device)",
    "Free Air": "free air under the diaphragm (free air)",
    "Mass": "a lump (mass)",
    "Nodule": "a small round spot in the lung (nodule)",
    "Granuloma": "a small healed spot, usually from an old infection (granuloma)",
    "Interstitial Disease": "changes in the tissue between the air sacs (interstitial disease)",
    "Vascular Congestion": "full blood vessels in the lungs (vascular congestion)",
    "Emphysema": "damaged air sacs in the lungs (emphysema)",
    "Low Lung Volumes": "less air in the lungs than usual (low lung volumes)",
    "Hernia": "part of the stomach pushing up into the chest (hernia)",
    "Elevated Diaphragm": "a raised breathing muscle under the lung (elevated diaphragm)",
    "Scarring": "some old scarring in the lung (scarring)",
    "Degenerative Spine": "wear-and-tear changes of the spine (degenerative changes of the spine)",
    "Scoliosis": "a curve in the spine (scoliosis)",
    "Calcification": "calcium deposits (calcification)",
    "Tortuous Aorta": "a curving main artery (tortuous aorta)",
}
# Lay phrases that take "There are" ("There are signs of ...", "There are calcium deposits").
LAY_PLURAL = frozenset({"Pneumonia", "Interstitial Disease", "Vascular Congestion", "Emphysema",
                        "Degenerative Spine", "Calcification"})
URGENT = frozenset({"Pneumothorax", "Free Air", "Edema", "Consolidation", "Pneumonia", "Mass", "Fracture"})
# Pertinent negatives stated in the comprehensive style when the findings negate them.
PERTINENT_NEGATIVES = (
    ("Pneumothorax", "pneumothorax"), ("Pleural Effusion", "pleural effusion"),
    ("Consolidation", "focal consolidation"), ("Edema", "pulmonary edema"),
)
# Clinical questions recognised in an indication: regex -> observation answered from the findings.
# (regex, name used in the answer, observations that answer it: any present -> reported).
QUESTIONS = (
    (r"\bpneumonia|\bfever|\bcough|\binfect", "pneumonia", ("Pneumonia", "Consolidation")),
    (r"\beffusion", "pleural effusion", ("Pleural Effusion",)),
    (r"\bpneumothorax|\bptx\b", "pneumothorax", ("Pneumothorax",)),
    (r"\bedema|\bchf\b|heart failure|\bshortness of breath|\bsob\b|\bdyspnea", "pulmonary edema", ("Edema",)),
    (r"\bmass\b|\bcancer|\bmalignan|\btumou?r|\bnodule", "mass or nodule", ("Mass", "Nodule", "Lung Lesion")),
    (r"\bfractur|\btrauma|\bfall\b|\bfell\b|\bmva\b|\bmvc\b|\brib pain", "fracture", ("Fracture",)),
    (r"\bcardiomegaly|\benlarged heart", "cardiomegaly", ("Cardiomegaly",)),
)

_WS = re.compile(r"\s+")
_NUM = re.compile(r"^\s*(?:\d{1,2}|[a-z])[.)]\s*,?\s*", re.I)
_SENT = re.compile(_ABBREV + r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])|(?<=[.!?])(?=\d{1,2}[.)]\s)|\n+|(?<=\s)(?=\d{1,2}[.)]\s)")
_DOUBLE_DOT = re.compile(r"(?<=[.!?])(?:\s*\.)+")


def resolve_style(style: str | None) -> str:
    """The canonical style name for a style or alias.

    Args:
        style: a name from :data:`STYLES` or :data:`ALIASES` (case-insensitive), or None.

    Returns:
        One of ``default``, ``brief``, ``bullets``, ``comprehensive``.

    Raises:
        StyleError: the name is unknown.
    """
    key = (style or "").strip().lower()
    key = ALIASES.get(key, key)
    if key not in STYLES:
        raise StyleError(f"unknown style {style!r}; expected one of {', '.join(STYLES)} "
                         f"(or an alias: {', '.join(sorted(a for a in ALIASES if a))})")
    return key


def sentences(text: str) -> list[str]:
    """Split an impression into sentences, dropping "1." style numbering and empty pieces.

    >>> sentences("1. No acute disease. 2. Stable granuloma.")
    ['No acute disease.', 'Stable granuloma.']
    """
    text = _DOUBLE_DOT.sub("", _WS.sub(" ", text or "").strip())
    out = []
    for part in _SENT.split(text):
        part = _NUM.sub("", part or "").strip(" ,;")
        if not part or not re.search(r"[A-Za-z0-9]", part):
            continue
        part = part[0].upper() + part[1:]
        if not part.endswith((".", "!", "?")):
            part += "."
        out.append(part)
    return out


def brief(impression: str, findings: str | None = None) -> str:
    """Plain-language version: one short sentence per finding the impression states.

    Args:
        impression: the impression.
        findings: the findings (unused for content; the impression alone decides what is said).

    Returns:
        The brief text.
    """
    labels = positive_findings(label(impression), no_finding=True)
    out: list[str] = []
    abnormal = [k for k in labels if k != "No Finding"]
    if not abnormal:
        if "No Finding" in labels or is_normal_statement(impression):
            return "Normal chest X-ray. No urgent problem was seen."
        # Nothing the labeler knows: keep the impression itself, in short sentences.
        return " ".join(sentences(impression)) or impression.strip()
    urgent = False
    if "Mass" in labels or "Nodule" in labels:
        abnormal = [o for o in abnormal if o != "Lung Lesion"]  # the labeler co-labels these
    for obs in abnormal:
        phrase = LAY.get(obs)
        if phrase is None:
            continue
        if obs == "Support Devices" and (kind := _malpositioned_device(impression)) is not None:
            out.append(f"A tube or line is not in the right place ({kind}, malpositioned).")
            urgent = True
            continue
        if labels[obs] is Label.UNCERTAIN:
            out.append(f"There may be {phrase}.")
        else:
            out.append(f"There {'are' if obs in LAY_PLURAL else 'is'} {phrase}.")
        urgent = urgent or obs in URGENT
    if urgent:
        out.append("This needs prompt attention from your doctor.")
    elif is_normal_statement(impression):  # "no urgent problem" beside an urgent one: never
        out.insert(0, "No urgent problem was seen.")
    return " ".join(out)


def _malpositioned_device(impression: str) -> str | None:
    """The kind of tube or line an impression calls malpositioned ("endotracheal tube"; "tube
    or line" where it names no kind), else None: the labeler's critical mentions, so a
    pacemaker lead in the right ventricle is where it belongs."""
    for m in extract(impression):
        if m.observation == "Support Devices" and m.critical:
            return next(iter(sorted(device_kinds(normalise(m.clause)))), "tube or line")
    return None


def bullets(impression: str) -> str:
    """One ``- `` bullet per impression sentence.

    Args:
        impression: the impression.

    Returns:
        Lines ``- sentence``.
    """
    items = sentences(impression)
    return "\n".join(f"- {s}" for s in items) if items else f"- {impression.strip()}"


# At most this many supporting sentences: a specialist's summary, not the findings again (a
# 20,000-character findings section made a text longer than the edit box holds).
MAX_SUPPORTING = 6


def _supporting(findings: str, observations: set[str]) -> list[str]:
    """Findings sentences that positively mention one of ``observations`` (in order, unique, at
    most :data:`MAX_SUPPORTING`)."""
    out: list[str] = []
    for m in extract(findings):
        if m.observation in observations and m.label in PRESENT:
            s = _WS.sub(" ", m.sentence).strip()
            s = s if s.endswith((".", "!", "?")) else s + "."
            if s not in out:
                out.append(s)
            if len(out) == MAX_SUPPORTING:
                break
    return out


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def answer_question(indication: str | None, findings: str) -> str | None:
    """A one-line answer to the clinical question an indication names, from the findings' labels.

    Args:
        indication: the INDICATION text (e.g. "Cough and fever, rule out pneumonia").
        findings: the FINDINGS text.

    Returns:
        E.g. ``"Clinical question (cough and fever): no pneumonia."``, or None when the indication
        names no question this module knows.
    """
    ind = _WS.sub(" ", indication or "").strip()
    if not ind or ind.lower() in ("none", "none."):
        return None
    f_lab = label(findings or "")
    answers = []
    for pattern, name, observations in QUESTIONS:
        if not re.search(pattern, ind.lower()):
            continue
        states = [f_lab.get(o) for o in observations]
        if Label.POSITIVE in states:
            answers.append(f"{name} is reported")
        elif Label.UNCERTAIN in states:
            answers.append(f"{name} is possible")
        elif Label.NEGATIVE in states or f_lab.get("No Finding") is Label.POSITIVE:
            answers.append(f"no {name}")
        else:
            answers.append(f"the findings do not address {name}")
    if not answers:
        return None
    return f"Clinical question ({ind.rstrip('.')}): {'; '.join(answers)}."


def comprehensive(impression: str, findings: str | None = None, indication: str | None = None,
                  comparison: str | None = None) -> str:
    """Specialist version: impression, supporting findings, pertinent negatives, comparison, question.

    Args:
        impression: the impression.
        findings: the findings (source of supporting sentences and pertinent negatives).
        indication: the indication (the clinical question).
        comparison: the comparison / prior study.

    Returns:
        Multi-line text with labelled sections.
    """
    findings = findings or ""
    lines = ["IMPRESSION: " + (" ".join(f"{i}. {s}" for i, s in enumerate(sentences(impression), 1))
                               if len(sentences(impression)) > 1 else " ".join(sentences(impression)) or impression)]
    present = set(positive_findings(label(impression)))
    support = _supporting(findings, present) if present else []
    if support:
        lines.append("SUPPORTING FINDINGS: " + " ".join(support))
    f_lab = label(findings) if findings else {}
    negs = [name for obs, name in PERTINENT_NEGATIVES if f_lab.get(obs) is Label.NEGATIVE and obs not in present]
    if negs:
        lines.append(f"PERTINENT NEGATIVES: No {_join(negs)}.")
    if f_lab.get("Cardiomegaly") is Label.NEGATIVE and "Cardiomegaly" not in present:
        lines.append("HEART: Normal heart size.")
    cmp_ = _WS.sub(" ", comparison or "").strip()
    if cmp_ and not re.fullmatch(r"(?i)none\.?( available\.?)?|n/?a\.?", cmp_):
        lines.append(f"COMPARISON: {cmp_.rstrip('.')}.")
    else:
        lines.append("COMPARISON: No prior study available.")
    q = answer_question(indication, findings)
    if q:
        lines.append(q)
    return "\n".join(lines)


def default(impression: str) -> str:
    """The impression with whitespace, numbering ("1. 2.") and stray periods tidied.

    A numbered impression stays numbered, even with one item: "1. No acute disease." is how many
    radiologists dictate, and the draft keeps their convention (IU X-ray dev split: the verified
    coarse draft 66.08 -> 67.16 ROUGE-L against their own impressions; BENCHMARKS.md).

    >>> default("1. No acute disease. .")
    '1. No acute disease.'
    >>> default("Small effusion.  No pneumothorax.")
    'Small effusion. No pneumothorax.'
    >>> default("No acute disease. No acute disease.")  # a sentence said twice is said once
    'No acute disease.'
    """
    items = list(dict.fromkeys(sentences(impression)))
    if not items:
        return impression.strip()
    if re.match(r"^\s*1[.)]", impression or ""):
        return " ".join(f"{i}. {s}" for i, s in enumerate(items, 1))
    return " ".join(items)


@dataclass
class StyledText:
    """A styled impression and the style it is in."""
    style: str
    text: str


def apply_style(impression: str, style: str | None = "default", findings: str | None = None,
                indication: str | None = None, comparison: str | None = None) -> str:
    """Render an impression in an audience style.

    Args:
        impression: the (checked) impression.
        style: a style name or alias (see :data:`STYLES`, :data:`ALIASES`).
        findings: the report's findings (used by ``comprehensive``).
        indication: the report's indication (``comprehensive``).
        comparison: the report's comparison (``comprehensive``).

    Returns:
        The styled text.

    Raises:
        StyleError: unknown style, or a blank impression.
    """
    name = resolve_style(style)
    if not (impression or "").strip():
        raise StyleError(f"cannot style a blank impression ({impression!r}) as {name!r}")
    if name == "brief":
        return brief(impression, findings)
    if name == "bullets":
        return bullets(impression)
    if name == "comprehensive":
        return comprehensive(impression, findings, indication, comparison)
    return default(impression)
