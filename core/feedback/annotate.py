"""The annotate workflow: next case, rate/edit, skip, undo, and a reader's own history.

Every function takes the signed-in :class:`core.accounts.auth.User` and checks permissions itself, so a
page cannot forget to. Nothing is overwritten: undo appends a retraction. :func:`save_rating` is
the one save of a rating, for the annotate queue and for study tasks alike.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator

from core.accounts.auth import SYSTEM_ID, User, authorize, require, require_self_or
from core.errors import PermissionDenied, StoreError, ValidationError
from core.feedback.visibility import without_open_study_rows
from core.learning.pairs import same_words
from core.store.database import Store
from core.store.feedback import Case

RATING_SCALE: dict[int, str] = {
    -2: "Much worse",
    -1: "Worse",
    0: "Equivalent",
    1: "Better",
    2: "Much better",
}
MAX_TEXT = 20_000  # characters; an impression is a few hundred at most
RATERS = ("radiologist", "admin")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(value: str | None, field: str, max_len: int = MAX_TEXT) -> str | None:
    """Normalise a free-text field from a form: NFC, no control characters, bounded length.

    Raises:
        ValidationError: naming the field when the text is too long.
    """
    if value is None:
        return None
    text = _CONTROL.sub("", unicodedata.normalize("NFC", str(value))).replace("\r\n", "\n")
    text = text.strip()
    if len(text) > max_len:
        raise ValidationError(f"field {field!r}: {len(text):,} characters, at most "
                              f"{max_len:,} allowed")
    return text or None


@contextlib.contextmanager
def _saving(what: str) -> Iterator[None]:
    """Turn a database failure while saving (disk full, I/O error) into a :class:`StoreError`
    that says nothing was saved, so the page shows it and keeps the radiologist's text."""
    import duckdb  # on first use, as in core.store.connection: importing this module stays fast

    try:
        yield
    except duckdb.Error as exc:
        text = str(exc).strip()
        detail = text.splitlines()[0][:300] if text else type(exc).__name__
        raise StoreError(f"could not save the {what}: the database refused the write ({detail}); "
                         f"nothing was saved. Try again; if it keeps failing, tell the "
                         f"administrator (the disk may be full)") from exc


def next_case(store: Store, user: User, adapter: str | None = None,
              besides: int | None = None) -> Case | None:
    """The signed-in radiologist's next case, or None when the queue is done.

    A radiologist with an active adapter of their own is shown their own draft (written ahead by
    the nightly job with that version) where there is one, the shared draft otherwise; the
    case's ``generation_id`` (and ``adapter_version``) say which text was on screen, so every
    rating is tied to it. ``adapter`` asks for another adapter's drafts instead. ``besides``
    leaves out one report: the case on screen, when the page fetches the next one ahead of
    time (then :func:`submit_and_next` or :func:`skip_and_next` checks it as the save happens).
    """
    require(user, *RATERS)
    with store.tx():  # ONE transaction: the account, the reader's adapter and the case
        authorize(store, user, *RATERS)
        if adapter is None:
            version = _own_adapter_version(store, user)
            if version is not None:
                return store.next_case(user.id, adapter=user.username, adapter_version=version,
                                       besides=besides)
        return store.next_case(user.id, adapter=adapter, besides=besides)


def _still_queued(store: Store, user: User, upcoming: Case | None) -> Case | None:
    """``upcoming`` (fetched ahead) as it would be served now, or None when it left the queue
    meanwhile (rated in another tab, assigned to this reader in a study) or there was none.
    Inside the caller's transaction, after :func:`authorize`."""
    if upcoming is None:
        return None
    version = _own_adapter_version(store, user)
    return store.queued_case(user.id, upcoming.report_id,
                             adapter=user.username if version is not None else None,
                             adapter_version=version)


def _own_adapter_version(store: Store, user: User) -> int | None:
    """The version of the reader's active adapter (its drafts are named by the username,
    which :func:`authorize` has just checked), or None: the shared model."""
    if user.id == SYSTEM_ID:
        return None
    row = store.active_adapter_row(user.id)
    return None if row is None else row["version"]


def case_of(store: Store, user: User, report_id: int) -> Case:
    """One report as this radiologist is served it (their own draft where there is one, as
    :func:`next_case`): for undo and deep links."""
    require(user, *RATERS)
    with store.tx():
        authorize(store, user, *RATERS)
        version = _own_adapter_version(store, user)
        if version is not None:
            return store.case(report_id, adapter=user.username, adapter_version=version)
        return store.case(report_id)


@dataclass(frozen=True)
class QueueView:
    """What the Annotate page shows when it asks the store (at sign-in, after an undo): the next
    case and the progress counts."""

    case: Case | None
    rated: int
    skipped: int
    total: int


def queue_view(store: Store, user: User) -> QueueView:
    """The reader's next case (as :func:`next_case`) and the counts of :func:`queue_counts`, in
    one transaction: one wait for the connection instead of two. (After a save the page asks for
    :func:`next_case` only and counts the saved case itself.)"""
    require(user, *RATERS)
    with store.tx():
        case = next_case(store, user)
        return QueueView(case, *store.queue_counts(user.id))


