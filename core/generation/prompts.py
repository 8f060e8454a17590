"""Chat messages that ask the model for the IMPRESSION of a chest X-ray report.

Prompts are kept short on purpose: SmolLM2-135M has little capacity for long instructions, and
every prompt token costs CPU time at generation and at nightly training.

>>> msgs = impression_messages("Heart size normal. Lungs clear.", indication="Cough")
>>> [m["role"] for m in msgs]
['system', 'user']
>>> print(msgs[1]["content"])
INDICATION: Cough
FINDINGS: Heart size normal. Lungs clear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from core.errors import ValidationError
from core.generation.retrieval import tidy

# Chosen on 24 IU reports against three alternatives (ROUGE-L of the zero-shot base model: 0.114
# vs 0.043-0.084). Wordings naming "the IMPRESSION of a report" made SmolLM2-135M echo that phrase.
SYSTEM_PROMPT = (
    "You are a radiologist. Given the findings of a chest X-ray, write the impression: one short "
    "sentence with the main conclusion, for example 'No acute cardiopulmonary abnormality.'"
)

# With a coarse draft in the prompt (retrieve-and-edit): the model keeps what the findings support
# and changes what they contradict or add. Base and reader adapters are trained on this wording.
DRAFT_SYSTEM_PROMPT = (
    "You are a radiologist. Given the findings of a chest X-ray and a DRAFT impression taken from "
    "similar past reports, write the impression for these findings: keep what they support, "
    "correct what they contradict, add what the draft misses. Be short."
)

_SPACES = re.compile(r"\s+")


def _clean(text: str | None) -> str:
    """Collapse runs of whitespace (IU reports carry stray newlines and double spaces)."""
    return _SPACES.sub(" ", text or "").strip()


def report_text(findings: str, indication: str | None = None, comparison: str | None = None,
                draft: str | None = None) -> str:
    """The user turn for one report: labelled sections, empty ones left out.

    Args:
        findings: the FINDINGS section; must not be blank.
        indication: the INDICATION section, or None.
        comparison: the COMPARISON section, or None.
        draft: the coarse draft impression (retrieval and vote), or None.

    Returns:
        Lines ``INDICATION: ...``, ``COMPARISON: ...``, ``FINDINGS: ...``, ``DRAFT: ...``.

    >>> report_text("Lungs clear.", comparison="None.")
    'COMPARISON: None.\\nFINDINGS: Lungs clear.'
    """
    findings_clean = _clean(findings)
    if not findings_clean:
        raise ValidationError(f"findings is blank ({findings!r}); an impression needs findings")
    lines = []
    if _clean(indication):
        lines.append(f"INDICATION: {_clean(indication)}")
    if _clean(comparison):
        lines.append(f"COMPARISON: {_clean(comparison)}")
    lines.append(f"FINDINGS: {findings_clean}")
    if _clean(draft):
        lines.append(f"DRAFT: {_clean(draft)}")
    return "\n".join(lines)


def system_prompt(style: str | None = None, with_draft: bool = False) -> str:
    """The system turn, with an optional style instruction appended.

    Args:
        style: a short instruction such as "Write for the referring GP, in plain words.", or None.
        with_draft: the user turn carries a coarse DRAFT to edit.

    Returns:
        The system prompt text.
    """
    base = DRAFT_SYSTEM_PROMPT if with_draft else SYSTEM_PROMPT
    style_clean = _clean(style)
    return f"{base} Style: {style_clean}" if style_clean else base


def impression_messages(
    findings: str,
    indication: str | None = None,
    comparison: str | None = None,
    examples: Iterable[tuple[str, str]] = (),
    style: str | None = None,
    draft: str | None = None,
) -> list[dict]:
    """Chat messages asking for the impression of one report, with optional few-shot examples.

    Each example becomes a prior user turn (its findings) and assistant turn (its impression), so the
    model sees the exact format it must answer in.

    Args:
        findings: the report's FINDINGS section; must not be blank.
        indication: the INDICATION section, or None.
        comparison: the COMPARISON section, or None.
        examples: (findings, impression) pairs shown before the report, in order.
        style: an optional style instruction added to the system prompt.
        draft: the coarse draft (retrieval and vote) for the model to keep or correct, or None.

    Returns:
        A list of ``{"role": ..., "content": ...}`` dicts: system, (user, assistant) per example, user.

    >>> msgs = impression_messages("Lungs clear.", examples=[("Small left effusion.", "Small left pleural effusion.")])
    >>> [m["role"] for m in msgs]
    ['system', 'user', 'assistant', 'user']
    """
    messages = [{"role": "system", "content": system_prompt(style, with_draft=bool(_clean(draft)))}]
    for i, example in enumerate(examples):
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise ValidationError(f"examples[{i}] must be a (findings, impression) pair, got {example!r}")
        ex_findings, ex_impression = example
        if not _clean(ex_impression):
            raise ValidationError(f"examples[{i}] has a blank impression ({ex_impression!r})")
        try:
            user = report_text(ex_findings)
        except ValidationError as exc:
            raise ValidationError(f"examples[{i}]: {exc}") from None
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": _clean(ex_impression)})
    messages.append({"role": "user", "content": report_text(findings, indication, comparison, draft)})
    return messages


_PREFIX = re.compile(r"^\s*(impression|final impression)\s*:\s*", re.I)



PRIOR_WORDS = re.compile(r"\b(?:stable|unchanged|interval|compared|comparison|prior|previous|again|"
                          r"no change|improv\w+|worsen\w*|increas\w+|decreas\w+|new)\b", re.I)
_NO_PRIOR = re.compile(r"^\W*(?:none|n/?a|no prior\w*|not available)\W*(?:available\W*)?$", re.I)



def clean_output(text: str) -> str:
    """Trim a model's answer to the impression itself (no heading, no trailing chatter)."""
    text = _PREFIX.sub("", text.strip())
    text = text.split("\n\n")[0].strip()
    return text or "No impression generated."



def has_prior(comparison: str | None) -> bool:
    """Whether a COMPARISON section names a prior study (not blank, "None.", "None available")."""
    c = (comparison or "").strip()
    return bool(c) and not _NO_PRIOR.match(c)



def draft_messages(report: dict, neighbours: Sequence, shots: int, draft: str | None = None,
                   style: str | None = None) -> list[dict]:
    """The one prompt the model writes from, for serving, SFT, DPO/GRPO and the gate: the ``shots``
    closest neighbours as few-shot examples (the closest right before the report), then the report
    with the coarse ``draft`` (the vote's text) to keep or correct.

    Args:
        report: a dict with ``findings`` (``indication``, ``comparison`` optional).
        neighbours: retrieved :class:`core.generation.retrieval.Neighbour` objects, closest first.
        shots: how many of them to show.
        draft: the coarse draft (:meth:`CoarseToFine.coarse`), or None for the draft-free prompt.
        style: an optional style instruction for the system turn.

    Returns:
        ``core.generation.prompts.impression_messages`` for the report with those examples.
    """
    examples = [(nb.findings, tidy(nb.impression)) for nb in list(neighbours)[:shots][::-1]]
    return impression_messages(report["findings"], report.get("indication"), report.get("comparison"),
                               examples=examples, style=style, draft=draft)
