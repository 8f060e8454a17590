"""Feedback histories as people read them: a reader's own (My feedback), everyone's (All
feedback), filtered, with readable column names, ratings by their labels, each study row named
by its study, and a past Annotate rating corrected by a new entry that revises it.

Nothing is overwritten: a correction is a new rating of the same case and text, which revises
the standing one (``Store.add_feedback``); the earlier one stays on record as revised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Sequence

from core.accounts.auth import User, authorize, require
from core.errors import PermissionDenied, ValidationError
from core.feedback.annotate import (RATERS, RATING_SCALE, Rating, feedback_of, feedback_status,
                                    save_rating)
from core.feedback.visibility import without_open_study_rows
from core.store.database import Store

COORDINATORS = ("coordinator", "admin")
ALL_FEEDBACK_LIMIT = 50_000  # newest rows All feedback reads at once (a department has millions)

# Column -> heading, in the order the tables show them (raw names stay in the CSV export).
COLUMNS: dict[str, str] = {
    "created_at": "When",
    "reader": "Reader",
    "where": "Where",
    "kind": "Kind",
    "rating_label": "Rating",
    "status": "Status",
    "factual_error": "Factual error",
    "omission": "Omission",
    "style_issue": "Style issue",
    "critical_missed": "Missed critical finding",
    "ai_text": "AI impression",
    "edited_text": "Edited impression",
    "original_impression": "Original impression",
    "comment": "Comment",
    "external_id": "Case",
    "id": "Entry",
}
SCOPES = ("Annotate and studies", "Annotate only", "Studies only")


@dataclass(frozen=True)
class Filters:
    """What a history table shows (every field optional: the default shows everything
    current)."""
    kinds: Sequence[str] = ("rating", "skip")
    include_old: bool = False           # retracted and revised entries too
    only_edited: bool = False
    text: str = ""
    scope: str = SCOPES[0]
    readers: Sequence[str] = ()         # usernames (empty: everyone)
    ratings: Sequence[str] = ()         # labels of RATING_SCALE (empty: any)
    since: date | None = None
    until: date | None = None


def all_feedback(store: Store, user: User, since: date | None = None):
    """Every reader's feedback (coordinators and admins), newest first, at most
    :data:`ALL_FEEDBACK_LIMIT` rows; a running study's rows stay hidden (they would unblind it).
    """
    authorize(store, user, *COORDINATORS)
    start = None if since is None else datetime.combine(since, time.min)
    frame = store.feedback_history(since=start, limit=ALL_FEEDBACK_LIMIT)
    return without_open_study_rows(store, frame)


def apply(history, filters: Filters):
    """The rows of a :func:`core.feedback.annotate.feedback_of` / :func:`all_feedback` frame
    that ``filters`` keep."""
    view = history[history["kind"].isin(list(filters.kinds))]
    if not filters.include_old:
        view = view[~view["retracted"].astype(bool) & ~view["revised"].astype(bool)]
    if filters.only_edited:
        view = view[view["edited_text"].notna()]
    if filters.scope == SCOPES[1]:
        view = view[view["study_id"].isna()]
    elif filters.scope == SCOPES[2]:
        view = view[view["study_id"].notna()]
    if filters.readers:
        view = view[view["reader"].isin(list(filters.readers))]
    if filters.ratings:
        wanted = [v for v, label in RATING_SCALE.items() if label in filters.ratings]
        view = view[view["rating"].isin(wanted)]
    when = view["created_at"]
    if filters.since is not None:
        view = view[when >= datetime.combine(filters.since, time.min)]
        when = view["created_at"]
    if filters.until is not None:
        view = view[when < datetime.combine(filters.until + timedelta(days=1), time.min)]
    if filters.text:
        hay = (view["findings"].fillna("") + " " + view["ai_text"].fillna("") + " "
               + view["edited_text"].fillna("") + " " + view["comment"].fillna(""))
        view = view[hay.str.lower().str.contains(filters.text.lower(), regex=False)]
    return view


def _where(store: Store, study_ids) -> list[str]:
    """"Annotate" for a row outside any study, else "Study 3: name"."""
    names: dict[int, str] = {}
    out = []
    for missing, sid in zip(study_ids.isna(), study_ids):
        if missing:
            out.append("Annotate")
            continue
        sid = int(sid)
        if sid not in names:
            study = store.get_study(sid)
            names[sid] = f"Study {sid}: {study['name']}" if study else f"Study {sid}"
        out.append(names[sid])
    return out


def table(store: Store, view, with_reader: bool = False):
    """The rows as shown: readable headings, ratings by label, status, where each was rated
    (Annotate, or the study by name)."""
    shown = view.assign(rating_label=view["rating"].map(RATING_SCALE),
                        status=feedback_status(view), where=_where(store, view["study_id"]))
    cols = [c for c in COLUMNS if c in shown and (with_reader or c != "reader")]
    out = shown[cols].rename(columns=COLUMNS)
    text = out.select_dtypes(include=["object", "string"]).columns
    out[text] = out[text].astype(object).where(out[text].notna(), "")  # an empty cell, not "None"
    return out


def correctable(view):
    """The rows a reader may correct: their standing Annotate ratings (a study's ratings
    belong to the study; a retracted or revised one has a newer state to correct)."""
    return view[(view["kind"] == "rating") & view["study_id"].isna()
                & ~view["retracted"].astype(bool) & ~view["revised"].astype(bool)]


def correct(store: Store, user: User, feedback_id: int, rating: Rating) -> int:
    """Correct one of the user's own standing Annotate ratings: a new rating of the same case
    and the same text, appended; it revises the earlier one, which stays on record.

    Returns:
        The new feedback id.
    Raises:
        PermissionDenied: not the user's own rating.
        ValidationError: not a standing Annotate rating.
    """
    require(user, *RATERS)
    history = feedback_of(store, user)
    row = history[history["id"] == feedback_id]
    if row.empty:
        if store.get_feedback(feedback_id)["reader_id"] != user.id:
            raise PermissionDenied(f"{user.username} may not correct another reader's rating")
        raise ValidationError(f"feedback {feedback_id} cannot be corrected here")
    if correctable(row).empty:
        raise ValidationError(f"feedback {feedback_id} is not a standing Annotate rating (a "
                              f"study rating, a skip, or already retracted or revised)")
    r = row.iloc[0]
    gen = None if row["generation_id"].isna().iloc[0] else int(r["generation_id"])
    shown = None if row["ai_text"].isna().iloc[0] else str(r["ai_text"])
    return save_rating(store, user, int(r["report_id"]), gen, shown, rating)
