"""Visibility rules: which feedback rows a general view may show.

A running study's ratings are blinded: general feedback views (a reader's history, all feedback,
their CSV exports) join each rating with its generation's model/adapter/style and the original
impression, which would unblind the study's arms. Its ratings are shown there only once it is
closed.
"""

from __future__ import annotations

from core.store.database import Store


def without_open_study_rows(store: Store, frame):
    """Drop feedback rows that belong to studies not closed yet.

    Args:
        frame: a DataFrame with a ``study_id`` column (e.g. ``Store.feedback_history``).
    Returns:
        The frame without those rows.
    """
    if frame is None or len(frame) == 0 or "study_id" not in frame:
        return frame
    open_ids = store.open_study_ids()
    if not open_ids:
        return frame
    return frame[~frame["study_id"].isin(open_ids)].reset_index(drop=True)
