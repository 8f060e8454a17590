"""The clinical verifier: an impression checked against its findings, and repaired.

:func:`check_impression` compares an impression with its findings (critical findings missing,
contradictions, unsupported observations); :func:`consistency` turns that into a score;
:func:`repair_impression` adds the critical findings an impression omits; :func:`verify` runs on
every text a radiologist or patient sees and removes, adds or flags (:class:`Verification`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.clinical.critical import (
    CRITICAL_BY_OBSERVATION,
    CRITICAL_FINDINGS,
    WEIGHT_CRITICAL,
    WEIGHTS,
    critical_match,
    mention_window,
    qualifier_window,
)
from core.clinical.details import (asserted_devices, detail_reasons, is_communication, misstated,
                                   resolved_unmentioned, same_device, unmatched_measurements)
from core.clinical.labeler import Mention, aggregate, extract, is_normal_statement, label
from core.clinical.text import normalise, sentences
from core.clinical.vocabulary import (
    NORMAL_STATEMENTS,
    OBSERVATION_NAMES,
    PRESENT,
    DEVICE_KINDS,
    RELATED,
    Label,
    device_kinds,
)
from core.errors import ClinicalError

__all__ = ["CheckResult", "check_impression", "consistency", "repair_impression", "MAJOR_FINDINGS",
           "NOT_ACUTE_MAJOR", "CHRONIC_FINDINGS", "acute_qualified",
           "Verification", "major_findings", "verify"]


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
    f_firm = aggregate([m for m in f_mentions if not m.qualified])
    i_firm = aggregate([m for m in i_mentions if not m.qualified])
    res = CheckResult(findings_labels=f_lab, impression_labels=i_lab)

    def covered(obs: str, extra: tuple[str, ...] = ()) -> bool:
        return i_lab.get(obs) in PRESENT or any(i_lab.get(o) in PRESENT for o in extra)

    def device_covered(m: Mention) -> bool:
        """A malpositioned tube or line is stated by a sentence that names its kind (any kind,
        where the findings name none) as malpositioned: "NG tube in place." or "Endotracheal
        tube 1 cm above the carina." does not state "NG tube coiled in the esophagus"."""
        kinds = device_kinds(normalise(m.clause))
        for sent in sentences(impression):
            t = normalise(sent)
            if (not kinds or kinds & device_kinds(t)) and critical_match("Support Devices", t):
                return True
        return False

    for m in f_mentions:
        if not m.critical or m.observation in res.missing_critical:
            continue
        if f_lab.get(m.observation) not in PRESENT:
            continue
        cf = critical_match(m.observation, qualifier_window(m.observation, normalise(m.clause), m.start, m.end))
        extra = cf.satisfied_by if cf else ()
        if not (device_covered(m) if m.observation == "Support Devices" and cf else
                covered(m.observation, extra)):
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
    f_said = {m.observation for m in f_mentions if m.source != "normal"}
    for obs, i in i_lab.items():
        if obs == "No Finding" or i not in PRESENT or obs in f_lab:
            continue
        # a related finding supports it, unless only a normal statement names it: "The lungs
        # are clear." (no opacity) is no support for "Left upper lobe nodule."
        if any(o in f_said for o in RELATED.get(obs, ())):
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
    r"^(?:[a-z][a-z/& -]{0,24}:\s+)?(?:and |also |again |but |however |otherwise |,\s*)*"  # "LUNGS: "
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
    misplaced: set[str] | None = None  # kinds of the malpositioned tube ({}: a tube of no kind)
    for obs in result.missing_critical:
        m = next(x for x in mentions if x.observation == obs)
        s = _sentence_for(m)
        if s not in added:
            added.append(s)
        if obs == "Support Devices":
            misplaced = device_kinds(normalise(m.clause))

    def stale(sentence: str) -> bool:
        """A sentence that states the malpositioned tube as if it were in place ("NG tube in
        place." beside "Nasogastric tube coiled in the esophagus."): it goes."""
        if misplaced is None or label(sentence).get("Support Devices") not in PRESENT:
            return False
        t = normalise(sentence)
        kinds = device_kinds(t)  # "Tubes and lines in place." names none: it goes too
        return bool(not misplaced or not kinds or misplaced & kinds) and critical_match("Support Devices", t) is None
    numbered = style == "numbered" or (style == "auto" and bool(_ENUM_START.match(impression)))
    items = []
    for item in (_ENUM_SPLIT.split(impression) if numbered else [impression]):
        item = item.strip()
        sents = sentences(item)
        kept = [x for x in sents if not NORMAL_STATEMENTS.search(normalise(x)) and not stale(x)]
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
# wrong. Qualified as the radiologist would: a calcified or granulomatous nodule is benign, an
# old or healed fracture is not news, and of the devices only lines and tubes count (not wires
# or clips).
MAJOR_FINDINGS: dict[str, str | None] = {
    "Pleural Effusion": None,
    "Pneumothorax": None,
    "Consolidation": None,
    "Pneumonia": None,
    "Edema": None,
    "Cardiomegaly": None,
    "Mass": None,
    "Nodule": r"^(?!.*\b(?:calcifi|granulom)\w*).*$",
    "Fracture": None,
    "Free Air": None,
    "Support Devices": r"\b(?:catheters?|picc|line|tubes?|tracheostomy|drains?)\b",
}
_MAJOR_EXCLUDE = {"Fracture": next(cf.exclude for cf in CRITICAL_FINDINGS if cf.observation == "Fracture")}

