"""Results of a closed study: every analysis of its unblinded ratings, one function each.

Per arm: the rating distribution, the share rated neutral or better (Wilson and item-bootstrap
intervals), the same by normal/abnormal report, and error rates per yes/no question. Between
arms: paired (Wilcoxon) or unpaired (Mann-Whitney) comparisons, Holm-adjusted. Between raters:
agreement (Krippendorff, Fleiss, mean pairwise Cohen) and per-rater bias. Beside the ratings:
automatic metrics and their Spearman correlation with the mean human rating.

:func:`compute_results` is pure (no store, no permissions); :func:`results` reads a closed study.
Statistics come from :mod:`core.studies.stats` and :mod:`core.studies.agreement`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable, Sequence

import numpy as np

from core.accounts.auth import User
from core.errors import StudyError
from core.evaluation import metrics
from core.store.database import Store
from core.studies import agreement, stats
from core.studies.access import require_closed
from core.studies.assignment import effective_k
from core.studies.protocol import DIMENSIONS, Question, Scale, parse_arm, questions_of, scale_of


@dataclass
class StudyResults:
    """Everything the Results page, the CLI report and the HTML summary show.

    DataFrames:
        ratings: one row per standing rating, unblinded (rater, slot, arm, rating, flags...).
        distribution: arm, value, label, n, share.
        shares: arm, n_ratings, n_items, mean, share (neutral-or-better), lo, hi (Wilson 95%),
            boot_lo, boot_hi (bootstrap over items, which respects that raters share items).
        by_stratum: arm, normal, n_ratings, share, lo, hi.
        errors: arm, question, text, n, n_yes, rate, lo, hi (Wilson).
        paired: arm_a, arm_b, test, n, mean_a, mean_b, mean_diff, lo, hi, statistic, p_value,
            p_holm, effect (rank-biserial, positive when arm_a is rated higher).
        agreement: statistic, estimate, lo, hi, n_units, n_raters.
        pairwise: rater_a, rater_b, kappa, n_units.
        bias: rater, n, mean_offset, lo, hi.
        unit_metrics: slot, arm, n_ratings, mean_rating, <metric>... (texts vs original).
        correlations: metric, rho, p_value, n.
    """
    study: dict
    scale: Scale
    questions: tuple[Question, ...]
    ratings: Any
    distribution: Any
    shares: Any
    by_stratum: Any
    errors: Any
    paired: Any
    agreement: Any
    pairwise: Any
    bias: Any
    unit_metrics: Any
    correlations: Any
    notes: list[str] = field(default_factory=list)


MetricFn = Callable[[list[str], list[str]], list[float]]


def default_metric_fns(names: Sequence[str]) -> dict[str, MetricFn]:
    """Per-pair metric functions from :mod:`core.evaluation.metrics` (candidate vs original impression).

    Args:
        names: any of "rouge_l" (ROUGE-L F x 100), "bertscore" (F1, MiniLM, offline) and
            "label_f1" (clinical-label micro F1 of the pair).
    Returns:
        name -> f(candidates, references) -> one score per pair.
    """
    def rouge_l(cands: list[str], refs: list[str]) -> list[float]:
        return [metrics.rouge([c], [r])["rougeL"] for c, r in zip(cands, refs)]

    def bertscore(cands: list[str], refs: list[str]) -> list[float]:
        return list(metrics.bertscore(list(cands), list(refs))["bertscore_f1_per_pair"])

    def label_f1(cands: list[str], refs: list[str]) -> list[float]:
        return [metrics.label_f1([c], [r])["micro_f1"] for c, r in zip(cands, refs)]

    known = {"rouge_l": rouge_l, "bertscore": bertscore, "label_f1": label_f1}
    out: dict[str, MetricFn] = {}
    for name in names:
        if name not in known:
            raise StudyError(f"metric {name!r}: choose rouge_l, bertscore or label_f1")
        out[name] = known[name]
    return out


def ratings_frame(store: Store, study: dict, scale: Scale):
    """A study's standing ratings with the key (answers parsed, labels and units added)."""
    ratings = store.study_ratings(study["id"])
    if not ratings.empty:
        ratings["answers"] = ratings["answers"].map(lambda a: json.loads(a) if isinstance(a, str)
                                                    else (a or {}))
        ratings["rating"] = ratings["rating"].astype(int)
        ratings["rating_label"] = ratings["rating"].map(scale.label_of)
        ratings["unit"] = ratings["slot"].astype(str) + ":" + ratings["arm"]
    return ratings


def _of_arm(r, arm: str):
    return r[r["arm"] == arm] if not r.empty else r


