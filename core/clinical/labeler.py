"""Rule-based chest X-ray report labeler: which observations a text states, negates or hedges.

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
from dataclasses import dataclass
from typing import Mapping

from core.clinical.critical import critical_match, qualifier_window
from core.clinical.text import clauses, normalise, sentences
from core.clinical.vocabulary import (
    NORMAL_STATEMENTS,
    OBSERVATION_NAMES,
    OBSERVATIONS,
    PRESENT,
    Label,
)
from core.errors import ClinicalError

__all__ = ["Mention", "extract", "aggregate", "label", "is_normal_statement", "is_normal",
           "positive_findings"]

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


_TENSION = re.compile(r"\bpneumothora\w*|\btension\b")


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
    return any(NORMAL_STATEMENTS.search(normalise(s)) for s in sentences(text))


def extract(text: str) -> list[Mention]:
    """All observation mentions in a report section, in reading order.

    Args:
        text: findings or impression text (may contain IU "XXXX" marks).

    Returns:
        A list of ``Mention``; normal statements give NEGATIVE mentions with source "normal".
    """
    return list(_extract(_text(text)))


def _text(text: str | None) -> str:
    """``text``, or "" for None; anything else is a ClinicalError."""
    if text is not None and not isinstance(text, str):
        raise ClinicalError(f"text must be a str, got {type(text).__name__}")
    return text or ""


# The same texts are labelled again and again (a draft is checked against its findings, its
# neighbours' impressions are voted on, a gate scores every version on the same references):
# mentions are immutable, so each text is read once per process (the 8,192 most recently used
# texts: tens of MB at most).
@functools.lru_cache(maxsize=1 << 13)
def _extract(text: str) -> tuple[Mention, ...]:
    out: list[Mention] = []
    for sent in sentences(text):
        sent_norm = normalise(sent)
        for clause in clauses(sent):
            c = normalise(clause)
            for name, (pats, normals, negonly, requires) in _COMPILED.items():
                if requires is not None and not requires.search(sent_norm):
                    pats = []
                seen: list[tuple[int, int]] = []
                for p in pats:
                    for m in p.finditer(c):
                        s, e = m.span()
                        if any(s < e2 and s2 < e for s2, e2 in seen):
                            continue
                        if name == "Emphysema" and "diaphragm" in m.group(0) and _TENSION.search(sent_norm):
                            continue  # a flat hemidiaphragm beside a pneumothorax is its tension
                        seen.append((s, e))
                        cls = _classify(c, s, e)
                        if cls is None:
                            continue
                        lab, qualified = cls
                        crit = lab in PRESENT and critical_match(name, qualifier_window(name, c, s, e)) is not None
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
    return tuple(out)


def aggregate(mentions: list[Mention]) -> dict[str, Label]:
    """One label per observation: any POSITIVE mention wins, else any UNCERTAIN, else NEGATIVE."""
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
    return dict(_label(_text(text)))


@functools.lru_cache(maxsize=1 << 13)
def _label(text: str) -> tuple[tuple[str, Label], ...]:
    res = aggregate(_extract(text))
    abnormal = any(v in PRESENT for k, v in res.items() if k != "No Finding")
    normal_stmt = bool(text) and is_normal_statement(text)
    if not abnormal and (normal_stmt or any(v is Label.NEGATIVE for v in res.values())):
        res["No Finding"] = Label.POSITIVE
    return tuple((k, res[k]) for k in OBSERVATION_NAMES if k in res)


def is_normal(text: str | None) -> bool:
    """Whether a text describes a normal study: the labeler's verdict is "No Finding" (a global
    normal statement or a negated observation, and nothing stated or hedged as present).

    >>> is_normal("No acute cardiopulmonary abnormality."), is_normal("Possible small effusion.")
    (True, False)
    """
    return label(text or "").get("No Finding") is Label.POSITIVE


def positive_findings(labels: Mapping[str, Label], *, no_finding: bool = False) -> dict[str, Label]:
    """The observations a text states as present: POSITIVE or UNCERTAIN (a hedged finding counts
    as stated), in the order of ``labels``.

    Args:
        labels: what :func:`label` returned for the text.
        no_finding: keep "No Finding" (the normal verdict) among them.

    Returns:
        ``{observation: Label}``.

    >>> sorted(positive_findings(label("Small left effusion. Possible pneumonia. No pneumothorax.")))
    ['Pleural Effusion', 'Pneumonia']
    """
    return {k: v for k, v in labels.items() if v in PRESENT and (no_finding or k != "No Finding")}