# Major findings that are not acute disease: "No acute cardiopulmonary abnormality." stays true
# beside them, as radiologists write it ("Right PICC tip in the SVC. No acute cardiopulmonary
# abnormality."). Beside one of these, a normal statement that only speaks of acute disease is
# kept and the finding's own sentence goes before it, provided everything else the findings
# state is chronic too (:data:`CHRONIC_FINDINGS`) and no tube or line is malpositioned. An
# unqualified normal statement ("Normal chest.") still goes.
NOT_ACUTE_MAJOR = frozenset({"Cardiomegaly", "Nodule", "Support Devices"})
CHRONIC_FINDINGS = NOT_ACUTE_MAJOR | {  # "Lung Lesion" comes with every nodule (a mass is "Mass")
    "No Finding", "Lung Lesion", "Granuloma", "Calcification", "Scoliosis", "Degenerative Spine",
    "Tortuous Aorta", "Scarring", "Emphysema", "Low Lung Volumes", "Hernia", "Elevated Diaphragm"}
_ACUTE_QUALIFIED = re.compile(
    r"\b(?:no|negative for|without) (?:evidence of |radiographic evidence of |signs? of |xxxx of |definite )?"
    r"(?:acute|active)\b(?: (?:or (?:acute|active|chronic) )?[a-z-]+){0,3}")


def acute_qualified(text: str) -> bool:
    """Whether every normal statement of a text speaks only of acute disease ("No acute
    disease.", "No evidence of active disease."), so that a chronic finding or a device beside
    it does not make it false. "Normal chest radiograph without acute abnormality." is not: it
    also says "normal chest".

    >>> acute_qualified("No acute cardiopulmonary abnormality."), acute_qualified("Normal chest.")
    (True, False)
    >>> acute_qualified("No acute disease. Normal chest."), acute_qualified("Normal chest without acute findings.")
    (False, False)
    """
    for sent in sentences(text):
        t = normalise(sent)
        if not is_normal_statement(t):
            continue
        if not _ACUTE_QUALIFIED.search(t) or is_normal_statement(_ACUTE_QUALIFIED.sub(" ", t)):
            return False
    return True


# A normal statement after a finding the text itself states is false when that finding is acute
# ("Small left pneumothorax. No acute disease."), unless it says "otherwise" ("Small left
# pneumothorax. Otherwise no acute disease.") or, beside a fracture or free air, speaks only of
# the heart and lungs ("Displaced clavicle fracture. No acute cardiopulmonary disease.": IU
# radiologists write it so).
_OTHERWISE = re.compile(r"\b(?:otherwise|elsewhere|else|remaining)\b|\bno (?:other|additional|further)\b")
_NO_CHANGE = re.compile(r"\bno (?:significant |interval |appreciable )?(?:change|progression)")
_HEART_AND_LUNGS = re.compile(r"\b(?:cardiopulmonary|cardiothoracic|intrathoracic|pulmonary|cardiac|lungs?|pleural"
                              r"|parenchymal)\b")
_OUTSIDE_HEART_AND_LUNGS = frozenset({"Fracture", "Free Air"})


def _normal_false_beside(sent: str, obs: str, mention: Mention, own: bool = False) -> bool:
    """Whether the normal statement ``sent`` is false beside the major finding ``obs`` that the
    same text states elsewhere (``mention``: the finding in the findings). With ``own``, also
    when ``sent`` states the finding itself ("Small left pneumothorax, no acute disease."):
    such a sentence is flagged, not removed (it holds the finding)."""
    t = normalise(sent)
    if not is_normal_statement(t) or _OTHERWISE.search(t):
        return False
    if label(sent).get(obs) in PRESENT and (not own or _NO_CHANGE.search(t)):
        return False  # "No significant change in the right pneumothorax." is no normal statement
    if obs in NOT_ACUTE_MAJOR:  # in place, not acute; a malpositioned tube or line is
        return obs == "Support Devices" and mention.critical
    return not (obs in _OUTSIDE_HEART_AND_LUNGS and _HEART_AND_LUNGS.search(t))


