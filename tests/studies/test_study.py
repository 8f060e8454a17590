"""core.studies: design through the store, blinded queues, life cycle, results, exports, CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import pytest

from core.clinical.labeler import is_normal
from core.errors import PermissionDenied, StudyBlinded, StudyClosed, StudyError, StudyPaused
from core.feedback.visibility import without_open_study_rows
from core.studies import (agreement, assignment, exports, lifecycle, progress, protocol, rating,
                          results, texts)
from core.studies.lifecycle import StudyDesign

ROOT = Path(__file__).resolve().parents[2]
ARM_WORDS = ("original", "base", "style", "brief", "bullets", "comprehensive", "typos",
             "external", "adapter")


@dataclass(frozen=True)
class Rec:
    """A report record for Store.import_reports (same fields as core.ingest.common.ReportRecord)."""

    source: str
    external_id: str
    findings: str
    impression: str
    indication: str | None = "Cough."
    comparison: str | None = "None."
    author: str | None = None
    row: int | None = None
    extra: dict = field(default_factory=dict)


NORMAL = ("The heart is normal in size. The lungs are clear. No pleural effusion.",
          "No acute cardiopulmonary abnormality.")
ABNORMAL = ("The heart is enlarged. There is a small right pleural effusion.",
            "Cardiomegaly with a small right pleural effusion.")


def make_reports(n: int, source: str = "site-a", abnormal_every: int = 4) -> list[Rec]:
    """n reports; every ``abnormal_every``-th is abnormal (so 1/4 abnormal by default)."""
    out = []
    for i in range(n):
        findings, impression = ABNORMAL if i % abnormal_every == 0 else NORMAL
        out.append(Rec(source, f"{source}-{i:04d}", f"{findings} Case {i}.", impression))
    return out


def fake_texts(reports: list[dict], arm: str) -> list[str]:
    """The fake generator: deterministic, and it shows which findings it was given."""
    fake_texts.calls.append((arm, [r["id"] for r in reports], [r["findings"] for r in reports]))
    return [f"Generated impression {r['id']} ({arm})." for r in reports]


fake_texts.calls = []
fake_texts.model_name = "fake-model"


@pytest.fixture
def people(store):
    """Seven radiologists r0..r6, a coordinator and an admin (signed in)."""
    from core.accounts import auth

    out = {}
    for name, role in [*[(f"r{i}", "radiologist") for i in range(7)],
                       ("coord", "coordinator"), ("boss", "admin")]:
        auth.create_user(store, name, role, f"{name}-Passw0rd")
        out[name] = auth.sign_in(store, name, f"{name}-Passw0rd")
    return out


_NAMES = itertools.count(1)


def _create(store, people, n=20, arms=("original", "base"), raters=("r0", "r1", "r2"), k=2,
            make=fake_texts, **kw) -> int:
    if store.count_reports() == 0:
        store.import_reports(make_reports(max(n, 40)), file="t", fmt="test")
    name = kw.pop("name", None) or f"Reader study {next(_NAMES)}"  # names are unique
    return lifecycle.create_study(store, people["coord"], StudyDesign(
        name=name, arms=list(arms), n_items=n, seed=kw.pop("seed", 11),
        raters=list(raters), k=k, **kw), make_texts=make)


def _rate_all(store, people, sid, value_of, raters=None, answers_of=None) -> int:
    """Every listed rater rates their whole queue; value_of(unit_row) -> rating."""
    units = store.study_units(sid).set_index("unit_id")
    n = 0
    for name in raters or [r["username"] for r in store.study_raters(sid)]:
        user = people[name]
        while (task := rating.next_task(store, user, sid)) is not None:
            unit = units.loc[store.get_study_task(task.task_id)["unit_id"]]
            answers = answers_of(unit, name) if answers_of else None
            rating.submit(store, user, task.task_id, value_of(unit, name), answers=answers,
                         time_spent_ms=1000)
            n += 1
    return n


# ------------------------------------------------------------------------------- design
def test_assignment_balance_and_overlap_through_the_store(store, people):
    """7 raters, k=3, 200 items, 2 arms: 1200 tasks, each unit 3 distinct raters, loads +-1."""
    raters = [f"r{i}" for i in range(7)]
    sid = _create(store, people, n=200, raters=raters, k=3)
    tasks = store.study_tasks(sid)
    assert len(tasks) == 200 * 2 * 3 and tasks["active"].all()
    per_unit = tasks.groupby(["slot", "arm"])["reader_id"].agg(["count", "nunique"])
    assert len(per_unit) == 400
    assert (per_unit["count"] == 3).all() and (per_unit["nunique"] == 3).all()
    loads = tasks.groupby("rater").size()
    assert set(loads.index) == set(raters)
    assert loads.max() - loads.min() <= 1          # 1200 / 7 = 171.4 -> 171 or 172
    assert sorted(loads.unique()) == [171, 172]
    for arm, g in tasks.groupby("arm"):
        per_arm = g.groupby("rater").size().reindex(raters, fill_value=0)
        assert per_arm.max() - per_arm.min() <= 1, arm
    for rater, g in tasks.groupby("rater"):       # each queue is a permutation 0..n-1
        assert sorted(g["position"]) == list(range(len(g)))
    # every pair of raters shares units, so pairwise agreement is estimable
    by_unit = tasks.groupby(["slot", "arm"])["rater"].apply(frozenset)
    pairs = Counter(tuple(sorted(p)) for s in by_unit for p in itertools.combinations(s, 2))
    assert len(pairs) == 21 and min(pairs.values()) >= 20
    # each item's arms carry distinct blind labels, which are not the arm names
    units = store.study_units(sid)
    labels = units.groupby("slot")["label"].apply(sorted)
    assert all(lab == ["A", "B"] for lab in labels)
    assert units.groupby("arm")["label"].nunique().min() == 2   # "A" is not always one arm
    # the queue order mixes arms (not all originals first)
    first = tasks[tasks["position"] < 20]
    assert first["arm"].nunique() == 2


def test_sampling_is_stratified_and_reproducible(store, people):
    store.import_reports(make_reports(80), file="t", fmt="test")           # 20 abnormal
    store.import_reports(make_reports(40, source="site-b"), file="u", fmt="test")  # 10 abn.
    a = _create(store, people, n=30, seed=5)
    b = _create(store, people, n=30, seed=5)
    c = _create(store, people, n=30, seed=6)
    ua, ub, uc = (store.study_units(s) for s in (a, b, c))
    slots = lambda u: list(u[u["arm"] == "base"].sort_values("slot")["report_id"])  # noqa
    assert slots(ua) == slots(ub)                 # same seed, same sample, same order
    assert set(slots(ua)) != set(slots(uc))
    base = ua[ua["arm"] == "base"]
    # proportional to the strata: 120 reports = site-a 60 normal/20 abnormal, site-b 30/10
    counts = Counter(zip(base["source"], base["normal"]))
    # quotas 15, 5, 7.5, 2.5: the one seat left over goes to the larger tied stratum
    assert counts == {("site-a", True): 15, ("site-a", False): 5, ("site-b", True): 8,
                      ("site-b", False): 2}
    assert store.get_study(a)["seed"] == 5


def test_without_a_generator_a_study_samples_only_reports_with_stored_texts(store, people):
    """The app cannot generate: it samples among the reports it can show, as Annotate does,
    and a style arm is rendered from the stored base text."""
    from core.studies.texts import stored_style_maker

    store.import_reports(make_reports(30), file="t", fmt="test")
    ready = [r["id"] for r in store.reports()][::3]  # 10 of 30 have an AI text
    store.add_generations([{"report_id": i, "model": "m", "style": "default",
                            "text": f"AI text {i}."} for i in ready])
    sid = _create(store, people, n=8, arms=("original", "base", "style:brief"),
                  make=stored_style_maker(store))
    units = store.study_units(sid)
    assert set(units["report_id"]) <= set(ready) and len(set(units["report_id"])) == 8
    with pytest.raises(StudyError, match=r"only 10 reports .* stored AI text for the arms base, "
                                         r"style:brief .* the study asks for 12"):
        _create(store, people, n=12, arms=("original", "base", "style:brief"),
                make=stored_style_maker(store))


def test_missing_texts_are_refused_without_a_generator_and_made_with_one(store, people):
    store.import_reports(make_reports(30), file="t", fmt="test")
    with pytest.raises(StudyError, match=r"only 0 reports with findings and an impression and a "
                                         r"stored AI text for the arms base \(generate texts first"):
        _create(store, people, n=10, make=None)
    fake_texts.calls.clear()
    sid = _create(store, people, n=10, arms=("original", "base", "style:brief", "typos"),
                  typo_rate=0.3)
    units = store.study_units(sid)
    assert len(units) == 40
    gens = units[units["arm"] != "original"]
    assert gens["generation_id"].notna().all() and (gens["model"] == "fake-model").all()
    assert set(gens["style"]) == {"default", "brief", "typos-0.3"}
    typo = gens[gens["arm"] == "typos"]
    flags = [json.loads(f) for f in typo["flags"]]
    assert all(f["typo_rate"] == 0.3 and "typo_seed" in f for f in flags)
    # the generator saw the findings with typos for the typo arm only
    seen = {arm: dict(zip(ids, finds)) for arm, ids, finds in fake_texts.calls}
    originals = {r["id"]: r["findings"] for r in store.reports()}
    assert all(seen["base"][i] == originals[i] for i in seen["base"])
    changed = [seen["typos"][i] != originals[i] for i in seen["typos"]]
    assert sum(changed) == 10                     # ~5 of 16 words per findings get a typo
    # ...but raters see the clean findings: typos on their screen would give the arm away
    typo_units = set(units[units["arm"] == "typos"]["unit_id"])
    tasks = store.study_tasks(sid)
    for t in tasks[tasks["unit_id"].isin(typo_units)].itertuples():
        row = store.get_study_task(t.task_id)
        assert row["findings"] == originals[row["report_id"]]
    # originals are the reports' own impressions, without a generation
    orig = units[units["arm"] == "original"]
    assert orig["generation_id"].isna().all() and (orig["text"] == orig["original"]).all()
    # a second study reuses the stored texts: the generator is not called again
    fake_texts.calls.clear()
    again = _create(store, people, n=10, arms=("base", "style:brief", "typos:0.3"))
    assert fake_texts.calls == []
    assert set(store.study_units(again)["generation_id"]) == set(gens["generation_id"])


def test_arm_validation(store, people):
    store.import_reports(make_reports(30), file="t", fmt="test")
    for bad, msg in [("style:fancy", "style:fancy"), ("model", "'model'"),
                     ("typos:2", "typo rate"), ("adapter:", "adapter:")]:
        with pytest.raises(StudyError, match=msg):
            _create(store, people, n=5, arms=("original", bad))
    with pytest.raises(StudyError, match="'adapter:ghost': no radiologist named 'ghost'"):
        _create(store, people, n=5, arms=("original", "adapter:ghost"))
    with pytest.raises(StudyError, match="listed twice"):
        _create(store, people, n=5, arms=("base", "base"))
    with pytest.raises(StudyError, match="'original' cannot be rated"):
        _create(store, people, n=5, scale="relative")
    with pytest.raises(StudyError, match="external_source"):
        _create(store, people, n=5, arms=("base", "external"))
    with pytest.raises(StudyError, match="only 30 reports"):
        _create(store, people, n=31)
    with pytest.raises(StudyError, match="'coord' is a coordinator"):
        _create(store, people, n=5, raters=("r0", "coord"))
    with pytest.raises(StudyError, match="k=4"):
        _create(store, people, n=5, k=4)
    with pytest.raises(PermissionDenied):
        lifecycle.create_study(store, people["r0"], StudyDesign("x", ["base"], 5))
    # an adapter arm is allowed once that adapter's generations exist
    with pytest.raises(StudyError, match="adapter:dr_lee"):
        _create(store, people, n=5, arms=("original", "adapter:dr_lee"), make=None)
    store.add_generations({"report_id": r["id"], "model": "m", "adapter": "dr_lee",
                           "text": f"Adapter text {r['id']}."} for r in store.reports())
    sid = _create(store, people, n=5, arms=("original", "adapter:dr_lee"), make=None)
    assert set(store.study_units(sid)["arm"]) == {"original", "adapter:dr_lee"}


@pytest.mark.slow
def test_external_arm_rates_reports_of_the_other_source(store, people):
    store.import_reports(make_reports(40), file="t", fmt="test")
    store.import_reports(make_reports(20, source="chexpert-plus"), file="c", fmt="test")
    sid = _create(store, people, n=8, arms=("original", "base", "external"),
                  external_source="chexpert-plus")
    units = store.study_units(sid)
    assert set(units[units["arm"] == "external"]["source"]) == {"chexpert-plus"}
    assert set(units[units["arm"] != "external"]["source"]) == {"site-a"}
    # Case numbers are per report, not per slot: the external text of slot i (another
    # report) must not carry the number of slot i's findings, or it would stand out.
    case_of = units.groupby("report_id")["case_number"].agg(["nunique", "first"])
    assert (case_of["nunique"] == 1).all()
    assert sorted(case_of["first"]) == list(range(1, 17))          # 8 + 8 reports
    ext = units[units["arm"] == "external"].set_index("slot")["case_number"]
    own = units[units["arm"] == "base"].set_index("slot")["case_number"]
    assert not (ext == own).any()
    assert list(own.sort_index()) != list(range(1, 9))              # seeded, not the slot order
    seen = {}
    for name in ("r0", "r1", "r2"):
        for t in store.study_tasks(sid).query("rater == @name").itertuples():
            task = rating.task_of(store.get_study_task(t.task_id), protocol.SCALES["absolute"])
            seen.setdefault(task.case_number, set()).add(task.findings)
    assert all(len(f) == 1 for f in seen.values())                 # one case, one findings
    _rate_all(store, people, sid, lambda u, r: 1 if u["arm"] == "external" else 0)
    lifecycle.close(store, people["coord"], sid)
    res = results.results(store, people["coord"], sid, n_boot=50, metric_fns={})
    tests = dict(zip(zip(res.paired["arm_a"], res.paired["arm_b"]), res.paired["test"]))
    assert tests[("original", "base")] == "Wilcoxon signed-rank"
    assert tests[("base", "external")] == "Mann-Whitney U"
    row = res.paired[(res.paired["arm_a"] == "base") & (res.paired["arm_b"] == "external")]
    assert row["mean_diff"].iloc[0] == -1.0 and row["effect"].iloc[0] == -1.0
    # preference pairs never mix reports: the external arm is left out
    pairs = exports.preference_pairs(store, people["coord"], sid, conversational=False)
    assert pairs == []  # original and base tie everywhere


def test_external_arm_from_a_chexpert_plus_import(store, people, tmp_path):
    """The robustness arm on an imported CheXpert Plus file (real importer, source
    'chexpert-plus'): offered by the design form, sampled only from that source."""
    import csv

    from core.ingest.reports import import_file

    store.import_reports(make_reports(20), file="t", fmt="test")
    path = tmp_path / "df_chexpert_plus_240401.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_to_image", "section_findings", "section_impression"])
        for i in range(12):
            findings, impression = ABNORMAL if i % 3 == 0 else NORMAL
            for view in ("view1_frontal.jpg", "view2_lateral.jpg"):   # one report per study
                w.writerow([f"train/patient{i:05d}/study1/{view}", f"{findings} Study {i}.",
                            impression])
    import_file(store, path, fmt="auto", actor="test")
    opts = lifecycle.design_options(store, people["coord"])
    assert opts.sources == {"site-a": 20, "chexpert-plus": 12} and "external" in opts.arms
    sid = _create(store, people, n=6, arms=("base", "external"),
                  external_source="chexpert-plus")
    units = store.study_units(sid)
    ext = units[units["arm"] == "external"]
    assert set(ext["source"]) == {"chexpert-plus"} and ext["report_id"].nunique() == 6
    assert ext["external_id"].str.startswith("train/patient").all()
    assert set(units[units["arm"] == "base"]["source"]) == {"site-a"}
    assert ext["normal"].sum() == 4                 # 2/3 of the CheXpert studies are normal
    assert store.get_study(sid)["config"]["external_source"] == "chexpert-plus"


# ------------------------------------------------------------------------------- raters
def test_units_of_studies_before_migration_31_keep_slot_case_numbers(store, people):
    """Units created before study_units.case_number existed (NULL) show slot + 1."""
    sid = _create(store, people, n=4, raters=("r0",), k=1)
    with store.tx() as con:
        con.execute("UPDATE study_units SET case_number = NULL WHERE study_id = ?", [sid])
    units = store.study_units(sid)
    assert list(units["case_number"]) == list(units["slot"] + 1)
    task = rating.next_task(store, people["r0"], sid)
    row = store.get_study_task(task.task_id)
    assert task.case_number == row["slot"] + 1


def test_rater_queue_is_blind_and_own(store, people):
    sid = _create(store, people, n=10, arms=("original", "base", "style:brief"))
    task = rating.next_task(store, people["r0"], sid)
    names = {f.name for f in fields(task)}
    assert not names & {"arm", "model", "adapter", "style", "source", "report_id",
                        "external_id", "generation_id"}
    assert task.label in ("A", "B", "C") and task.reference is None
    # the rater's study summary holds no arms either
    rs = rating.rater_study(store, people["r0"], sid)
    assert not any(w in json.dumps(str(rs)).lower() for w in ("'base'", "style:", "original"))
    # nobody else may rate or even look at r0's task
    with pytest.raises(PermissionDenied):
        rating.submit(store, people["r1"], task.task_id, 0)
    with pytest.raises(PermissionDenied):
        rating.rater_study(store, people["r3"], sid)        # r3 is not in the study
    with pytest.raises(PermissionDenied):
        progress.progress(store, people["r0"], sid)
    with pytest.raises(PermissionDenied):
        rating.submit(store, people["coord"], task.task_id, 0)
    # the general annotate queue is not affected by study ratings
    assert store.queue_progress(people["r0"].id)[0] == 0


def test_submit_validates_and_double_submit_and_undo(store, people):
    sid = _create(store, people, n=6, questions=["omission", "hedged: Is it over-hedged?"])
    u = people["r0"]
    task = rating.next_task(store, u, sid)
    with pytest.raises(StudyError, match="rating 3"):
        rating.submit(store, u, task.task_id, 3)
    with pytest.raises(StudyError, match="unknown question"):
        rating.submit(store, u, task.task_id, 0, answers={"factual_error": True})
    with pytest.raises(StudyError, match="must be true or false"):
        rating.submit(store, u, task.task_id, 0, answers={"hedged": "yes"})
    fid = rating.submit(store, u, task.task_id, 1, answers={"hedged": True}, client_token="t1")
    assert rating.submit(store, u, task.task_id, 1, client_token="t1") == fid  # double click
    with pytest.raises(StudyError, match="already rated"):
        rating.submit(store, u, task.task_id, 2)
    row = store.get_feedback(fid)
    assert (row["study_id"], row["blinded"], row["rating"], row["omission"]) == (sid, True, 1,
                                                                                 False)
    assert rating.next_task(store, u, sid).task_id != task.task_id
    assert store.study_rater_progress(sid, u.id)[0] == 1
    back = rating.undo_last(store, u, sid)
    assert back.task_id == task.task_id and not back.done
    # the page fills it in again, answers too (an unticked built-in box is a "no")
    assert back.answer == {"rating": 1, "comment": None,
                           "answers": {"omission": False, "hedged": True}}
    assert rating.next_task(store, u, sid).task_id == task.task_id
    assert store.study_rater_progress(sid, u.id)[0] == 0


def test_pause_resume_close(store, people):
    sid = _create(store, people, n=6)
    coord, u = people["coord"], people["r0"]
    t1 = rating.next_task(store, u, sid)
    rating.submit(store, u, t1.task_id, 0)
    assert lifecycle.pause(store, coord, sid) == "paused"
    t2 = rating.next_task(store, u, sid)
    with pytest.raises(StudyPaused):
        rating.submit(store, u, t2.task_id, 0)
    with pytest.raises(StudyPaused):
        rating.undo_last(store, u, sid)
    with pytest.raises(StudyError, match="paused; cannot pause"):
        lifecycle.pause(store, coord, sid)
    with pytest.raises(PermissionDenied):
        lifecycle.pause(store, u, sid)
    assert lifecycle.resume(store, coord, sid) == "running"
    rating.submit(store, u, t2.task_id, -1)
    assert lifecycle.close(store, coord, sid) == "closed"
    t3 = rating.next_task(store, u, sid)
    with pytest.raises(StudyClosed, match="closed"):
        rating.submit(store, u, t3.task_id, 0)
    with pytest.raises(StudyClosed):
        rating.undo_last(store, u, sid)
    for action in (lifecycle.close, lifecycle.pause, lifecycle.resume):
        with pytest.raises(StudyClosed):
            action(store, coord, sid)
    with pytest.raises(StudyClosed):
        assignment.extend(store, coord, sid, ["r5"])
    events = [e["event"] for e in store.study_events(sid)]
    assert events == ["created", "assigned", "paused", "resumed", "closed"]
    actions = [a["action"] for a in store.audit_log(limit=50)]
    for a in ("study_created", "study_assigned", "study_paused", "study_resumed",
              "study_closed"):
        assert a in actions
    assert store.count_study_ratings(sid) == 2


def test_draft_then_assign(store, people):
    sid = _create(store, people, n=5, raters=())
    assert store.get_study(sid)["status"] == "draft"
    with pytest.raises(StudyError, match="draft"):
        assignment.extend(store, people["coord"], sid, ["r0"])
    assert assignment.assign_raters(store, people["coord"], sid, ["r0", "r1"], 1) == 10
    assert store.get_study(sid)["status"] == "running"
    with pytest.raises(StudyError, match="not a draft"):
        assignment.assign_raters(store, people["coord"], sid, ["r2"], 1)
    assert assignment.effective_k(store, sid) == 1


def test_extend_moves_pending_work_to_new_raters(store, people):
    sid = _create(store, people, n=30, raters=("r0", "r1", "r2", "r3"), k=2)
    # r0 rates 20, r1 rates 5: their done tasks must stay theirs
    for name, count in (("r0", 20), ("r1", 5)):
        for _ in range(count):
            t = rating.next_task(store, people[name], sid)
            rating.submit(store, people[name], t.task_id, 0)
    before = store.study_tasks(sid)
    n = assignment.extend(store, people["coord"], sid, ["r4", "r5"])
    after = store.study_tasks(sid)
    active = after[after["active"]]
    assert n == len(after) - len(before) and n > 0
    assert set(after[~after["active"]]["task_id"]) <= set(before[~before["done"]]["task_id"])
    assert after[after["done"]]["active"].all()                   # rated work never moves
    per_unit = active.groupby(["slot", "arm"])["reader_id"].agg(["count", "nunique"])
    assert (per_unit["count"] == 2).all() and (per_unit["nunique"] == 2).all()
    pending = active[~active["done"]].groupby("rater").size()
    assert set(pending.index) == {f"r{i}" for i in range(6)}
    assert pending.max() - pending.min() <= 1
    assert assignment.effective_k(store, sid) == 2
    # the new raters' queues work and r4 can rate
    t = rating.next_task(store, people["r4"], sid)
    rating.submit(store, people["r4"], t.task_id, 1)
    # a withdrawn task can no longer be rated by its old owner
    moved = after[~after["active"]].iloc[0]
    with pytest.raises(StudyError, match="moved to another rater"):
        rating.submit(store, people[moved["rater"]], int(moved["task_id"]), 0)
    with pytest.raises(StudyError, match="already rates"):
        assignment.extend(store, people["coord"], sid, ["r4"])


def test_extend_with_extra_overlap(store, people):
    sid = _create(store, people, n=10, raters=("r0", "r1"), k=1)
    assignment.extend(store, people["coord"], sid, ["r2", "r3", "r4"], extra_k=2)
    tasks = store.study_tasks(sid)
    per_unit = tasks.groupby(["slot", "arm"])["reader_id"].agg(["count", "nunique"])
    assert (per_unit["count"] == 3).all() and (per_unit["nunique"] == 3).all()
    loads = tasks[tasks["batch"] == 1].groupby("rater").size()
    assert loads.max() - loads.min() <= 1 and loads.sum() == 40
    assert assignment.effective_k(store, sid) == 3
    assert progress.progress(store, people["coord"], sid).k == 3
    with pytest.raises(StudyError, match="extra_k=2"):
        assignment.extend(store, people["coord"], sid, ["r5"], extra_k=2)


def test_progress_per_rater_and_arm(store, people):
    sid = _create(store, people, n=6, raters=("r0", "r1"), k=1)
    for _ in range(3):
        t = rating.next_task(store, people["r0"], sid)
        rating.submit(store, people["r0"], t.task_id, 0, time_spent_ms=4000)
    p = progress.progress(store, people["coord"], sid)
    assert (p.total, p.done, p.remaining) == (12, 3, 9)
    r = p.per_rater.set_index("rater")
    assert (r.loc["r0", "done"], r.loc["r1", "done"]) == (3, 0)
    assert r.loc["r0", "median_s"] == 4.0 and pd.isna(r.loc["r1", "median_s"])
    assert list(p.per_arm["arm"]) == ["original", "base"]
    assert p.per_arm["done"].sum() == 3 and p.per_arm["assigned"].sum() == 12


# ------------------------------------------------------------------------------- blinding
def test_results_and_exports_are_refused_before_close(store, people, tmp_path):
    sid = _create(store, people, n=6)
    _rate_all(store, people, sid, lambda u, r: 0)
    coord = people["coord"]
    out = tmp_path / "out"
    calls = [lambda: results.results(store, coord, sid, metric_fns={}),
             lambda: exports.ratings_table(store, coord, sid),
             lambda: exports.export_ratings(store, coord, sid, out / "r.csv"),
             lambda: exports.export_ratings(store, coord, sid, out / "r.parquet"),
             lambda: exports.preference_pairs(store, coord, sid),
             lambda: exports.export_preferences(store, coord, sid, out / "p.jsonl"),
             lambda: exports.export_html(store, coord, sid, out / "s.html")]
    for call in calls:
        with pytest.raises(StudyBlinded, match="only after the study is closed"):
            call()
    lifecycle.pause(store, coord, sid)
    with pytest.raises(StudyBlinded):
        results.results(store, people["boss"], sid, metric_fns={})
    assert not out.exists()
    assert not store.audit_log(action="study_export")
    # progress is available and holds no ratings per arm
    p = progress.progress(store, coord, sid)
    assert "rating" not in " ".join(p.per_arm.columns)
    # raters never get results, even after close
    lifecycle.close(store, coord, sid)
    with pytest.raises(PermissionDenied):
        results.results(store, people["r0"], sid, metric_fns={})
    with pytest.raises(PermissionDenied):
        exports.export_ratings(store, people["r0"], sid, out / "r.csv")


# ------------------------------------------------------------------------------- results
# Two raters rate every unit of 4 items x 2 arms (k = 2 of 2 raters).
HAND = {  # arm -> rater -> ratings of slots 0..3
    "original": {"r0": [0, 1, -1, 2], "r1": [0, 2, 0, 2]},
    "base": {"r0": [-1, 0, -2, 1], "r1": [-1, -1, -2, 2]},
}


def _wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _weighted_kappa(a: list[int], b: list[int], cats=(-2, -1, 0, 1, 2)) -> float:
    """Quadratic-weighted kappa written out: 1 - sum(w * observed) / sum(w * expected)."""
    n = len(a)
    obs = Counter(zip(a, b))
    pa, pb = Counter(a), Counter(b)
    num = sum((i - j) ** 2 * obs[(i, j)] / n for i in cats for j in cats)
    den = sum((i - j) ** 2 * pa[i] * pb[j] / n / n for i in cats for j in cats)
    return 1 - num / den


@pytest.fixture
def hand_study(store, people):
    sid = _create(store, people, n=4, raters=("r0", "r1"), k=2)
    _rate_all(store, people, sid, lambda u, r: HAND[u["arm"]][r][int(u["slot"])],
              answers_of=lambda u, r: {"omission": u["arm"] == "base" and u["slot"] < 1,
                                       "factual_error": False})
    lifecycle.close(store, people["coord"], sid)
    return sid


def test_results_match_hand_computation(store, people, hand_study):
    sid = hand_study
    units = store.study_units(sid)
    rank = {t: i for i, t in enumerate(units.sort_values(["arm", "slot"])["text"])}
    res = results.results(store, people["coord"], sid, n_boot=200,
                        metric_fns={"textrank": lambda c, r: [rank[t] for t in c]})
    shares = res.shares.set_index("arm")
    # original: 0,1,-1,2,0,2,0,2 -> 7 of 8 neutral or better; base: 3 of 8
    assert shares.loc["original", "share"] == 7 / 8 and shares.loc["base", "share"] == 3 / 8
    for arm, x in (("original", 7), ("base", 3)):
        lo, hi = _wilson(x, 8)
        assert shares.loc[arm, "lo"] == pytest.approx(lo, abs=1e-9)
        assert shares.loc[arm, "hi"] == pytest.approx(hi, abs=1e-9)
        assert shares.loc[arm, "n_ratings"] == 8 and shares.loc[arm, "n_items"] == 4
    assert shares.loc["original", "mean"] == pytest.approx(6 / 8)
    dist = res.distribution.set_index(["arm", "value"])["n"]
    assert [dist[("base", v)] for v in (-2, -1, 0, 1, 2)] == [2, 3, 1, 1, 1]
    assert [dist[("original", v)] for v in (-2, -1, 0, 1, 2)] == [0, 1, 3, 1, 3]
    # omission ticked on base slot 0 by both raters: 2 of 8
    err = res.errors.set_index(["arm", "question"])
    assert err.loc[("base", "omission"), "rate"] == 0.25
    assert err.loc[("original", "omission"), "n_yes"] == 0
    assert err.loc[("base", "factual_error"), "rate"] == 0.0
    # per-item means: original 0, 1.5, -0.5, 2; base -1, -0.5, -2, 1.5
    # differences 1, 2, 1.5, 0.5: all positive -> W+ = 10, W- = 0, exact p = 2/16
    pc = res.paired.iloc[0]
    assert (pc["arm_a"], pc["arm_b"], pc["n"]) == ("original", "base", 4)
    assert pc["mean_diff"] == pytest.approx(1.25) and pc["effect"] == 1.0
    assert pc["p_value"] == pytest.approx(0.125) and pc["p_holm"] == pytest.approx(0.125)
    assert pc["lo"] <= 1.25 <= pc["hi"] and pc["lo"] >= 0.5 and pc["hi"] <= 2.0
    # agreement: weighted kappa between r0 and r1 over the 8 units, by hand
    a = HAND["base"]["r0"] + HAND["original"]["r0"]
    b = HAND["base"]["r1"] + HAND["original"]["r1"]
    kappa = _weighted_kappa(a, b)
    assert res.pairwise.iloc[0]["kappa"] == pytest.approx(kappa)
    assert res.pairwise.iloc[0]["n_units"] == 8
    agree = res.agreement.set_index("statistic")
    assert agree.loc["Mean pairwise Cohen's kappa (quadratic)", "estimate"] == \
        pytest.approx(kappa)
    assert (agree["n_units"] == 8).all() and (agree["n_raters"] == 2).all()
    alpha = agree.loc["Krippendorff's alpha (ordinal)"]
    assert -1 <= alpha["lo"] <= alpha["estimate"] <= alpha["hi"] <= 1
    # per-rater bias: r0 - r1 over units = (0-1-1+0+0+1+0-1) / 8 = -0.25
    bias = res.bias.set_index("rater")["mean_offset"]
    assert bias["r0"] == pytest.approx(-0.25) and bias["r1"] == pytest.approx(0.25)
    # automatic metrics: originals are left out; the injected metric ranks base texts by slot,
    # and base means by slot are -1, -0.5, -2, 1.5 -> Spearman rho = 0.4
    assert set(res.unit_metrics["arm"]) == {"base"}
    corr = res.correlations.set_index("metric").loc["textrank"]
    assert corr["rho"] == pytest.approx(0.4) and corr["n"] == 4


def test_exports_after_close(store, people, hand_study, tmp_path):
    sid, coord = hand_study, people["coord"]
    csv_path = exports.export_ratings(store, coord, sid, tmp_path / "r.csv")
    pq_path = exports.export_ratings(store, coord, sid, tmp_path / "r.parquet")
    csv, pq = pd.read_csv(csv_path), pd.read_parquet(pq_path)
    assert len(csv) == len(pq) == 16
    assert list(csv.columns) == exports.EXPORT_COLUMNS
    shown = store.study_units(sid).set_index(["slot", "arm"])["case_number"]   # raters' numbers
    assert [shown[(s, a)] for s, a in zip(csv["slot"], csv["arm"])] == list(csv["case_number"])
    assert sorted(csv.groupby("arm")["rating"].apply(list)["base"]) == \
        sorted(HAND["base"]["r0"] + HAND["base"]["r1"])
    assert set(csv["model"].dropna()) == {"fake-model"}
    assert json.loads(csv["answers"].iloc[0]) == {}
    # TRL pairs: original beats base on all 4 items
    n = exports.export_preferences(store, coord, sid, tmp_path / "p.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert n == len(lines) == 4
    originals = set(store.study_units(sid).query("arm == 'original'")["text"])
    for line in lines:
        assert set(line) == {"prompt", "chosen", "rejected"}
        assert [m["role"] for m in line["prompt"]] == ["system", "user"]
        assert line["chosen"][0]["role"] == "assistant"
        assert line["chosen"][0]["content"] in originals
        assert line["rejected"][0]["content"].startswith("Generated impression")
    plain = exports.preference_pairs(store, coord, sid, conversational=False)
    assert all(isinstance(p["prompt"], str) and "FINDINGS:" in p["prompt"] for p in plain)
    assert exports.preference_pairs(store, coord, sid, min_margin=1.6) != []  # slot 1: 2 apart
    assert len(exports.preference_pairs(store, coord, sid, min_margin=1.6)) == 1
    # self-contained HTML: inline SVG figures, no scripts, nothing fetched
    html = exports.export_html(store, coord, sid, tmp_path / "s.html", n_boot=50, metrics=())
    assert (tmp_path / "s.html").read_text() == html
    assert "<svg" in html and "87.5%" in html and "37.5%" in html
    # figures: neutral-or-better, distribution, error rates, paired differences, rater offsets
    assert html.count("<svg") == 5
    for title in ("Neutral or better", "Rating distribution", "Error rates (Wilson",
                  "Mean rating difference", "Per-rater mean offset"):
        assert f'aria-label="{title}' in html, title
    low = html.lower()
    assert "<script" not in low and "src=" not in low and "href=" not in low
    assert "https://" not in low and "@import" not in low
    audited = store.audit_log(action="study_export")
    assert sorted(json.loads(e["detail"])["format"] for e in audited) == \
        ["csv", "html", "jsonl", "parquet"]
    assert all(e["actor"] == "coord" for e in audited)


def test_results_with_default_metrics(store, people, hand_study):
    res = results.results(store, people["coord"], hand_study, n_boot=20)
    assert set(res.correlations["metric"]) == {"rouge_l", "label_f1"}
    assert res.unit_metrics["rouge_l"].between(0, 100).all()
    assert res.unit_metrics["label_f1"].between(0, 1).all()
    from core.studies.report import summary_text

    text = summary_text(res)
    assert "Share neutral-or-better" in text and "original" in text


def test_mean_pairwise_kappa_equals_stats(store):
    import numpy as np

    rng = np.random.default_rng(3)
    for _ in range(5):
        m = np.full((5, 60), np.nan)
        for j in range(60):
            m[rng.choice(5, 3, replace=False), j] = rng.integers(-2, 3, 3)
        ks = [p.kappa for p in agreement.pairwise_cohen(m, weights="quadratic",
                                                    labels=[-2, -1, 0, 1, 2])]
        assert agreement.mean_pairwise_kappa(m, [-2, -1, 0, 1, 2]) == pytest.approx(
            np.nanmean(ks), abs=1e-12)


def test_results_of_an_empty_closed_study(store, people):
    sid = _create(store, people, n=4)
    lifecycle.close(store, people["coord"], sid)
    res = results.results(store, people["coord"], sid, n_boot=20, metric_fns={})
    assert res.shares["n_ratings"].tolist() == [0, 0]
    assert res.paired.empty and res.agreement.empty
    assert exports.ratings_table(store, people["coord"], sid).empty
    from core.studies.report import summary_html, summary_text

    html = summary_html(res)
    assert "No ratings yet" in html and "<svg" not in html      # no empty charts (issue 14.11)
    assert "No ratings yet" in summary_text(res)


def test_three_arms_without_comparisons_are_not_called_one_arm(store, people):
    from core.studies.report import no_comparison

    sid = _create(store, people, n=4, arms=("original", "base", "typos"))
    lifecycle.close(store, people["coord"], sid)
    res = results.results(store, people["coord"], sid, n_boot=20, metric_fns={})
    assert no_comparison(res).startswith("No comparisons: 3 arms, 0 of them with ratings")


def test_means_read_on_the_keys_raters_pressed(store, people, hand_study):
    """Raters press 1-5; means are shown on 1-5 (stored -2..2 + 3), labelled, differences
    unchanged; the error-rate chart has the critical-finding series (issue 14.11)."""
    from core.studies import figures
    from core.studies.report import summary_html

    res = results.results(store, people["coord"], hand_study, n_boot=20, metric_fns={})
    assert res.scale.key_offset == 3 and res.scale.mean_unit == "1–5"
    keyed = results.on_keys(res.scale, res.shares)
    assert list(keyed["mean"]) == pytest.approx(list(res.shares["mean"] + 3))
    assert list(results.on_keys(res.scale, res.paired)["mean_diff"]) == list(
        res.paired["mean_diff"])
    html = summary_html(res)
    assert "Mean (1–5)" in html and "Mean A (1–5)" in html and "1 = Unacceptable" in html
    assert f"{keyed['mean'].iloc[0]:.2f}" in html
    names = [s.name for s in figures.error_rates(res).series]
    assert "missed critical finding" in names
    assert protocol.scale_of("acceptability").key_offset == 2
    assert protocol.Scale("gappy", (-2, 0, 2), ("a", "b", "c"), "?").key_offset is None


# ------------------------------------------------------------------------------- CLI
def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ), timeout=180)


@pytest.mark.slow
def test_cli_study_flow(store, users, cases, tmp_path):
    store.close()  # the CLI is another process
    created = run("study", "--as", "coord", "create", "--name", "CLI study", "--arms",
                  "original,base", "--n", "6", "--raters", "rad1,rad2", "--k", "2", "--seed",
                  "3")
    assert created.returncode == 0, created.stderr
    assert "created study 1 (running): 6 items x 2 arms" in created.stdout
    status = run("study", "status", "1")
    assert status.returncode == 0 and "done 0/24" in status.stdout and "rad2" in status.stdout
    early = run("study", "report", "1")
    assert early.returncode == 1 and "only after the study is closed" in early.stderr
    early = run("study", "export", "1", "--out", str(tmp_path / "early.csv"))
    assert early.returncode == 1 and "only after the study is closed" in early.stderr
    assert not (tmp_path / "early.csv").exists()
    bad = run("study", "create", "--name", "x", "--arms", "original,style:fancy", "--n", "3")
    assert bad.returncode == 2 and "style:fancy" in bad.stderr
    not_coord = run("study", "--as", "rad1", "list")
    assert not_coord.returncode == 1 and "rad1" in not_coord.stderr
    assert run("study", "pause", "1").stdout.strip() == "study 1 is paused"
    assert run("study", "resume", "1").stdout.strip() == "study 1 is running"
    assert run("study", "close", "1").returncode == 0
    report = run("study", "report", "1", "--n-boot", "20", "--metrics", "",
                 "--html", str(tmp_path / "s.html"))
    assert report.returncode == 0, report.stderr
    # closed before anyone rated: the report says so instead of empty tables (issue 14.11)
    assert "nothing to summarise" in report.stdout and "Share neutral-or-better" not in report.stdout
    assert "No ratings yet" in (tmp_path / "s.html").read_text()
    out = tmp_path / "r.csv"
    exported = run("study", "export", "1", "--out", str(out))
    assert exported.returncode == 0, exported.stderr and out.exists()
    pairs = run("study", "export", "1", "--out", str(tmp_path / "p.jsonl"))
    assert "wrote 0 preference pairs" in pairs.stdout
    listed = run("study", "list")
    assert "closed" in listed.stdout and "CLI study" in listed.stdout


def test_model_text_maker_generates_missing_arm_texts(store, people, tmp_path, tiny):
    """The CLI's seam: a (tiny, random) local model fills base and typo arms; style arms are
    the base text rendered by core.generation.styles."""
    from core.generation.models import ModelSpec, load_generator
    from core.generation.styles import apply_style

    path = tiny
    gen = load_generator(ModelSpec(path, dtype="float32", device="cpu", name="tiny"))
    model = texts.model_text_maker(gen, batch_size=4, max_new_tokens=6)
    assert model.model_name == gen.name  # what the generator is called (its first load's name)
    store.import_reports(make_reports(12), file="t", fmt="test")
    sid = lifecycle.create_study(store, people["coord"], StudyDesign(
        "Model study", ["original", "base", "typos", "style:bullets"], n_items=4,
        raters=["r0"], k=1), make_texts=texts.stored_style_maker(store, model))
    units = store.study_units(sid)
    made = units[units["arm"] != "original"]
    assert len(made) == 12 and (made["model"] == gen.name).all()
    assert made["text"].str.len().min() > 0
    assert set(made["style"]) == {"default", "typos-0.03", "bullets"}
    base = units[units["arm"] == "base"].set_index("slot")
    bullets = units[units["arm"] == "style:bullets"].set_index("slot")
    for slot in base.index:
        assert bullets.loc[slot, "text"] == apply_style(base.loc[slot, "text"], "bullets")
        assert json.loads(bullets.loc[slot, "flags"])["styled_from"] == \
            int(base.loc[slot, "generation_id"])
    # an adapter arm needs the radiologist's active LoRA adapter...
    with pytest.raises(StudyError, match="'r0' has no active adapter"):
        model([{"id": 1, "findings": "Lungs clear."}], "adapter:r0")
    # ...which it loads once (here a hand-copied flat adapter folder, no versions) and drafts with
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.config import settings

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(settings().adapters_dir / "r0")
    sid = lifecycle.create_study(store, people["coord"], StudyDesign(
        "Adapter study", ["base", "adapter:r0"], n_items=3, raters=["r1"], k=1),
        make_texts=texts.stored_style_maker(store, model))
    made = store.study_units(sid).query("arm == 'adapter:r0'")
    assert len(made) == 3 and (made["adapter"] == "r0").all() and (made["model"] == gen.name).all()
    assert made["text"].str.len().min() > 0
    assert "r0" in gen.adapters


def test_style_arms_from_stored_base_texts_without_a_model(store, people):
    from core.generation.styles import apply_style

    store.import_reports(make_reports(12), file="t", fmt="test")
    reports = store.reports()
    store.add_generations({"report_id": r["id"], "model": "m1", "text":
                           "1. Cardiomegaly. 2. Small right pleural effusion."} for r in reports)
    sid = _create(store, people, n=5, arms=("base", "style:brief", "style:bullets"),
                  make=texts.stored_style_maker(store))
    units = store.study_units(sid)
    brief = units[units["arm"] == "style:brief"]
    assert (brief["model"] == "m1").all() and (brief["style"] == "brief").all()
    row = brief.iloc[0]
    assert row["text"] == apply_style("1. Cardiomegaly. 2. Small right pleural effusion.",
                                      "brief", findings=row["findings"],
                                      indication=row["indication"], comparison=row["comparison"])
    assert json.loads(row["flags"])["style_rules"] == "core.generation.styles"
    # without stored base texts (or a model) a style arm cannot be made
    store.import_reports(make_reports(30, source="site-b"), file="u", fmt="test")
    with pytest.raises(StudyError, match=r"only 0 reports .* stored AI text for the arms style:brief"):
        _create(store, people, n=5, arms=("style:brief",), sources=["site-b"],
                make=texts.stored_style_maker(store))
    with pytest.raises(StudyError, match="arms typos"):
        _create(store, people, n=5, arms=("typos",), make=texts.stored_style_maker(store))


def test_real_iu_xray_sample_is_stratified(store, people, iu_csv):
    """On the 2,809 IU X-ray reports: the sample keeps the normal/abnormal mix of the pool."""
    from core.ingest.reports import import_file

    import_file(store, iu_csv, fmt="iu-xray", actor="test")
    pool = store.study_candidate_reports()
    normal = sum(is_normal(r["impression"]) for r in pool)
    sid = lifecycle.create_study(store, people["coord"], StudyDesign(
        "IU", ["original"], n_items=200, seed=1, raters=[f"r{i}" for i in range(7)], k=3))
    units = store.study_units(sid)
    assert len(units) == 200 and units["report_id"].nunique() == 200
    assert abs(units["normal"].sum() - 200 * normal / len(pool)) <= 1
    assert 0.3 < normal / len(pool) < 0.8       # IU X-ray is roughly 40-60 % normal
    tasks = store.study_tasks(sid)
    loads = tasks.groupby("rater").size()
    assert len(tasks) == 600 and loads.max() - loads.min() <= 1


def test_feedback_history_hides_running_study_rows(store, people):
    """A running study's ratings must not appear in general feedback views, which show the
    model, style and original impression of every rating (that would unblind the arm)."""
    sid = _create(store, people, n=4, arms=("original", "style:brief"))
    u = people["r0"]
    t = rating.next_task(store, u, sid)
    rating.submit(store, u, t.task_id, 1)
    raw = store.feedback_history(reader_id=u.id)
    assert len(raw) == 1 and raw["study_id"].iloc[0] == sid      # the store keeps everything
    assert without_open_study_rows(store, raw).empty
    lifecycle.close(store, people["coord"], sid)
    assert len(without_open_study_rows(store, raw)) == 1   # unblinded after close


def test_my_feedback_does_not_unblind_a_running_study(store, people):
    from core.feedback import annotate

    sid = _create(store, people, n=4, arms=("original", "style:brief"))
    u = people["r0"]
    t = rating.next_task(store, u, sid)
    rating.submit(store, u, t.task_id, 1)
    for viewer, reader in ((u, None), (people["coord"], u.id)):
        history = annotate.feedback_of(store, viewer, reader_id=reader)
        assert not (history["study_id"] == sid).any()


def test_reports_in_open_studies_are_listed_for_the_annotate_queue(store, people):
    sid = _create(store, people, n=5, raters=("r0",), k=1)
    ids = set(store.study_units(sid)["report_id"])
    assert set(store.report_ids_in_open_studies(people["r0"].id)) == ids
    assert store.report_ids_in_open_studies(people["r1"].id) == []
    lifecycle.close(store, people["coord"], sid)
    assert store.report_ids_in_open_studies(people["r0"].id) == []


def test_annotate_queue_skips_reports_of_a_running_study(store, people):
    from core.feedback import annotate

    sid = _create(store, people, n=5, raters=("r0",), k=1)   # base texts are stored for them
    in_study = set(store.study_units(sid)["report_id"])
    seen = set()
    while (case := annotate.next_case(store, people["r0"])) is not None:
        seen.add(case.report_id)
        annotate.skip(store, people["r0"], case)
    assert not seen & in_study
    # the progress bar counts this queue only: every case of it skipped, none left
    assert annotate.queue_counts(store, people["r0"]) == (0, len(seen), len(seen))
    assert annotate.queue_counts(store, people["r1"])[2] == len(seen) + len(in_study)


def test_design_options(store, people):
    store.import_reports(make_reports(10), file="t", fmt="test")
    opts = lifecycle.design_options(store, people["coord"])
    assert "external" not in opts.arms and opts.sources == {"site-a": 10}
    assert opts.radiologists == [f"r{i}" for i in range(7)] and opts.stored == []
    store.import_reports(make_reports(5, source="chexpert-plus"), file="c", fmt="test")
    store.add_generations([{"report_id": 1, "model": "m", "adapter": "dr_lee", "text": "x"},
                           {"report_id": 2, "model": "m", "text": "y"}])
    opts = lifecycle.design_options(store, people["coord"])
    assert "external" in opts.arms and "adapter:dr_lee" in opts.arms
    assert opts.stored == ["base: 1", "adapter:dr_lee: 1"]
    with pytest.raises(PermissionDenied):
        lifecycle.design_options(store, people["r0"])


def test_a_second_create_with_the_same_name_is_refused(store, people):
    """A double click on "Create study" (issue 14.6) makes one study, not two."""
    from core.errors import ValidationError

    sid = _create(store, people, name="Pilot")
    with pytest.raises(ValidationError, match="exists already"):
        _create(store, people, name="pilot")
    assert [s["id"] for s in lifecycle.list_studies(store, people["coord"])] == [sid]


def test_page_and_summary_draw_the_same_figure_specs(store, people, hand_study):
    """One spec per figure: the Results page's plotly figure and the HTML summary's SVG are
    drawn from the same spec (same title, rows and values)."""
    from core.studies import figures
    from core.studies.report import summary_html, svg

    res = results.results(store, people["coord"], hand_study, n_boot=20, metric_fns={})
    specs = figures.summary_figures(res)
    assert [s.key for s in specs] == ["shares", "distribution", "errors", "paired", "bias"]
    html = summary_html(res)
    for spec in specs:
        assert svg(spec) in html
        fig = figures.plotly_figure(spec)
        assert fig.layout.title.text == spec.title
        drawn = [v for trace in fig.data for v in trace.x]
        assert drawn == [v for s in spec.series for v in s.values]
    shares = figures.shares(res)
    assert list(shares.series[0].values) == list(res.shares["share"])
    for spec in (figures.pairwise_kappa(res), figures.metric_scatter(res, "mean_rating")):
        assert figures.plotly_figure(spec).layout.title.text == spec.title


def _rate_on_annotate(store, user, report_ids):
    from core.feedback import annotate

    for rid in report_ids:
        annotate.save_rating(store, user, int(rid), None, None, annotate.Rating(rating=1))


def _reports_of(store, sid, username):
    tasks = store.study_tasks(sid)
    units = store.study_units(sid).set_index("unit_id")
    mine = tasks[(tasks["rater"] == username) & tasks["active"]]
    return {int(units.loc[u, "report_id"]) for u in mine["unit_id"]}


def test_reports_rated_on_annotate_stay_out_of_that_raters_study(store, people):
    """Issue 14.3: a report a rater saw on Annotate (AI and original by name) never reaches
    them in a blinded study: left out of the sample while enough others remain, else kept
    off that rater's queue by the assignment (create, draft assignment, both extensions)."""
    store.import_reports(make_reports(40), file="t", fmt="test")
    seen_r0, seen_r3 = set(range(1, 11)), set(range(5, 21))
    _rate_on_annotate(store, people["r0"], seen_r0)
    _rate_on_annotate(store, people["r3"], seen_r3)
    assert assignment.seen_on_annotate(store, [people["r0"].id])[people["r0"].id] == seen_r0
    # enough unseen reports: none of r0's is sampled at all
    sid = _create(store, people, n=20, raters=("r0", "r1"), k=1)
    assert not set(store.study_units(sid)["report_id"]) & seen_r0
    # every report is needed: they are sampled, but r0 gets none of them
    sid = _create(store, people, n=40, raters=("r0", "r1", "r2"), k=1)
    assert set(store.study_units(sid)["report_id"]) & seen_r0
    assert _reports_of(store, sid, "r0") and not _reports_of(store, sid, "r0") & seen_r0
    # a draft assigned later, and raters added by extension (more overlap, or rebalanced)
    sid = _create(store, people, n=40, raters=())
    assignment.assign_raters(store, people["coord"], sid, ["r0", "r1"], 1)
    assert not _reports_of(store, sid, "r0") & seen_r0
    assignment.extend(store, people["coord"], sid, ["r3", "r4"], extra_k=1)
    assert _reports_of(store, sid, "r3") and not _reports_of(store, sid, "r3") & seen_r3
    sid = _create(store, people, n=40, raters=("r1", "r2"), k=1)
    assignment.extend(store, people["coord"], sid, ["r3"])
    assert _reports_of(store, sid, "r3") and not _reports_of(store, sid, "r3") & seen_r3
    # a rater who saw every report cannot be given any of them: refused, nothing assigned
    _rate_on_annotate(store, people["r5"], range(1, 41))
    sid = _create(store, people, n=40, raters=())
    with pytest.raises(StudyError, match="already rated on Annotate"):
        assignment.assign_raters(store, people["coord"], sid, ["r5", "r6"], 1)
    assert store.get_study(sid)["status"] == "draft"
