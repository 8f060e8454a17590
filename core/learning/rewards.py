"""The hierarchical clinical reward for online RL (GRPO), after RadFlow's design.

Four parts, each a tested function returning a score in [0, 1] (1 = perfect):

1. :func:`findings_level`: which positive findings of the Findings the impression covers,
   weighted by clinical weight (``core.clinical.critical.criticality``: critical 5, major 2, moderate 1,
   minor 0.5), so leaving out a pneumothorax costs ten times what leaving out a granuloma does.
2. :func:`impression_level`: closeness to *this radiologist's* accepted impressions and style:
   ROUGE-L against their reference impressions (their edit of this report, or their memory's
   impressions of the most similar reports) blended with a style-feature match
   (:class:`StyleProfile`: numbered list or prose, sentence length, their phrase for a normal
   study, a recommendation line, abbreviations).
3. :func:`global_consistency`: nothing in the impression that the Findings do not support, and
   no negation flips (a finding positive on one side and negated on the other).
4. :func:`critical_awareness`: errors on critical findings weigh most: 0 as soon as a critical
   finding of the Findings is missed or negated, 1 otherwise.

:func:`hierarchical_reward` combines them as a weighted sum, and on *critical cases* (Findings
that report a critical finding) it regularises harder toward the reference: it subtracts
``critical_anchor * (1 - ROUGE-L(impression, reference_completion))``, where the reference
completion is the reference policy's own greedy impression of the same prompt (the model the
reader starts from, before the night's training: :func:`core.learning.grpo.reference_completions`), not
a text from the reader's feedback: the reader's rejected text is what they did *not* want, and
pulling toward it would teach the mistake. GRPO's KL term toward the reference (``beta``)
applies to every case; the anchor makes it stronger where mistakes are dangerous. (TRL's GRPO
has one global KL coefficient, so the extra regularisation is expressed in the reward rather
than as a per-sample KL weight.)

:func:`grpo_reward_funcs` adapts these to TRL's reward-function signature.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from core.clinical.critical import CRITICAL_FINDINGS, WEIGHT_CRITICAL, WEIGHTS, criticality
from core.clinical.labeler import extract, label
from core.clinical.verifier import check_impression
from core.clinical.vocabulary import PRESENT, RELATED
from core.errors import RewardError  # noqa: F401 (defined in core.errors)
from core.evaluation.metrics import rouge_l

__all__ = ["RewardError", "RewardWeights", "RewardBreakdown", "StyleProfile", "findings_level",
           "impression_level", "global_consistency", "critical_awareness", "hierarchical_reward",
           "is_critical_case", "grpo_reward_funcs"]


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a conversational completion: [{"role": ..., "content": ...}]
        return " ".join(m.get("content", "") for m in value if isinstance(m, dict))
    if not isinstance(value, str):
        raise RewardError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _present_findings(findings: str) -> dict[str, float]:
    """observation -> weight for every observation the Findings report as present."""
    labels = label(findings)
    weights: dict[str, float] = {}
    for m in extract(findings):
        if m.observation == "No Finding" or labels.get(m.observation) not in PRESENT:
            continue
        if m.label not in PRESENT:
            continue
        w = criticality(m.observation, m.sentence)
        weights[m.observation] = max(weights.get(m.observation, 0.0), w)
    return weights


def _covered(observation: str, impression_labels: dict) -> bool:

    if impression_labels.get(observation) in PRESENT:
        return True
    related = set(RELATED.get(observation, ()))
    for cf in CRITICAL_FINDINGS:
        if cf.observation == observation:
            related |= set(cf.satisfied_by)
    return any(impression_labels.get(o) in PRESENT for o in related)


def findings_level(findings: str, impression: str) -> float:
    """Weighted recall of the Findings' positive findings in the impression.

    Args:
        findings: the Findings section.
        impression: the impression to score.

    Returns:
        Sum of the clinical weights of covered findings over the sum of all, in [0, 1]; 1.0 when
        the Findings report nothing positive (a normal study has nothing to cover).
    """
    findings, impression = _text(findings, "findings"), _text(impression, "impression")
    weights = _present_findings(findings)
    if not weights:
        return 1.0
    imp = label(impression)
    total = sum(weights.values())
    return sum(w for o, w in weights.items() if _covered(o, imp)) / total


_NUMBERED = re.compile(r"(?:^|\s)\d{1,2}[.)]\s")
_SENT = re.compile(r"[.!?]+(?:\s|$)")
_RECOMMEND = re.compile(r"\b(?:recommend\w*|suggest(?:ed)? (?:follow|correlation|ct)|follow-?up|"
                        r"clinical correlation|correlate clinically)\b", re.I)
_ABBREV = re.compile(r"\b(?:[A-Z]{2,5}|b/l|w/o|s/p|r/o|c/w|f/u|hx)\b")


def _style_features(text: str) -> dict[str, float]:
    words = text.split()
    sentences = [s for s in _SENT.split(text) if s.strip()] or [text]
    return {
        "numbered": 1.0 if _NUMBERED.search(" " + text) else 0.0,
        "short_sentences": 1.0 if len(words) / max(len(sentences), 1) <= 5 else 0.0,
        "long": 1.0 if len(words) > 12 else 0.0,
        "recommendation": 1.0 if _RECOMMEND.search(text) else 0.0,
        "abbreviations": 1.0 if _ABBREV.search(text.replace("XXXX", "")) else 0.0,
    }


@dataclass
class StyleProfile:
    """A radiologist's style, as feature rates over their accepted impressions.

    Attributes:
        features: feature -> share of their impressions that have it (numbered, short_sentences,
            long, recommendation, abbreviations).
        normal_phrase: their most frequent impression among studies they call normal, or None.
        n: how many impressions the profile was built from.
    """
    features: dict[str, float] = field(default_factory=dict)
    normal_phrase: str | None = None
    n: int = 0

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "StyleProfile":
        """Build a profile from accepted impressions (empty texts are ignored)."""

        texts = [t for t in (_text(x, "impression") for x in texts) if t.strip()]
        if not texts:
            return cls()
        feats = [_style_features(t) for t in texts]
        rates = {k: sum(f[k] for f in feats) / len(feats) for k in feats[0]}
        normals = Counter()
        for t in texts:
            lab = label(t)
            if lab.get("No Finding") in PRESENT and len(lab) <= 3:
                normals[" ".join(t.split())] += 1
        phrase = normals.most_common(1)[0][0] if normals else None
        return cls(rates, phrase, len(texts))

    def score(self, impression: str) -> float:
        """How well one impression matches the profile, in [0, 1] (0.5 without a profile)."""
        if not self.n:
            return 0.5
        f = _style_features(impression)
        match = sum(1.0 - abs(f[k] - self.features.get(k, 0.0)) for k in f) / len(f)
        if self.normal_phrase:

            lab = label(impression)
            if lab.get("No Finding") in PRESENT and len(lab) <= 3:

                match = 0.5 * match + 0.5 * rouge_l(impression, self.normal_phrase)
        return match

    def to_dict(self) -> dict:
        return asdict(self)


def impression_level(impression: str, references: Sequence[str] = (),
                     style: StyleProfile | None = None, style_weight: float = 0.3) -> float:
    """Closeness to this radiologist's accepted impressions and style.

    Args:
        impression: the impression to score.
        references: the radiologist's reference impressions for this report (their edit, or the
            impressions of the most similar reports in their memory); the best match counts.
        style: their :class:`StyleProfile`, or None.
        style_weight: share of the style match in the score.

    Returns:
        ``(1 - style_weight) * max ROUGE-L + style_weight * style match``, in [0, 1]; with no
        references the style match alone (0.5 when there is no profile either).
    """
    impression = _text(impression, "impression")
    refs = [_text(r, "reference") for r in references if r]
    style_score = style.score(impression) if style is not None else 0.5
    if not refs:
        return style_score
    best = max(rouge_l(impression, r) for r in refs)
    return (1.0 - style_weight) * best + style_weight * style_score


def global_consistency(findings: str, impression: str) -> float:
    """No unsupported findings and no negation flips.

    Args:
        findings: the Findings section.
        impression: the impression to score.

    Returns:
        ``1 / (1 + P / 5)`` where ``P`` sums the clinical weight of every contradicted observation
        (positive on one side, negated on the other) and half the weight of every observation
        the impression asserts that the Findings never mention; 1.0 when there is none.
    """
    r = check_impression(_text(findings, "findings"), _text(impression, "impression"))
    penalty = sum(WEIGHTS[o] for o in r.contradictions)
    penalty += sum(0.5 * WEIGHTS[o] for o in r.unsupported)
    return 1.0 / (1.0 + penalty / 5.0)


def _critical_errors(findings: str, impression: str) -> list[str]:

    r = check_impression(findings, impression)
    flips = [o for o in r.contradictions if WEIGHTS.get(o, 0) >= WEIGHT_CRITICAL]
    return sorted(set(r.missing_critical) | set(flips))


def is_critical_case(findings: str) -> bool:
    """Whether the Findings report a critical finding (``core.clinical.critical.CRITICAL_FINDINGS``)."""
    return any(m.critical for m in extract(_text(findings, "findings")))


def critical_awareness(findings: str, impression: str) -> float:
    """1.0 unless the impression misses or negates a critical finding of the Findings (then 0.0).

    Args:
        findings: the Findings section.
        impression: the impression to score.

    Returns:
        0.0 or 1.0.
    """
    findings, impression = _text(findings, "findings"), _text(impression, "impression")
    return 0.0 if _critical_errors(findings, impression) else 1.0


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the four parts (normalised to sum 1) and the critical-case anchor."""
    findings: float = 0.3
    impression: float = 0.3
    consistency: float = 0.2
    critical: float = 0.2
    critical_anchor: float = 0.3

    def __post_init__(self) -> None:
        parts = (self.findings, self.impression, self.consistency, self.critical)
        if any(w < 0 for w in parts) or sum(parts) <= 0 or self.critical_anchor < 0:
            raise RewardError(f"reward weights must be >= 0 and not all 0, got {self}")


