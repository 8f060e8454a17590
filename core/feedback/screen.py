"""What the annotate screen needs besides saving: the direction of a blinded rating, and which
case a link (``?case=<report id>``) may open for a reader.

A blinded screen asks "how does B compare with A?"; the store always keeps "AI vs original".
:func:`stored_rating` turns the first into the second and :func:`shown_rating` back (undo fills
the retracted answer in again, in the direction the screen asks).
"""

from __future__ import annotations

from core.accounts.auth import User, authorize
from core.errors import PermissionDenied, ValidationError
from core.feedback.annotate import RATERS, blind_order, case_of
from core.store.database import Store
from core.store.feedback import Case


def stored_rating(shown: int, blind: bool, reader_id: int, report_id: int) -> int:
    """The rating to store (AI vs original) for the value pressed on screen.

    >>> stored_rating(2, False, 1, 5)
    2
    """
    if not blind or blind_order(reader_id, report_id)[1] == "ai":
        return shown
    return -shown


def shown_rating(stored: int, blind: bool, reader_id: int, report_id: int) -> int:
    """The value to select on screen for a stored rating (the inverse of :func:`stored_rating`)."""
    return stored_rating(stored, blind, reader_id, report_id)  # a sign flip is its own inverse


def linked_case(store: Store, user: User, report_id: int | str) -> Case:
    """The case a link names, as this reader is served it.

    Raises:
        ValidationError: the id is not a whole number.
        PermissionDenied: not a rater, or the report is one of the reader's tasks in a study
            that is not closed (the annotate screen shows the AI and original impressions side
            by side, which would unblind the study).
        NotFound: the report has no AI impression ready.
    """
    authorize(store, user, *RATERS)
    try:
        rid = int(str(report_id).strip())
    except ValueError:
        raise ValidationError(f"case {report_id!r}: a report id is a whole number") from None
    if rid in store.report_ids_in_open_studies(user.id):
        raise PermissionDenied(f"report {rid} is one of your tasks in a running study: open it "
                               f"from the Study queue")
    return case_of(store, user, rid)