def progress(store: Store, user: User) -> tuple[int, int]:
    require(user, *RATERS)
    with store.tx():
        authorize(store, user, *RATERS)
        return store.queue_progress(user.id)


def queue_counts(store: Store, user: User) -> tuple[int, int, int]:
    """(rated, skipped, total) of the reader's Annotate queue: what the progress bar shows
    (a skip moves the queue on but is not a rating)."""
    require(user, *RATERS)
    with store.tx():
        authorize(store, user, *RATERS)
        return store.queue_counts(user.id)


@dataclass(frozen=True)
class Rating:
    """What a radiologist submits for one case."""

    rating: int
    factual_error: bool = False
    omission: bool = False
    style_issue: bool = False
    critical_missed: bool = False
    comment: str | None = None
    edited_text: str | None = None
    time_spent_ms: int | None = None
    blinded: bool = False

    def __post_init__(self) -> None:
        if self.rating not in RATING_SCALE:
            raise ValidationError(f"rating {self.rating!r}: must be one of -2..2")
        if self.time_spent_ms is not None and not 0 <= self.time_spent_ms < 86_400_000:
            raise ValidationError(f"time_spent_ms {self.time_spent_ms!r} is out of range")


def submit_rating(store: Store, user: User, case: Case, rating: Rating,
                  client_token: str | None = None, study_id: int | None = None) -> int:
    """Append a rating (and edit) of ``case`` by ``user``. Returns the feedback id.

    The case's AI text is the text on screen (see :func:`save_rating`).
    """
    return save_rating(store, user, case.report_id, case.generation_id, case.ai_text, rating,
                       client_token=client_token, study_id=study_id)


def save_rating(store: Store, user: User, report_id: int, generation_id: int | None,
                shown_text: str | None, rating: Rating, client_token: str | None = None,
                study_id: int | None = None) -> int:
    """Append ``user``'s rating (and edit) of the text shown for a report. Returns the feedback id.

    An edit that changes only whitespace or punctuation is stored as no edit. A repeated
    ``client_token`` (double submit) returns the first row's id. Rating a case already rated
    (a second tab) revises the earlier rating (``Store.add_feedback``). With ``study_id`` the
    report must be one of the user's tasks in that study.

    Args:
        report_id: the report rated.
        generation_id: the generation that was on screen (None: no stored AI text).
        shown_text: that text (an edit is compared with it).
        rating: what the reader submitted.
        client_token: makes a double submit harmless.
        study_id: the study the rating belongs to (None: the annotate queue).
    """
    require(user, *RATERS)
    edited = clean_text(rating.edited_text, "edited impression")
    if edited is not None and same_words(edited, shown_text):
        edited = None
    comment = clean_text(rating.comment, "comment", 5_000)
    # ONE transaction: the account as it is now, the study task and the insert (each extra
    # transaction is one more wait for the connection under load).
    with _saving("rating"), store.tx():
        authorize(store, user, *RATERS)
        if study_id is not None and not store.is_study_case_of(study_id, user.id, report_id):
            raise PermissionDenied(f"{user.username} has no task for report {report_id} in "
                                   f"study {study_id}; nothing was saved")
        return store.add_feedback(
            reader_id=user.id, report_id=report_id, generation_id=generation_id,
            kind="rating", rating=rating.rating, factual_error=rating.factual_error,
            omission=rating.omission, style_issue=rating.style_issue,
            critical_missed=rating.critical_missed, comment=comment, edited_text=edited,
            time_spent_ms=rating.time_spent_ms, blinded=rating.blinded, study_id=study_id,
            client_token=client_token)


def submit_and_next(store: Store, user: User, case: Case, rating: Rating,
                    upcoming: Case | None, client_token: str | None = None
                    ) -> tuple[int, Case | None]:
    """Save the rating of ``case`` (as :func:`submit_rating`) and, in the same transaction,
    check the case fetched ahead of time (``next_case(..., besides=case.report_id)`` while the
    reader read this one): returns ``(feedback id, the next case as served now)``.

    The next case is None when there was none fetched or it left the queue meanwhile: the caller
    then asks :func:`next_case`. Measured under load (bench/load.py), a point check by report id
    adds little to the save, where the full queue query in the save's transaction made every
    save slower; the reader waits for one transaction instead of two.
    """
    with _saving("rating"), store.tx():
        fid = submit_rating(store, user, case, rating, client_token=client_token)
        return fid, _still_queued(store, user, upcoming)


def skip_and_next(store: Store, user: User, case: Case, upcoming: Case | None,
                  client_token: str | None = None, time_spent_ms: int | None = None
                  ) -> tuple[int, Case | None]:
    """:func:`skip`, then the check of the case fetched ahead, as :func:`submit_and_next`."""
    with _saving("skip"), store.tx():
        fid = skip(store, user, case, client_token=client_token, time_spent_ms=time_spent_ms)
        return fid, _still_queued(store, user, upcoming)


