"""Statistics for human evaluation studies: proportions, the bootstrap, comparisons of arms
(paired and unpaired), the multiple-comparison correction, correlation. Agreement between raters
is in :mod:`core.studies.agreement`.

Thin, validated wrappers around the field's libraries (statsmodels, scipy) plus the piece
they lack: one percentile bootstrap over items (clusters, pairs or independent samples) that
every interval of a study uses.

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

Heavy imports (scipy, statsmodels, pandas) happen inside the functions so
``import core.studies.stats`` stays fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

from core.errors import StatsError

__all__ = [
    "RELATIVE_SCALE",
    "wilson_interval",
    "share_neutral_or_better",
    "bootstrap_ci",
    "PairedComparison",
    "paired_comparison",
    "UnpairedComparison",
    "unpaired_comparison",
    "holm",
    "spearman",
]

RELATIVE_SCALE: tuple[int, ...] = (-2, -1, 0, 1, 2)
"""The 5-point relative scale: -2 much worse ... 0 same ... +2 much better."""

# --------------------------------------------------------------------------- helpers


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float, when it is strictly between 0 and 1."""
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


def as_matrix(matrix: Any, name: str) -> np.ndarray:
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
    from statsmodels.stats.proportion import proportion_confint  # deferred: heavy

    confidence = check_confidence(confidence)
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
    independent: bool = False,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval, resampling whole items (or raters).

    What is resampled depends on ``data``:

    * 1-D sequence / array: its elements (one per item).
    * tuple of equal-length sequences, e.g. ``(a, b)``: the same indices in each
      (paired items); ``stat_fn`` receives a tuple of arrays. With ``independent=True``
      the sequences are independent samples (any lengths), each resampled on its own.
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
        independent: a tuple holds independent samples, not paired ones.

    Returns:
        (estimate, lo, hi): stat_fn on the full data and the percentile bounds
        (nan bounds when every resample was NaN).
    """
    confidence = check_confidence(confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise StatsError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    if over not in ("items", "raters"):
        raise StatsError(f"over must be 'items' or 'raters', got {over!r}")
    rng = np.random.default_rng(seed)
    resample = (_independent_resampler(data) if independent
                else _resampler(data, over, item_col, rater_col))
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


def _independent_resampler(data: Any) -> Callable[[np.random.Generator], Any]:
    if not isinstance(data, tuple):
        raise StatsError("independent=True needs a tuple of samples, e.g. (a, b)")
    arrays = [np.asarray(x) for x in data]
    if any(x.ndim != 1 or x.size == 0 for x in arrays):
        raise StatsError(f"independent samples must be non-empty 1-D, got shapes "
                         f"{[x.shape for x in arrays]}")
    return lambda rng: tuple(x[rng.integers(0, x.size, x.size)] for x in arrays)


def _resampler(data: Any, over: str, item_col: str, rater_col: str) -> Callable[[np.random.Generator], Any]:
    try:
        import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it
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
    from scipy import stats as sps  # deferred: heavy

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


@dataclass(frozen=True)
class UnpairedComparison:
    """Mann-Whitney U test of two independent samples a and b, with effect sizes.

    statistic is scipy's U for a; rank_biserial = 2U / (n_a n_b) - 1, positive when a tends
    to be larger. mean_diff is mean(a) - mean(b) with a percentile bootstrap interval that
    resamples each sample on its own.
    """
    n_a: int
    n_b: int
    statistic: float
    p_value: float
    rank_biserial: float
    mean_a: float
    mean_b: float
    mean_diff: float
    mean_diff_lo: float
    mean_diff_hi: float


def unpaired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 2000,
                        seed: int = 0, confidence: float = 0.95) -> UnpairedComparison:
    """Compare two independent samples (e.g. per-item mean ratings of two unpaired arms).

    Missing values are dropped.

    Args:
        a: first sample.
        b: second sample (any length).
        n_boot: bootstrap resamples for the mean-difference interval.
        seed: bootstrap seed.
        confidence: level of the bootstrap interval.

    Returns:
        UnpairedComparison.

    >>> unpaired_comparison([2, 2, 1, 2], [0, -1, 0], n_boot=200).rank_biserial
    1.0
    """
    from scipy import stats as sps  # deferred: heavy

    x, y = _as_float_1d(a, "a"), _as_float_1d(b, "b")
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size == 0 or y.size == 0:
        raise StatsError(f"unpaired_comparison needs values in both samples, got {x.size} "
                         f"and {y.size}")
    res = sps.mannwhitneyu(x, y, alternative="two-sided")
    effect = 2.0 * float(res.statistic) / (x.size * y.size) - 1.0
    diff, lo, hi = bootstrap_ci(lambda t: float(t[0].mean() - t[1].mean()), (x, y),
                                n_boot=n_boot, seed=seed, confidence=confidence,
                                independent=True)
    return UnpairedComparison(int(x.size), int(y.size), float(res.statistic),
                              float(res.pvalue), effect, float(x.mean()), float(y.mean()),
                              diff, lo, hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``).

    NaN p-values (a comparison that could not be tested) stay NaN and do not count as tests.

    >>> holm([0.01, 0.04, float("nan"), 0.03])
    [0.03, 0.06, nan, 0.06]
    """
    from statsmodels.stats.multitest import multipletests  # deferred: heavy

    p = _as_float_1d(pvalues, "pvalues")
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return [float(v) for v in out]


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation (scipy ``spearmanr``) over pairs with both values present.

    Args:
        x: first variable.
        y: second variable, same length.

    Returns:
        (rho, p_value); (nan, nan) with fewer than 3 pairs or a constant variable.
    """
    from scipy import stats as sps  # deferred: heavy

    xs, ys = _paired_finite(x, y, "x", "y")
    if xs.size < 3 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return (math.nan, math.nan)
    res = sps.spearmanr(xs, ys)
    return (float(res.statistic), float(res.pvalue))