def rating_distribution(r, arms: Sequence[str], scale: Scale):
    """arm, value, label, n, share: how often each arm got each value of the scale."""
    import pandas as pd  # deferred: pandas takes a second to import and most commands never need it

    rows = []
    for arm in arms:
        vals = [int(v) for v in _of_arm(r, arm)["rating"]]
        for v, lab in zip(scale.values, scale.labels):
            n_v = sum(1 for x in vals if x == v)
            rows.append({"arm": arm, "value": v, "label": lab, "n": n_v,
                         "share": n_v / len(vals) if vals else math.nan})
    return pd.DataFrame(rows)


def neutral_or_better(r, arms: Sequence[str], n_boot: int, seed: int):
    """arm, n_ratings, n_items, mean, share (>= 0), Wilson lo/hi, item-bootstrap boot_lo/hi."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    rows = []
    for arm in arms:
        ra = _of_arm(r, arm)
        vals = [int(v) for v in ra["rating"]]
        share, lo, hi = stats.share_neutral_or_better(vals)
        b_lo = b_hi = math.nan
        if len(ra):
            # raters share items: resample items, each with all of its ratings
            per_item = ra.groupby("slot")["rating"].agg(
                succ=lambda s: int((s >= 0).sum()), n="count")
            _, b_lo, b_hi = stats.bootstrap_ci(
                lambda t: float(t[0].sum() / t[1].sum()),
                (per_item["succ"].to_numpy(), per_item["n"].to_numpy()),
                n_boot=n_boot, seed=seed)
        rows.append({"arm": arm, "n_ratings": len(vals),
                     "n_items": int(ra["slot"].nunique()) if len(ra) else 0,
                     "mean": float(np.mean(vals)) if vals else math.nan,
                     "share": share, "lo": lo, "hi": hi, "boot_lo": b_lo, "boot_hi": b_hi})
    return pd.DataFrame(rows)


def by_stratum(r, arms: Sequence[str]):
    """arm, normal, n_ratings, share, lo, hi: neutral or better by normal/abnormal report."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    rows = []
    for arm in arms:
        ra = _of_arm(r, arm)
        if len(ra) and ra["normal"].notna().any():
            for normal, rs in ra.groupby("normal"):
                s, lo, hi = stats.share_neutral_or_better([int(v) for v in rs["rating"]])
                rows.append({"arm": arm, "normal": bool(normal), "n_ratings": len(rs),
                             "share": s, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["arm", "normal", "n_ratings", "share", "lo", "hi"])


def error_rates(r, arms: Sequence[str], questions: Sequence[Question]):
    """arm, question, text, n, n_yes, rate, lo, hi (Wilson) for every yes/no question."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    rows = []
    for arm in arms:
        ra = _of_arm(r, arm)
        for q in questions:
            if q.kind != "yesno":
                continue
            if len(ra):
                col = (ra[q.key] if q.builtin else ra["answers"].map(lambda a: a.get(q.key)))
                col = col.dropna().astype(bool)
            else:
                col = pd.Series([], dtype=bool)
            n_yes, n_q = int(col.sum()), int(len(col))
            _, lo, hi = stats.wilson_interval(n_yes, n_q)
            rows.append({"arm": arm, "question": q.key, "text": DIMENSIONS.get(q.key, q.text),
                         "n": n_q, "n_yes": n_yes, "rate": n_yes / n_q if n_q else math.nan,
                         "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


PAIRED_COLUMNS = ["arm_a", "arm_b", "test", "n", "mean_a", "mean_b", "mean_diff", "lo", "hi",
                  "statistic", "p_value", "effect"]


def _compare(a, b, paired: bool, n_boot: int, seed: int) -> dict | None:
    """One comparison of two arms' per-item mean ratings (Series indexed by slot)."""
    if paired:
        common = a.index.intersection(b.index)
        if len(common) == 0:
            return None
        pc = stats.paired_comparison(a[common].to_numpy(), b[common].to_numpy(),
                                     n_boot=n_boot, seed=seed)
        return {"test": "Wilcoxon signed-rank", "n": pc.n, "mean_a": float(a[common].mean()),
                "mean_b": float(b[common].mean()), "mean_diff": pc.mean_diff,
                "lo": pc.mean_diff_lo, "hi": pc.mean_diff_hi, "statistic": pc.statistic,
                "p_value": pc.p_value, "effect": pc.rank_biserial}
    uc = stats.unpaired_comparison(a.to_numpy(), b.to_numpy(), n_boot=n_boot, seed=seed)
    return {"test": "Mann-Whitney U", "n": min(uc.n_a, uc.n_b), "mean_a": uc.mean_a,
            "mean_b": uc.mean_b, "mean_diff": uc.mean_diff, "lo": uc.mean_diff_lo,
            "hi": uc.mean_diff_hi, "statistic": uc.statistic, "p_value": uc.p_value,
            "effect": uc.rank_biserial}


def comparisons(r, arms: Sequence[str], n_boot: int, seed: int):
    """Every pair of arms on per-item mean ratings: Wilcoxon signed-rank for arms rating the
    same reports, Mann-Whitney U with the external arm; p_holm adjusts for their number."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    rows = []
    if not r.empty:
        item_means = r.groupby(["arm", "slot"])["rating"].mean()
        rated = set(item_means.index.get_level_values(0))
        for a, b in combinations(arms, 2):
            if a not in rated or b not in rated:
                continue
            paired = parse_arm(a).paired and parse_arm(b).paired
            row = _compare(item_means[a], item_means[b], paired, n_boot, seed)
            if row is not None:
                rows.append({"arm_a": a, "arm_b": b, **row})
    out = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    out.insert(out.columns.get_loc("p_value") + 1, "p_holm",
               stats.holm([float(p) for p in out["p_value"]]))
    return out


def rater_agreement(r, scale: Scale, n_boot: int, seed: int):
    """(agreement, pairwise, raters, note): the three agreement statistics with bootstrap
    intervals over units, weighted Cohen's kappa per rater pair, and a note when undefined."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    labels = list(scale.values)
    rows, pair_rows, raters, note = [], [], [], None
    if not r.empty:
        m, raters, _ = agreement.reliability_matrix(r, "rater", "unit", "rating")
        n_multi = int(((~np.isnan(m)).sum(axis=0) >= 2).sum())

        def kripp(x):
            return agreement.krippendorff_alpha(x, "ordinal", value_domain=labels)

        def fleiss(x):
            return agreement.fleiss_kappa(x.T, categories=labels)

        def mean_cohen(x):
            ks = [p.kappa for p in agreement.pairwise_cohen(x, weights="quadratic",
                                                            labels=labels)
                  if not math.isnan(p.kappa)]
            return float(np.mean(ks)) if ks else math.nan

        for name, fn, boot_fn in (
                ("Krippendorff's alpha (ordinal)", kripp, kripp),
                ("Fleiss' kappa", fleiss, fleiss),
                # sklearn per pair costs ~2 ms; the bootstrap uses an equal numpy version
                ("Mean pairwise Cohen's kappa (quadratic)", mean_cohen,
                 lambda x: agreement.mean_pairwise_kappa(x, labels))):
            with np.errstate(all="ignore"):
                est = fn(m)
                _, lo, hi = (stats.bootstrap_ci(boot_fn, m, n_boot=n_boot, seed=seed,
                                                over="items")
                             if n_multi >= 2 else (est, math.nan, math.nan))
            rows.append({"statistic": name, "estimate": est, "lo": lo, "hi": hi,
                         "n_units": n_multi, "n_raters": len(raters)})
        for p in agreement.pairwise_cohen(m, raters=raters, weights="quadratic", labels=labels):
            pair_rows.append({"rater_a": p.rater_a, "rater_b": p.rater_b,
                              "kappa": p.kappa, "n_units": p.n_items})
        if n_multi == 0:
            note = "No unit was rated by two raters: agreement is undefined (k = 1)."
    return (pd.DataFrame(rows, columns=["statistic", "estimate", "lo", "hi", "n_units",
                                        "n_raters"]),
            pd.DataFrame(pair_rows, columns=["rater_a", "rater_b", "kappa", "n_units"]),
            list(raters), note)


def rater_bias(r):
    """rater, n, mean_offset, lo, hi: each rater against the others on the same units."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    rows = []
    if not r.empty:
        for b in agreement.per_rater_bias(r, "rater", ("slot", "arm"), "rating"):
            rows.append({"rater": b.rater, "n": b.n, "mean_offset": b.mean_offset,
                         "lo": b.lo, "hi": b.hi})
    return pd.DataFrame(rows, columns=["rater", "n", "mean_offset", "lo", "hi"])


def automatic_metrics(r, metric_fns: dict[str, MetricFn], notes: list[str]):
    """(unit_metrics, correlations): each text's metrics against the original impression and
    their Spearman correlation with its mean rating. A metric that fails is noted in ``notes``."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    unit_metrics = pd.DataFrame(columns=["slot", "arm", "n_ratings", "mean_rating", *metric_fns])
    rows = []
    if not r.empty:
        units = (r.groupby(["slot", "arm"], sort=True)
                 .agg(n_ratings=("rating", "count"), mean_rating=("rating", "mean"),
                      text=("text", "first"), original=("original", "first"))
                 .reset_index())
        units = units[units["arm"] != "original"].reset_index(drop=True)
        for name, fn in metric_fns.items():
            try:
                units[name] = fn(list(units["text"]), list(units["original"])) \
                    if len(units) else []
            except Exception as exc:  # a metric that cannot run (e.g. no local model) is noted
                units[name] = math.nan
                notes.append(f"{name} could not be computed: {exc}")
            rho, p = stats.spearman(units[name].astype(float), units["mean_rating"])
            rows.append({"metric": name, "rho": rho, "p_value": p,
                         "n": int(units[name].notna().sum())})
        unit_metrics = units.drop(columns=["text", "original"])
    return unit_metrics, pd.DataFrame(rows, columns=["metric", "rho", "p_value", "n"])


def compute_results(study: dict, ratings, n_boot: int = 1000, seed: int = 0,
                    metric_fns: dict[str, MetricFn] | None = None) -> StudyResults:
    """Every result of a study from its unblinded ratings (pure: no store, no permissions).

    Args:
        study: the study row (``get_study``), with arms, scale and questions.
        ratings: DataFrame as :meth:`Store.study_ratings` returns it (plus ``answers`` parsed).
        n_boot: bootstrap resamples for every interval.
        seed: bootstrap seed.
        metric_fns: automatic metrics to compute (name -> f(candidates, references)).
    Returns:
        :class:`StudyResults`.
    """
    scale = scale_of(study["scale"])
    questions = questions_of(study)
    arms = list(study["arms"])
    r = ratings
    if not r.empty and "unit" not in r:
        r = r.assign(unit=r["slot"].astype(str) + ":" + r["arm"])
    notes: list[str] = []
    agree, pairwise, raters, note = rater_agreement(r, scale, n_boot, seed)
    if note:
        notes.append(note)
    unit_metrics, correlations = automatic_metrics(r, metric_fns or {}, notes)
    summary = {"id": study["id"], "name": study["name"], "seed": study["seed"],
               "status": study["status"], "n_items": study["n_items"], "arms": arms,
               "k": study.get("effective_k", study.get("k")),
               "n_ratings": int(len(r)), "raters": raters,
               "created_at": str(study.get("created_at", "")),
               "scale": scale.name, "guideline": study.get("guideline") or ""}
    return StudyResults(summary, scale, questions, r, rating_distribution(r, arms, scale),
                        neutral_or_better(r, arms, n_boot, seed), by_stratum(r, arms),
                        error_rates(r, arms, questions), comparisons(r, arms, n_boot, seed),
                        agree, pairwise, rater_bias(r), unit_metrics, correlations, notes)


MEAN_COLUMNS = ("mean", "mean_a", "mean_b", "mean_rating")


def on_keys(scale: Scale, frame):
    """``frame`` with its mean ratings (:data:`MEAN_COLUMNS`) on the keys raters pressed
    (1..n, see :attr:`Scale.key_offset`); differences are unchanged by the shift."""
    offset = scale.key_offset
    if not offset or frame is None or frame.empty:
        return frame
    return frame.assign(**{c: frame[c].astype(float) + offset
                           for c in MEAN_COLUMNS if c in frame})


def results(store: Store, user: User, study_id: int, n_boot: int = 1000, seed: int = 0,
            metrics: Sequence[str] = ("rouge_l", "label_f1"),
            metric_fns: dict[str, MetricFn] | None = None) -> StudyResults:
    """Results of a closed study (coordinators and admins).

    Args:
        n_boot: bootstrap resamples for intervals.
        seed: bootstrap seed.
        metrics: automatic metrics from core.evaluation.metrics (rouge_l, bertscore, label_f1);
            ignored when ``metric_fns`` is given.
        metric_fns: name -> f(candidates, references) -> scores (tests inject these).
    Raises:
        StudyBlinded: the study is not closed yet.
    """
    study = require_closed(store, user, study_id, "results")
    study["effective_k"] = effective_k(store, study["id"])
    ratings = ratings_frame(store, study, scale_of(study["scale"]))
    if metric_fns is None:
        metric_fns = default_metric_fns(metrics) if metrics else {}
    res = compute_results(study, ratings, n_boot=n_boot, seed=seed, metric_fns=metric_fns)
    row = next((r for r in store.list_studies() if r["id"] == study["id"]), None)
    if row and 0 < row["n_done"] < row["n_tasks"]:  # closed early: first of the notes
        res.notes.insert(0, f"Closed with {row['n_done']:,} of {row['n_tasks']:,} assigned texts rated "
                            f"({100 * row['n_done'] // row['n_tasks']} %): the statistics use the "
                            f"ratings given, so texts rated fewer than k = {study['effective_k']} "
                            f"times weigh less and some agreement figures rest on fewer raters.")
    return res
