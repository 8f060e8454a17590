"""Agreement between raters: Cohen's kappa (per pair), Fleiss' kappa, Krippendorff's alpha, the
reliability matrix they read, and each rater's bias against the others.

Thin, validated wrappers around scikit-learn, statsmodels and krippendorff, plus what they lack
(Fleiss' kappa with missing ratings, a vectorised mean pairwise kappa for bootstraps, per-rater
bias). Conventions as in :mod:`core.studies.stats`: malformed input raises ``StatsError``, an
undefined statistic is NaN; :func:`krippendorff_alpha` and :func:`pairwise_cohen` take raters x
items, :func:`fleiss_kappa` items x raters. Heavy libraries are imported inside the functions so
``import core.studies.agreement`` stays fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from core.errors import StatsError
from core.studies.stats import as_matrix, check_confidence


def cohen_kappa(
    a: Sequence[Any],
    b: Sequence[Any],
    weights: Literal["linear", "quadratic"] | None = None,
    labels: Sequence[Any] | None = None,
) -> float:
    """Cohen's kappa between two raters (scikit-learn ``cohen_kappa_score``).

    Pairs where either rating is None/NaN are dropped. For weighted kappa the
    disagreement weight is the distance between *positions in ``labels``*, so
    ``labels`` must list every category of the scale in order; when omitted for
    numeric integer data it defaults to every integer from the smallest to the
    largest rating seen (so an unused middle category still counts as a step).

    Args:
        a: ratings of rater A, one per item.
        b: ratings of rater B for the same items.
        weights: None (nominal), "linear" or "quadratic".
        labels: ordered categories of the scale.

    Returns:
        kappa; nan when fewer than 2 items were rated by both or chance agreement is 1.
    """
    from sklearn.metrics import cohen_kappa_score  # deferred: heavy

    if weights not in (None, "linear", "quadratic"):
        raise StatsError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise StatsError(f"a and b must have the same length, got {len(a)} and {len(b)}")

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v))

    pairs = [(x, y) for x, y in zip(a, b) if not (missing(x) or missing(y))]
    if len(pairs) < 2:
        return math.nan
    xs = [p[0] for p in pairs]
    ys = [p[1] for p in pairs]
    if labels is None and weights is not None:
        vals = xs + ys
        if all(isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool)
               and float(v).is_integer() for v in vals):
            xs = [int(v) for v in xs]
            ys = [int(v) for v in ys]
            labels = list(range(min(xs + ys), max(xs + ys) + 1))
    if labels is not None:
        known = set(labels)
        for name, seq in (("a", xs), ("b", ys)):
            for v in seq:
                if v not in known:
                    raise StatsError(f"rating {v!r} in {name} is not one of labels {list(labels)!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(xs, ys, labels=labels, weights=weights)
    return float(k)


@dataclass(frozen=True)
class PairKappa:
    """Cohen's kappa for one pair of raters over the items both rated."""
    rater_a: Any
    rater_b: Any
    kappa: float
    n_items: int


