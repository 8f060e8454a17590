"""The details a text must not get wrong about *this* report, beyond which findings it names.

A draft retrieved from another patient, or written by a model that read one, can name the right
finding and still be wrong for this patient:

- the **side** ("Small right pneumothorax." for a left one; "right mainstem" for a tube in the
  left mainstem bronchus);
- the **severity** the critical rules read ("tension", "large", a malpositioned tube): stated
  where the findings do not ("New large left pleural effusion." beside a small unchanged one,
  "Endotracheal tube in the right mainstem bronchus." beside a tube 4 cm above the carina), or
  left out where they do ("Small right pneumothorax." for a tension pneumothorax);
- a **history** the report never gives ("Resolved right pneumothorax." when this report never
  mentions a pneumothorax);
- a **measurement** the findings do not give ("mass measuring 5 cm" for a 3 cm mass);
- a **communication record** ("Findings called to Dr. Smith at 14:05."): no text written for
  a report can know that a call was made.

:func:`misstated` returns, per observation, the findings' own mention to restate in place of
the text's sentences about it; the verifier (:func:`core.clinical.verifier.verify`) removes
those sentences and adds the findings' sentence. Measurements are only flagged: the finding
itself may be right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.clinical.critical import CRITICAL_BY_OBSERVATION, critical_match, mention_window, qualifier_window
from core.clinical.labeler import Mention, extract, label
from core.clinical.text import normalise, sentences
from core.clinical.vocabulary import PRESENT, Label, device_kinds

__all__ = ["Misstatement", "misstated", "resolved_unmentioned", "is_communication",
           "unmatched_measurements", "sides", "asserted_devices", "same_device", "detail_reasons"]

# Observations that have a side. Support Devices only where the side places a tube ("right
# mainstem"): a right IJ line and a left chest tube are two devices, not one on two sides.
_SIDED = frozenset({"Pneumothorax", "Pleural Effusion", "Consolidation", "Pneumonia", "Atelectasis",
                    "Lung Opacity", "Lung Lesion", "Fracture", "Support Devices"})
_SIDE = re.compile(r"\b(?:left|right|bilateral(?:ly)?|both)\b")
_BOTH = re.compile(r"\b(?:bilateral(?:ly)?|both|bibasilar|bibasal|biapical)\b"
                   r"|\b(?:left|right) (?:greater|more|larger) than\b")
# parenchymal findings are named many ways ("atelectasis/infiltrate", "airspace disease"): one
# group for their sides
_LUNG = frozenset({"Consolidation", "Pneumonia", "Atelectasis", "Lung Opacity"})
# a clause about what has gone or changed is not read for a side ("Cleared left lower lobe
# airspace disease with persistent right middle lobe airspace disease")
_CHANGED = re.compile(r"\b(?:clear(?:ed|ing)|resolv\w*|resolution|improv\w*|decreas\w*|no longer)\b")
_SMALL = re.compile(r"\b(?:small|tiny|trace|minimal|mild|little|slight|subtle)\b")
_MAINSTEM = re.compile(r"\b(?:left|right) main ?stem\b")
# where the words about one finding end ("left effusion and right pneumothorax")
_STOP = re.compile(r",|;|\band\b|\bwith\b|\bas well as\b|\bplus\b")


def sides(observation: str, clause: str, start: int, end: int, near: bool = True) -> frozenset[str]:
    """The sides ("L", "R") a mention states, read close to it (``near``: 30 characters before,
    25 after, not past a comma, "and" or "with"; else in its whole clause); empty when it states
    none. A tube's side counts only as "main stem"."""
    if observation == "Support Devices":
        found = _MAINSTEM.findall(clause)
        return frozenset("L" if w.startswith("left") else "R" for w in found)
    if near:
        before = _STOP.split(clause[max(0, start - 30): start])[-1]
        after = _STOP.split(clause[end: end + 25].replace(", left greater", " left greater")
                            .replace(", right greater", " right greater"))[0]
        window = before + clause[start:end] + after
    else:  # the findings' sides are read in the whole clause: a side too many never flags a text
        window = clause
    if _BOTH.search(window):
        return frozenset({"L", "R"})
    return frozenset("L" if w == "left" else "R" for w in _SIDE.findall(window))


@dataclass(frozen=True)
class Misstatement:
    """A finding the text names with the wrong side or severity; ``mention``: the findings' own
    mention of it (its sentence is shown instead)."""
    observation: str
    reason: str
    mention: Mention


