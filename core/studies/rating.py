"""The rater's side of a study, blinded: their studies, their next task, rating it, undo.

A rater sees a case number, the findings and an opaque label ("text B"), never the arm, the
model or the report's source. Ratings go to ``feedback`` through
:func:`core.feedback.annotate.save_rating` (kind rating, blinded, with the study id); answers to
custom questions go to ``study_answers``. Ratings after close (or while paused) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from core.accounts.auth import User, authorize
from core.errors import PermissionDenied, StudyError
from core.feedback import annotate
from core.store.database import Store
from core.studies.access import RATERS, require_open
from core.studies.protocol import Question, Scale, questions_of, scale_of


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RaterStudy:
    """A study as one of its raters sees it: no arms, no models, only their own counts."""
    study_id: int
    name: str
    status: str
    guideline: str
    scale: Scale
    questions: tuple[Question, ...]
    done: int
    total: int


@dataclass(frozen=True)
class StudyTask:
    """One blinded unit to rate. ``reference`` is the original impression, given only on
    scales that rate relative to it. ``case_number`` is one per report of the study, in a
    seeded order (texts of the same findings share it; it is not the item slot)."""
    task_id: int
    study_id: int
    case_number: int
    label: str
    text: str
    findings: str
    indication: str | None
    comparison: str | None
    reference: str | None
    done: bool
    answer: dict | None = None  # after an undo: the retracted rating, comment and answers, to fill in



def my_studies(store: Store, user: User) -> list[RaterStudy]:
    """The studies in which the signed-in rater has tasks (draft studies have none)."""
    authorize(store, user, *RATERS)
    return [RaterStudy(r["id"], r["name"], r["status"], "", scale_of(r["scale"]),
                       questions_of(r), int(r["done"]), int(r["total"]))
            for r in store.studies_of_rater(user.id)]


def rater_study(store: Store, user: User, study_id: int) -> RaterStudy:
    """One of the rater's studies with its guideline, scale and questions."""
    authorize(store, user, *RATERS)
    done, total = store.study_rater_progress(int(study_id), user.id)
    study = store.get_study(int(study_id))
    if study is None or total == 0:
        raise PermissionDenied(f"{user.username} has no tasks in study {study_id}")
    return RaterStudy(study["id"], study["name"], study["status"], study["guideline"] or "",
                      scale_of(study["scale"]), questions_of(study), done, total)


def rater_progress(store: Store, user: User, study_id: int) -> tuple[int, int]:
    """(done, total) of the signed-in rater's own tasks in a study."""
    authorize(store, user, *RATERS)
    return store.study_rater_progress(int(study_id), user.id)


def task_of(row: dict, scale: Scale) -> StudyTask:
    """The blinded task of a stored task row (the reference only on relative scales)."""
    return StudyTask(int(row["task_id"]), int(row["study_id"]), int(row["case_number"]),
                     row["label"], row["text"], row["findings"], row["indication"],
                     row["comparison"], row["reference"] if scale.reference else None,
                     bool(row["done"]))


def next_task(store: Store, user: User, study_id: int) -> StudyTask | None:
    """The rater's next unrated task in queue order, or None when their queue is done."""
    authorize(store, user, *RATERS)
    study = store.get_study(int(study_id))
    row = store.next_study_task(int(study_id), user.id) if study else None
    if row is None:
        rater_study(store, user, study_id)  # refuses a study the user has no tasks in
        return None
    return task_of(row, scale_of(study["scale"]))


def _own_task(store: Store, user: User, task_id: int) -> dict:
    row = store.get_study_task(int(task_id))
    if row is None or row["reader_id"] != user.id:
        raise PermissionDenied(f"task {task_id} is not one of {user.username}'s study tasks")
    return row