def pairwise_cohen(
    reliability_data: Any,
    raters: Sequence[Any] | None = None,
    weights: Literal["linear", "quadratic"] | None = None,
    labels: Sequence[Any] | None = None,
) -> list[PairKappa]:
    """Cohen's kappa for every pair of raters.

    Args:
        reliability_data: raters x items matrix (NaN/None = not rated); a DataFrame's
            index supplies rater names.
        raters: names for the rows; default the DataFrame index or 0..R-1.
        weights: None, "linear" or "quadratic" (see :func:`cohen_kappa`).
        labels: ordered categories; default every integer from the matrix minimum to
            maximum (so all pairs use the same scale).

    Returns:
        One PairKappa per unordered pair (i < j) in row order; kappa is nan when the
        pair shares fewer than 2 items or agreement by chance is 1.
    """
    if raters is None and hasattr(reliability_data, "to_numpy") and hasattr(reliability_data, "columns"):
        raters = list(reliability_data.index)
    m = as_matrix(reliability_data, "reliability_data")
    n_r = m.shape[0]
    if raters is None:
        raters = list(range(n_r))
    if len(raters) != n_r:
        raise StatsError(f"got {len(raters)} rater names for {n_r} rows of reliability_data")
    observed = m[~np.isnan(m)]
    integer_coded = bool(observed.size) and bool(np.all(observed == np.round(observed)))
    if labels is None and integer_coded:
        labels = list(range(int(observed.min()), int(observed.max()) + 1))

    def values(row: np.ndarray) -> list[Any]:
        return [int(v) for v in row] if integer_coded else [float(v) for v in row]

    out = []
    for i in range(n_r):
        for j in range(i + 1, n_r):
            both = ~np.isnan(m[i]) & ~np.isnan(m[j])
            k = cohen_kappa(values(m[i][both]), values(m[j][both]), weights=weights, labels=labels)
            out.append(PairKappa(raters[i], raters[j], k, int(both.sum())))
    return out


