"""The check: every text a person is shown goes through the clinical verifier, then its style.

:func:`checked_text` is the one way a text reaches a screen, a CSV or a study arm: the model's
text, the coarse draft when the model's fails, memory texts and styled variants alike.
"""

from __future__ import annotations

import re

from core.clinical.verifier import verify
from core.generation.prompts import has_prior
from core.generation.styles import apply_style


# A text that speaks of a prior study ("No change.", "Resolution of the effusion.") beside a
# report without one is flagged (the words PRIOR_WORDS adds, "new", "increased", are too common).
_SAYS_PRIOR = re.compile(r"\b(?:compared|prior|previous|interval|unchanged|stable|no (?:significant )?change"
                         r"|resolv\w+|resolution)\b", re.I)


def fails(checked: dict) -> bool:
    """A text the clinical check could not make right (the context-only prior flag aside)."""
    return bool(checked["unsupported"] or checked["contradictions"] or checked["missing_critical"]
                or checked["normal_despite"] or checked.get("misstated"))



def checked_text(report: dict, text: str, style: str = "default", repair: bool = True) -> tuple[str, dict]:
    """The clinical verifier and the style, as every shown text gets them (pipeline, a reader's
    memory text, a study arm): verify and repair the text against this report
    (:func:`core.clinical.verifier.verify`), render the style, verify the styled text again.

    Args:
        report: dict with ``findings`` (``indication``, ``comparison`` optional).
        text: the impression to show.
        style: a style name of :mod:`core.generation.styles`.
        repair: remove unsupported or contradicted statements and add missing findings.

    Returns:
        (text to show, flags): ``repaired`` (sentences added), ``removed``, ``check_ok``,
        ``missing_critical``, ``contradictions``, ``unsupported``, ``normal_despite``,
        ``messages``, ``prior_without_comparison`` and ``needs_review``.
    """
    findings = report["findings"]
    ind, comp = report.get("indication"), report.get("comparison")
    first = verify(findings, text, ind, comp, repair=repair)
    text = first.text
    styled = apply_style(text, style, findings, ind, comp)
    # what is shown is what is checked; verify already checked first.text after its repairs
    final = first if styled == text else verify(findings, styled, ind, comp, repair=False)
    messages = list(final.reasons)
    # (findings that say "unchanged" or "resolved" speak of a prior study themselves)
    prior = bool(not has_prior(comp) and _SAYS_PRIOR.search(text) and not _SAYS_PRIOR.search(findings))
    if prior:
        messages.append("context: the impression refers to a prior study but the report has no comparison")
    flags = {"repaired": first.added, "removed": first.removed, "check_ok": not final.needs_review,
             "missing_critical": final.missing_critical, "contradictions": final.contradictions,
             "unsupported": final.unsupported, "normal_despite": final.normal_despite,
             "misstated": [f"{w.reason} ({w.observation})" for w in final.details.get("wrong", [])]
             + [f"says {o} resolved" for o in final.details.get("history", [])],
             "messages": messages, "needs_review": bool(final.needs_review or prior)}
    if prior:
        flags["prior_without_comparison"] = True
    return styled, flags
