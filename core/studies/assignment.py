"""Who rates what: assigning a study's units to raters, extending a study with new raters
(more overlap, or the pending work rebalanced), and the overlap ``k`` in force.

The balanced plan itself is pure (:func:`core.studies.design.assign`); this module checks the
request, resolves usernames and writes the tasks through the store.
"""

from __future__ import annotations

from typing import Sequence

from core.accounts.auth import User, authorize
from core.errors import NotFound, StudyClosed, StudyDesignError, StudyError
from core.store.database import Store
from core.studies.access import COORDINATORS, RATER_ROLE, get_study
from core.studies.design import Assignment, assign, seeded_key


def resolve_raters(store: Store, usernames: Sequence[str], what: str = "raters") -> list:
    """The readers behind usernames: each listed once, each an active radiologist.

    Raises:
        StudyError: naming the first username that is not.
    """
    out = []
    seen = set()
    for name in usernames:
        name = str(name).strip()
        if name in seen:
            raise StudyError(f"{what}: {name!r} is listed twice")
        seen.add(name)
        try:
            reader = store.get_reader(name)
        except NotFound:
            raise StudyError(f"{what}: no user named {name!r}") from None
        if reader.role != RATER_ROLE or not reader.active:
            raise StudyError(f"{what}: {name!r} is {'a disabled' if not reader.active else 'a'} "
                             f"{reader.role}; study raters must be active radiologists")
        out.append(reader)
    return out


def seen_on_annotate(store: Store, reader_ids: Sequence[int]) -> dict[int, set[int]]:
    """The reports each reader has already rated or skipped on Annotate (outside any study).

    Annotate shows the AI impression and the original impression under their names, so a
    report seen there would not be blind in a study: sampling and assignment leave them out
    for that reader (issue 14.3). Retracted and imported ratings count too: the text was seen.

    Returns:
        reader id -> report ids (an empty set for a reader who has seen none).
    """
    out: dict[int, set[int]] = {int(r): set() for r in reader_ids}
    for reader_id in out:
        seen = store.feedback_history(reader_id=reader_id, kinds=("rating", "skip"))
        if len(seen):
            general = seen[seen["study_id"].isna()]
            out[reader_id] = {int(x) for x in general["report_id"]}
    return out


def unseen_exclusions(store: Store, study_id: int, readers: Sequence) -> set[tuple[str, int, str]]:
    """(username, slot, arm) units of a study whose report the reader has seen on Annotate:
    :func:`core.studies.design.assign` must not give them to that reader."""
    seen = seen_on_annotate(store, [r.id for r in readers])
    if not any(seen.values()):
        return set()
    units = store.study_units(study_id)
    return {(r.username, int(u.slot), u.arm) for r in readers
            for u in units.itertuples() if int(u.report_id) in seen[r.id]}


def _assign(items, arms, names, k, seed, exclude):
    """:func:`core.studies.design.assign` with its refusal as a :class:`StudyError`."""
    try:
        return assign(items, arms, names, k, seed, exclude=exclude)
    except StudyDesignError as exc:
        raise StudyError(f"cannot assign without showing raters reports they already rated "
                         f"on Annotate: {exc}") from None


def effective_k(store: Store, study_id: int) -> int | None:
    """Raters per unit: k at assignment plus the extra overlap of every extension."""
    k = None
    for e in store.study_events(study_id):
        if e["event"] == "assigned":
            k = int(e["detail"].get("k", 0))
        elif e["event"] == "extended" and k is not None:
            k += int(e["detail"].get("extra_k", 0))
    return k


def _plan_frame(plan: list[Assignment], ids: dict[str, int]):
    """Tasks to store (slot, arm, reader_id, position) from a plan of usernames."""
    import pandas as pd  # deferred: pandas takes a second to import and most commands never need it

    return pd.DataFrame({"slot": [a.item_id for a in plan], "arm": [a.arm for a in plan],
                         "reader_id": [ids[a.rater] for a in plan],
                         "position": [a.position for a in plan]})


def assign_raters(store: Store, user: User, study_id: int, raters: Sequence[str], k: int) -> int:
    """Assign a draft study's units to raters: each unit to ``k`` of them, balanced.

    Args:
        raters: usernames of active radiologists.
        k: raters per unit, 1 <= k <= len(raters).
    Returns:
        The number of tasks created.
    """
    authorize(store, user, *COORDINATORS)
    study = get_study(store, study_id)
    if study["status"] != "draft":
        raise StudyError(f"study {study_id} is {study['status']}, not a draft: raters were "
                         f"assigned already (use extend to add raters)")
    readers = resolve_raters(store, raters)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(readers):
        raise StudyError(f"k={k!r}: must be between 1 and the number of raters ({len(readers)})")
    ids = {r.username: r.id for r in readers}
    plan = _assign(list(range(study["n_items"])), study["arms"], [r.username for r in readers],
                   k, study["seed"], unseen_exclusions(store, study_id, readers))
    frame = _plan_frame(plan, ids)
    return store.add_study_tasks(study_id, frame, [r.id for r in readers], 0, "assigned",
                                 user.username, {"k": k, "raters": [r.username for r in readers],
                                                 "n_tasks": len(frame)})


