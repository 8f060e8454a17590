"""Annotate (issue 14.8 and 14.2): guidelines, the key overlay's list, the tick keys, progress
that counts ratings only, the character counter, a verbatim diff, and the blinded reveal."""

from __future__ import annotations

import json
import re

from tests.pages.test_pages import _button, _signed_in


def _keys_config(at) -> dict:
    for h in at.get("html"):
        m = re.search(r'data-imp-keys="([^"]*)"', h.proto.body)
        if m:
            import html

            return json.loads(html.unescape(m.group(1)))
    raise AssertionError("no key configuration on the page")


def test_guidelines_keys_and_ticks_are_on_the_page(store, users, cases):
    at = _signed_in(users["rad1"])
    assert not at.exception, at.exception
    side = " ".join(m.value for m in at.sidebar.markdown)
    for words in ("Much worse", "Equivalent", "Factually wrong", "Omission", "Style",
                  "Missed critical finding"):
        assert words in side
    conf = _keys_config(at)
    assert conf["ticks"] == {"f": "Factually wrong", "o": "Omission", "s": "Style",
                             "c": "Missed critical finding"}
    listed = " ".join(k for k, _ in conf["shortcuts"])
    for key in ("1 – 5", "F", "O", "S", "C", "Ctrl+Enter", "Alt+S", "Alt+Z", "Esc", "?"):
        assert key in listed
    tag = at.session_state["case_tag"]
    labels = {c.key: c.label for c in at.checkbox}
    assert labels[f"factual_{tag}"] == "Factually wrong (F)"
    # the JS ticks a checkbox whose label starts with the configured label
    for key, label in conf["ticks"].items():
        assert labels[f"{ {'f': 'factual', 'o': 'omission', 's': 'style', 'c': 'critical'}[key]}_{tag}"] \
            .startswith(label + " ")
    # Submit, Skip and Undo come before the edit box (above the fold)
    order = [b.key.split("_")[0] for b in at.button if b.key]
    assert order.index("submit") < order.index("skip") < order.index("undo")


def test_progress_counts_ratings_not_skips(store, users, cases):
    at = _signed_in(users["rad1"])
    _button(at, "skip_").click().run()
    assert "0 of 12 cases rated · 1 skipped" in at.get("progress")[0].proto.text
    _button(at, "rate_0_").click().run()
    _button(at, "submit_").click().run()
    assert "1 of 12 cases rated · 1 skipped" in at.get("progress")[0].proto.text


def test_edit_counter_limit_and_verbatim_diff(store, users, cases):
    from core.feedback.annotate import MAX_TEXT

    at = _signed_in(users["rad1"])
    tag = at.session_state["case_tag"]
    box = at.text_area(key=f"edit_{tag}")
    assert box.proto.max_chars == MAX_TEXT
    text = "**Bold** claim\n# heading\n1. <b>x</b>"
    box.input(text).run()
    assert any(f"{len(text):,} / {MAX_TEXT:,} characters" == c.value for c in at.caption)
    bodies = [h.proto.body for h in at.get("html") if "Your edit" in h.proto.body]
    assert bodies and "**Bold**" in bodies[0] and "&lt;b&gt;x&lt;/b&gt;" in bodies[0]
    assert "white-space:pre-wrap" in bodies[0]
    assert not [m for m in at.markdown if "Bold" in m.value]  # not rendered as Markdown
    assert at.text_input(key=f"comment_{tag}").proto.max_chars == 5_000


def test_blinded_reveal_shows_both_texts_with_their_labels(store, users, cases):
    from core.feedback.annotate import blind_order

    rad = users["rad1"]
    at = _signed_in(rad)
    at.toggle(key="blind").set_value(True).run()
    case = at.session_state["case"]
    _button(at, "rate_1_").click().run()
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    ai_first = blind_order(rad.id, case.report_id)[0] == "ai"
    labels = [m.value for m in at.markdown]
    assert ("**Impression A — the AI's**" in labels) == ai_first
    assert ("**Impression B — the AI's**" in labels) != ai_first
    assert any("the original" in m for m in labels)
    shown = [t.value for t in at.text]
    assert case.ai_text in shown and case.impression in shown
    assert "was the AI" in at.success[0].value
    _button(at, "next_after_reveal_").click().run()
    assert "Impression A" in [m.value.strip("*") for m in at.markdown]
    assert at.session_state["case"].report_id != case.report_id