def skip(store: Store, user: User, case: Case, client_token: str | None = None,
         time_spent_ms: int | None = None) -> int:
    require(user, *RATERS)
    with _saving("skip"), store.tx():
        authorize(store, user, *RATERS)
        return store.add_feedback(reader_id=user.id, report_id=case.report_id,
                                  generation_id=case.generation_id, kind="skip",
                                  time_spent_ms=time_spent_ms, client_token=client_token)


def standing_answer(store: Store, user: User, report_id: int) -> dict | None:
    """The user's own rating of a report that stands (a link or the browser's Back opens a case
    already rated: its answer is filled in, and a new one revises it), or None."""
    require(user, *RATERS)
    with store.tx():
        authorize(store, user, *RATERS)
        return store.standing_rating(user.id, report_id)


def undo_last(store: Store, user: User, study_id: int | None = None) -> dict | None:
    """Retract the user's most recent standing rating or skip; returns it (or None)."""
    require(user, *RATERS)
    with _saving("undo"), store.tx():
        authorize(store, user, *RATERS)
        last = store.last_current_rating(user.id, study_id)
        if last is None:
            return None
        if last["reader_id"] != user.id:  # defence in depth: the query already filters
            raise PermissionDenied("cannot retract another reader's rating")
        store.add_feedback(reader_id=user.id, report_id=last["report_id"],
                           generation_id=last["generation_id"], kind="retraction",
                           retracts=last["id"], study_id=study_id)
    return last


def retract(store: Store, user: User, feedback_id: int) -> int:
    """Retract one specific rating of the user's own."""
    require(user, *RATERS)
    with _saving("retraction"), store.tx():
        authorize(store, user, *RATERS)
        row = store.get_feedback(feedback_id)
        if row["reader_id"] != user.id:
            raise PermissionDenied(f"{user.username} may not retract another reader's rating")
        if row["kind"] == "retraction" or store.is_retracted(feedback_id):
            raise ValidationError(f"feedback {feedback_id} is already retracted")
        return store.add_feedback(reader_id=user.id, report_id=row["report_id"],
                                  generation_id=row["generation_id"], kind="retraction",
                                  retracts=feedback_id, study_id=row["study_id"])


def feedback_of(store: Store, user: User, reader_id: int | None = None,
                include_retracted: bool = True):
    """A reader's feedback history (DataFrame). Radiologists may only read their own."""
    authorize(store, user)
    reader_id = user.id if reader_id is None else reader_id
    require_self_or(user, reader_id, "coordinator", "admin")
    # The history shows each rating's model/style next to the original impression: rows of a
    # study that is still running would unblind its arms.
    return without_open_study_rows(
        store, store.feedback_history(reader_id=reader_id, include_retracted=include_retracted))


def feedback_status(history):
    """What each row of :func:`feedback_of` is now, for the reader to see (a Series):
    ``retracted``, ``revised by a later rating`` (the same case rated again, e.g. in a second
    tab: the later rating counts), ``revises an earlier rating``, or ``current``."""
    import pandas as pd  # on first use: pandas takes ~0.5 s to import, most pages never need it

    status = pd.Series("current", index=history.index, dtype=object)
    status[history["kind"] == "retraction"] = ""
    status[history["revises"].notna()] = "revises an earlier rating"
    status[history["revised"].astype(bool)] = "revised by a later rating"
    status[history["retracted"].astype(bool)] = "retracted"
    return status


def record_export(store: Store, user: User, what: str, rows: int) -> None:
    """Audit an export (who exported what, how many rows; never the content)."""
    authorize(store, user)
    store.audit(user.username, "export", {"what": what, "rows": int(rows)})


def blind_order(reader_id: int, report_id: int) -> tuple[str, str]:
    """Which text is shown as A and which as B for this reader and case (stable, random-like).

    Returns ("ai", "original") or ("original", "ai").
    """
    digest = hashlib.sha256(f"{reader_id}:{report_id}".encode()).digest()
    return ("ai", "original") if digest[0] % 2 == 0 else ("original", "ai")


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Word-level diff as (op, text) pieces with op in {"=", "-", "+"}.

    >>> word_diff("No acute disease.", "No acute cardiopulmonary disease.")
    [('=', 'No acute'), ('+', 'cardiopulmonary'), ('=', 'disease.')]
    """
    a, b = before.split(), after.split()
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", " ".join(a[i1:i2])))
        if op in ("delete", "replace"):
            out.append(("-", " ".join(a[i1:i2])))
        if op in ("insert", "replace"):
            out.append(("+", " ".join(b[j1:j2])))
    return out


def diff_html(before: str, after: str) -> str:
    """The word diff as escaped HTML (<del>/<ins>), safe to render."""
    parts = []
    for op, text in word_diff(before, after):
        text = html.escape(text)
        parts.append({"=": text, "-": f"<del style='color:#b42318'>{text}</del>",
                      "+": f"<ins style='color:#067647'>{text}</ins>"}[op])
    return " ".join(parts)
