"""core.studies.design: sampling, balanced assignment, blinding."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.studies.design import (
    Assignment,
    StudyDesignError,
    assign,
    blind_label,
    blinding_key,
    largest_remainder,
    sample_reports,
    summarize_assignments,
    unblind,
    validate_assignments,
)

REPORTS_CSV = Path(__file__).resolve().parents[3] / "shared/data/iu_xray/reports.csv"


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _check_design(out, items, arms, raters, k):
    """Independent re-statement of assign()'s guarantees (does not use validate_assignments)."""
    assert len(out) == len(items) * len(arms) * k
    per_unit = defaultdict(list)
    for a in out:
        per_unit[(a.item_id, a.arm)].append(a.rater)
    assert set(per_unit) == {(i, a) for i in items for a in arms}
    for unit, rs in per_unit.items():
        assert len(rs) == k, unit
        assert len(set(rs)) == k, f"a rater got unit {unit} twice"
    load = Counter({r: 0 for r in raters})
    load.update(a.rater for a in out)
    assert max(load.values()) - min(load.values()) <= 1, load
    for arm in arms:
        arm_load = Counter({r: 0 for r in raters})
        arm_load.update(a.rater for a in out if a.arm == arm)
        assert max(arm_load.values()) - min(arm_load.values()) <= 1, (arm, arm_load)
    by_rater = defaultdict(list)
    for a in out:
        by_rater[a.rater].append(a.position)
    for r, pos in by_rater.items():
        assert sorted(pos) == list(range(len(pos))), r
    return load


@pytest.mark.parametrize(
    "n_items,n_arms,n_raters,k",
    [(200, 3, 7, 3), (17, 2, 5, 2), (17, 1, 5, 2), (10, 2, 3, 3), (1, 1, 1, 1), (5, 2, 7, 3), (3, 4, 7, 1)],
)
def test_assign_balance_and_overlap(n_items, n_arms, n_raters, k):
    items, arms, raters = list(range(n_items)), _names("arm", n_arms), _names("r", n_raters)
    out = assign(items, arms, raters, k, seed=11)
    load = _check_design(out, items, arms, raters, k)
    validate_assignments(out, items, arms, raters, k)
    assert sum(load.values()) == n_items * n_arms * k


def test_assign_7_raters_spreads_pairs_evenly():
    items, arms, raters = list(range(200)), ["base", "lora", "human"], _names("r", 7)
    s = summarize_assignments(assign(items, arms, raters, 3, seed=0), raters)
    # 600 units x 3 pairs each = 1800 shared slots over 21 pairs = 85.7 per pair on average
    assert sum(s.shared_units.values()) == 1800
    assert min(s.shared_units.values()) >= 80 and max(s.shared_units.values()) <= 92
    assert sorted(s.load.values()) == [257] * 6 + [258]  # 1800 tasks / 7 raters


def test_assign_3_raters_k3_everyone_rates_everything():
    items, arms, raters = ["x", "y", "z", "w"], ["a", "b"], ["p", "q", "s"]
    out = assign(items, arms, raters, 3, seed="study-1")
    for r in raters:
        assert {(a.item_id, a.arm) for a in out if a.rater == r} == {(i, a) for i in items for a in arms}


def test_assign_deterministic_order_independent_and_seed_sensitive():
    items, arms, raters = list(range(40)), ["a", "b"], _names("r", 5)
    one = assign(items, arms, raters, 2, seed=42)
    assert assign(items, arms, raters, 2, seed=42) == one
    shuffled = assign(items[::-1], arms[::-1], raters[::-1], 2, seed=42)
    assert sorted(shuffled, key=lambda a: (a.rater, a.position)) == sorted(one, key=lambda a: (a.rater, a.position))
    other = assign(items, arms, raters, 2, seed=43)
    assert {(a.rater, a.item_id, a.arm) for a in other} != {(a.rater, a.item_id, a.arm) for a in one}