def fleiss_kappa(
    data: Any,
    form: Literal["ratings", "counts"] = "ratings",
    categories: Sequence[Any] | None = None,
) -> float:
    """Fleiss' kappa for many raters, allowing a varying number of ratings per item.

    With the same number of ratings for every item this is Fleiss (1971) and is
    delegated to statsmodels. With missing ratings it uses the generalisation in
    Gwet, *Handbook of Inter-Rater Reliability* (as implemented in R's irrCAC
    ``fleiss.kappa.raw``): observed agreement averages over items with >= 2
    ratings, category prevalences average each item's proportions over items with
    >= 1 rating. Items with no rating are dropped.

    Args:
        data: ``form="ratings"``: items x raters matrix of category codes (NaN/None =
            not rated). ``form="counts"``: items x categories table of how many raters
            put each item into each category.
        form: "ratings" or "counts".
        categories: for "ratings", the category codes (default: the values seen). Any
            rating outside them raises.

    Returns:
        kappa; nan when no item has 2 ratings or chance agreement is 1.
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss  # deferred: heavy

    if form == "ratings":
        m = as_matrix(data, "data")
        seen = np.unique(m[~np.isnan(m)])
        cats = np.asarray(sorted(categories), dtype=float) if categories is not None else seen
        unknown = np.setdiff1d(seen, cats)
        if unknown.size:
            i, j = np.argwhere(m == unknown[0])[0]
            raise StatsError(f"data[{i}][{j}] = {unknown[0]!r} is not one of categories {list(categories or [])!r}")
        table = np.stack([(m == c).sum(axis=1) for c in cats], axis=1) if cats.size else np.zeros((m.shape[0], 0))
    elif form == "counts":
        table = as_matrix(data, "data")
        if np.isnan(table).any() or (table < 0).any() or not np.all(table == np.round(table)):
            i, j = np.argwhere(np.isnan(table) | (table < 0) | (table != np.round(table)))[0]
            raise StatsError(f"count table data[{i}][{j}] = {table[i, j]!r} is not a non-negative integer")
    else:
        raise StatsError(f"form must be 'ratings' or 'counts', got {form!r}")

    table = np.asarray(table, dtype=float)
    r_i = table.sum(axis=1)
    table, r_i = table[r_i > 0], r_i[r_i > 0]
    if table.shape[0] == 0 or not (r_i >= 2).any():
        return math.nan
    if np.all(r_i == r_i[0]):
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            return float(sm_fleiss(table, method="fleiss"))
    return _fleiss_generalized(table)


def _fleiss_generalized(table: np.ndarray) -> float:
    """Gwet's Fleiss' kappa for an items x categories count table whose rows may differ in total."""
    table = np.asarray(table, dtype=float)
    r_i = table.sum(axis=1)
    table, r_i = table[r_i > 0], r_i[r_i > 0]
    two = r_i >= 2
    if not two.any():
        return math.nan
    p_a = float(np.mean((table[two] * (table[two] - 1)).sum(axis=1) / (r_i[two] * (r_i[two] - 1))))
    pi = (table / r_i[:, None]).mean(axis=0)
    p_e = float((pi**2).sum())
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_a - p_e) / (1.0 - p_e)


def krippendorff_alpha(
    reliability_data: Any,
    level: Literal["nominal", "ordinal", "interval", "ratio"] = "ordinal",
    value_domain: Sequence[float] | None = None,
) -> float:
    """Krippendorff's alpha (the ``krippendorff`` package, Castro's implementation).

    Args:
        reliability_data: raters x items matrix, NaN/None = not rated.
        level: "nominal", "ordinal", "interval" or "ratio".
        value_domain: ordered possible values (ordinal/nominal); default the values seen.

    Returns:
        alpha; nan when fewer than 2 distinct values or no item has 2 ratings.
    """
    import krippendorff  # deferred: krippendorff is only needed for this statistic

    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise StatsError(f"level must be nominal, ordinal, interval or ratio, got {level!r}")
    m = as_matrix(reliability_data, "reliability_data")
    pairable = (~np.isnan(m)).sum(axis=0) >= 2
    vals = np.unique(m[:, pairable][~np.isnan(m[:, pairable])])
    if not pairable.any() or vals.size < 2:
        return math.nan
    kwargs: dict[str, Any] = {}
    if value_domain is not None:
        dom = np.asarray(value_domain, dtype=float)
        bad = np.setdiff1d(np.unique(m[~np.isnan(m)]), dom)
        if bad.size:
            raise StatsError(f"reliability_data holds {bad[0]!r}, which is not in value_domain {list(value_domain)!r}")
        kwargs["value_domain"] = dom
    return float(krippendorff.alpha(reliability_data=m, level_of_measurement=level, **kwargs))


def reliability_matrix(
    ratings: Any,
    rater_col: str = "rater",
    item_col: str | Sequence[str] = "item_id",
    value_col: str = "score",
) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Pivot long-format ratings into a raters x items matrix (NaN = not rated).

    Args:
        ratings: DataFrame or iterable of dicts with the columns below.
        rater_col: column naming the rater.
        item_col: column (or columns, e.g. ("item_id", "arm")) identifying the rated unit.
        value_col: column holding the numeric rating.

    Returns:
        (matrix, raters, units): rows follow ``raters``, columns follow ``units``
        (sorted); a unit is a tuple when ``item_col`` names several columns.
    """
    df = _long_frame(ratings, rater_col, item_col, value_col)
    cols = [item_col] if isinstance(item_col, str) else list(item_col)
    unit = df[cols[0]] if len(cols) == 1 else list(zip(*(df[c] for c in cols)))
    df = df.assign(_unit=unit)
    wide = df.pivot(index=rater_col, columns="_unit", values=value_col)
    return wide.to_numpy(dtype=float), list(wide.index), list(wide.columns)


