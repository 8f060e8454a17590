import pytest

from core.feedback import annotate
from core.errors import ValidationError


def test_rate_edit_undo_flow(store, users, cases):
    rad = users["rad1"]
    first = annotate.next_case(store, rad)
    fid = annotate.submit_rating(store, rad, first, annotate.Rating(
        rating=-1, omission=True, edited_text="No acute disease.", time_spent_ms=4200))
    row = store.get_feedback(fid)
    assert (row["rating"], row["omission"], row["edited_text"], row["time_spent_ms"]) == (
        -1, True, "No acute disease.", 4200)
    second = annotate.next_case(store, rad)
    assert second.report_id != first.report_id
    undone = annotate.undo_last(store, rad)
    assert undone["id"] == fid
    assert annotate.next_case(store, rad).report_id == first.report_id
    assert store.count_feedback(rad.id) == 2  # the rating and its retraction


def test_whitespace_only_edit_is_no_edit(store, users, cases):
    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    fid = annotate.submit_rating(store, rad, case, annotate.Rating(
        rating=0, edited_text="  " + case.ai_text.replace(".", " .") + "\n"))
    assert store.get_feedback(fid)["edited_text"] is None


def test_form_fields_validated(store, users, cases):
    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    with pytest.raises(ValidationError):
        annotate.Rating(rating=3)
    with pytest.raises(ValidationError, match="edited impression"):
        annotate.submit_rating(store, rad, case, annotate.Rating(rating=0,
                                                                 edited_text="x" * 20_001))
    fid = annotate.submit_rating(store, rad, case, annotate.Rating(
        rating=0, comment="ok\x00\x07 <script>alert(1)</script>'; DROP TABLE feedback;--"))
    assert store.get_feedback(fid)["comment"] == \
        "ok <script>alert(1)</script>'; DROP TABLE feedback;--"
    assert store.count_feedback() == 1


def test_skip_removes_case_from_queue(store, users, cases):
    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    annotate.skip(store, rad, case)
    assert annotate.next_case(store, rad).report_id != case.report_id


def test_word_diff_and_html_escape():
    assert annotate.word_diff("No acute disease.", "No acute cardiopulmonary disease.") == [
        ("=", "No acute"), ("+", "cardiopulmonary"), ("=", "disease.")]
    html = annotate.diff_html("a <b>", "a <i>")
    assert "<b>" not in html and "&lt;i&gt;" in html


def test_blind_order_is_stable_and_mixed():
    orders = {annotate.blind_order(1, rid) for rid in range(40)}
    assert orders == {("ai", "original"), ("original", "ai")}
    assert annotate.blind_order(5, 7) == annotate.blind_order(5, 7)