def test_assign_queue_order_is_randomised():
    items, arms, raters = list(range(60)), ["a", "b"], _names("r", 4)
    out = assign(items, arms, raters, 2, seed=5)
    queues = defaultdict(list)
    for a in sorted(out, key=lambda a: a.position):
        queues[a.rater].append((a.item_id, a.arm))
    for q in queues.values():
        assert q != sorted(q), "queue is in item order, not shuffled"
        arms_first_half = Counter(arm for _, arm in q[: len(q) // 2])
        assert set(arms_first_half) == {"a", "b"}, "arms are not interleaved in the queue"


def test_assign_errors():
    with pytest.raises(StudyDesignError, match="k=4 raters per unit but only 3 raters"):
        assign([1, 2], ["a"], ["x", "y", "z"], 4, seed=0)
    with pytest.raises(ValueError, match="arms is empty"):
        assign([1, 2], [], ["x"], 1, seed=0)
    with pytest.raises(StudyDesignError, match="items is empty"):
        assign([], ["a"], ["x"], 1, seed=0)
    with pytest.raises(StudyDesignError, match="raters is empty"):
        assign([1], ["a"], [], 1, seed=0)
    with pytest.raises(StudyDesignError, match="positive integer"):
        assign([1], ["a"], ["x"], 0, seed=0)
    with pytest.raises(StudyDesignError, match=r"raters\[2\] = 'x' repeats raters\[0\]"):
        assign([1], ["a"], ["x", "y", "x"], 1, seed=0)
    with pytest.raises(StudyDesignError, match="items"):
        assign([1, 2, 1], ["a"], ["x"], 1, seed=0)


def test_assign_keeps_excluded_units_off_their_rater():
    """A rater never gets a unit they saw unblinded (issue 14.3); the design stays balanced,
    and no exclusions give exactly the unconstrained design."""
    items, arms, raters = list(range(30)), ["a", "b", "c"], _names("r", 4)
    exclude = {("r0", i, arm) for i in range(12) for arm in arms} | {("r2", i, "b")
                                                                     for i in range(20, 30)}
    plan = assign(items, arms, raters, 2, 5, exclude=exclude)
    validate_assignments(plan, items, arms, raters, 2)
    assert not {(a.rater, a.item_id, a.arm) for a in plan} & exclude
    assert assign(items, arms, raters, 2, 5, exclude=()) == assign(items, arms, raters, 2, 5)
    with pytest.raises(StudyDesignError, match="seen"):
        assign(items, arms, raters, 2, 5, exclude={("r0", i, "a") for i in items})


def test_validate_assignments_catches_broken_designs():
    items, arms, raters = [1, 2, 3, 4], ["a"], ["x", "y", "z"]
    good = assign(items, arms, raters, 2, seed=0)
    validate_assignments(good, items, arms, raters, 2)
    with pytest.raises(StudyDesignError, match="has 1 raters, expected 2"):
        validate_assignments(good[1:], items, arms, raters, 2)
    g = good[0]
    dup = good + [Assignment(g.rater, g.item_id, g.arm, 99)]
    with pytest.raises(StudyDesignError, match="twice"):
        validate_assignments(dup, items, arms, raters, 2)
    # move every task of one rater onto another -> loads unbalanced (and duplicates)
    lop = [Assignment("x", a.item_id, a.arm, a.position) if a.rater == "y" else a for a in good]
    with pytest.raises(StudyDesignError):
        validate_assignments(lop, items, arms, raters, 2)


@settings(max_examples=60, deadline=None)
@given(
    n_items=st.integers(1, 25),
    n_arms=st.integers(1, 4),
    n_raters=st.integers(1, 9),
    data=st.data(),
)
def test_assign_property(n_items, n_arms, n_raters, data):
    k = data.draw(st.integers(1, n_raters))
    seed = data.draw(st.integers(0, 10**6))
    items, arms, raters = list(range(n_items)), _names("arm", n_arms), _names("r", n_raters)
    out = assign(items, arms, raters, k, seed=seed)
    _check_design(out, items, arms, raters, k)


# ----------------------------------------------------------------- sampling


def test_largest_remainder_textbook():
    # Wikipedia "Largest remainder method", Hare quota example: 10 seats
    votes = {"Yellow": 47000, "White": 16000, "Red": 15800, "Green": 12000, "Blue": 6100, "Pink": 3100}
    assert largest_remainder(votes, 10) == {"Yellow": 5, "White": 2, "Red": 1, "Green": 1, "Blue": 1, "Pink": 0}
    assert largest_remainder({"a": 3, "b": 0}, 3) == {"a": 3, "b": 0}
    with pytest.raises(StudyDesignError):
        largest_remainder({"a": 2}, 3)


def _population():
    reports = []
    sources = {"iu": 600, "mimic": 300, "local": 100}
    rid = 0
    for src, size in sources.items():
        for j in range(size):
            reports.append({"id": f"rep{rid}", "source": src, "normal": j % 3 == 0})
            rid += 1
    return reports


def test_sample_reports_proportional_strata():
    reports = _population()
    ids = sample_reports(reports, 101, seed=3)
    assert len(ids) == len(set(ids)) == 101
    by_id = {r["id"]: r for r in reports}
    got = Counter((by_id[i]["normal"], by_id[i]["source"]) for i in ids)
    strata = Counter((r["normal"], r["source"]) for r in reports)
    quotas = largest_remainder(strata, 101)
    assert got == Counter({s: q for s, q in quotas.items() if q})
    for s, size in strata.items():
        assert abs(got[s] - 101 * size / 1000) < 1  # within rounding of exact proportion


def test_sample_reports_deterministic_and_order_independent():
    reports = _population()
    a = sample_reports(reports, 50, seed=9)
    assert sample_reports(reports, 50, seed=9) == a
    assert sorted(sample_reports(list(reversed(reports)), 50, seed=9)) == sorted(a)
    assert set(sample_reports(reports, 50, seed=10)) != set(a)
    assert sample_reports(reports, 0, seed=9) == []
    assert sorted(sample_reports(reports, len(reports), seed=9)) == sorted(r["id"] for r in reports)


def test_sample_reports_simple_random_and_errors():
    reports = _population()
    assert len(sample_reports(reports, 10, seed=1, strata=())) == 10
    with pytest.raises(StudyDesignError, match=r"reports\[1\] has no field 'source'"):
        sample_reports([{"id": 1, "source": "a", "normal": True}, {"id": 2, "normal": False}], 1, seed=0)
    with pytest.raises(StudyDesignError, match="between 0 and 1000"):
        sample_reports(reports, 1001, seed=0)
    with pytest.raises(StudyDesignError, match="repeats"):
        sample_reports([{"id": 1, "source": "a", "normal": True}] * 2, 1, seed=0)


def test_sample_reports_real_iu_xray():
    if not REPORTS_CSV.exists():
        pytest.skip(f"{REPORTS_CSV} absent")
    with REPORTS_CSV.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    reports = [
        {"id": r["uid"], "source": "iu_xray", "normal": r["MeSH"].strip().lower() == "normal"} for r in rows
    ]
    ids = sample_reports(reports, 200, seed=2024)
    normal_ids = {r["id"] for r in reports if r["normal"]}
    share_pop = len(normal_ids) / len(reports)
    got = sum(1 for i in ids if i in normal_ids)
    assert abs(got - 200 * share_pop) < 1
    assert len(set(ids)) == 200


# ----------------------------------------------------------------- blinding


def test_blinding_labels_are_per_item_permutations():
    arms = ["baseline", "personalised"]
    items = list(range(200))
    key = blinding_key("seed-7", items, arms)
    assert all(set(m) == {"A", "B"} and set(m.values()) == set(arms) for m in key.values())
    a_is_baseline = sum(1 for m in key.values() if m["A"] == "baseline")
    assert 70 < a_is_baseline < 130  # randomised per item, not constant
    for item in items[:20]:
        for arm in arms:
            label = blind_label("seed-7", item, arm, arms)
            assert key[str(item)][label] == arm
            assert unblind(key, item, label) == arm


def test_blinding_key_round_trips_json_and_is_deterministic():
    arms = ["x", "y", "z"]
    key = blinding_key(1, ["r1", "r2"], arms)
    assert key == blinding_key(1, ["r2", "r1"], list(reversed(arms)))
    stored = json.loads(json.dumps(key))
    assert unblind(stored, "r1", "C") == key["r1"]["C"]
    with pytest.raises(StudyDesignError, match="no label 'D'"):
        unblind(stored, "r1", "D")
    with pytest.raises(StudyDesignError, match="not one of the study's arms"):
        blind_label(1, "r1", "w", arms)
    with pytest.raises(StudyDesignError, match="arms is empty"):
        blind_label(1, "r1", "w", [])


def test_blinding_many_arms_get_two_letter_labels():
    arms = _names("arm", 28)
    labels = {blind_label(0, "item", a, arms) for a in arms}
    assert len(labels) == 28 and {"Z", "AA", "AB"} <= labels
