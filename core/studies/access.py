"""Who may touch a study, and the status gates every study call passes through.

Coordinators (and admins) design, run and read studies; radiologists (and admins) rate them. A
running study's key (which arm wrote each text) stays hidden until it is closed, and ratings are
accepted only while it runs.
"""

from __future__ import annotations

from core.accounts.auth import User, authorize
from core.errors import StudyBlinded, StudyClosed, StudyError, StudyPaused
from core.store.database import Store

COORDINATORS = ("coordinator", "admin")
RATERS = ("radiologist", "admin")  # who may open a study queue; tasks exist only for raters
RATER_ROLE = "radiologist"         # who may be assigned as a study rater


def get_study(store: Store, study_id: int) -> dict:
    """The study row.

    Raises:
        StudyError: naming the id when there is no such study.
    """
    study = store.get_study(int(study_id))
    if study is None:
        raise StudyError(f"no study with id {study_id}")
    return study


def require_open(store: Store, study_id: int) -> dict:
    """The study row, when it accepts ratings now.

    Raises:
        StudyClosed / StudyPaused / StudyError: it is closed, paused or still a draft.
    """
    study = get_study(store, study_id)
    if study["status"] == "closed":
        raise StudyClosed(f"study {study_id} is closed; ratings are no longer accepted")
    if study["status"] == "paused":
        raise StudyPaused(f"study {study_id} is paused; try again when the coordinator "
                          f"resumes it")
    if study["status"] != "running":
        raise StudyError(f"study {study_id} is {study['status']}")
    return study


def require_closed(store: Store, user: User, study_id: int, what: str) -> dict:
    """The study row for a coordinator, once the study is closed (``what`` names the request).

    Raises:
        StudyBlinded: the study is not closed, so its key must stay hidden.
    """
    authorize(store, user, *COORDINATORS)
    study = get_study(store, study_id)
    if study["status"] != "closed":
        raise StudyBlinded(f"study {study_id} is {study['status']}: {what} reveal which arm "
                           f"produced each text and are available only after the study is "
                           f"closed (progress is available now)")
    return study