def _critical(m: Mention) -> str | None:
    """The qualified critical finding a mention states ("tension pneumothorax"), if any."""
    c = normalise(m.clause)
    cf = critical_match(m.observation, qualifier_window(m.observation, c, m.start, m.end))
    return cf.name if cf is not None and cf.qualifier else None


def asserted_devices(text: str) -> set[str]:
    """The kinds of device (:data:`core.clinical.vocabulary.DEVICE_KINDS`) that the sentences of
    a text assert."""
    return {k for sent in sentences(text) if label(sent).get("Support Devices") in PRESENT
            for k in device_kinds(normalise(sent))}


def _near(m: Mention) -> str:
    c = normalise(m.clause)
    return c[max(0, m.start - 30): m.end + 10]


def _anywhere(obs: str, name: str, findings: str) -> bool:
    """Whether the qualifier of critical finding ``name`` occurs anywhere in the findings."""
    text = normalise(findings)
    if obs == "Support Devices" and _TIP_WHERE.search(text):
        return True  # the findings place a tip somewhere it may not belong, in their own words
    cf = next((c for c in CRITICAL_BY_OBSERVATION.get(obs, ()) if c.name == name), None)
    return cf is not None and bool(cf.qualifier) and bool(re.search(cf.qualifier, text))


_TIP_WHERE = re.compile(r"\b(?:innominate|azygos|jugular|subclavian|atri(?:um|al)|ventric\w+|esophag\w+|"
                        r"bronch\w+|moved|migrat\w+|retract\w*|advanc\w*|withdr\w*|interrupt\w*|"
                        r"fractur\w*|kink\w*|loop\w*|coil\w*|malposit\w*|reposit\w*)\b")


def _present(text: str) -> list[Mention]:
    return [m for m in extract(text) if m.label in PRESENT]


def misstated(findings: str, text: str) -> list[Misstatement]:
    """The observations the text names with a side or a severity the findings contradict.

    >>> [(x.observation, x.reason) for x in misstated("Small left pneumothorax.", "Small right pneumothorax.")]
    [('Pneumothorax', 'wrong side: the text says right, the findings say left')]
    >>> misstated("Bilateral small pleural effusions.", "Small left pleural effusion.")
    []
    """
    f_ment, t_ment = _present(findings), _present(text)
    out: list[Misstatement] = []
    for obs in dict.fromkeys(m.observation for m in t_ment):
        f_obs = [m for m in f_ment if m.observation == obs]
        if not f_obs:
            continue  # unsupported: the verifier's own rule
        t_obs = [m for m in t_ment if m.observation == obs]
        if obs == "Support Devices":  # restate the findings' tube of the same kind
            kinds = set().union(*(device_kinds(normalise(m.clause)) for m in t_obs))
            f_obs = sorted(f_obs, key=lambda m: not device_kinds(normalise(m.clause)) & kinds)
        if obs in _SIDED:
            group = _LUNG if obs in _LUNG else {obs}
            f_sides = [sides(obs, normalise(m.clause), m.start, m.end, near=False)
                       for m in f_ment if m.observation in group]
            t_sides = frozenset().union(*(sides(obs, normalise(m.clause), m.start, m.end) for m in t_obs
                                          if not _CHANGED.search(normalise(m.clause))))
            # judged only where every mention in the findings has a side ("retrocardiac
            # opacity" is on the left, but says no side)
            f_all = frozenset().union(*f_sides) if all(f_sides) else frozenset()
            if f_all and t_sides - f_all:
                said = " and ".join("left" if s == "L" else "right" for s in sorted(t_sides))
                known = " and ".join("left" if s == "L" else "right" for s in sorted(f_all))
                out.append(Misstatement(obs, f"wrong side: the text says {said}, the findings say {known}",
                                        f_obs[0]))
                continue
        f_crit = {c: m for m in f_obs if (c := _critical(m))}
        t_crit = {c for m in t_obs if (c := _critical(m))}
        # overstated: the qualifier is nowhere in the findings ("The tip has moved into the left
        # innominate vein" is a malposition in a sentence that names no tube)
        over = [c for c in sorted(t_crit - set(f_crit)) if not _anywhere(obs, c, findings)]
        # understated: the text makes it small ("Small right pneumothorax" for a tension one) or
        # leaves out a tension or a malposition; a large effusion called an effusion is not wrong
        under = [c for c in sorted(set(f_crit) - t_crit)
                 if re.search(r"tension|malposition", c) or any(_SMALL.search(_near(m)) for m in t_obs)]
        if over:
            out.append(Misstatement(obs, f"overstated: the text says {over[0]}, the findings do not", f_obs[0]))
        elif under:
            out.append(Misstatement(obs, f"understated: the findings report {under[0]}, the text does not",
                                    f_crit[under[0]]))
    return out