def _units(text: str) -> list[str]:
    """The numbered items of a numbered text, else its sentences."""
    return [u.strip() for u in (_ENUM_SPLIT.split(text) if _ENUM_START.match(text) else sentences(text))
            if u.strip()]


def _chronic_only(findings_labels: dict[str, Label], denied: set[str], majors: dict[str, Mention]) -> bool:
    """Whether a normal statement of no acute disease can stay beside these findings: every
    denied major finding is one of :data:`NOT_ACUTE_MAJOR`, no tube or line in them is
    malpositioned, and everything the findings state (``findings_labels``, the check's) is
    chronic (:data:`CHRONIC_FINDINGS`)."""
    if not denied or not denied <= NOT_ACUTE_MAJOR:
        return False
    device = majors.get("Support Devices")
    if device is not None and device.critical:  # the labeler's reading (qualifier_window)
        return False
    return all(obs in CHRONIC_FINDINGS for obs, lab in findings_labels.items() if lab in PRESENT)


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
    details: dict = field(default_factory=dict)  # left: see _problems

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
        window = mention_window(normalise(m.clause), m.start, m.end)
        need = MAJOR_FINDINGS[m.observation]
        if need and not re.search(need, window):
            continue
        excl = _MAJOR_EXCLUDE.get(m.observation)
        if excl and re.search(excl, window):
            continue
        out[m.observation] = m
    return out


def _stated(obs: str, labels: dict[str, Label]) -> bool:
    cf_extra = CRITICAL_BY_OBSERVATION[obs][0].satisfied_by if obs in CRITICAL_BY_OBSERVATION else ()
    return labels.get(obs) in PRESENT or any(labels.get(o) in PRESENT for o in (*cf_extra, *RELATED.get(obs, ())))


def _problems(findings: str, text: str, context: dict[str, Label],
              context_text: str = "") -> tuple[CheckResult, list[str], list[str], dict]:
    """(check, unsupported not stated in the context either, major findings a normal text
    denies, the details it gets wrong: :mod:`core.clinical.details`). A kind of tube or line the
    text asserts and the report never names (an endotracheal tube beside this report's
    nasogastric tube) is unsupported, by its kind."""
    check = check_impression(findings, text)
    details = {"wrong": misstated(findings, text),
               "history": resolved_unmentioned(check.findings_labels, text, context),
               "lengths": unmatched_measurements(findings, text, context_text),
               "calls": [u for u in sentences(text) if is_communication(u)]}
    unsupported = [o for o in check.unsupported
                   if not (context.get(o) in PRESENT or any(context.get(r) in PRESENT for r in RELATED.get(o, ())))]
    asserted = asserted_devices(text) if "Support Devices" not in unsupported else set()
    if asserted:  # (else no device at all is stated, and "Support Devices" says it)
        # the findings' devices that are there (not "no endotracheal tube"), and any the
        # indication or comparison names ("PICC placement")
        unsupported += sorted(asserted - asserted_devices(findings) - device_kinds(normalise(context_text)))
    t_lab = check.impression_labels
    says_normal = t_lab.get("No Finding") is Label.POSITIVE or is_normal_statement(text)
    denied = []
    majors = major_findings(findings)
    for obs, mention in majors.items():
        if _stated(obs, t_lab):  # stated, and a normal statement beside it is false
            if says_normal and any(_normal_false_beside(u, obs, mention, own=True) for u in sentences(text)):
                denied.append(obs)
        elif says_normal or t_lab.get(obs) is Label.NEGATIVE:
            denied.append(obs)
    return check, unsupported, denied, details


