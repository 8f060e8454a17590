"""Can anything choose better among the neighbours' impressions than the vote? (issue 12, probes)

Leave-one-out over the IU X-ray train + dev reports (never test): every report is retrieved for
from all the others exactly as the shipped coarse stage does (:meth:`CoarseToFine.coarse`,
``exclude_self``), and every distinct impression among its 20 neighbours is a candidate. The
score of a choice is the ROUGE-L of the chosen candidate against the report's own impression,
before the clinical check (the check does the same to every choice). Printed: the vote, the
first neighbour and an oracle; then learned choosers, 5-fold cross-validated over reports, each
compared with the vote by a paired bootstrap (95 % CI):

- ``hgb vote features``: a gradient-boosted regressor of each candidate's ROUGE-L from what the
  vote knows (its agreement with the neighbourhood, support, similarity and rank, findings it
  states / contradicts / leaves out, prior-study words, length); the shipped vote's explicit
  terms (own phrasing, contradiction and prior penalties) are added to its prediction;
- ``+ word model``: plus a findings -> impression-words model (one logistic regression per
  frequent impression word on the findings' word TF-IDF and the author; cross-fitted in 5 folds,
  so a report is scored by a model that never saw it): its expected word F1 and log-likelihood
  of each candidate;
- ``+ template classifier``: plus a multinomial regression over the impressions seen 3 or more
  times (cross-fitted the same way): the candidate's log-probability;
- ``+ count in the index (leaks)``: plus how often the candidate's text occurs in the index
  without the report. The count of the report's own text is one lower than when it is not
  held out, which marks the answer: a cross-validated gain here is a leak, not a signal.

And ``--retrieval``: the vote on neighbours found with an extra similarity term, the cosine
between the word model's predictions for the query and for each indexed report.

    .venv/bin/python bench/choice_probe.py [--retrieval]     # ~2 min (+3 min) on dev-2c
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core.clinical.labeler import label, positive_findings  # noqa: E402
from core.clinical.vocabulary import Label  # noqa: E402
from core.evaluation.metrics import rouge_l  # noqa: E402
from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.generation.prompts import PRIOR_WORDS, has_prior  # noqa: E402
from core.generation.retrieval import RetrievalIndex, normalise, tidy  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402

IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"
VOTE = ("mbr", "mbr_gap", "share", "count", "best_rank", "best_sim", "top_sim", "cover", "contra", "c_pos",
        "f_pos", "extra", "missing", "prior_words", "no_prior", "words", "findings_words")
WORDS = ("word_f1", "word_logp")


def cross_fitted(rows: list[dict], folds: int = 5, seed: int = 0):
    """Out-of-fold P(impression word | findings, author) and P(impression text) for every report."""
    import re

    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    word = re.compile(r"[a-z]+")
    said = [set(word.findall(normalise(r["impression"]))) for r in rows]
    vocab = [w for w, c in Counter(w for s in said for w in s).most_common(400) if c >= 8]
    y = np.array([[w in s for w in vocab] for s in said])
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=5000)
    words_x = vec.fit_transform(normalise(r["findings"]) for r in rows)
    authors = {a: j for j, a in enumerate(sorted({str(r["author"]) for r in rows}))}
    x = hstack([words_x, csr_matrix(([0.5] * len(rows), (range(len(rows)), [authors[str(r["author"])] for r in rows])),
                                    shape=(len(rows), len(authors)))]).tocsr()
    fold = np.random.default_rng(seed).integers(0, folds, len(rows))
    p = np.zeros((len(rows), len(vocab)))
    texts = [tidy(r["impression"]) for r in rows]
    tmpl: list[dict] = [{} for _ in rows]
    for f in range(folds):
        tr, te = np.where(fold != f)[0], np.where(fold == f)[0]
        for j in range(len(vocab)):
            yj = y[tr, j]
            p[te, j] = (LogisticRegression(C=4.0, max_iter=500).fit(x[tr], yj).predict_proba(x[te])[:, 1]
                        if 0 < yj.mean() < 1 else yj.mean())
        common = [t for t, c in Counter(texts[i] for i in tr).items() if c >= 3]
        cls = {t: j for j, t in enumerate(common)}
        model = LogisticRegression(C=4.0, max_iter=1000).fit(x[tr], [cls.get(texts[i], len(common)) for i in tr])
        prob = model.predict_proba(x[te])
        col = {c: j for j, c in enumerate(model.classes_)}
        for a, i in enumerate(te):
            tmpl[i] = {t: math.log(max(prob[a, col[j]], 1e-6)) for t, j in cls.items() if j in col}
            tmpl[i][None] = math.log(max(prob[a, col[len(common)]], 1e-6)) if len(common) in col else -10.0
    return vocab, p, tmpl


def candidate_rows(rows, votes_in, neighbours, vocab, p, tmpl, power: float) -> list[list[dict]]:
    """Per report, one feature dict per distinct candidate impression (with its ROUGE-L target)."""
    import re

    word = re.compile(r"[a-z]+")
    col = {w: j for j, w in enumerate(vocab)}
    freq = Counter(tidy(r["impression"]) for r in rows)
    cache: dict[str, dict] = {}

    def lab(t: str) -> dict:
        if t not in cache:
            cache[t] = label(t)
        return cache[t]

    out = []
    for i, (q, nb) in enumerate(zip(votes_in, neighbours)):
        truth = tidy(rows[i]["impression"])
        support = [tidy(n.impression) for n in nb]
        merged: Counter = Counter()
        for s, n in zip(support, nb):
            merged[s] += max(n.score, 0.0) ** power
        total = sum(merged.values()) or 1.0
        f_lab = lab(q["findings"])
        f_pos = set(positive_findings(f_lab))
        no_prior = not has_prior(q.get("comparison"))
        pc = np.clip(p[i], 1e-4, 1 - 1e-4)
        base_logp = float(np.log1p(-pc).sum())
        cands: dict[str, dict] = {}
        for rank, (text, n) in enumerate(zip(support, nb)):
            mine = bool(q.get("author")) and n.author == q.get("author")
            if text in cands:
                cands[text]["count"] += 1
                cands[text]["own"] = cands[text]["own"] or mine
                continue
            c_pos = set(positive_findings(lab(text)))
            said = set(word.findall(normalise(text)))
            cols = [col[w] for w in said if w in col]
            hit = float(p[i][cols].sum())
            prec = (hit + 0.02 * (len(said) - len(cols))) / max(len(said), 1)
            rec = hit / max(float(p[i].sum()), 1e-6)
            cands[text] = {
                "mbr": sum(w * (1.0 if text == s else rouge_l(text, s)) for s, w in merged.items()) / total,
                "share": merged[text] / total, "count": 1, "best_rank": rank, "best_sim": n.score,
                "top_sim": nb[0].score, "cover": len(c_pos & f_pos),
                "contra": sum(1 for k in c_pos if f_lab.get(k) is Label.NEGATIVE), "c_pos": len(c_pos),
                "f_pos": len(f_pos), "extra": len(c_pos - f_pos), "missing": len(f_pos - c_pos),
                "prior_words": bool(PRIOR_WORDS.search(text)), "no_prior": no_prior, "words": len(text.split()),
                "findings_words": len(q["findings"].split()), "own": mine,
                "word_f1": 2 * prec * rec / max(prec + rec, 1e-9),
                "word_logp": base_logp + float((np.log(pc[cols]) - np.log1p(-pc[cols])).sum()),
                "tmpl_in": text in tmpl[i], "tmpl_logp": tmpl[i].get(text, tmpl[i][None] - 3.0),
                "log_count": math.log1p(freq[text] - (text == truth)),
                "target": 1.0 if text == truth else rouge_l(text, truth),
            }
        best = max(c["mbr"] for c in cands.values())
        for c in cands.values():
            c["mbr_gap"] = c["mbr"] - best
        out.append(list(cands.values()))
    return out


def explicit(c: dict, cfg: C2FConfig) -> float:
    """The vote's terms that stay explicit: own phrasing, contradiction, 'stable' with no prior."""
    return (cfg.own_bonus * c["own"] - cfg.contradiction_penalty * c["contra"]
            - cfg.prior_penalty * (c["prior_words"] and c["no_prior"]))


