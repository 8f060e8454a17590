import pytest

from core.accounts import auth
from core.errors import AuthError, PermissionDenied, ValidationError
from core.feedback import annotate


def test_passwords_are_hashed_and_checked(store):
    auth.create_user(store, "dr_x", "radiologist", "Correct-horse1")
    stored = store.password_hash("dr_x")
    assert stored.startswith("$2") and "Correct-horse1" not in stored
    assert auth.sign_in(store, "dr_x", "Correct-horse1").role == "radiologist"
    with pytest.raises(AuthError):
        auth.sign_in(store, "dr_x", "wrong-password")
    with pytest.raises(AuthError):
        auth.sign_in(store, "nobody", "Correct-horse1")


@pytest.mark.parametrize("bad", ["short", "alllowercaseletters", " padded-pass1 "])
def test_weak_passwords_refused(store, bad):
    with pytest.raises(AuthError):
        auth.create_user(store, "dr_y", "radiologist", bad)


def test_bad_role_and_username_refused(store):
    with pytest.raises(ValidationError):
        auth.create_user(store, "dr_z", "superuser", "Passw0rd-ok")
    with pytest.raises(ValidationError):
        auth.create_user(store, "dr z; drop table", "admin", "Passw0rd-ok")


def test_a_username_taken_in_other_letter_case_is_refused(store):
    auth.create_user(store, "dr_lee", "radiologist", "Passw0rd-ok")
    with pytest.raises(ValidationError, match=r"username 'DR_LEE' is already taken \(as 'dr_lee'\)"):
        auth.create_user(store, "DR_LEE", "radiologist", "Passw0rd-ok")


def test_signin_throttled_after_failures(store):
    auth.create_user(store, "dr_t", "radiologist", "Passw0rd-ok")
    for _ in range(auth.MAX_FAILED_SIGNINS):
        with pytest.raises(AuthError):
            auth.sign_in(store, "dr_t", "nope-nope")
    with pytest.raises(AuthError, match="too many"):
        auth.sign_in(store, "dr_t", "Passw0rd-ok")
    actions = [r["action"] for r in store.audit_log(actor="dr_t")]
    assert "signin_throttled" in actions and actions.count("signin_failed") == 5


def test_roles_enforced_in_core(store, users, cases):
    coord = users["coord"]
    with pytest.raises(PermissionDenied):
        annotate.next_case(store, coord)
    case = annotate.next_case(store, users["rad1"])
    with pytest.raises(PermissionDenied):
        annotate.submit_rating(store, coord, case, annotate.Rating(rating=0))
    with pytest.raises(PermissionDenied):
        auth.require(None)


def test_reader_cannot_read_or_retract_another_readers_feedback(store, users, cases):
    r1, r2 = users["rad1"], users["rad2"]
    case = annotate.next_case(store, r1)
    fid = annotate.submit_rating(store, r1, case, annotate.Rating(rating=1))
    with pytest.raises(PermissionDenied):
        annotate.feedback_of(store, r2, reader_id=r1.id)
    with pytest.raises(PermissionDenied):
        annotate.retract(store, r2, fid)
    # r2's undo never touches r1's rating
    assert annotate.undo_last(store, r2) is None
    assert not store.is_retracted(fid)
    # coordinators may read everyone's
    assert len(annotate.feedback_of(store, users["coord"], reader_id=r1.id)) == 1


def test_expired_session_refused(store, users):
    from dataclasses import replace
    from datetime import datetime, timedelta, timezone

    old = replace(users["rad1"], signed_in_at=datetime.now(timezone.utc) - timedelta(days=1))
    with pytest.raises(PermissionDenied, match="expired"):
        annotate.next_case(store, old)