def extend(store: Store, user: User, study_id: int, raters: Sequence[str],
           extra_k: int = 0) -> int:
    """Add raters to a running or paused study.

    Args:
        raters: usernames of radiologists not yet in the study.
        extra_k: 0 moves pending (unrated) tasks from the busiest raters to the new ones so
            everybody's remaining work is balanced; k > 0 keeps all current tasks and gives
            every unit ``extra_k`` more ratings, spread (balanced) over the new raters.
    Returns:
        The number of tasks added to the new raters.
    """
    authorize(store, user, *COORDINATORS)
    if isinstance(extra_k, bool) or not isinstance(extra_k, int) or extra_k < 0:
        raise StudyError(f"extra_k={extra_k!r}: must be a non-negative integer")
    with store.tx():
        study = get_study(store, study_id)
        if study["status"] not in ("running", "paused"):
            raise (StudyClosed if study["status"] == "closed" else StudyError)(
                f"study {study_id} is {study['status']}; only running or paused studies can "
                f"be extended" + (" (assign raters to a draft first)"
                                  if study["status"] == "draft" else ""))
        readers = _new_raters(store, study_id, raters)
        batch = max((r["batch"] for r in store.study_raters(study_id)), default=0) + 1
        names = [r.username for r in readers]
        ids = {r.username: r.id for r in readers}
        if extra_k > 0:
            if extra_k > len(readers):
                raise StudyError(f"extra_k={extra_k}: at most the number of new raters "
                                 f"({len(readers)})")
            plan = _assign(list(range(study["n_items"])), study["arms"], names, extra_k,
                           f"{study['seed']}:extend:{batch}",
                           unseen_exclusions(store, study_id, readers))
            frame, withdraw = _plan_frame(plan, ids), []
        else:
            banned = {(ids[name], slot, arm) for name, slot, arm
                      in unseen_exclusions(store, study_id, readers)}
            frame, withdraw = _rebalance(store.study_tasks(study_id), ids, study["seed"], batch,
                                         banned)
        return store.add_study_tasks(
            study_id, frame, [r.id for r in readers], batch, "extended", user.username,
            {"raters": names, "extra_k": extra_k, "n_tasks": len(frame),
             "moved": len(withdraw)}, withdraw=withdraw)


def _new_raters(store: Store, study_id: int, raters: Sequence[str]) -> list:
    """The readers to add: at least one, none of them in the study yet."""
    readers = resolve_raters(store, raters)
    if not readers:
        raise StudyError("raters: name at least one new rater")
    current = {r["username"] for r in store.study_raters(study_id)}
    for r in readers:
        if r.username in current:
            raise StudyError(f"raters: {r.username!r} already rates study {study_id}")
    return readers



def _rebalance(tasks, new_ids: dict[str, int], seed: int, batch: int,
               banned: set[tuple[int, int, str]] = frozenset()):
    """Move pending tasks to new raters until remaining loads differ by at most 1, never a
    (reader id, slot, arm) in ``banned`` (a report the new rater saw on Annotate).

    Returns:
        (frame of new tasks: slot, arm, reader_id, position; ids of tasks to withdraw).
    """
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    active = tasks[tasks["active"]]
    holders: dict[tuple[int, str], set[int]] = {}
    for row in active.itertuples():
        holders.setdefault((row.slot, row.arm), set()).add(row.reader_id)
    pending: dict[int, list[tuple[int, int, str]]] = {}  # reader -> [(task_id, slot, arm)]
    for row in active[~active["done"]].itertuples():
        pending.setdefault(row.reader_id, []).append((row.task_id, row.slot, row.arm))
    raters = sorted(set(active["reader_id"]) | set(new_ids.values()))
    for r in raters:
        pending.setdefault(r, [])
    next_pos = {r: int(active.loc[active["reader_id"] == r, "position"].max()) + 1
                if (active["reader_id"] == r).any() else 0 for r in raters}
    tie = {r: seeded_key(seed, "rebalance", batch, r) for r in raters}

    def arm_count(r: int, arm: str) -> int:
        return sum(1 for _, _, a in pending[r] if a == arm)

    # Entries are (id, slot, arm): a stored task id, or a negative id for a task created here.
    new_tasks: dict[int, list] = {}  # negative id -> [reader, slot, arm]
    withdraw: list[int] = []
    stuck: set[int] = set()
    while True:
        load = {r: len(pending[r]) for r in raters}
        cands = [r for r in raters if r not in stuck]
        if not cands:
            break
        top = max(cands, key=lambda r: (load[r], tie[r]))
        if load[top] - min(load.values()) <= 1:
            break
        moved = False
        for low in sorted(raters, key=lambda r: (load[r], tie[r])):
            if load[top] - load[low] <= 1:
                break
            options = [t for t in pending[top] if low not in holders[(t[1], t[2])]
                       and (low, t[1], t[2]) not in banned]
            if not options:
                continue
            pick = max(options, key=lambda t: (arm_count(top, t[2]) - arm_count(low, t[2]),
                                               seeded_key(seed, "move", batch, t[0])))
            pending[top].remove(pick)
            tid, slot, arm = pick
            if tid >= 0:
                withdraw.append(tid)
                tid = -1 - len(new_tasks)
                new_tasks[tid] = [low, slot, arm]
            else:
                new_tasks[tid][0] = low
            pending[low].append((tid, slot, arm))
            holders[(slot, arm)].discard(top)
            holders[(slot, arm)].add(low)
            moved = True
            break
        if not moved:
            stuck.add(top)
    rows = []
    for reader in raters:
        mine = sorted([(s, a) for n, s, a in new_tasks.values() if n == reader],
                      key=lambda u: seeded_key(seed, "queue", batch, reader, u[0], u[1]))
        for i, (slot, arm) in enumerate(mine):
            rows.append({"slot": slot, "arm": arm, "reader_id": reader,
                         "position": next_pos[reader] + i})
    frame = pd.DataFrame(rows, columns=["slot", "arm", "reader_id", "position"])
    return frame, withdraw