def paired(a: np.ndarray, b: np.ndarray, n_boot: int = 1000) -> str:
    d = a - b
    rng = np.random.default_rng(0)
    means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]
    return (f"{100 * a.mean():.2f} | {100 * d.mean():+.2f} | {100 * np.percentile(means, 2.5):+.2f} to "
            f"{100 * np.percentile(means, 97.5):+.2f}")


def learned(cands: list[list[dict]], features: tuple, cfg: C2FConfig, folds: int = 5) -> np.ndarray:
    """Out-of-fold choice by a regressor of each candidate's ROUGE-L (plus the explicit terms)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    mats = [np.array([[float(c[f]) for f in features] for c in cs]) for cs in cands]
    order = list(range(len(cands)))
    random.Random(0).shuffle(order)
    chosen = np.zeros(len(cands))
    for k in range(folds):
        test = set(order[k::folds])
        train = [i for i in range(len(cands)) if i not in test]
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=20,
                                              early_stopping=False, random_state=0)
        model.fit(np.vstack([mats[i] for i in train]), np.array([c["target"] for i in train for c in cands[i]]))
        for i in test:
            s = model.predict(mats[i]) + np.array([explicit(c, cfg) for c in cands[i]])
            chosen[i] = cands[i][int(np.argmax(s))]["target"]
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=IU_CSV)
    ap.add_argument("--retrieval", action="store_true", help="also the supervised retrieval term")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        print(f"skipped: {args.csv} not found (the IU X-ray reports live in ../shared)")
        return 0
    t0 = time.time()
    rows = load_iu_csv(args.csv, ("train", "dev"))
    cfg = C2FConfig(llm="off")
    index = RetrievalIndex.build(rows, cfg.retrieval)
    queries, neighbours, votes = CoarseToFine(index, None, cfg).coarse(rows)
    vocab, p, tmpl = cross_fitted(rows)
    cands = candidate_rows(rows, queries, neighbours, vocab, p, tmpl, cfg.power)
    vote = np.array([1.0 if v["text"] == tidy(r["impression"]) else rouge_l(v["text"], tidy(r["impression"]))
                     for v, r in zip(votes, rows)])
    truth_in = sum(any(c["target"] == 1.0 for c in cs) for cs in cands)
    exact = int((vote == 1.0).sum())
    print(f"## Choosing among the neighbours' impressions, leave-one-out over {len(rows)} train + dev reports\n\n"
          f"vote {100 * vote.mean():.2f}; first neighbour "
          f"{100 * np.mean([max(cs, key=lambda c: -c['best_rank'])['target'] for cs in cands]):.2f}; oracle "
          f"{100 * np.mean([max(c['target'] for c in cs) for cs in cands]):.2f}. The vote's text has the words of the report's "
          f"own impression (ROUGE-L 1) for {exact} ({exact / len(rows):.0%}); such a text is among the candidates for {truth_in} "
          f"({truth_in / len(rows):.0%}).\n\n| chooser (5-fold CV) | ROUGE-L | minus vote | 95% CI |\n|---|---:|---:|---|")
    for name, feats in (("hgb vote features", VOTE), ("+ word model", VOTE + WORDS),
                        ("+ template classifier", VOTE + WORDS + ("tmpl_in", "tmpl_logp")),
                        ("+ count in the index (leaks)", VOTE + WORDS + ("log_count",))):
        print(f"| {name} | {paired(learned(cands, feats, cfg), vote)} |", flush=True)
    if args.retrieval:
        print("\n| vote on neighbours + w x cos(predicted words) | ROUGE-L | minus vote | 95% CI |\n|---|---:|---:|---|")
        unit = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
        row_of = {r["uid"]: i for i, r in enumerate(rows)}

        class Supervised(RetrievalIndex):
            def similarities(self, reports):
                q = unit[[row_of[r["uid"]] for r in reports]]
                return super().similarities(reports) + self.weight * (q @ unit.T).astype(np.float32)

        for w in (0.2, 0.4, 0.8):
            idx = Supervised(index.docs, index.config, index.vectorizers, index.matrix)
            idx.weight = w
            texts = [v["text"] for v in CoarseToFine(idx, None, cfg).coarse(rows)[2]]
            got = np.array([1.0 if t == tidy(r["impression"]) else rouge_l(t, tidy(r["impression"]))
                            for t, r in zip(texts, rows)])
            print(f"| w = {w} | {paired(got, vote)} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