@dataclass
class RewardBreakdown:
    """Each part of the reward and the total."""
    findings: float
    impression: float
    consistency: float
    critical: float
    critical_case: bool
    anchor_penalty: float
    total: float


def hierarchical_reward(findings: str, impression: str, references: Sequence[str] = (),
                        style: StyleProfile | None = None,
                        reference_completion: str | None = None,
                        weights: RewardWeights = RewardWeights()) -> RewardBreakdown:
    """The full reward of one impression (see the module docstring).

    Args:
        findings: the Findings section.
        impression: the impression to score.
        references: the radiologist's reference impressions for this report.
        style: the radiologist's :class:`StyleProfile`.
        reference_completion: the reference policy's own (greedy) impression of this report;
            on critical cases the reward is pulled toward it.
        weights: part weights and the critical anchor.

    Returns:
        A :class:`RewardBreakdown`; ``total`` lies in [-critical_anchor, 1].
    """
    findings, impression = _text(findings, "findings"), _text(impression, "impression")
    f = findings_level(findings, impression)
    i = impression_level(impression, references, style)
    g = global_consistency(findings, impression)
    c = critical_awareness(findings, impression)
    parts = weights.findings + weights.impression + weights.consistency + weights.critical
    total = (weights.findings * f + weights.impression * i + weights.consistency * g
             + weights.critical * c) / parts
    critical_case = is_critical_case(findings)
    anchor = 0.0
    if critical_case and reference_completion and weights.critical_anchor:

        anchor = weights.critical_anchor * (1.0 - rouge_l(impression, reference_completion))
    return RewardBreakdown(f, i, g, c, critical_case, anchor, total - anchor)