def _check_answers(questions: Sequence[Question], answers: dict | None) -> tuple[dict, dict]:
    """Split answers into feedback columns and custom answers, validating each."""
    answers = dict(answers or {})
    by_key = {q.key: q for q in questions}
    unknown = set(answers) - set(by_key)
    if unknown:
        raise StudyError(f"answers: unknown question(s) {sorted(unknown)}; this study asks "
                         f"{sorted(by_key)}")
    flags: dict[str, bool] = {}
    custom: dict[str, Any] = {}
    for key, value in answers.items():
        q = by_key[key]
        if q.kind == "yesno":
            if value is None:
                continue
            if not isinstance(value, (bool, np.bool_)):
                raise StudyError(f"answer {key!r}: {value!r} must be true or false")
            (flags if q.builtin else custom)[key] = bool(value)
        elif q.kind == "choice":
            if value is not None and value not in q.options:
                raise StudyError(f"answer {key!r}: {value!r} is not one of {list(q.options)}")
            custom[key] = value
        else:
            custom[key] = annotate.clean_text(value, f"answer {key!r}", 2_000)
    for q in questions:  # unticked yes/no boxes are a "no", not a missing answer
        if q.kind == "yesno" and q.key not in flags and q.key not in custom:
            (flags if q.builtin else custom)[q.key] = False
    return flags, custom


def submit(store: Store, user: User, task_id: int, rating: int, answers: dict | None = None,
           comment: str | None = None, time_spent_ms: int | None = None,
           client_token: str | None = None) -> int:
    """Record the signed-in rater's rating of one of their tasks. Returns the feedback id.

    Args:
        task_id: the task (from :func:`next_task`).
        rating: one of the study scale's values.
        answers: question key -> answer (yes/no questions default to no).
        comment: free text.
        time_spent_ms: time on the task.
        client_token: makes a double submit harmless (the first row's id is returned).
    Raises:
        StudyClosed / StudyPaused: the study does not accept ratings now.
        PermissionDenied: the task is someone else's.
        StudyError: bad rating or answers, withdrawn or already rated task.
    """
    authorize(store, user, *RATERS)
    with store.tx():
        row = _own_task(store, user, task_id)
        study = require_open(store, row["study_id"])
        if not row["active"]:
            raise StudyError(f"task {task_id} was moved to another rater")
        scale = scale_of(study["scale"])
        if isinstance(rating, bool) or not isinstance(rating, int) or rating not in scale.values:
            raise StudyError(f"rating {rating!r}: must be one of {list(scale.values)} "
                             f"({scale.name} scale)")
        flags, custom = _check_answers(questions_of(study), answers)
        if row["done"]:
            prior = (store.feedback_id_for_token(client_token, user.id) if client_token
                     else None)
            if prior is not None:
                return prior
            raise StudyError(f"task {task_id} is already rated; undo it first to change it")
        feedback_id = annotate.save_rating(
            store, user, report_id=row["report_id"], generation_id=row["generation_id"],
            shown_text=row["text"], rating=annotate.Rating(
                rating=rating, factual_error=flags.get("factual_error", False),
                omission=flags.get("omission", False), style_issue=flags.get("style_issue", False),
                critical_missed=flags.get("critical_missed", False), comment=comment,
                time_spent_ms=time_spent_ms, blinded=True),
            client_token=client_token, study_id=row["study_id"])
        store.add_study_answer(feedback_id, row["study_id"], row["task_id"], row["unit_id"],
                               user.id, custom)
    return feedback_id


def undo_last(store: Store, user: User, study_id: int) -> StudyTask | None:
    """Retract the rater's latest standing rating in this study; returns that task again."""
    authorize(store, user, *RATERS)
    with store.tx():
        study = require_open(store, study_id)
        last = annotate.undo_last(store, user, study_id=int(study_id))
        if last is None:
            return None
        task_id = store.study_task_of_feedback(last["id"])
        row = store.get_study_task(task_id) if task_id is not None else None
    if not row:
        return None
    custom = store.study_answers_of(last["id"])
    answers = {q.key: bool(last.get(q.key)) if q.builtin else custom.get(q.key)
               for q in questions_of(study)}
    return replace(task_of(row, scale_of(study["scale"])),
                   answer={"rating": last["rating"], "comment": last["comment"], "answers": answers})