def _long_frame(ratings: Any, rater_col: str, item_col: str | Sequence[str], value_col: str):
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    df = ratings.copy() if isinstance(ratings, pd.DataFrame) else pd.DataFrame(list(ratings))
    cols = [rater_col] + ([item_col] if isinstance(item_col, str) else list(item_col))
    missing = [c for c in cols + [value_col] if c not in df.columns]
    if missing:
        raise StatsError(f"ratings lack column(s) {missing}; have {list(df.columns)}")
    vals = pd.to_numeric(df[value_col], errors="coerce")
    bad = vals.isna() & df[value_col].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise StatsError(f"ratings row {row}: {value_col}={df[value_col].iloc[row]!r} is not a number")
    df[value_col] = vals.astype(float)
    df = df[df[value_col].notna()]
    dup = df.duplicated(subset=cols, keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise StatsError(
            "ratings hold more than one rating for " + ", ".join(f"{c}={row[c]!r}" for c in cols)
        )
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- rater bias


@dataclass(frozen=True)
class RaterBias:
    """How far one rater sits above (+) or below (-) the other raters on the same units."""
    rater: Any
    n: int
    mean_offset: float
    lo: float
    hi: float


def per_rater_bias(
    ratings: Any,
    rater_col: str = "rater",
    item_col: str | Sequence[str] = "item_id",
    value_col: str = "score",
    leave_one_out: bool = True,
    confidence: float = 0.95,
) -> list[RaterBias]:
    """Mean offset of each rater from the mean of the unit they rated.

    Each rating's offset is ``score - mean(other ratings of that unit)`` when
    ``leave_one_out`` (the default; units rated once are skipped), otherwise
    ``score - mean(all ratings of that unit)``. Pass ``item_col=("item_id", "arm")``
    when the same item is rated under several arms so arms are not mixed.

    Args:
        ratings: long-format DataFrame or iterable of dicts.
        rater_col: rater column.
        item_col: unit column(s).
        value_col: numeric rating column.
        leave_one_out: compare with the other raters only.
        confidence: level of the t-interval on the mean offset.

    Returns:
        One RaterBias per rater (sorted by rater); lo/hi are a t-interval, nan when n < 2.
    """
    from scipy import stats as sps  # deferred: heavy

    confidence = check_confidence(confidence)
    df = _long_frame(ratings, rater_col, item_col, value_col)
    cols = [item_col] if isinstance(item_col, str) else list(item_col)
    grp = df.groupby(cols, sort=False)[value_col]
    total = grp.transform("sum")
    count = grp.transform("count")
    if leave_one_out:
        keep = count >= 2
        offset = df[value_col] - (total - df[value_col]) / (count - 1).where(keep)
    else:
        keep = count >= 1
        offset = df[value_col] - total / count
    df = df.assign(_offset=offset)[keep]
    out = []
    for rater, g in sorted(df.groupby(rater_col)["_offset"], key=lambda kv: str(kv[0])):
        x = g.to_numpy(dtype=float)
        mean = float(x.mean())
        if x.size >= 2:
            sem = float(x.std(ddof=1) / math.sqrt(x.size))
            t = float(sps.t.ppf(0.5 + confidence / 2, x.size - 1))
            lo, hi = mean - t * sem, mean + t * sem
        else:
            lo = hi = math.nan
        out.append(RaterBias(rater, int(x.size), mean, lo, hi))
    return out



def mean_pairwise_kappa(m, labels: Sequence[int]) -> float:
    """Mean quadratic-weighted Cohen's kappa over rater pairs of a raters x units matrix.

    Equal to averaging :func:`pairwise_cohen` (``weights="quadratic"``) over the pairs where
    kappa is defined, but vectorised with numpy (used inside bootstraps).
    """
    m = np.asarray(m, dtype=float)
    lab = np.asarray(labels, dtype=float)
    n_lab = len(lab)
    codes = np.full(m.shape, -1, dtype=np.int64)
    for i, v in enumerate(lab):
        codes[m == v] = i
    w = (np.arange(n_lab)[:, None] - np.arange(n_lab)[None, :]) ** 2.0
    ks = []
    for i in range(m.shape[0]):
        for j in range(i + 1, m.shape[0]):
            both = (codes[i] >= 0) & (codes[j] >= 0)
            n = int(both.sum())
            if n < 2:
                continue
            conf = np.bincount(codes[i][both] * n_lab + codes[j][both],
                               minlength=n_lab * n_lab).reshape(n_lab, n_lab).astype(float)
            expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / n
            denom = float((w * expected).sum())
            if denom == 0.0:
                continue
            ks.append(1.0 - float((w * conf).sum()) / denom)
    return float(np.mean(ks)) if ks else math.nan
