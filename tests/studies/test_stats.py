"""core.studies.stats against published/textbook values and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from core.errors import StatsError
from core.studies import agreement, stats

NAN = np.nan

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C:
# 4 observers x 12 units, values 1..5, with missing data. The same data (transposed)
# is cac.raw4raters in Gwet's R package irrCAC.
KRIPP_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]

# Wikipedia "Fleiss' kappa" worked example (after Fleiss 1971): 10 subjects, 14 raters,
# 5 categories; kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


# ----------------------------------------------------------------- Wilson


def _wilson_by_formula(x: int, n: int, z: float) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_81_of_263():
    p, lo, hi = stats.wilson_interval(81, 263)
    assert p == pytest.approx(81 / 263)
    assert lo == pytest.approx(0.2553, abs=5e-5)
    assert hi == pytest.approx(0.3662, abs=5e-5)


@pytest.mark.parametrize("x,n,conf", [(0, 10, 0.95), (10, 10, 0.95), (3, 7, 0.9), (50, 100, 0.99), (1, 1, 0.95)])
def test_wilson_matches_formula(x, n, conf):
    z = sps.norm.ppf(0.5 + conf / 2)
    _, lo, hi = stats.wilson_interval(x, n, conf)
    flo, fhi = _wilson_by_formula(x, n, z)
    assert lo == pytest.approx(flo, abs=1e-12)
    assert hi == pytest.approx(fhi, abs=1e-12)
    assert 0.0 <= lo <= x / n <= hi <= 1.0


def test_wilson_edges_and_errors():
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    for bad in [(5, 4), (-1, 3), (1.5, 3)]:
        with pytest.raises(StatsError):
            stats.wilson_interval(*bad)
    with pytest.raises(ValueError):  # StatsError is a ValueError
        stats.wilson_interval(1, 2, confidence=1.2)


def test_share_neutral_or_better():
    ratings = [-2, -1, 0, 0, 1, 2, 2, None, -1, 1]
    share, lo, hi = stats.share_neutral_or_better(ratings)
    assert share == pytest.approx(6 / 9)
    assert (lo, hi) == pytest.approx(stats.wilson_interval(6, 9)[1:])
    assert all(math.isnan(v) for v in stats.share_neutral_or_better([]))
    with pytest.raises(StatsError, match=r"ratings\[1\] = 3"):
        stats.share_neutral_or_better([0, 3])
    with pytest.raises(StatsError):
        stats.share_neutral_or_better([0.5])


# ----------------------------------------------------------------- Cohen


def test_cohen_wikipedia_50_items():
    # Wikipedia "Cohen's kappa": 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert agreement.cohen_kappa(a, b) == pytest.approx(0.4)


# Hand example, categories 0,1,2, 8 items:
# pairs (a,b): (0,0) (0,1) (1,1) (1,2) (2,2) (2,0) (2,2) (0,0)
# observed table rows a, cols b: [[2,1,0],[0,1,1],[1,0,2]]; marginals a 3,2,3; b 3,2,3
# expected = r_i c_j / 8 = [[9,6,9],[6,4,6],[9,6,9]] / 8
# unweighted: po = 5/8, pe = 22/64  -> kappa = (40-22)/(64-22) = 3/7
# linear |i-j|: observed 1+1+2 = 4; expected (4*6 + 2*2*9)/8 = 7.5 -> 1 - 4/7.5 = 7/15
# quadratic (i-j)^2: observed 1+1+4 = 6; expected (4*6 + 2*4*9)/8 = 12 -> 1 - 6/12 = 1/2
HAND_A = [0, 0, 1, 1, 2, 2, 2, 0]
HAND_B = [0, 1, 1, 2, 2, 0, 2, 0]


def test_cohen_weighted_by_hand():
    assert agreement.cohen_kappa(HAND_A, HAND_B) == pytest.approx(3 / 7)
    assert agreement.cohen_kappa(HAND_A, HAND_B, "linear") == pytest.approx(7 / 15)
    assert agreement.cohen_kappa(HAND_A, HAND_B, "quadratic") == pytest.approx(1 / 2)


def test_cohen_weighted_uses_scale_distance_not_label_rank():
    # Same data recoded 0->-2, 1->1, 2->2 on the -2..2 scale (-1 and 0 unused).
    # Distances: (-2,1)=3, (1,2)=1, (-2,2)=4.
    # quadratic: observed 9+1+16 = 26; expected (2*6*9 + 2*6*1 + 2*9*16)/8 = 51 -> 25/51
    recode = {0: -2, 1: 1, 2: 2}
    a = [recode[v] for v in HAND_A]
    b = [recode[v] for v in HAND_B]
    assert agreement.cohen_kappa(a, b, "quadratic") == pytest.approx(25 / 51)
    # explicit scale gives the same; a wrong label list is rejected
    assert agreement.cohen_kappa(a, b, "quadratic", labels=[-2, -1, 0, 1, 2]) == pytest.approx(25 / 51)
    with pytest.raises(StatsError, match="not one of labels"):
        agreement.cohen_kappa(a, b, "quadratic", labels=[-1, 0, 1])


def test_cohen_missing_and_undefined():
    a = [1, 2, None, 3, float("nan"), 1]
    b = [1, 2, 3, None, 2, 2]
    assert agreement.cohen_kappa(a, b) == pytest.approx(agreement.cohen_kappa([1, 2, 1], [1, 2, 2]))
    assert math.isnan(agreement.cohen_kappa([1, 1, 1], [1, 1, 1]))  # chance agreement is 1
    assert math.isnan(agreement.cohen_kappa([1], [1]))
    with pytest.raises(StatsError, match="same length"):
        agreement.cohen_kappa([1, 2], [1])
    with pytest.raises(StatsError, match="weights"):
        agreement.cohen_kappa([1, 2], [1, 2], weights="cubic")


def test_pairwise_cohen_matches_pairwise_calls():
    pk = agreement.pairwise_cohen(KRIPP_2011, raters=["A", "B", "C", "D"])
    assert [(p.rater_a, p.rater_b) for p in pk] == [
        ("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")
    ]
    ab = pk[0]
    # A and B both rated units 1..9: they disagree only on unit 6 (1 vs 2)
    assert ab.n_items == 9
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2]
    assert ab.kappa == pytest.approx(agreement.cohen_kappa(a, b))
    assert ab.kappa == pytest.approx(0.8448275862068966)
    # weighted uses the common 1..5 scale for every pair
    pq = agreement.pairwise_cohen(KRIPP_2011, weights="quadratic")
    assert pq[0].kappa == pytest.approx(agreement.cohen_kappa(a, b, "quadratic", labels=[1, 2, 3, 4, 5]))


def test_pairwise_cohen_dataframe_index_names():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(KRIPP_2011, index=["ann", "bob", "cy", "dee"])
    assert agreement.pairwise_cohen(df)[-1].rater_a == "cy"


# ----------------------------------------------------------------- Fleiss


def test_fleiss_wikipedia_table():
    assert agreement.fleiss_kappa(FLEISS_TABLE, form="counts") == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_from_ratings_matches_table():
    # rebuild an items x raters matrix from the count table
    ratings = [[c for c, cnt in enumerate(row, start=1) for _ in range(cnt)] for row in FLEISS_TABLE]
    assert agreement.fleiss_kappa(ratings) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_generalised_equals_fleiss_on_complete_data():
    # Gwet's generalisation must reduce to Fleiss (1971) when every item has the same raters.
    assert agreement._fleiss_generalized(np.array(FLEISS_TABLE)) == pytest.approx(0.20993, abs=5e-5)
    rng = np.random.default_rng(3)
    from statsmodels.stats.inter_rater import fleiss_kappa as sm

    for _ in range(5):
        table = rng.multinomial(6, [0.2, 0.3, 0.5], size=25)
        assert agreement._fleiss_generalized(table) == pytest.approx(sm(table))


def test_fleiss_missing_ratings_irrcac_example():
    # irrCAC vignette: fleiss.kappa.raw(cac.raw4raters) -> pa 0.8181818, pe 0.2387153, kappa 0.76117
    items_by_raters = np.array(KRIPP_2011).T
    assert agreement.fleiss_kappa(items_by_raters) == pytest.approx(0.76117, abs=5e-6)
    pa, pe = 0.8181818, 0.2387153
    assert agreement.fleiss_kappa(items_by_raters) == pytest.approx((pa - pe) / (1 - pe), abs=1e-6)


def test_fleiss_edges_and_errors():
    assert math.isnan(agreement.fleiss_kappa([[1, 1, 1], [1, 1, 1]]))  # one category only
    assert math.isnan(agreement.fleiss_kappa([[1, None], [2, None]]))  # nobody overlaps
    with pytest.raises(StatsError, match="form"):
        agreement.fleiss_kappa(FLEISS_TABLE, form="table")
    with pytest.raises(StatsError, match="not one of categories"):
        agreement.fleiss_kappa([[1, 2], [3, 1]], categories=[1, 2])
    with pytest.raises(StatsError, match="non-negative integer"):
        agreement.fleiss_kappa([[1, -1], [2, 0]], form="counts")
    with pytest.raises(StatsError, match="different lengths"):
        agreement.fleiss_kappa([[1, 2], [1]])


# ----------------------------------------------------------------- Krippendorff


@pytest.mark.parametrize(
    "level,expected",
    # Krippendorff (2011) reports nominal .743, ordinal .815, interval .849, ratio .797
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_2011_example(level, expected):
    assert agreement.krippendorff_alpha(KRIPP_2011, level=level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_wikipedia_example():
    # Wikipedia "Krippendorff's alpha" / krippendorff package README: nominal 0.691, interval 0.811
    data = [
        [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
        [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
        [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
    ]
    assert agreement.krippendorff_alpha(data, "nominal") == pytest.approx(0.691, abs=5e-4)
    assert agreement.krippendorff_alpha(data, "interval") == pytest.approx(0.811, abs=5e-4)


def test_krippendorff_edges():
    assert agreement.krippendorff_alpha([[1, 2, 3], [1, 2, 3]], "nominal") == pytest.approx(1.0)
    assert math.isnan(agreement.krippendorff_alpha([[2, 2], [2, 2]]))
    assert math.isnan(agreement.krippendorff_alpha([[1, None], [None, 2]]))
    # value_domain on the relative scale does not change ordinal alpha, but unknown values raise
    rel = [[-2, -1, 0, 1, 2, 0], [-1, -1, 0, 2, 2, 1]]
    assert agreement.krippendorff_alpha(rel, "ordinal", value_domain=[-2, -1, 0, 1, 2]) == pytest.approx(
        agreement.krippendorff_alpha(rel, "ordinal")
    )
    with pytest.raises(StatsError, match="value_domain"):
        agreement.krippendorff_alpha(rel, "ordinal", value_domain=[-1, 0, 1])
    with pytest.raises(StatsError, match="level"):
        agreement.krippendorff_alpha(rel, "ordinalish")


def test_reliability_matrix_pivots_long_ratings():
    long = [
        {"rater": r, "item_id": i, "score": v}
        for r, row in zip("ABCD", KRIPP_2011)
        for i, v in enumerate(row)
        if not math.isnan(v)
    ]
    m, raters, items = agreement.reliability_matrix(long)
    assert raters == list("ABCD") and items == list(range(12))
    np.testing.assert_array_equal(m, np.array(KRIPP_2011))
    with pytest.raises(StatsError, match="more than one rating"):
        agreement.reliability_matrix(long + [long[0]])
    with pytest.raises(StatsError, match="lack column"):
        agreement.reliability_matrix([{"rater": "A", "item": 1, "score": 1}])


# ----------------------------------------------------------------- bootstrap


def test_bootstrap_mean_close_to_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 2, size=400)
    est, lo, hi = stats.bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert est == pytest.approx(x.mean())
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)
    assert stats.bootstrap_ci(np.mean, x, n_boot=200, seed=5) == stats.bootstrap_ci(np.mean, x, n_boot=200, seed=5)


def test_bootstrap_resamples_items_not_cells():
    m = np.array(KRIPP_2011)
    seen_shapes = []

    def alpha(d):
        seen_shapes.append(d.shape)
        return agreement.krippendorff_alpha(d, "nominal")

    est, lo, hi = stats.bootstrap_ci(alpha, m, n_boot=200, seed=0)
    assert est == pytest.approx(0.743, abs=5e-4)
    assert lo < est < hi <= 1.0
    assert set(seen_shapes) == {(4, 12)}

    def same(u, v):
        return np.array_equal(u, v, equal_nan=True)

    def whole_columns(d):  # every resampled column is one of the original items
        assert all(any(same(d[:, j], m[:, c]) for c in range(12)) for j in range(12))
        return 0.0

    def whole_rows(d):  # every resampled row is one of the original raters
        assert all(any(same(d[i], m[r]) for r in range(4)) for i in range(4))
        return 0.0

    stats.bootstrap_ci(whole_columns, m, n_boot=20, over="items")
    stats.bootstrap_ci(whole_rows, m, n_boot=20, over="raters")


def test_bootstrap_dataframe_clusters_by_item():
    pd = pytest.importorskip("pandas")
    long = pd.DataFrame(
        [{"rater": r, "item_id": i, "score": float(v)} for r, row in zip("ABCD", KRIPP_2011)
         for i, v in enumerate(row) if not math.isnan(v)]
    )
    sizes = long.groupby("item_id").size().to_dict()

    def check(df):
        # every drawn cluster is a whole item: its size equals the original item's size
        for key, g in df.groupby("item_id"):
            assert len(g) == sizes[int(str(key).split("#")[0])]
        return float(df["score"].mean())

    est, lo, hi = stats.bootstrap_ci(check, long, n_boot=50, seed=0)
    assert lo <= est <= hi


def test_bootstrap_paired_tuple_and_errors():
    a = np.arange(20.0)
    b = a + 1.0
    est, lo, hi = stats.bootstrap_ci(lambda t: float(np.mean(t[0] - t[1])), (a, b), n_boot=100)
    assert est == lo == hi == -1.0  # pairs stay together, so the difference never varies
    with pytest.raises(StatsError, match="n_boot"):
        stats.bootstrap_ci(np.mean, a, n_boot=1)
    with pytest.raises(StatsError, match="over"):
        stats.bootstrap_ci(np.mean, a, over="cells")
    with pytest.raises(StatsError, match="equal"):
        stats.bootstrap_ci(np.mean, (a, b[:3]))
    # all-NaN resamples give NaN bounds, not an exception
    est, lo, hi = stats.bootstrap_ci(lambda d: math.nan, a, n_boot=10)
    assert math.isnan(lo) and math.isnan(hi)


# ----------------------------------------------------------------- rater bias


def test_per_rater_bias_recovers_planted_offsets():
    rng = np.random.default_rng(7)
    truth = {"r1": 0.0, "r2": 0.5, "r3": -0.5, "r4": 0.0}
    rows = []
    for item in range(1000):
        quality = rng.normal(0, 1)
        for r, off in truth.items():
            rows.append({"rater": r, "item_id": item, "score": quality + off + rng.normal(0, 0.3)})
    bias = {b.rater: b for b in agreement.per_rater_bias(rows)}
    # leave-one-out: offset of r vs mean of the other three = off_r - mean(other offsets)
    # each offset has sd sqrt(0.3^2 + 0.3^2/3) = 0.346, so its mean has se 0.011 over 1000 items
    se = math.sqrt(0.09 + 0.03) / math.sqrt(1000)
    for r, off in truth.items():
        others = [o for q, o in truth.items() if q != r]
        expected = off - sum(others) / 3
        assert bias[r].mean_offset == pytest.approx(expected, abs=4 * se)
        assert bias[r].hi - bias[r].lo == pytest.approx(2 * 1.962 * se, rel=0.15)
        assert bias[r].lo < bias[r].mean_offset < bias[r].hi
        assert bias[r].n == 1000


def test_per_rater_bias_by_hand_and_units():
    rows = [
        {"rater": "a", "item_id": 1, "arm": "x", "score": 2},
        {"rater": "b", "item_id": 1, "arm": "x", "score": 0},
        {"rater": "a", "item_id": 1, "arm": "y", "score": -1},
        {"rater": "b", "item_id": 1, "arm": "y", "score": -1},
        {"rater": "a", "item_id": 2, "arm": "x", "score": 1},  # rated once: skipped
    ]
    got = {b.rater: b for b in agreement.per_rater_bias(rows, item_col=("item_id", "arm"))}
    assert got["a"].mean_offset == pytest.approx((2 + 0) / 2) and got["a"].n == 2
    assert got["b"].mean_offset == pytest.approx((-2 + 0) / 2)
    incl = {b.rater: b for b in agreement.per_rater_bias(rows, item_col=("item_id", "arm"), leave_one_out=False)}
    assert incl["a"].mean_offset == pytest.approx((1 + 0 + 0) / 3) and incl["a"].n == 3
    with pytest.raises(StatsError, match="not a number"):
        agreement.per_rater_bias([{"rater": "a", "item_id": 1, "score": "good"}])


# ----------------------------------------------------------------- paired comparison / spearman

# scipy.stats.wilcoxon docs: Fisher's/Darwin's Zea mays height differences
DARWIN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def test_wilcoxon_darwin():
    res = stats.paired_comparison(DARWIN, [0] * len(DARWIN), n_boot=500)
    assert res.statistic == 24.0
    assert res.p_value == pytest.approx(0.041259765625)
    assert (res.w_plus, res.w_minus) == (96.0, 24.0)
    assert res.rank_biserial == pytest.approx((96 - 24) / 120)  # Kerby (2014) simple difference
    assert res.mean_diff == pytest.approx(np.mean(DARWIN))
    assert res.mean_diff_lo < res.mean_diff < res.mean_diff_hi
    greater = stats.paired_comparison(DARWIN, [0] * len(DARWIN), alternative="greater", n_boot=100)
    assert greater.p_value == pytest.approx(0.0206298828125)


def test_paired_comparison_ties_zeros_and_missing():
    a = [1, 2, 0, 1, 2, 1, None, 0, 1, 2]
    b = [0, 0, 0, 1, 1, -1, 2, -1, 0, 0]
    res = stats.paired_comparison(a, b, n_boot=200)
    assert res.n == 9 and res.n_nonzero == 7
    ref = sps.wilcoxon([1, 2, 0, 1, 2, 1, 0, 1, 2], [0, 0, 0, 1, 1, -1, -1, 0, 0])
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.rank_biserial == pytest.approx(1.0)  # every non-zero difference favours a
    flipped = stats.paired_comparison(b, a, n_boot=200)
    assert flipped.rank_biserial == pytest.approx(-1.0)
    assert flipped.mean_diff == pytest.approx(-res.mean_diff)
    same = stats.paired_comparison([1, 2, 3], [1, 2, 3], n_boot=50)
    assert (same.p_value, same.rank_biserial, same.mean_diff) == (1.0, 0.0, 0.0)
    with pytest.raises(StatsError, match="same length"):
        stats.paired_comparison([1, 2], [1])
    with pytest.raises(StatsError, match="at least one pair"):
        stats.paired_comparison([None], [1])


def test_spearman():
    rho, p = stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    # ranks y: 1,2,3.5,5,3.5 -> Pearson correlation of ranks = 0.8207826816681233
    assert rho == pytest.approx(0.8207826816681233)
    assert p == pytest.approx(sps.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]).pvalue)
    rho, _ = stats.spearman([1, 2, 3, None, 4], [10, 20, 30, 99, 40])
    assert rho == pytest.approx(1.0)
    assert all(math.isnan(v) for v in stats.spearman([1, 2], [2, 1]))
    assert all(math.isnan(v) for v in stats.spearman([1, 1, 1], [1, 2, 3]))


# --------------------------------------------------------------------------- Holm, unpaired


def test_holm_matches_the_step_down_by_hand_and_keeps_nan_out():
    # Holm (1979): sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then a running maximum
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.01, NAN, 0.04])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_unpaired_comparison_is_mann_whitney_with_a_bootstrap_interval():
    a, b = [2, 1, 2, 0, 1, 2, 1], [0, -1, 1, 0, -1]
    res = stats.unpaired_comparison(a, b, n_boot=500, seed=1)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert res.rank_biserial == pytest.approx(2 * ref.statistic / (len(a) * len(b)) - 1)
    assert res.mean_diff == pytest.approx(np.mean(a) - np.mean(b))
    assert res.mean_diff_lo < res.mean_diff < res.mean_diff_hi
    assert stats.unpaired_comparison(a, b, n_boot=500, seed=1) == res   # seeded
    with pytest.raises(StatsError, match="both samples"):
        stats.unpaired_comparison([1, 2], [None])


def test_bootstrap_of_independent_samples_resamples_each_on_its_own():
    est, lo, hi = stats.bootstrap_ci(lambda t: float(t[0].mean() - t[1].mean()),
                                     (np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0])),
                                     n_boot=50, independent=True)
    assert (est, lo, hi) == (1.0, 1.0, 1.0)
    with pytest.raises(StatsError, match="tuple"):
        stats.bootstrap_ci(np.mean, np.array([1.0, 2.0]), independent=True)
