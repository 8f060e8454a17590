"""Pure study-design functions: report sampling, rater assignment, blinding.

No database, no I/O. Every random choice is derived from SHA-256 of the seed and
the ids involved (never from ``random``/numpy streams), so a design is identical
on every Python/numpy version and does not depend on the order in which ids are
passed in; only the seed and the sets of ids matter.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Hashable, Iterable, Mapping, Sequence

from core.errors import StudyDesignError

__all__ = [
    "StudyDesignError",
    "largest_remainder",
    "sample_reports",
    "Assignment",
    "assign",
    "AssignmentSummary",
    "summarize_assignments",
    "validate_assignments",
    "blind_label",
    "blinding_key",
    "unblind",
    "seeded_key",
]


def _key(*parts: Any) -> int:
    """Deterministic 64-bit pseudo-random key from the parts (stable across runs and versions)."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" if not isinstance(p, str) else p for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def seeded_key(*parts: Any) -> int:
    """Deterministic 64-bit key from the parts' ``str`` (no type prefix, unlike :func:`_key`).

    The store side of a study draws with it: the candidate pool, case numbers, typo seeds and
    the moves of a rebalance. Stored studies were drawn with it, so it must not change.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _check_unique(values: Sequence[Any], name: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        s = str(v)
        if s in seen:
            raise StudyDesignError(f"{name}[{i}] = {v!r} repeats {name}[{seen[s]}] = {values[seen[s]]!r}")
        seen[s] = i


# --------------------------------------------------------------------------- sampling


def largest_remainder(sizes: Mapping[Hashable, int], n: int) -> dict[Hashable, int]:
    """Apportion ``n`` among groups in proportion to their sizes (Hamilton's method).

    Each group first gets floor(n * size / total); the leftover seats go to the
    largest fractional remainders, ties broken by larger group, then by ``str(key)``.

    Args:
        sizes: group -> number of members (>= 0).
        n: seats to distribute, 0 <= n <= sum(sizes).

    Returns:
        group -> quota; quotas sum to n and never exceed the group size.
    """
    for g, s in sizes.items():
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise StudyDesignError(f"size of group {g!r} must be a non-negative integer, got {s!r}")
    total = sum(sizes.values())
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > total:
        raise StudyDesignError(f"cannot draw n={n!r} from {total} members")
    if total == 0:
        return {g: 0 for g in sizes}
    quota = {g: (n * s) // total for g, s in sizes.items()}
    remainder = {g: (n * s) % total for g, s in sizes.items()}  # exact integer fractions x total
    left = n - sum(quota.values())
    order = sorted(sizes, key=lambda g: (-remainder[g], -sizes[g], str(g)))
    for g in order[:left]:
        quota[g] += 1
    return quota


def sample_reports(
    reports: Iterable[Mapping[str, Any]],
    n: int,
    seed: int | str,
    strata: Sequence[str] = ("normal", "source"),
) -> list[Any]:
    """Draw a stratified random sample of report ids, proportional to stratum sizes.

    Stratum quotas use largest-remainder rounding (:func:`largest_remainder`);
    within a stratum the ids with the smallest seeded hash are taken, which is a
    uniform random sample that depends only on the seed and the ids.

    Args:
        reports: dicts with an ``id`` and every key named in ``strata``.
        n: sample size, 0 <= n <= number of reports.
        seed: study seed.
        strata: keys whose value combination defines a stratum; () = simple random sample.

    Returns:
        The sampled ids, in a seeded random order.
    """
    rows = list(reports)
    groups: dict[tuple, list[Any]] = defaultdict(list)
    ids: list[Any] = []
    for i, row in enumerate(rows):
        for field in ("id", *strata):
            if field not in row:
                raise StudyDesignError(f"reports[{i}] has no field {field!r} (has {sorted(row)!r})")
        ids.append(row["id"])
        groups[tuple(row[f] for f in strata)].append(row["id"])
    _check_unique(ids, "report id")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(rows):
        raise StudyDesignError(f"sample size n={n!r} must be an integer between 0 and {len(rows)} (the number of reports)")
    quotas = largest_remainder({g: len(v) for g, v in groups.items()}, n)
    chosen: list[Any] = []
    for g, members in groups.items():
        ranked = sorted(members, key=lambda rid: (_key(seed, "sample", rid), str(rid)))
        chosen.extend(ranked[: quotas[g]])
    return sorted(chosen, key=lambda rid: (_key(seed, "order", rid), str(rid)))


# --------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class Assignment:
    """One rating task: ``rater`` rates ``item_id`` as produced by ``arm``; ``position`` is
    the 0-based place in that rater's queue."""
    rater: str
    item_id: Any
    arm: str
    position: int


def assign(
    items: Sequence[Any],
    arms: Sequence[str],
    raters: Sequence[str],
    k: int,
    seed: int | str,
    exclude: Iterable[tuple[Any, Any, str]] = (),
) -> list[Assignment]:
    """Assign every (item, arm) unit to exactly ``k`` distinct raters, balanced.

    Guarantees (checked by :func:`validate_assignments`):

    * every unit gets exactly ``k`` distinct raters, so no rater sees a unit twice;
    * within each arm, raters' loads differ by at most 1;
    * over all arms, raters' loads differ by at most 1 (the raters who take the
      one extra task in an arm rotate from arm to arm);
    * each rater's queue is in a seeded random order (``position`` 0, 1, ...).

    Within those constraints raters are paired so that every two raters share
    roughly the same number of units, which keeps pairwise agreement estimable.
    A rater may rate the same item under different arms.

    Args:
        items: item ids (distinct, non-empty).
        arms: arm names (distinct, non-empty).
        raters: rater ids (distinct, non-empty).
        k: raters per unit, 1 <= k <= len(raters).
        seed: study seed.
        exclude: (rater, item, arm) units a rater must never get (e.g. the report was shown
            to them unblinded before). Empty: the design is exactly the unconstrained one.

    Returns:
        Assignments sorted by (rater, position).
    Raises:
        StudyDesignError: the exclusions leave no balanced assignment this greedy finds.
    """
    items, arms, raters = list(items), list(arms), list(raters)
    _check_assign(items, arms, raters, k)
    banned = {(str(r), str(i), a) for r, i, a in exclude}
    base, extra = divmod(len(items) * k, len(raters))
    # Seeded rater cycle; arm a's `extra` extra tasks go to the next `extra` raters in
    # the cycle, continuing where the previous arm stopped, so totals also balance.
    cycle = sorted(raters, key=lambda r: (_key(seed, "cycle", r), str(r)))
    arm_order = sorted(arms, key=lambda a: (_key(seed, "arm", a), str(a)))
    pair_count: Counter[tuple[str, str]] = Counter()
    units: list[tuple[str, Any, str]] = []  # (rater, item, arm)
    for a_idx, arm in enumerate(arm_order):
        start = (a_idx * extra) % len(raters)
        lucky = {cycle[(start + t) % len(raters)] for t in range(extra)}
        quota = {r: base + (1 if r in lucky else 0) for r in raters}
        units += _assign_arm(arm, items, raters, k, seed, quota, pair_count, banned)
    return _queues(units, raters, seed)


def _check_assign(items: list, arms: list, raters: list, k: int) -> None:
    if not items:
        raise StudyDesignError("items is empty: a study needs at least one item")
    if not arms:
        raise StudyDesignError("arms is empty: a study needs at least one arm")
    if not raters:
        raise StudyDesignError("raters is empty: a study needs at least one rater")
    _check_unique(items, "items")
    _check_unique(arms, "arms")
    _check_unique(raters, "raters")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise StudyDesignError(f"k (raters per unit) must be a positive integer, got {k!r}")
    if k > len(raters):
        raise StudyDesignError(
            f"k={k} raters per unit but only {len(raters)} raters: each unit needs k distinct raters"
        )


def _assign_arm(arm: str, items: list, raters: list, k: int, seed: int | str,
                remaining: dict[str, int], pair_count: Counter,
                banned: set[tuple[str, str, str]] = frozenset()) -> list[tuple[str, Any, str]]:
    """Give each of an arm's units k raters within their quotas (``remaining``), pairing
    raters who have shared fewest units so far (``pair_count`` is updated); never a
    (rater, item, arm) in ``banned``."""
    units = []
    unit_order = sorted(items, key=lambda it: (_key(seed, "unit", arm, it), str(it)))
    if banned:  # the most constrained units first: they have the fewest raters to choose from
        unit_order.sort(key=lambda it: -sum((str(r), str(it), arm) in banned for r in raters))
    # open_left[r]: units still to place in this arm that r may take (this one included)
    open_left = {r: sum((str(r), str(it), arm) not in banned for it in items) for r in raters}
    for item in unit_order:
        allowed = [r for r in raters if (str(r), str(item), arm) not in banned]
        # Raters whose remaining quota equals the units left they may take must take this
        # unit, otherwise they could not reach their quota with distinct units.
        chosen = sorted((r for r in allowed if remaining[r] >= open_left[r] > 0), key=str)
        while len(chosen) < k:
            candidates = [r for r in allowed if remaining[r] > 0 and r not in chosen]
            if not candidates:
                raise StudyDesignError(
                    f"unit ({item!r}, {arm!r}) cannot get {k} raters: the raters left with "
                    f"room for it have already seen it (choose other raters or a lower k)")
            best = min(
                candidates,
                key=lambda r: (
                    open_left[r] - remaining[r] if banned else 0,
                    sum(pair_count[_pair(r, c)] for c in chosen),
                    -remaining[r],
                    _key(seed, "pick", arm, item, r),
                    str(r),
                ),
            )
            chosen.append(best)
        if len(chosen) > k:
            raise StudyDesignError(
                f"unit ({item!r}, {arm!r}): {len(chosen)} raters would have to take it to keep "
                f"the loads balanced, but k={k}; some raters have already seen too many of the "
                f"study's reports (choose other raters)")
        for r in allowed:
            open_left[r] -= 1
        for r in chosen:
            remaining[r] -= 1
            units.append((r, item, arm))
        for r1, r2 in combinations(chosen, 2):
            pair_count[_pair(r1, r2)] += 1
    if any(v != 0 for v in remaining.values()):
        short = sorted((str(r) for r, v in remaining.items() if v), key=str)
        raise StudyDesignError(f"arm {arm!r}: raters {short} have seen too many of the study's "
                               f"reports to take their share (choose other raters)")
    return units


def _queues(units: list[tuple[str, Any, str]], raters: list, seed: int | str) -> list[Assignment]:
    """Each rater's units in a seeded random order, as assignments sorted by (rater, position)."""
    by_rater: dict[str, list[tuple[Any, str]]] = defaultdict(list)
    for r, item, arm in units:
        by_rater[r].append((item, arm))
    out: list[Assignment] = []
    for r in raters:
        queue = sorted(by_rater[r], key=lambda ia: (_key(seed, "queue", r, ia[0], ia[1]),
                                                    str(ia[0]), str(ia[1])))
        out.extend(Assignment(r, item, arm, pos) for pos, (item, arm) in enumerate(queue))
    return out


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if str(a) <= str(b) else (b, a)


@dataclass(frozen=True)
class AssignmentSummary:
    """Counts that describe a set of assignments."""
    load: dict[str, int]
    load_per_arm: dict[str, dict[str, int]]
    raters_per_unit: dict[tuple[Any, str], int]
    shared_units: dict[tuple[str, str], int]

    @property
    def load_spread(self) -> int:
        """max - min total load over raters."""
        return max(self.load.values()) - min(self.load.values()) if self.load else 0


def summarize_assignments(assignments: Iterable[Assignment], raters: Sequence[str] | None = None) -> AssignmentSummary:
    """Loads per rater (overall and per arm), raters per unit, and units shared by each rater pair.

    Args:
        assignments: the design.
        raters: include these raters with load 0 even if they have no assignment.

    Returns:
        AssignmentSummary.
    """
    assignments = list(assignments)
    load: Counter[str] = Counter({r: 0 for r in raters or []})
    per_arm: dict[str, Counter[str]] = defaultdict(lambda: Counter({r: 0 for r in raters or []}))
    unit_raters: dict[tuple[Any, str], list[str]] = defaultdict(list)
    for a in assignments:
        load[a.rater] += 1
        per_arm[a.arm][a.rater] += 1
        unit_raters[(a.item_id, a.arm)].append(a.rater)
    all_raters = sorted(load, key=str)
    for arm in per_arm:
        for r in all_raters:
            per_arm[arm].setdefault(r, 0)
    shared: Counter[tuple[str, str]] = Counter({_pair(a, b): 0 for a, b in combinations(all_raters, 2)})
    for rs in unit_raters.values():
        for a, b in combinations(sorted(set(rs), key=str), 2):
            shared[_pair(a, b)] += 1
    return AssignmentSummary(
        load=dict(load),
        load_per_arm={arm: dict(c) for arm, c in per_arm.items()},
        raters_per_unit={u: len(rs) for u, rs in unit_raters.items()},
        shared_units=dict(shared),
    )


def validate_assignments(
    assignments: Iterable[Assignment],
    items: Sequence[Any],
    arms: Sequence[str],
    raters: Sequence[str],
    k: int,
) -> None:
    """Raise StudyDesignError unless the assignments meet every guarantee of :func:`assign`.

    Args:
        assignments: the design to check.
        items: the study's items.
        arms: the study's arms.
        raters: the study's raters.
        k: raters per unit.

    Returns:
        None.
    """
    assignments = list(assignments)
    item_set, arm_set, rater_set = set(items), set(arms), set(raters)
    seen: set[tuple[str, Any, str]] = set()
    positions: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(assignments):
        if a.rater not in rater_set or a.item_id not in item_set or a.arm not in arm_set:
            raise StudyDesignError(f"assignment {i} {a!r} names an unknown rater, item or arm")
        if (a.rater, a.item_id, a.arm) in seen:
            raise StudyDesignError(f"assignment {i}: rater {a.rater!r} gets unit ({a.item_id!r}, {a.arm!r}) twice")
        seen.add((a.rater, a.item_id, a.arm))
        positions[a.rater].append(a.position)
    s = summarize_assignments(assignments, raters)
    for item in items:
        for arm in arms:
            got = s.raters_per_unit.get((item, arm), 0)
            if got != k:
                raise StudyDesignError(f"unit ({item!r}, {arm!r}) has {got} raters, expected {k}")
    if s.load_spread > 1:
        raise StudyDesignError(f"rater loads differ by {s.load_spread} (> 1): {s.load}")
    for arm, loads in s.load_per_arm.items():
        spread = max(loads.values()) - min(loads.values())
        if spread > 1:
            raise StudyDesignError(f"rater loads in arm {arm!r} differ by {spread} (> 1): {loads}")
    for r, pos in positions.items():
        if sorted(pos) != list(range(len(pos))):
            raise StudyDesignError(f"rater {r!r} queue positions are not 0..{len(pos) - 1}: {sorted(pos)}")


# --------------------------------------------------------------------------- blinding


def _label(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, ... (spreadsheet column names)."""
    s = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        s = chr(ord("A") + rem) + s
    return s


def _arm_order(study_seed: int | str, item: Any, arms: Sequence[str]) -> list[str]:
    arms = list(arms)
    if not arms:
        raise StudyDesignError("arms is empty: nothing to blind")
    _check_unique(arms, "arms")
    return sorted(arms, key=lambda a: (_key(study_seed, "blind", item, a), str(a)))


def blind_label(study_seed: int | str, item: Any, arm: str, arms: Sequence[str]) -> str:
    """Opaque label ("A", "B", ...) shown to raters instead of the arm name.

    For each item the arms are put in a seeded random order and labelled A, B, ...
    in that order, so "A" is a different arm from item to item.

    Args:
        study_seed: the study's seed.
        item: item id.
        arm: the arm to label; must be one of ``arms``.
        arms: every arm of the study.

    Returns:
        The label.
    """
    order = _arm_order(study_seed, item, arms)
    if arm not in order:
        raise StudyDesignError(f"arm {arm!r} is not one of the study's arms {list(arms)!r}")
    return _label(order.index(arm))


def blinding_key(study_seed: int | str, items: Sequence[Any], arms: Sequence[str]) -> dict[str, dict[str, str]]:
    """The unblinding key for a study, to store alongside it.

    Args:
        study_seed: the study's seed.
        items: item ids.
        arms: arm names.

    Returns:
        ``{str(item): {label: arm}}``; JSON-serialisable.
    """
    _check_unique(list(items), "items")
    return {str(item): {_label(i): a for i, a in enumerate(_arm_order(study_seed, item, arms))} for item in items}


def unblind(key: Mapping[str, Mapping[str, str]], item: Any, label: str) -> str:
    """Arm behind ``label`` for ``item`` according to a stored blinding key.

    Args:
        key: as returned by :func:`blinding_key` (possibly after a JSON round trip).
        item: item id.
        label: the label shown to raters.

    Returns:
        The arm name.
    """
    try:
        return key[str(item)][label]
    except KeyError:
        raise StudyDesignError(f"blinding key has no label {label!r} for item {item!r}") from None