_HISTORY = re.compile(r"\b(?:resolv\w*|resolution|no longer|removed|removal|interval clearing)\b")


def resolved_unmentioned(findings_labels: dict, text: str, context_labels: dict) -> list[str]:
    """Observations the text says have resolved (or were removed) while neither the findings nor
    the indication and comparison mention them at all: another patient's history.

    >>> resolved_unmentioned({}, "Resolved right pneumothorax.", {})
    ['Pneumothorax']
    """
    out = []
    for m in extract(text):
        if m.label is not Label.NEGATIVE or m.observation in findings_labels or m.observation in context_labels:
            continue
        if _HISTORY.search(mention_window(normalise(m.clause), m.start, m.end)) and m.observation not in out:
            out.append(m.observation)
    return out


_CALLED = re.compile(
    r"\b(?:called|telephoned|phoned|paged|discussed|communicated|conveyed|relayed|notified|reported|"
    r"d/w)\b[^.]*\b(?:dr|doctor|physician|team|nurse|np|pa|provider|clinician|resident|fellow|"
    r"attending|service|surgeon|ed|er|icu|ordering|referring)\b"
    r"|\b(?:at|on) \d{1,2}:\d{2}\b|\bread ?back\b|\bby telephone\b|\bby phone\b|\bverbal(?:ly)? "
    r"(?:report|communicat)")


def is_communication(sentence: str) -> bool:
    """Whether a sentence records a call or a discussion ("Findings called to Dr. Smith at 14:05").

    >>> is_communication("Findings called to Dr. Smith at 14:05."), is_communication("No pneumothorax.")
    (True, False)
    """
    return bool(_CALLED.search(sentence.lower()))


_MEASURE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:x\s*\d+(?:\.\d+)?\s*)*(mm|cm)\b")


def _lengths(text: str) -> set[float]:
    """Every length a text gives, in mm ("1.5 cm" -> 15.0; "2 x 3 cm": 30.0, its last figure)."""
    out = set()
    for m in _MEASURE.finditer(text.lower()):
        value = float(m.group(1)) * (10.0 if m.group(2) == "cm" else 1.0)
        out.add(round(value, 1))
        for dim in re.findall(r"x\s*(\d+(?:\.\d+)?)", m.group(0)):
            out.add(round(float(dim) * (10.0 if m.group(2) == "cm" else 1.0), 1))
    return out


def unmatched_measurements(findings: str, text: str, context: str = "") -> list[str]:
    """The lengths a text gives that the findings (or indication and comparison) do not give,
    as written in the text.

    >>> unmatched_measurements("Right upper lobe mass measuring 3 cm.", "Right upper lobe mass, 5 cm.")
    ['5 cm']
    >>> unmatched_measurements("Nodule of 1.5 cm.", "15 mm nodule.")
    []
    """
    known = _lengths(findings) | _lengths(context)
    out = []
    for sent in sentences(text):
        for m in _MEASURE.finditer(sent.lower()):
            if not _lengths(m.group(0)) <= known and m.group(0) not in out:
                out.append(m.group(0))
    return out


def same_device(obs: str, sentence: str, mention: Mention) -> bool:
    """Whether a sentence speaks of the tube a misstatement is about (any other finding: True):
    "PICC in the SVC." stays when the nasogastric tube was misstated."""
    kinds, own = device_kinds(normalise(sentence)), device_kinds(normalise(mention.clause))
    return obs != "Support Devices" or not kinds or not own or bool(kinds & own)


def detail_reasons(details: dict) -> list[str]:
    """One line per detail a text still gets wrong (the verifier's ``details``), for the reviewer."""
    return ([f"{w.reason} ({w.observation})" for w in details["wrong"]]
            + [f"unsupported: the text says {obs} resolved, which this report never mentions"
               for obs in details["history"]]
            + [f"a call or discussion is recorded: '{u}'" for u in details["calls"]]
            + [f"measurement: the text gives {x}, which the findings do not" for x in details["lengths"]])
