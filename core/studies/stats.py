"""Statistics for human evaluation studies: proportions, agreement, paired tests.

Thin, validated wrappers around the field's libraries (statsmodels, scikit-learn,
scipy, krippendorff) plus the few pieces those libraries lack (Fleiss' kappa with
missing ratings, a cluster bootstrap over items, per-rater bias).

Conventions
-----------
* Malformed input (mismatched lengths, a rating outside the scale, successes > n,
  an unknown option) raises :class:`StatsError` (a ``ValueError``) naming the
  argument, position and value.
* A statistic that is *undefined* for well-formed data (no ratings yet, every
  rating identical so chance agreement is 1, fewer than 3 pairs for a
  correlation) is returned as ``float('nan')`` so dashboards keep working early
  in a study.
* Matrices of ratings use ``NaN`` (or ``None`` in nested lists) for "not rated".
  Orientation is part of each function's contract: :func:`krippendorff_alpha`
  and :func:`pairwise_cohen` take *reliability data* (raters x items, the
  krippendorff package's layout); :func:`fleiss_kappa` takes items x raters
  (statsmodels' layout) or an items x categories count table.

Heavy imports (scipy, statsmodels, sklearn, pandas, krippendorff) happen inside
the functions so ``import core.studies.stats`` stays fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

from core.errors import ValidationError
from core.errors import StatsError  # noqa: F401 (defined in core.errors)

__all__ = [
    "StatsError",
    "RELATIVE_SCALE",
    "wilson_interval",
    "share_neutral_or_better",
    "cohen_kappa",
    "PairKappa",
    "pairwise_cohen",
    "fleiss_kappa",
    "krippendorff_alpha",
    "reliability_matrix",
    "bootstrap_ci",
    "RaterBias",
    "per_rater_bias",
    "PairedComparison",
    "paired_comparison",
    "spearman",
]

RELATIVE_SCALE: tuple[int, ...] = (-2, -1, 0, 1, 2)
"""The 5-point relative scale: -2 much worse ... 0 same ... +2 much better."""


# --------------------------------------------------------------------------- helpers


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0.0 < float(confidence) < 1.0):
        raise StatsError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def _as_float_1d(values: Any, name: str) -> np.ndarray:
    """1-D float array with None -> NaN; raises StatsError naming the bad position."""
    if isinstance(values, (str, bytes)):
        raise StatsError(f"{name} must be a sequence of numbers, got a string {values!r}")
    seq = list(values)
    out = np.empty(len(seq), dtype=float)
    for i, v in enumerate(seq):
        if v is None:
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise StatsError(f"{name}[{i}] is not a number: {v!r}") from None
    return out


def _as_float_2d(matrix: Any, name: str) -> np.ndarray:
    """2-D float array with None -> NaN (accepts nested lists, ndarrays, DataFrames)."""
    if hasattr(matrix, "to_numpy"):
        matrix = matrix.to_numpy()
    if isinstance(matrix, np.ndarray) and matrix.dtype.kind in "fiub":
        arr = matrix.astype(float)
    else:
        rows = list(matrix)
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise StatsError(f"{name} rows have different lengths {sorted(lengths)}; pad with None/NaN")
        arr = np.array([_as_float_1d(r, f"{name}[{i}]") for i, r in enumerate(rows)], dtype=float)
    if arr.ndim != 2:
        raise StatsError(f"{name} must be 2-dimensional, got shape {arr.shape}")
    if np.isinf(arr).any():
        i, j = np.argwhere(np.isinf(arr))[0]
        raise StatsError(f"{name}[{i}][{j}] is infinite")
    return arr


def _paired_finite(a: Any, b: Any, name_a: str = "a", name_b: str = "b") -> tuple[np.ndarray, np.ndarray]:
    x = _as_float_1d(a, name_a)
    y = _as_float_1d(b, name_b)
    if len(x) != len(y):
        raise StatsError(f"{name_a} and {name_b} must have the same length, got {len(x)} and {len(y)}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


# --------------------------------------------------------------------------- proportions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Wilson score interval for a binomial proportion (statsmodels ``proportion_confint``).

    Args:
        successes: number of successes, 0 <= successes <= n.
        n: number of trials; 0 gives (nan, nan, nan).
        confidence: two-sided confidence level in (0, 1).

    Returns:
        (p, lo, hi): the observed proportion and the interval bounds.
    """
    from statsmodels.stats.proportion import proportion_confint

    confidence = _check_confidence(confidence)
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise StatsError(f"{name} must be an integer, got {v!r}")
    if n < 0 or successes < 0 or successes > n:
        raise StatsError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = proportion_confint(int(successes), int(n), alpha=1.0 - confidence, method="wilson")
    # the bounds are exactly 0 / 1 at the extremes; statsmodels can be 1 ulp off
    lo = 0.0 if successes == 0 else float(lo)
    hi = 1.0 if successes == n else float(hi)
    return (successes / n, lo, hi)


