"""Property tests of every free-text form field: huge text, control characters, HTML/script,
odd unicode and SQL-looking strings are stored verbatim (minus control characters) or refused
with a ValidationError, never crash, and never touch other rows."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.feedback import annotate

from core.accounts import auth
from core.errors import AuthError, ValidationError

NASTY = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["'; DROP TABLE feedback; --", "<script>alert(1)</script>",
                     "Robert'); DELETE FROM readers;--", "\x00\x01\x1b[31m", "𝕏" * 50,
                     "\u202eevil", "%s %d {0} ${x}", "NULL", "\\x00"]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=50).map(lambda s: s * 100),
)
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(comment=NASTY, edit=NASTY)
def test_rating_text_fields(store, users, cases, comment, edit):
    rad = users["rad1"]
    case = store.case(cases[0]["id"])
    before = store.count_feedback()
    try:
        fid = annotate.submit_rating(store, rad, case, annotate.Rating(
            rating=0, comment=comment, edited_text=edit))
    except ValidationError as exc:
        assert "characters" in str(exc)
        assert store.count_feedback() == before
        return
    row = store.get_feedback(fid)
    assert row["comment"] == annotate.clean_text(comment, "comment")
    assert store.count_feedback() == before + 1
    assert store.count_reports() == 12 and len(store.list_readers()) == 4


@FUZZ
@given(name=NASTY, password=NASTY)
def test_user_form_fields(store, name, password):
    n = len(store.list_readers())
    try:
        auth.create_user(store, name, "radiologist", password)
    except (ValidationError, AuthError):
        assert len(store.list_readers()) == n
        return
    assert len(store.list_readers()) == n + 1


@FUZZ
@given(username=NASTY, password=NASTY)
def test_sign_in_fields(store, users, username, password):
    with pytest.raises(AuthError):
        auth.sign_in(store, username, password)
