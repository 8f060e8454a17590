"""Study pages with streamlit.testing.v1.AppTest: blinded rater queue, design/progress page,
results page. Each page file is run directly with the signed-in user in session_state."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.studies import lifecycle, rating
from core.studies.lifecycle import StudyDesign

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]
# Words that would tell a rater which arm wrote a text (the findings below avoid them).
FORBIDDEN = ("original", "base", "style:", "brief", "bullets", "comprehensive", "typo",
             "external", "adapter", "fake-model", "site-b", "generated", "model")


@pytest.fixture(autouse=True)
def _show_errors():
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")


def _page(name: str, user) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=TIMEOUT)
    at.session_state["user"] = user
    return at


def page_text(at: AppTest) -> str:
    """Everything the page rendered (every element's message, labels and values included)."""
    parts: list[str] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def fake_texts(reports, arm):
    """A generator whose texts differ per arm without naming it (the text is rated content)."""
    import hashlib

    tag = hashlib.sha256(arm.encode()).hexdigest()[:6]
    return [f"Cardiac silhouette unremarkable, case {r['id']}, variant {tag}." for r in reports]


fake_texts.model_name = "fake-model"


@pytest.fixture
def study_setup(store, users):
    """A running study with four arms; rad1 and rad2 rate every text (k=2)."""
    from tests.studies.test_study import make_reports

    store.import_reports(make_reports(30), file="t", fmt="test")
    store.import_reports(make_reports(10, source="site-b"), file="u", fmt="test")
    sid = lifecycle.create_study(store, users["coord"], StudyDesign(
        name="Reader study 1", arms=["original", "base", "style:brief", "typos"], n_items=4,
        seed=2, raters=["rad1", "rad2"], k=2), make_texts=fake_texts)
    return sid


def _button(at, prefix):
    return next(b for b in at.button if b.key and b.key.startswith(prefix))


def test_rater_page_never_reveals_the_arm(store, users, study_setup):
    sid = study_setup
    rad = users["rad1"]
    at = _page("study_annotate.py", rad).run()
    assert not at.exception, at.exception
    units = store.study_units(sid)
    for step in range(6):
        text = page_text(at)
        low = text.lower()
        for word in FORBIDDEN:
            assert word not in low, (word, step)
        task = at.session_state["sa_task"]
        unit = units[units["text"] == task.text].iloc[0]
        assert task.text in text and f"text {task.label}" in text
        assert task.text in [e.value for e in at.text]        # verbatim, not Markdown
        assert unit["arm"] not in low
        # the texts from "original" must not be distinguishable by a heading either
        assert "impression to rate" in low and "reference" not in low
        _button(at, "sa_rate_3_").click().run()                       # "Good"
        at.checkbox(key=f"sa_q_omission_{at.session_state['sa_tag']}").check().run()
        _button(at, "sa_submit_").click().run()
        assert not at.exception, at.exception
    rows = store.feedback_history(reader_id=rad.id)
    assert len(rows) == 6 and (rows["study_id"] == sid).all() and rows["blinded"].all()
    assert (rows["rating"] == 1).all() and rows["omission"].all()
    assert store.study_rater_progress(sid, rad.id) == (6, 16)
    # undo through the page brings the last task back
    last = rows.sort_values("id").iloc[-1]
    _button(at, "sa_undo_").click().run()
    assert at.session_state["sa_task"].task_id == store.study_task_of_feedback(int(last["id"]))
    assert store.study_rater_progress(sid, rad.id) == (5, 16)
    tag = at.session_state["sa_tag"]  # ...filled in as it was sent: the rating and the ticked box
    assert at.session_state[f"sa_rating_{tag}"] == 1
    assert at.checkbox(key=f"sa_q_omission_{tag}").value is True


def test_rater_page_relative_scale_shows_reference_not_arm(store, users):
    from tests.studies.test_study import make_reports

    store.import_reports(make_reports(12), file="t", fmt="test")
    lifecycle.create_study(store, users["coord"], StudyDesign(
        name="Relative study", arms=["base", "style:brief"], n_items=3, raters=["rad1"], k=1,
        scale="relative"), make_texts=fake_texts)
    at = _page("study_annotate.py", users["rad1"]).run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Reference impression" in text and "Much better" in text
    for word in FORBIDDEN:
        assert word not in text.lower(), word


def test_rater_page_paused_closed_and_no_tasks(store, users, study_setup):
    sid = study_setup
    at = _page("study_annotate.py", users["rad1"]).run()
    _button(at, "sa_rate_2_").click().run()
    lifecycle.pause(store, users["coord"], sid)
    _button(at, "sa_submit_").click().run()                 # submitted just after the pause
    assert not at.exception, at.exception
    assert "paused" in page_text(at).lower()
    assert store.count_study_ratings(sid) == 0
    at = _page("study_annotate.py", users["rad1"]).run()
    assert "paused by its coordinator" in at.warning[0].value
    lifecycle.resume(store, users["coord"], sid)
    lifecycle.close(store, users["coord"], sid)
    at = _page("study_annotate.py", users["rad1"]).run()
    assert "closed" in at.info[0].value
    assert not [b for b in at.button if b.key and b.key.startswith("sa_submit_")]
    # a radiologist without tasks sees an empty state; a coordinator has no access
    from core.accounts import auth

    auth.create_user(store, "rad3", "radiologist", "rad3-Passw0rd")
    at = _page("study_annotate.py", auth.sign_in(store, "rad3", "rad3-Passw0rd")).run()
    assert "no study tasks" in at.info[0].value
    at = _page("study_annotate.py", users["coord"]).run()
    assert "do not have access" in at.error[0].value


def test_study_page_create_pause_extend_close(store, users, cases):
    coord = users["coord"]
    at = _page("study.py", coord).run()
    assert not at.exception, at.exception
    assert "No studies yet" in at.info[0].value
    at.text_input(key="sn_name").input("Pilot")
    at.number_input(key="sn_n").set_value(6)
    at.number_input(key="sn_k").set_value(1)
    at.multiselect(key="sn_raters").set_value(["rad1"])
    at.button(key="FormSubmitter:study_new-Create study").click().run()
    assert not at.exception, at.exception
    assert at.success and "Created study" in at.success[0].value, [e.value for e in at.error]
    sid = store.list_studies()[0]["id"]
    assert store.get_study(sid)["status"] == "running"
    at.run()
    assert "running" in [m.value for m in at.metric]
    assert at.dataframe[0].value["rater"].tolist() == ["rad1"]
    assert at.dataframe[1].value["arm"].tolist() == ["original", "base"]
    at.button(key="sp_pause").click().run()
    assert store.get_study(sid)["status"] == "paused"
    at.multiselect(key="sp_extend_raters").set_value(["rad2"])
    at.button(key="FormSubmitter:sp_extend-Extend").click().run()
    assert not at.exception, at.exception
    assert {r["username"] for r in store.study_raters(sid)} == {"rad1", "rad2"}
    at.button(key="sp_resume").click().run()
    assert store.get_study(sid)["status"] == "running"
    at.checkbox(key="sp_close_sure").check().run()
    at.button(key="sp_close").click().run()
    assert store.get_study(sid)["status"] == "closed"
    # a form error is shown, nothing is created
    at.text_input(key="sn_name").input("Too big")
    at.number_input(key="sn_n").set_value(500)
    at.button(key="FormSubmitter:study_new-Create study").click().run()
    assert any("only 12 reports" in e.value for e in at.error)
    assert len(store.list_studies()) == 1


@pytest.mark.slow
def test_results_page_after_close_with_exports(store, users, study_setup):
    sid = study_setup
    coord = users["coord"]
    at = _page("results.py", coord).run()
    assert "No closed study" in at.info[0].value
    for name in ("rad1", "rad2"):
        user = users[name]
        while (t := rating.next_task(store, user, sid)) is not None:
            rating.submit(store, user, t.task_id, (t.case_number + len(t.label)) % 5 - 2)
    lifecycle.close(store, coord, sid)
    at = _page("results.py", coord)
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert not any("Closed with" in w.value for w in at.warning)  # every text was rated
    for arm in ("original", "base", "style:brief", "typos"):
        assert arm in text                     # unblinded for the coordinator after close
    assert len(at.get("plotly_chart")) >= 5
    frames = [d.value for d in at.dataframe]
    per_arm = next(f for f in frames if "rouge_l" in f.columns and "arm" in f.columns)
    assert list(per_arm["arm"]) == ["base", "style:brief", "typos"]     # original is the reference
    corr = next(f for f in frames if "rho" in f.columns)
    assert set(corr["metric"]) == {"rouge_l", "label_f1"}
    at.selectbox(key="rs_fmt").set_value("jsonl").run()
    at.button(key="rs_prepare").click().run()
    assert not at.exception, at.exception
    assert at.get("download_button")
    exports = store.audit_log(action="study_export")
    assert [json.loads(e["detail"])["format"] for e in exports] == ["jsonl"]
    # radiologists cannot open it
    at = _page("results.py", users["rad1"]).run()
    assert "do not have access" in at.error[0].value
    at = _page("study.py", users["rad1"]).run()
    assert "do not have access" in at.error[0].value


def test_results_page_of_a_study_closed_without_ratings(store, users, study_setup):
    """Issue 14.11: a clear "no ratings yet", not empty charts with a 400% axis."""
    lifecycle.close(store, users["coord"], study_setup)
    at = _page("results.py", users["coord"]).run()
    assert not at.exception, at.exception
    assert any("No ratings yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_results_page_says_a_study_was_closed_early(store, users, study_setup):
    for _ in range(3):
        t = rating.next_task(store, users["rad1"], study_setup)
        rating.submit(store, users["rad1"], t.task_id, 1)
    lifecycle.close(store, users["coord"], study_setup)
    assigned = store.list_studies()[0]["n_tasks"]
    at = _page("results.py", users["coord"]).run()
    assert not at.exception, at.exception
    assert any(f"Closed with 3 of {assigned} assigned texts rated" in w.value for w in at.warning)


def test_forbidden_words_check_is_not_vacuous(store, users, study_setup):
    """The page_text helper does see widget labels and texts (so the blinding test can fail)."""
    at = _page("study_annotate.py", users["rad1"]).run()
    text = page_text(at)
    assert "Submit and next" in text and "Excellent" in text
    assert re.search(r"Case \d+", text)
    assert at.session_state["sa_task"].findings.split(".")[0] in text


def _app(user, page: str | None = None) -> AppTest:
    """The real router (app.py) signed in as ``user``, optionally switched to ``page``."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = user
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def test_general_rater_pages_do_not_unblind_a_running_study(store, users, cases):
    """My feedback and the general Annotate page show a rating's AI text next to the original
    impression: while a study runs, its ratings and its reports stay off them. (Run through
    app.py, whose navigation the Annotate page's link to the study queue needs.)"""
    rad = users["rad1"]
    sid = lifecycle.create_study(store, users["coord"], StudyDesign(
        name="Blind", arms=["original", "base"], n_items=4, seed=5, raters=["rad1"], k=1))
    units = store.study_units(sid)
    for _ in range(3):
        t = rating.next_task(store, rad, sid)
        rating.submit(store, rad, t.task_id, 1, comment="study comment")
    at = _app(rad, "pages/my_feedback.py")
    assert not at.exception, at.exception
    assert at.info[0].value == ("Nothing to show yet. Your 3 ratings in the study Blind appear "
                                "here once it is closed.")
    assert "study comment" not in page_text(at)
    at = _app(rad)                                   # a radiologist's home page: Annotate
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Annotate" in text
    shown = [rid for rid in set(units["report_id"]) if f"AI impression for report {rid}." in text]
    assert shown == []
    assert any(f"AI impression for report {r['id']}." in text for r in cases)  # not vacuous
    lifecycle.close(store, users["coord"], sid)
    at = _app(rad, "pages/my_feedback.py")
    frame = at.dataframe[0].value
    assert list(frame["Comment"]) == ["study comment"] * 3          # unblinded after close
    assert set(frame["Where"]) == {f"Study {sid}: Blind"}