def share_neutral_or_better(ratings: Iterable[int], confidence: float = 0.95) -> tuple[float, float, float]:
    """Share of relative ratings that are 0 ("as good") or better, with a Wilson interval.

    Args:
        ratings: integers on the relative scale -2..2 (None entries are skipped).
        confidence: two-sided confidence level.

    Returns:
        (share, lo, hi); (nan, nan, nan) when there are no ratings.
    """
    values = []
    for i, r in enumerate(ratings):
        if r is None:
            continue
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or int(r) not in RELATIVE_SCALE:
            raise StatsError(f"ratings[{i}] = {r!r} is not an integer on the relative scale -2..2")
        values.append(int(r))
    return wilson_interval(sum(1 for r in values if r >= 0), len(values), confidence)


# --------------------------------------------------------------------------- agreement


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
    from sklearn.metrics import cohen_kappa_score

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
    m = _as_float_2d(reliability_data, "reliability_data")
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
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    if form == "ratings":
        m = _as_float_2d(data, "data")
        seen = np.unique(m[~np.isnan(m)])
        cats = np.asarray(sorted(categories), dtype=float) if categories is not None else seen
        unknown = np.setdiff1d(seen, cats)
        if unknown.size:
            i, j = np.argwhere(m == unknown[0])[0]
            raise StatsError(f"data[{i}][{j}] = {unknown[0]!r} is not one of categories {list(categories or [])!r}")
        table = np.stack([(m == c).sum(axis=1) for c in cats], axis=1) if cats.size else np.zeros((m.shape[0], 0))
    elif form == "counts":
        table = _as_float_2d(data, "data")
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
    import krippendorff

    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise StatsError(f"level must be nominal, ordinal, interval or ratio, got {level!r}")
    m = _as_float_2d(reliability_data, "reliability_data")
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
    import pandas as pd

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


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    stat_fn: Callable[[Any], float],
    data: Any,
    n_boot: int = 1000,
    seed: int = 0,
    over: Literal["items", "raters"] = "items",
    confidence: float = 0.95,
    item_col: str = "item_id",
    rater_col: str = "rater",
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval, resampling whole items (or raters).

    What is resampled depends on ``data``:

    * 1-D sequence / array: its elements (one per item).
    * tuple of equal-length sequences, e.g. ``(a, b)``: the same indices in each
      (paired items); ``stat_fn`` receives a tuple of arrays.
    * 2-D array (raters x items, the reliability layout): columns when
      ``over="items"``, rows when ``over="raters"``.
    * pandas DataFrame in long format: whole clusters of rows sharing ``item_col``
      (or ``rater_col`` when ``over="raters"``); a cluster drawn twice appears twice,
      its ids suffixed ``#1``, ``#2`` so a pivot keeps the copies apart.

    Resamples whose statistic is NaN (e.g. kappa undefined) are left out of the
    percentiles.

    Args:
        stat_fn: maps data of the same kind to a float.
        data: see above.
        n_boot: number of bootstrap resamples (>= 2).
        seed: seed for numpy's default_rng.
        over: "items" or "raters".
        confidence: two-sided level.
        item_col: DataFrame column identifying items.
        rater_col: DataFrame column identifying raters.

    Returns:
        (estimate, lo, hi): stat_fn on the full data and the percentile bounds
        (nan bounds when every resample was NaN).
    """
    confidence = _check_confidence(confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise StatsError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    if over not in ("items", "raters"):
        raise StatsError(f"over must be 'items' or 'raters', got {over!r}")
    rng = np.random.default_rng(seed)
    resample = _resampler(data, over, item_col, rater_col)
    estimate = float(stat_fn(data))
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = float(stat_fn(resample(rng)))
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return (estimate, math.nan, math.nan)
    alpha = 1.0 - confidence
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (estimate, float(lo), float(hi))


def _resampler(data: Any, over: str, item_col: str, rater_col: str) -> Callable[[np.random.Generator], Any]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a requirement
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        col = item_col if over == "items" else rater_col
        if col not in data.columns:
            raise StatsError(f"bootstrap data lacks column {col!r}; have {list(data.columns)}")
        groups = [g for _, g in data.groupby(col, sort=True)]
        if not groups:
            raise StatsError("bootstrap data is empty")

        def draw_frame(rng: np.random.Generator):
            idx = rng.integers(0, len(groups), len(groups))
            parts = []
            for copy, i in enumerate(idx):
                g = groups[i].copy()
                g[col] = g[col].astype(str) + f"#{copy}"
                parts.append(g)
            return pd.concat(parts, ignore_index=True)

        return draw_frame
    if isinstance(data, tuple):
        arrays = [np.asarray(x) for x in data]
        lengths = {len(x) for x in arrays}
        if len(lengths) != 1 or 0 in lengths:
            raise StatsError(f"paired bootstrap data need equal, non-zero lengths, got {sorted(lengths)}")
        n = lengths.pop()

        def draw_tuple(rng: np.random.Generator):
            idx = rng.integers(0, n, n)
            return tuple(x[idx] for x in arrays)

        return draw_tuple
    arr = np.asarray(data)
    if arr.ndim == 1:
        if over != "items":
            raise StatsError("over='raters' needs a 2-D raters x items array or a long DataFrame")
        if arr.size == 0:
            raise StatsError("bootstrap data is empty")
        return lambda rng: arr[rng.integers(0, arr.size, arr.size)]
    if arr.ndim == 2:
        axis = 1 if over == "items" else 0
        n = arr.shape[axis]
        if n == 0:
            raise StatsError(f"bootstrap data has no {over}")
        return lambda rng: np.take(arr, rng.integers(0, n, n), axis=axis)
    raise StatsError(f"bootstrap data must be 1-D, 2-D, a tuple of arrays or a DataFrame, got shape {arr.shape}")


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
    from scipy import stats as sps

    confidence = _check_confidence(confidence)
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


# --------------------------------------------------------------------------- paired tests


@dataclass(frozen=True)
class PairedComparison:
    """Wilcoxon signed-rank test of a vs b on paired items, with effect sizes.

    statistic is scipy's W (for two-sided tests the smaller of the positive and
    negative rank sums); rank_biserial = (W+ - W-) / (W+ + W-), positive when a > b.
    mean_diff is mean(a - b) with a percentile bootstrap interval over pairs.
    """

    n: int
    n_nonzero: int
    statistic: float
    p_value: float
    rank_biserial: float
    mean_diff: float
    mean_diff_lo: float
    mean_diff_hi: float
    w_plus: float
    w_minus: float


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
    zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare two paired samples (e.g. per-item mean rating of arm A vs arm B).

    Pairs with a missing value are dropped. When every difference is zero there is
    no evidence of a difference: statistic 0, p-value 1, effect size 0.

    Args:
        a: first sample.
        b: second sample, same length, paired by position.
        alternative: "two-sided", "greater" (a > b) or "less".
        zero_method: how scipy treats zero differences ("wilcox" drops them).
        n_boot: bootstrap resamples for the mean-difference interval.
        seed: bootstrap seed.
        confidence: level of the bootstrap interval.

    Returns:
        PairedComparison.
    """
    from scipy import stats as sps

    if alternative not in ("two-sided", "greater", "less"):
        raise StatsError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise StatsError(f"zero_method must be wilcox, pratt or zsplit, got {zero_method!r}")
    x, y = _paired_finite(a, b)
    n = int(x.size)
    if n == 0:
        raise StatsError("paired_comparison needs at least one pair with both values present")
    d = x - y
    nz = d != 0
    if zero_method == "wilcox":
        ranks = sps.rankdata(np.abs(d[nz]))
        w_plus = float(ranks[d[nz] > 0].sum())
        w_minus = float(ranks[d[nz] < 0].sum())
    else:
        ranks = sps.rankdata(np.abs(d))
        w_plus = float(ranks[d > 0].sum())
        w_minus = float(ranks[d < 0].sum())
        if zero_method == "zsplit":
            half = float(ranks[~nz].sum()) / 2
            w_plus += half
            w_minus += half
    mean_diff, lo, hi = bootstrap_ci(lambda t: float(np.mean(t[0] - t[1])), (x, y),
                                     n_boot=n_boot, seed=seed, confidence=confidence)
    if not nz.any():
        return PairedComparison(n, 0, 0.0, 1.0, 0.0, mean_diff, lo, hi, w_plus, w_minus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(x, y, zero_method=zero_method, alternative=alternative)
    denom = w_plus + w_minus
    r = (w_plus - w_minus) / denom if denom else 0.0
    return PairedComparison(
        n=n,
        n_nonzero=int(nz.sum()),
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        rank_biserial=float(r),
        mean_diff=mean_diff,
        mean_diff_lo=lo,
        mean_diff_hi=hi,
        w_plus=w_plus,
        w_minus=w_minus,
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation (scipy ``spearmanr``) over pairs with both values present.

    Args:
        x: first variable.
        y: second variable, same length.

    Returns:
        (rho, p_value); (nan, nan) with fewer than 3 pairs or a constant variable.
    """
    from scipy import stats as sps

    xs, ys = _paired_finite(x, y, "x", "y")
    if xs.size < 3 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return (math.nan, math.nan)
    res = sps.spearmanr(xs, ys)
    return (float(res.statistic), float(res.pvalue))