def grpo_reward_funcs(style: StyleProfile | None = None,
                      weights: RewardWeights = RewardWeights()) -> list:
    """Reward functions with TRL's signature ``f(prompts, completions, **columns) -> [float]``.

    The dataset must have the columns ``findings``, ``references`` (list of str: the reader's
    impressions) and ``reference_completion`` (the reference policy's greedy impression of the
    prompt; :func:`core.learning.grpo.train_grpo` fills it in). One function per part plus the anchor,
    so TRL logs each part; use them with ``reward_weights`` from :func:`grpo_reward_weights`.
    """
    def _rows(completions, kwargs):
        n = len(completions)
        findings = kwargs.get("findings") or [""] * n
        refs = kwargs.get("references") or [[]] * n
        anchors = kwargs.get("reference_completion") or [None] * n
        return [(findings[k], _text(completions[k], "completion"), refs[k] or [], anchors[k])
                for k in range(n)]

    def findings_reward(prompts, completions, **kwargs):
        return [findings_level(f, c) for f, c, _, _ in _rows(completions, kwargs)]

    def impression_reward(prompts, completions, **kwargs):
        return [impression_level(c, r, style) for _, c, r, _ in _rows(completions, kwargs)]

    def consistency_reward(prompts, completions, **kwargs):
        return [global_consistency(f, c) for f, c, _, _ in _rows(completions, kwargs)]

    def critical_reward(prompts, completions, **kwargs):
        return [critical_awareness(f, c) for f, c, _, _ in _rows(completions, kwargs)]

    def anchor_reward(prompts, completions, **kwargs):

        out = []
        for f, c, _, a in _rows(completions, kwargs):
            out.append(-(1.0 - rouge_l(c, a)) if a and is_critical_case(f) else 0.0)
        return out

    return [findings_reward, impression_reward, consistency_reward, critical_reward,
            anchor_reward]


def grpo_reward_weights(weights: RewardWeights = RewardWeights()) -> list[float]:
    """TRL ``reward_weights`` matching :func:`grpo_reward_funcs` (parts normalised to sum 1)."""
    parts = weights.findings + weights.impression + weights.consistency + weights.critical
    return [weights.findings / parts, weights.impression / parts, weights.consistency / parts,
            weights.critical / parts, weights.critical_anchor]