def test_indication_and_comparison_are_shown_verbatim(store, users):
    """Issue 14: a report's own "**", "#", "1." or ":red[...]" is text, never Markdown or HTML."""
    import dataclasses
    import html

    from core.ingest.demo import synthetic_reports

    raw_ind = "**Cough** # 1. :red[fever] <b>x</b> $5"
    raw_cmp = "_prior_ 2024-01-01 `none`"
    report = dataclasses.replace(synthetic_reports(1, seed=5)[0], indication=raw_ind,
                                 comparison=raw_cmp)
    store.import_reports([report], file="markup", fmt="demo")
    rid = store.reports()[0]["id"]
    store.add_generations([{"report_id": rid, "model": "m", "text": "No acute disease.",
                            "latency_ms": 1.0}])
    at = _signed_in(users["rad1"])
    assert not at.exception, at.exception
    bodies = " ".join(h.proto.body for h in at.get("html"))
    assert html.escape(raw_ind) in bodies and html.escape(raw_cmp) in bodies
    assert not any("Cough" in m.value for m in at.markdown)  # not passed through Markdown


def test_the_next_case_is_fetched_while_the_reader_reads(store, users, cases):
    """Issue 16: after the case is drawn the page fetches the one after it; Submit then waits for
    one transaction (the save, with the check of that case: tests/feedback/test_annotate.py)
    and shows it. A case rated in another tab meanwhile is not shown: the page asks the queue
    instead."""
    from core.feedback import annotate

    rad = users["rad1"]
    at = _signed_in(rad)
    assert not at.exception, at.exception
    shown = at.session_state["case"]
    assert at.session_state["upcoming"][0] == shown.report_id
    ahead = at.session_state["upcoming"][1]
    assert ahead.report_id == cases[1]["id"] != shown.report_id
    _button(at, "rate_1_").click().run()
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    assert at.session_state["case"] == ahead
    assert at.session_state["upcoming"][0] == ahead.report_id  # and the one after it
    assert store.df("SELECT report_id FROM feedback")["report_id"].tolist() == [shown.report_id]
    # rated in another tab: the case fetched ahead is not served again
    tab = at.session_state["upcoming"][1]
    annotate.submit_rating(store, rad, tab, annotate.Rating(rating=0), client_token="tab")
    _button(at, "rate_0_").click().run()
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    assert at.session_state["case"].report_id not in {shown.report_id, ahead.report_id,
                                                      tab.report_id}
    assert "2 of 12 cases rated" in at.get("progress")[0].proto.text


def test_a_link_to_a_case_already_rated_fills_in_the_answer(store, users, cases):
    """The browser's Back (or a link) to a case rated a moment ago: the answer is on screen and
    the reader is told that submitting again replaces it (it used to open blank, and a second
    rating silently revised the first)."""
    at = _signed_in(users["rad1"])
    first = at.session_state["case"]
    _button(at, "rate_1_").click().run()
    _button(at, "submit_").click().run()
    assert at.session_state["case"].report_id != first.report_id
    at.query_params["case"] = str(first.report_id)
    at.run()
    assert not at.exception, at.exception
    tag = at.session_state["case_tag"]
    assert at.session_state["case"].report_id == first.report_id
    assert at.session_state[f"rating_{tag}"] == 1
    assert any("You rated this case before" in t.value for t in at.toast)


def test_an_ai_text_longer_than_an_edit_is_rated_without_an_edit_box(store, users, cases):
    """A text over the edit limit: the box would cut it at its limit and the cut text would be
    saved as the reader's edit. There is no box; the rating is saved with no edit."""
    from core.feedback.annotate import MAX_TEXT

    at = _signed_in(users["rad1"])
    case = at.session_state["case"]
    long_case = type(case)(**{**case.__dict__, "ai_text": "Stable nodules. " * (MAX_TEXT // 16 + 10)})
    at.session_state["case"] = long_case
    at.run()
    assert not at.exception, at.exception
    tag = at.session_state["case_tag"]
    assert f"edit_{tag}" not in [t.key for t in at.text_area]
    assert any("longer than an edit can be" in c.value for c in at.caption)
    _button(at, "rate_0_").click().run()
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    rows = store.feedback_history(reader_id=users["rad1"].id)
    assert rows.iloc[0]["report_id"] == case.report_id and rows.iloc[0]["edited_text"] is None


def test_undo_on_the_blinded_reveal_brings_the_case_back(store, users, cases):
    """Alt+Z right after a blinded rating: the reveal screen had no Undo button, so the key did
    nothing (exploratory run)."""
    at = _signed_in(users["rad1"])
    at.toggle(key="blind").set_value(True).run()
    case = at.session_state["case"]
    _button(at, "rate_1_").click().run()
    _button(at, "submit_").click().run()
    assert "was the AI" in at.success[0].value
    _button(at, "undo_").click().run()
    assert not at.exception, at.exception
    assert at.session_state["case"].report_id == case.report_id and not at.session_state["revealed"]
