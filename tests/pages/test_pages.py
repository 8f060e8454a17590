"""Page tests with streamlit.testing.v1.AppTest: sign in, rate, edit, undo, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

TIMEOUT = 30
ROOT = Path(__file__).resolve().parents[2]


def _app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def _signed_in(user) -> AppTest:
    at = _app()
    at.session_state["user"] = user
    return at.run()


def _button(at, key_prefix):
    return next(b for b in at.button if b.key and b.key.startswith(key_prefix))


def test_sign_in_with_wrong_then_right_password(store, users):
    at = _app().run()
    assert not at.exception
    at.text_input(key="signin_username").input("rad1")
    at.text_input(key="signin_password").input("not-the-password")
    at.button[0].click().run()
    assert "wrong password" in at.error[0].value
    assert "user" not in at.session_state
    at.text_input(key="signin_password").input("rad1-Passw0rd")
    at.button[0].click().run()
    assert at.session_state["user"].username == "rad1"
    # AppTest keeps the last page selected; a browser lands on the role's home page.
    at.switch_page("pages/annotate.py").run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Annotate"], [t.value for t in at.title]


def test_rate_edit_and_undo_through_the_page(store, users, cases):
    rad = users["rad1"]
    at = _signed_in(rad)
    assert not at.exception, at.exception
    first = at.session_state["case"]
    assert first.findings in [t.value for t in at.text]
    tag = at.session_state["case_tag"]
    assert tag.startswith(f"{first.report_id}_{first.generation_id}_")  # keys name the case
    _button(at, "rate_1_").click().run()                      # "Better"
    at.checkbox(key=f"style_{tag}").check()
    at.text_area(key=f"edit_{tag}").input("No acute cardiopulmonary process.")
    at.text_input(key=f"comment_{tag}").input("=HYPERLINK(1)")
    at.run()
    assert any("<ins" in h.proto.body for h in at.get("html"))  # the word diff is shown
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    rows = store.feedback_history(reader_id=rad.id)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["rating"], row["style_issue"], row["edited_text"]) == (
        1, True, "No acute cardiopulmonary process.")
    assert at.session_state["case"].report_id != first.report_id
    # the next case starts with nothing selected
    new_tag = at.session_state["case_tag"]
    assert f"rating_{new_tag}" not in at.session_state
    rate_buttons = [b for b in at.button if b.key.startswith("rate_")]
    assert len(rate_buttons) == 5 and all(new_tag in b.key for b in rate_buttons)
    assert [b.proto.type for b in rate_buttons] == ["secondary"] * 5, \
        [b.proto.type for b in rate_buttons]
    # undo brings the same case back, with the answer filled in, and appends a retraction
    _button(at, "undo_").click().run()
    assert at.session_state["case"].report_id == first.report_id
    tag = at.session_state["case_tag"]
    assert at.session_state[f"rating_{tag}"] == 1
    assert at.checkbox(key=f"style_{tag}").value is True
    assert at.checkbox(key=f"factual_{tag}").value is False
    assert at.text_area(key=f"edit_{tag}").value == "No acute cardiopulmonary process."
    assert at.text_input(key=f"comment_{tag}").value == "=HYPERLINK(1)"
    kinds = sorted(store.feedback_history(reader_id=rad.id)["kind"])
    assert kinds == ["rating", "retraction"]


def test_submit_without_a_rating_saves_nothing(store, users, cases):
    at = _signed_in(users["rad1"])
    first = at.session_state["case"].report_id
    _button(at, "submit_").click().run()
    assert not at.exception, at.exception
    assert at.session_state["case"].report_id == first
    assert len(store.feedback_history(reader_id=users["rad1"].id)) == 0


def test_a_draft_survives_leaving_annotate_and_coming_back(store, users, cases):
    at = _signed_in(users["rad1"])
    tag = at.session_state["case_tag"]
    _button(at, "rate_0_").click().run()
    at.text_area(key=f"edit_{tag}").input("Edited, not yet submitted.")
    at.text_input(key=f"comment_{tag}").input("half-way comment")
    at.checkbox(key=f"omission_{tag}").check().run()
    at.switch_page("pages/my_feedback.py").run()
    assert not at.exception, at.exception
    at.switch_page("pages/annotate.py").run()
    assert not at.exception, at.exception
    assert at.session_state["case_tag"] == tag
    assert at.text_area(key=f"edit_{tag}").value == "Edited, not yet submitted."
    assert at.text_input(key=f"comment_{tag}").value == "half-way comment"
    assert at.checkbox(key=f"omission_{tag}").value is True
    assert at.session_state[f"rating_{tag}"] == 0


def test_a_link_to_a_case_opens_it(store, users, cases):
    target = cases[5]["id"]
    at = _app()
    at.session_state["user"] = users["rad1"]
    at.query_params["case"] = str(target)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["case"].report_id == target
    # a link that is not a case says so and keeps the queue going
    at2 = _app()
    at2.session_state["user"] = users["rad1"]
    at2.query_params["case"] = "999999"
    at2.run()
    assert not at2.exception, at2.exception
    assert any("Cannot open case 999999" in e.value for e in at2.error)
    assert at2.session_state["case"] is not None


def test_the_page_guards_alt_shortcuts_inside_text_boxes(store, users, cases):
    at = _signed_in(users["rad1"])
    scripts = [h.proto.body for h in at.get("html")]
    assert any("__impKeyGuard" in body and "altKey" in body for body in scripts)


def test_blinded_rating_is_stored_as_ai_vs_original(store, users, cases):
    from core.feedback.annotate import blind_order

    rad = users["rad1"]
    at = _signed_in(rad)
    at.toggle(key="blind").set_value(True).run()
    case = at.session_state["case"]
    labels = [m.value for m in at.markdown]
    assert "**Impression A**" in labels and "**AI impression**" not in labels
    # nothing on screen says which text is the AI's: no edit box holding it, no check warning
    assert not [t for t in at.text_area if t.value == case.ai_text]
    assert not at.warning and not at.info
    _button(at, "rate_2_").click().run()                      # "B much better than A"
    _button(at, "submit_").click().run()
    expected = 2 if blind_order(rad.id, case.report_id)[1] == "ai" else -2
    row = store.feedback_history(reader_id=rad.id).iloc[0]
    assert row["rating"] == expected and row["blinded"]
    assert "was the AI" in at.success[0].value              # revealed only after rating


def test_skip_then_queue_moves_on(store, users, cases):
    at = _signed_in(users["rad1"])
    first = at.session_state["case"].report_id
    _button(at, "skip_").click().run()
    assert at.session_state["case"].report_id != first


def test_a_disabled_account_is_signed_out_on_its_next_page_run(store, users, cases):
    at = _signed_in(users["rad1"])
    assert [t.value for t in at.title] == ["Annotate"]
    store.set_reader_active("rad1", False)
    at.run()
    assert not at.exception, at.exception
    assert "user" not in at.session_state
    assert "Annotate" not in [t.value for t in at.title]
    # AppTest keeps the last page; a browser falls back to the only page left, sign-in
    at.switch_page("pages/sign_in.py").run()
    assert [t.value for t in at.title] == ["Impressionist"]
    assert any("disabled" in i.value for i in at.info)


def test_radiologist_does_not_get_admin_page(store, users):
    at = _signed_in(users["rad1"])
    # st.navigation registers only the role's pages: the admin page does not exist for them
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/admin.py")
    at = _signed_in(users["admin"])
    at.switch_page("pages/admin.py").run()
    assert [t.value for t in at.title] == ["Admin"]


ROLE_PAGES = {
    "radiologist": {"annotate", "study_annotate", "my_feedback"},
    "coordinator": {"feedback_all", "study", "results", "adapters"},
    "admin": {"annotate", "study_annotate", "my_feedback", "feedback_all", "study", "results",
              "adapters", "admin"},
}


@pytest.mark.parametrize("who", ["rad1", "coord", "admin"])
def test_router_offers_each_role_exactly_its_pages(store, users, who):
    user = users[who]
    every = set().union(*ROLE_PAGES.values())
    for name in sorted(every):
        at = _signed_in(user)
        if name in ROLE_PAGES[user.role]:
            at.switch_page(f"pages/{name}.py").run()
            assert not at.exception, (name, at.exception)
            assert not [e.value for e in at.error if "do not have access" in e.value], name
        else:
            with pytest.raises(ValueError, match="Could not find a navigation page"):
                at.switch_page(f"pages/{name}.py")


def test_admin_page_refuses_non_admin_directly(store, users):
    at = AppTest.from_file(str(ROOT / "pages/admin.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = users["coord"]
    at.run()
    assert "do not have access" in at.error[0].value


def test_my_feedback_shows_only_own_rows(store, users, cases):
    from core.feedback import annotate

    r1, r2 = users["rad1"], users["rad2"]
    annotate.submit_rating(store, r1, annotate.next_case(store, r1),
                           annotate.Rating(rating=2, comment="mine"))
    annotate.submit_rating(store, r2, annotate.next_case(store, r2),
                           annotate.Rating(rating=-2, comment="theirs"))
    at = AppTest.from_file(str(ROOT / "pages/my_feedback.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = r2
    at.run()
    frame = at.dataframe[0].value
    assert list(frame["Comment"]) == ["theirs"]


def test_admin_imports_file_and_broken_file_imports_nothing(store, users, tmp_path):
    import csv

    good = tmp_path / "good.csv"
    with good.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "findings", "impression"])
        w.writerow(["a1", "Lungs are clear.", "Normal chest."])
        w.writerow(["a2", "Small left effusion.", "Small left pleural effusion."])
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,findings,impression\nb1,Lungs clear.,Normal.\nb2,,Normal.\n")
    from core.accounts import admin

    result = admin.import_reports(store, users["admin"], good)
    assert (result.imported, result.skipped) == (2, 0)
    from core.errors import ImportValidationError

    with pytest.raises(ImportValidationError, match=r"row 3.*findings"):
        admin.import_reports(store, users["admin"], bad)
    with pytest.raises(ImportValidationError, match=r"^my upload\.csv, row 3, field 'findings'"):
        admin.import_reports(store, users["admin"], bad, display_name="my upload.csv")
    assert store.count_reports() == 2
    at = AppTest.from_file(str(ROOT / "pages/admin.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = users["admin"]
    at.run()
    assert not at.exception, at.exception


def test_export_is_audited(store, users, cases):
    from core.feedback import annotate

    rad = users["rad1"]
    annotate.submit_rating(store, rad, annotate.next_case(store, rad), annotate.Rating(rating=1))
    at = AppTest.from_file(str(ROOT / "pages/my_feedback.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = rad
    at.run()
    assert not at.exception, at.exception
    assert store.audit_log(action="export") == []
    annotate.record_export(store, rad, "own feedback", 1)
    log = store.audit_log(action="export")
    assert log[0]["actor"] == "rad1" and "findings" not in log[0]["detail"]


def test_admin_page_disables_an_account(store, users):
    at = AppTest.from_file(str(ROOT / "pages/admin.py"), default_timeout=TIMEOUT)
    at.session_state["user"] = users["admin"]
    at.run()
    at.selectbox(key="admin_access_user").select("rad2")
    next(b for b in at.button if b.label == "Disable").click().run()
    assert not at.exception, at.exception
    assert not store.get_reader("rad2").active and store.get_reader("rad1").active
    assert any("rad2 disabled" in s.value for s in at.success)


def test_a_promoted_reader_is_shown_their_own_draft_and_the_rating_names_it(store, users, cases):
    """The nightly job pre-drafts a promoted reader's next cases with their adapter: the page
    shows that draft to them (and the shared one to everybody else), and the stored rating
    points at the generation, hence the adapter version, that was on screen."""
    from core.adapters import registry as adapters

    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [{"report_id": 1, "findings": "f", "impression": "x"}])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {"rougeL": 1.0})
    adapters.promote(store, "rad1", version, actor="test")
    first = min(r["id"] for r in cases)
    (gen_id,) = store.add_generations([{"report_id": first, "model": "test-model", "adapter": "rad1",
                                        "adapter_version": version, "text": "Personal draft for rad1.",
                                        "latency_ms": 1.0}])
    # an older version's draft of the same report is never served
    store.add_generations([{"report_id": first + 1, "model": "test-model", "adapter": "rad1",
                            "adapter_version": version + 7, "text": "Stale draft.", "latency_ms": 1.0}])

    mine = _signed_in(users["rad1"])
    assert not mine.exception, mine.exception
    case = mine.session_state["case"]
    assert case.report_id == first and case.ai_text == "Personal draft for rad1."
    assert case.adapter == "rad1" and case.adapter_version == version
    assert "Personal draft for rad1." in [t.value for t in mine.text]
    # the page says whose draft it is
    assert f"**AI impression (your adapter v{version})**" in [m.value for m in mine.markdown]
    other = _signed_in(users["rad2"])
    assert other.session_state["case"].report_id == first
    assert other.session_state["case"].ai_text == f"AI impression for report {first}."
    assert "**AI impression (shared model)**" in [m.value for m in other.markdown]

    _button(mine, "rate_1_").click().run()
    _button(mine, "submit_").click().run()
    assert not mine.exception, mine.exception
    row = store.feedback_history(reader_id=users["rad1"].id).iloc[0]
    assert row["generation_id"] == gen_id
    assert store.get_generation(int(row["generation_id"]))["adapter_version"] == version
    nxt = mine.session_state["case"]
    assert nxt.report_id == first + 1 and nxt.ai_text != "Stale draft."