def _replace_false_sentences(findings: str, text: str, check: CheckResult, unsupported: list[str],
                             denied: list[str], details: dict) -> tuple[str, list[str], list[str]]:
    """Rules 1-3 of :func:`verify`: remove each sentence that asserts an unsupported or negated
    finding, denies a major finding, or misstates a finding's side or severity (its sentence from
    the findings is added), says that a finding this report never mentions has resolved, or
    records a call; add each denied major finding's own sentence.

    Returns:
        ``(text, removed, added)``; the text unchanged (nothing removed) when nothing true would
        be left to show, so that it is flagged instead.
    """
    bad = set(unsupported) | {o for o in check.contradictions if check.impression_labels.get(o) in PRESENT}
    wrong = {w.observation: w.mention for w in details["wrong"]}
    # negations of what the findings state, and histories of what they never mention
    gone = {o for o in check.contradictions if check.impression_labels.get(o) is Label.NEGATIVE
            and o in check.missing_critical} | set(details["history"])
    bad_devices = bad & set(DEVICE_KINDS)
    denied_set = set(denied)
    numbered = bool(_ENUM_START.match(text))
    majors = major_findings(findings)
    chronic_only = _chronic_only(check.findings_labels, denied_set, majors)
    stated = {o for o in denied_set if _stated(o, check.impression_labels)}  # the text's own finding
    unstated = denied_set - stated
    kept: list[str] = []
    removed: list[str] = []
    first_normal: int | None = None  # where the first kept normal statement is
    for unit in _units(text):
        # a call recorded in another report's words goes alone, not with its numbered item
        sent = " ".join(u for u in sentences(unit) if not is_communication(u)) or unit
        if sent != unit:
            removed += [_end(u) for u in sentences(unit) if is_communication(u)]
        s_lab = label(sent)
        asserts_bad = any(s_lab.get(o) in PRESENT for o in bad) or bool(
            bad_devices and s_lab.get("Support Devices") in PRESENT
            and device_kinds(normalise(sent)) & bad_devices)
        normal = is_normal_statement(sent)
        stays_true = normal and ((chronic_only and acute_qualified(sent))
                                 or (unstated <= _OUTSIDE_HEART_AND_LUNGS
                                     and bool(_HEART_AND_LUNGS.search(normalise(sent)))))
        denies = ((normal and unstated and not stays_true)
                  or any(_normal_false_beside(sent, o, majors[o]) for o in stated)
                  or any(s_lab.get(o) is Label.NEGATIVE for o in denied_set))
        misstates = any(s_lab.get(o) in PRESENT and same_device(o, sent, m) for o, m in wrong.items()) or any(
            s_lab.get(o) is Label.NEGATIVE for o in gone) or is_communication(sent)
        if asserts_bad or denies or misstates:
            removed.append(_end(sent))
        else:
            kept.append(_end(sent))
            if normal and first_normal is None:
                first_normal = len(kept) - 1
    added: list[str] = []
    for s in [*(_sentence_for(majors[o]) for o in denied if o in unstated),
              *(_sentence_for(m) for m in wrong.values())]:
        if s not in added and s not in kept:
            added.append(s)
    if not kept and not added and not check.missing_critical:
        return text, [], []  # nothing true left to show (rule 4 adds nothing): keep it, flag it
    # the findings go before a normal statement that stays ("Gastrostomy tube. No acute disease.")
    at = len(kept) if first_normal is None else first_normal
    items = kept[:at] + added + kept[at:]
    text = " ".join(f"{i}. {x}" for i, x in enumerate(items, 1)) if numbered else " ".join(items)
    return text, removed, added


def _reasons(check: CheckResult, unsupported: list[str], denied: list[str], details: dict) -> list[str]:
    """One line per problem left, for the reviewer."""
    reasons = [f"unsupported: the text states {obs}, which this report never mentions" for obs in unsupported]
    reasons += detail_reasons(details)
    reasons += [msg for msg in check.messages if msg.startswith(("missing critical", "contradiction"))]
    reasons += [f"normal statement although the findings report {obs}" for obs in denied]
    return reasons


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
       sentence from the findings is added. Beside findings that are not acute disease
       (:data:`NOT_ACUTE_MAJOR`: cardiomegaly, a nodule, a line or tube in place) and nothing
       else but chronic findings, a statement of no *acute* disease is true and stays, after
       the finding's sentence. A normal statement beside an acute finding the text itself
       states goes too ("Small left pneumothorax. No acute disease."), unless it says
       "otherwise", or speaks only of the heart and lungs beside a fracture or free air.
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
    >>> verify("Right PICC line tip in the SVC. Lungs clear.", "No acute disease.").text
    'Right PICC line tip in the SVC. No acute disease.'
    """
    findings = _check_text(findings, "findings")
    original = _check_text(text, "text")
    context_text = " ".join(x for x in (indication, comparison) if x)
    context = label(context_text)
    out = Verification(text=original, original=original)
    check, unsupported, denied, details = _problems(findings, original, context, context_text)
    if repair:
        current = original
        for _ in range(2):  # a second pass for what the first one's removals uncover
            current, removed, added = _replace_false_sentences(findings, current, check, unsupported, denied,
                                                               details)
            current, more = repair_impression(findings, current)
            out.removed += removed
            out.added += added + more
            check, unsupported, denied, details = _problems(findings, current, context, context_text)
            if not (removed or added or more) or not (unsupported or denied or check.contradictions
                                                      or details["wrong"] or details["history"]):
                break
        out.text = current
    out.check = check
    out.unsupported = unsupported
    out.normal_despite = denied
    out.missing_critical = list(check.missing_critical)
    out.contradictions = list(check.contradictions)
    out.details = details
    out.reasons = _reasons(check, unsupported, denied, details)
    out.needs_review = bool(out.reasons)
    return out
