import pytest

from core.feedback import annotate
from core.errors import PermissionDenied, ValidationError


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


@pytest.mark.parametrize("shown, edited", [
    ("Left pleural effusion \u2265 2 cm.", "Left pleural effusion < 2 cm."),
    ("Nodule > 8 mm.", "Nodule < 8 mm."),
    ("No pneumothorax.", "No pneumothorax?"),
    ("Tip 2 cm above the carina.", "Tip -2 cm above the carina."),
])
def test_an_edit_of_a_sign_alone_is_kept(store, users, cases, shown, edited):
    """A sign changes the finding: the reader's correction must reach the preference pairs
    (an en dash for a hyphen does not)."""
    from core.learning.pairs import same_words

    assert same_words("T4-5 fracture, 2-3 cm.", "T4\u20135 fracture, 2\u20133 cm.")
    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    fid = annotate.save_rating(store, rad, case.report_id, case.generation_id, shown,
                               annotate.Rating(rating=-1, edited_text=edited))
    assert store.get_feedback(fid)["edited_text"] == edited


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


def test_queue_counts_rated_and_skipped_apart(store, users, cases):
    rad = users["rad1"]
    assert annotate.queue_counts(store, rad) == (0, 0, 12)
    annotate.skip(store, rad, annotate.next_case(store, rad))
    annotate.submit_rating(store, rad, annotate.next_case(store, rad), annotate.Rating(rating=0))
    annotate.submit_rating(store, rad, annotate.next_case(store, rad), annotate.Rating(rating=1))
    assert annotate.queue_counts(store, rad) == (2, 1, 12)
    annotate.undo_last(store, rad)  # a retracted rating no longer counts
    assert annotate.queue_counts(store, rad) == (1, 1, 12)
    assert annotate.queue_counts(store, users["rad2"]) == (0, 0, 12)
    with pytest.raises(PermissionDenied):
        annotate.queue_counts(store, users["coord"])


def test_word_diff_and_html_escape():
    assert annotate.word_diff("No acute disease.", "No acute cardiopulmonary disease.") == [
        ("=", "No acute"), ("+", "cardiopulmonary"), ("=", "disease.")]
    html = annotate.diff_html("a <b>", "a <i>")
    assert "<b>" not in html and "&lt;i&gt;" in html


def test_blind_order_is_stable_and_mixed():
    orders = {annotate.blind_order(1, rid) for rid in range(40)}
    assert orders == {("ai", "original"), ("original", "ai")}
    assert annotate.blind_order(5, 7) == annotate.blind_order(5, 7)


def test_each_hot_path_is_one_transaction(store, users, cases):
    """Under load every transaction is a wait for the one connection (and, with another process
    waiting, a hand-over of the file): the next case and a save are ONE transaction each,
    account check included (issue 16)."""
    from core.adapters import registry

    rad = users["rad1"]
    store.add_adapter(rad.id, 1, "/nowhere/rad1/v1", None, "dpo", None, None, "promoted")
    store.set_active_adapter(rad.id, 1, "promote", "admin")
    own = store.add_generations([{"report_id": cases[0]["id"], "model": "m", "text": "Own draft.",
                                  "adapter": "rad1", "adapter_version": 1}])[0]
    assert registry.active_adapter(store, rad.id).version == 1

    def transactions(call):
        before = store.stats["transactions"]
        result = call()
        return result, store.stats["transactions"] - before

    case, n = transactions(lambda: annotate.next_case(store, rad))
    assert (n, case.generation_id, case.adapter_version) == (1, own, 1)  # their own draft
    fid, n = transactions(lambda: annotate.submit_rating(
        store, rad, case, annotate.Rating(rating=1, edited_text="Edited."), client_token="t-1"))
    assert n == 1 and store.get_feedback(fid)["edited_text"] == "Edited."
    case, n = transactions(lambda: annotate.next_case(store, rad))
    assert n == 1 and case.report_id == cases[1]["id"]
    _, n = transactions(lambda: annotate.skip(store, rad, case, client_token="t-2"))
    assert n == 1
    _, n = transactions(lambda: annotate.undo_last(store, rad))
    assert n == 1
    # the account check is still in that one transaction: a disabled account is refused
    store.set_reader_active("rad1", False)
    with pytest.raises(PermissionDenied):
        annotate.next_case(store, rad)
    with pytest.raises(PermissionDenied):
        annotate.submit_rating(store, rad, case, annotate.Rating(rating=0), client_token="t-3")
    assert store.count_feedback(rad.id) == 3


