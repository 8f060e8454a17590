"""The promotion gate: a candidate adapter version is promoted only if it beats the reader's current
one on that reader's held-out feedback.

Both versions draft the held-out reports (:func:`evaluate_versions`): ROUGE-L and clinical label
F1 against what the reader accepted or wrote, critical findings missed, and preference accuracy
on held-out pairs (the policy's log-probability of the chosen over the rejected text). :func:`gate`
then decides, with the reason in words for the nightly summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.adapters.registry import AdapterVersion
from core.clinical.labeler import extract
from core.clinical.verifier import check_impression
from core.errors import AdapterError
from core.evaluation.metrics import label_f1, rouge
from core.generation.models import BASE_ADAPTER
from core.generation.personal import Drafter
from core.learning.train import preference_accuracy


@dataclass
class GateResult:
    """The promotion decision and why."""
    promote: bool
    reason: str
    checks: dict = field(default_factory=dict)



def _critical_counts(findings: str, text: str) -> tuple[int, int]:
    """(critical findings in the Findings, how many of them the text misses)."""
    crit = {m.observation for m in extract(findings) if m.critical}
    if not crit:
        return 0, 0
    missing = set(check_impression(findings, text).missing_critical) & crit
    return len(crit), len(missing)



def evaluate_versions(drafter: Drafter, refs: Sequence[dict],
                      versions: Sequence[AdapterVersion | None],
                      heldout_examples: Sequence[dict] = (),
                      use_lora: bool = True, use_memory: bool = True) -> list[dict]:
    """Evaluate adapter versions on a reader's held-out reports, all versions in one batch.

    Args:
        drafter: the drafter (loaded generator, shared memory).
        refs: held-out reports with the reader's reference impression (``impression``).
        versions: the versions to compare (None = the shared model).
        heldout_examples: held-out preference rows (TRL format) for preference accuracy.
        use_lora / use_memory: ablation switches passed to the drafter.

    Returns:
        One dict per version: n, rougeL, label_f1 (micro), critical_recall (None without critical
        cases), pref_acc (None without pairs), and the drafts.
    """
    refs = list(refs)
    rows, avs = [], []
    for v in versions:
        rows += refs
        avs += [v] * len(refs)
    outputs = drafter.draft(rows, avs, use_lora=use_lora, use_memory=use_memory) if rows else []
    # Preference accuracy only differs between versions through their LoRA weights.
    any_lora = use_lora and drafter.generator is not None and any(
        v is not None and v.has_lora for v in versions)
    results = []
    for k, v in enumerate(versions):
        preds = [o.text for o in outputs[k * len(refs):(k + 1) * len(refs)]]
        targets = [r["impression"] for r in refs]
        res: dict[str, Any] = {"n": len(refs)}
        if refs:
            res["rougeL"] = rouge(preds, targets)["rougeL"]
            res["label_f1"] = label_f1(preds, targets)["micro_f1"]
            total = missed = 0
            for r, p in zip(refs, preds):
                t, m = _critical_counts(r["findings"], p)
                total, missed = total + t, missed + m
            res["critical_recall"] = (1 - missed / total) if total else None
            res["critical_cases"] = total
        res["pref_acc"] = _pref_acc(drafter, v, heldout_examples, use_lora) if any_lora else None
        res["drafts"] = preds
        results.append(res)
    return results



def _pref_acc(drafter: Drafter, v: AdapterVersion | None, examples: Sequence[dict],
              use_lora: bool) -> float | None:
    if not examples:
        return None

    gen = drafter.generator
    name = BASE_ADAPTER
    if v is not None and use_lora and v.has_lora:
        try:
            if gen.adapters.get(v.gen_name) != v.path.resolve():
                gen.load_adapter(v.gen_name, v.path)
        except AdapterError:
            return None  # a damaged version has no preference accuracy (see the drafts' flags)
        name = v.gen_name
    elif drafter.shared_adapter:
        name = drafter.shared_adapter
    model = getattr(gen, "_peft", None)
    with gen._lock:
        if model is None:
            return preference_accuracy(gen.model, gen.tokenizer, examples)
        return preference_accuracy(model, gen.tokenizer, examples, adapter_name=name)



def gate(candidate: dict, current: dict, config) -> GateResult:
    """Decide whether a candidate adapter replaces the current one.

    Promote only when: enough held-out reports; ROUGE-L gain >= ``min_rouge_gain``; preference
    accuracy not lower by more than ``pref_tolerance`` (when both have pairs); label F1 not lower
    by more than ``label_tolerance``; critical-finding recall not lower at all.

    Args:
        candidate: :func:`evaluate_versions`'s scores of the new version.
        current: the same for the reader's active version (or the shared model).
        config: the nightly settings (:class:`core.learning.nightly.NightlyConfig`): its
            ``min_heldout_reports``, ``min_rouge_gain``, ``pref_tolerance``, ``label_tolerance``.
    """
    checks: dict[str, Any] = {}
    n = candidate.get("n", 0)
    if n < config.min_heldout_reports:
        return GateResult(False, f"only {n} held-out reports (< {config.min_heldout_reports})",
                          {"heldout_reports": n})
    gain = candidate["rougeL"] - current["rougeL"]
    checks["rougeL_gain"] = round(gain, 3)
    reasons = []
    if gain < config.min_rouge_gain:
        reasons.append(f"ROUGE-L gain {gain:+.2f} < {config.min_rouge_gain}")
    cp, bp = candidate.get("pref_acc"), current.get("pref_acc")
    if cp is not None and bp is not None and not (math.isnan(cp) or math.isnan(bp)):
        checks["pref_acc_delta"] = round(cp - bp, 4)
        if cp < bp - config.pref_tolerance:
            reasons.append(f"preference accuracy {cp:.3f} < {bp:.3f} - {config.pref_tolerance}")
    lf, bl = candidate.get("label_f1"), current.get("label_f1")
    if lf is not None and bl is not None:
        checks["label_f1_delta"] = round(lf - bl, 4)
        if lf < bl - config.label_tolerance:
            reasons.append(f"label F1 {lf:.3f} < {bl:.3f} - {config.label_tolerance}")
    cr, br = candidate.get("critical_recall"), current.get("critical_recall")
    if cr is not None and br is not None:
        checks["critical_recall_delta"] = round(cr - br, 4)
        if cr < br:
            reasons.append(f"critical-finding recall {cr:.3f} < {br:.3f}")
    if reasons:
        return GateResult(False, "; ".join(reasons), checks)
    return GateResult(True, f"ROUGE-L {current['rougeL']:.1f} -> {candidate['rougeL']:.1f}",
                      checks)
