"""My feedback and All feedback (issue 14.10): readable columns, filters that survive leaving
the page, a study column, correcting a past rating as a new entry, every reader at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import PermissionDenied, ValidationError
from core.feedback import annotate, history

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]


def _rate(store, user, value, comment=None):
    return annotate.submit_rating(store, user, annotate.next_case(store, user),
                                  annotate.Rating(rating=value, comment=comment))


def test_my_feedback_reads_as_words_and_keeps_its_filters(store, users, cases, open_page):
    rad = users["rad1"]
    _rate(store, rad, 2, "good")
    _rate(store, rad, -1, "meh")
    at = open_page("my_feedback.py", rad)
    assert not at.exception, at.exception
    frame = at.dataframe[0].value
    assert {"When", "Rating", "Status", "Where", "AI impression", "Comment"} <= set(frame.columns)
    assert "rating_label" not in frame.columns and "critical_missed" not in frame.columns
    assert sorted(frame["Rating"]) == ["Much better", "Worse"]
    assert set(frame["Where"]) == {"Annotate"}
    at.multiselect(key="mf_ratings").select("Worse").run()
    assert list(at.dataframe[0].value["Comment"]) == ["meh"]
    # kept where leaving the page does not clear it (see the next test)
    assert at.session_state["kept:mf_ratings"] == ["Worse"]


def test_filters_survive_navigating_away_through_the_app(store, users, cases):
    rad = users["rad1"]
    _rate(store, rad, 1, "x")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = rad
    at.run()
    at.switch_page("pages/my_feedback.py").run()
    at.text_input(key="mf_search").input("nothing matches this").run()
    assert at.dataframe[0].value.empty
    at.switch_page("pages/annotate.py").run()
    at.switch_page("pages/my_feedback.py").run()
    assert not at.exception, at.exception
    assert at.text_input(key="mf_search").value == "nothing matches this"


def test_a_past_rating_is_corrected_by_a_new_entry(store, users, cases, open_page):
    rad = users["rad1"]
    first = _rate(store, rad, -2, "too harsh")
    at = open_page("my_feedback.py", rad)
    assert at.selectbox(key="mf_fix").value == first
    at.radio(key=f"mf_fix_rating_{first}").set_value("Equivalent")
    at.text_area(key=f"mf_fix_comment_{first}").input("on second thought, fine")
    at.button[-1].click().run()                      # Save correction
    assert not at.exception, at.exception
    assert any("correction saved" in s.value for s in at.success)
    rows = annotate.feedback_of(store, rad)
    new = rows[rows["id"] != first].iloc[0]
    assert new["rating"] == 0 and new["revises"] == first and new["comment"].startswith("on")
    assert bool(rows[rows["id"] == first].iloc[0]["revised"])   # kept, no longer counts
    frame = at.dataframe[0].value
    assert list(frame["Rating"]) == ["Equivalent"] and list(frame["Status"]) == [
        "revises an earlier rating"]
    with pytest.raises(ValidationError, match="not a standing"):
        history.correct(store, rad, first, annotate.Rating(rating=1))
    with pytest.raises(PermissionDenied):
        history.correct(store, users["rad2"], int(new["id"]), annotate.Rating(rating=1))


def test_all_feedback_shows_every_reader_with_filters_and_labels(store, users, cases, open_page):
    _rate(store, users["rad1"], 2, "one")
    _rate(store, users["rad2"], -2, "two")
    at = open_page("feedback_all.py", users["coord"])
    assert not at.exception, at.exception
    frame = at.dataframe[0].value
    assert sorted(frame["Reader"]) == ["rad1", "rad2"]
    assert sorted(frame["Rating"]) == ["Much better", "Much worse"]
    assert "rating" not in frame.columns                       # no raw -2..2 column
    at.multiselect(key="fa_readers").select("rad2").run()
    assert list(at.dataframe[0].value["Comment"]) == ["two"]
    at.multiselect(key="fa_readers").unselect("rad2").run()
    at.multiselect(key="fa_ratings").select("Much better").run()
    assert list(at.dataframe[0].value["Reader"]) == ["rad1"]
    import datetime as dt

    at.date_input(key="fa_since").set_value(dt.date.today() + dt.timedelta(days=1)).run()
    assert at.dataframe[0].value.empty
    with pytest.raises(PermissionDenied):
        history.all_feedback(store, users["rad1"])