def test_the_queue_never_serves_a_case_the_reader_rated(store, users, cases):
    """The narrow queue query against the rule it replaced: rated, skipped, revised and undone
    cases in random order; every served case is one this reader has no standing rating of, and
    it is the first such report."""
    import random

    rng = random.Random(7)
    rad = users["rad2"]
    for _ in range(40):
        case = annotate.next_case(store, rad)
        standing = set(store.df("SELECT report_id FROM current_feedback WHERE reader_id = ? AND "
                                "study_id IS NULL", [rad.id])["report_id"])
        expected = [r["id"] for r in cases if r["id"] not in standing]
        assert (case.report_id if case else None) == (expected[0] if expected else None)
        if case is None:
            break
        roll = rng.random()
        if roll < 0.6:
            annotate.submit_rating(store, rad, case, annotate.Rating(rating=0))
        elif roll < 0.8:
            annotate.skip(store, rad, case)
        else:
            annotate.undo_last(store, rad)



def test_queue_view_is_the_next_case_and_the_counts(store, users, cases):
    rad = users["rad1"]
    first = annotate.queue_view(store, rad)
    assert (first.rated, first.skipped, first.total) == (0, 0, len(cases))
    annotate.submit_rating(store, rad, first.case, annotate.Rating(rating=1))
    annotate.skip(store, rad, annotate.next_case(store, rad))
    view = annotate.queue_view(store, rad)
    assert (view.rated, view.skipped) == (1, 1)
    assert view.case == annotate.next_case(store, rad)
    assert view.case.report_id != first.case.report_id


def test_a_case_fetched_ahead_is_served_only_while_still_queued(store, users, cases):
    """The Annotate page fetches the next case while the reader reads this one; the save checks
    it in its own transaction: served as it is now, or None once it left the queue (rated in
    another tab, or assigned to this reader in a study, whose blinding the general page would
    break)."""
    from core.studies import lifecycle

    rad = users["rad1"]
    case = first = annotate.next_case(store, rad)
    ahead = annotate.next_case(store, rad, besides=case.report_id)
    assert ahead.report_id == cases[1]["id"] != case.report_id
    before = store.stats["transactions"]
    fid, upcoming = annotate.submit_and_next(store, rad, case, annotate.Rating(rating=1),
                                             ahead, client_token="a-1")
    assert store.stats["transactions"] - before == 1  # one wait for the reader, not two
    assert store.get_feedback(fid)["report_id"] == case.report_id
    assert upcoming == ahead
    # a newer draft of the case fetched ahead: the check serves the newer one
    newer = store.add_generations([{"report_id": cases[2]["id"], "model": "m",
                                    "text": "A newer draft."}])[0]
    ahead = annotate.next_case(store, rad, besides=upcoming.report_id)
    assert ahead.report_id == cases[2]["id"]
    _, checked = annotate.skip_and_next(store, rad, upcoming, ahead, client_token="a-2")
    assert (checked.report_id, checked.generation_id, checked.ai_text) == (
        cases[2]["id"], newer, "A newer draft.")
    # rated in another tab meanwhile: not served again
    ahead = annotate.next_case(store, rad, besides=checked.report_id)
    annotate.submit_rating(store, rad, ahead, annotate.Rating(rating=0), client_token="tab-2")
    _, upcoming = annotate.submit_and_next(store, rad, checked, annotate.Rating(rating=0), ahead)
    assert upcoming is None
    # assigned to this reader in a study meanwhile: not served on the unblinded page
    case = annotate.next_case(store, rad)
    ahead = annotate.next_case(store, rad, besides=case.report_id)
    lifecycle.create_study(store, users["coord"], lifecycle.StudyDesign(
        name="Ahead", arms=["original"], n_items=len(cases) - 4, raters=["rad1"], k=1))
    _, upcoming = annotate.submit_and_next(store, rad, case, annotate.Rating(rating=0), ahead)
    assert upcoming is None and annotate.next_case(store, rad) is None
    # nothing fetched ahead: None (the page asks the queue); a repeated save key stores nothing
    assert annotate.submit_and_next(store, rad, first, annotate.Rating(rating=1), None,
                                    client_token="a-1") == (fid, None)
    with pytest.raises(PermissionDenied):
        annotate.skip_and_next(store, users["coord"], case, None)


def test_the_history_table_shows_an_empty_cell_not_none(store, users, cases):
    from core.feedback import history

    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    annotate.submit_rating(store, rad, case, annotate.Rating(rating=1))  # no edit, no comment
    table = history.table(store, annotate.feedback_of(store, rad))
    assert list(table["Edited impression"]) == [""] and list(table["Comment"]) == [""]
    assert table["AI impression"].iloc[0] == case.ai_text
