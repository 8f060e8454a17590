"""Progress of a study for its coordinators: done and remaining per rater and per arm, time per
task, and agreement so far. Nothing here reveals ratings by arm or the key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.accounts.auth import User, authorize
from core.store.database import Store
from core.studies import agreement
from core.studies.access import COORDINATORS, get_study
from core.studies.assignment import effective_k
from core.studies.protocol import scale_of


@dataclass
class StudyProgress:
    """Progress of a study: per rater and per arm done/remaining and median seconds per task.

    ``alpha_so_far`` is Krippendorff's alpha over every unit rated so far (arms pooled: it
    reveals nothing about which arm did better).
    """
    study_id: int
    name: str
    status: str
    k: int | None
    n_items: int
    arms: list[str]
    total: int
    done: int
    per_rater: Any
    per_arm: Any
    events: list[dict]
    alpha_so_far: float = math.nan

    @property
    def remaining(self) -> int:
        return self.total - self.done


def _progress_table(tasks, by: str):
    import pandas as pd  # deferred: pandas takes a second to import and most commands never need it

    if tasks.empty:
        return pd.DataFrame(columns=[by, "assigned", "done", "remaining", "median_s"])
    g = tasks.groupby(by, sort=True)
    out = pd.DataFrame({
        "assigned": g.size(),
        "done": g["done"].sum().astype(int),
        "median_s": g["time_spent_ms"].median() / 1000.0,
    })
    out["remaining"] = out["assigned"] - out["done"]
    return out.reset_index()[[by, "assigned", "done", "remaining", "median_s"]]


def _alpha_so_far(store: Store, study: dict, done_units) -> float:
    """Krippendorff's alpha over the units rated so far, arms pooled (NaN before 2 ratings)."""
    if len(done_units) < 2:
        return math.nan
    scores = store.study_scores(study["id"])  # rater, unit_id, rating (no arms)
    if scores.empty:
        return math.nan
    wide = scores.pivot(index="reader_id", columns="unit_id", values="rating")
    alpha = agreement.krippendorff_alpha(wide.to_numpy(dtype=float), "ordinal",
                                         value_domain=list(scale_of(study["scale"]).values))
    return float(alpha) if alpha is not None else math.nan


def progress(store: Store, user: User, study_id: int) -> StudyProgress:
    """Progress dashboard data for coordinators and admins."""
    authorize(store, user, *COORDINATORS)
    study = get_study(store, study_id)
    tasks = store.study_tasks(study["id"])
    active = tasks[tasks["active"]] if not tasks.empty else tasks
    per_rater = _progress_table(active, "rater")
    batches = {r["username"]: r["batch"] for r in store.study_raters(study["id"])}
    if not per_rater.empty:
        per_rater.insert(1, "batch", per_rater["rater"].map(batches))
    per_arm = _progress_table(active, "arm")
    if not per_arm.empty:
        order = {a: i for i, a in enumerate(study["arms"])}
        per_arm = per_arm.sort_values("arm", key=lambda s: s.map(order)).reset_index(drop=True)
    done_units = active[active["done"]] if not active.empty else active
    return StudyProgress(study["id"], study["name"], study["status"],
                         effective_k(store, study["id"]), study["n_items"], study["arms"],
                         int(len(active)), int(active["done"].sum()) if len(active) else 0,
                         per_rater, per_arm, store.study_events(study["id"]),
                         _alpha_so_far(store, study, done_units))
