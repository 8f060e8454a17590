"""Security audit (issue 7): sign-in throttling, session expiry, password rules, roles enforced in
core (every page-facing core function, found by introspection), every read or change of another
reader's data refused in core, the audit log, no secret / password hash / patient text in any
log, and the hardened Streamlit settings."""

from __future__ import annotations

import inspect
import logging
import tomllib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.adapters import registry as adapters

from core.accounts import admin

from core.feedback import annotate, history

from core.accounts import auth

from core.studies import assignment, exports, lifecycle, progress, rating, results
from core.errors import AuthError, ImpressionistError, PermissionDenied

ROOT = Path(__file__).resolve().parents[2]
PAGE_MODULES = (annotate, history, admin, adapters, lifecycle, assignment, rating, progress,
                results, exports)


# -- sign-in --------------------------------------------------------------------------------------
def test_throttling_blocks_the_right_password_then_the_window_passes(store, monkeypatch):
    auth.create_user(store, "dr_t", "radiologist", "Passw0rd-ok")
    for _ in range(auth.MAX_FAILED_SIGNINS):
        with pytest.raises(AuthError, match="unknown user or wrong password"):
            auth.sign_in(store, "dr_t", "wrong-Passw0rd")
    with pytest.raises(AuthError, match="too many"):
        auth.sign_in(store, "dr_t", "Passw0rd-ok")
    # the window is counted from the failures' times: once it has passed, sign-in works again
    monkeypatch.setattr(auth, "THROTTLE_WINDOW", timedelta(milliseconds=300))
    import time

    time.sleep(0.4)
    assert auth.sign_in(store, "dr_t", "Passw0rd-ok").username == "dr_t"
    # a success resets the count: one more failure is not yet throttled
    monkeypatch.setattr(auth, "THROTTLE_WINDOW", timedelta(minutes=15))
    with pytest.raises(AuthError, match="wrong password"):
        auth.sign_in(store, "dr_t", "nope-Passw0rd")


def test_unknown_names_are_throttled_and_cost_a_bcrypt_check(store, monkeypatch):
    calls = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda p, h: calls.append(h) or real(p, h))
    for _ in range(auth.MAX_FAILED_SIGNINS):
        with pytest.raises(AuthError, match="unknown user or wrong password"):
            auth.sign_in(store, "ghost", "whatever-1")
    # an unknown name is checked against a dummy hash: as slow as a wrong password
    assert len(calls) == auth.MAX_FAILED_SIGNINS and all(h.startswith("$2") for h in calls)
    with pytest.raises(AuthError, match="too many"):
        auth.sign_in(store, "ghost", "whatever-1")


def test_password_typed_as_username_never_reaches_the_audit_log(store, users):
    secret = "My-Secret-Passw0rd!"
    with pytest.raises(AuthError):
        auth.sign_in(store, secret, secret)
    with pytest.raises(AuthError):
        auth.sign_in(store, "rad1", secret)  # a known user: named, the password is not
    dump = repr(store.audit_log(limit=1000))
    assert secret not in dump
    actors = [r["actor"] for r in store.audit_log(action="signin_failed")]
    assert "rad1" in actors and any(a.startswith("unknown:") for a in actors)


@pytest.mark.parametrize("bad", ["short1!", "alllowercaseletters", " padded-Pass1 ",
                                 "Password1", "passw0rd", "P@ssw0rd", "12345678", "x" * 73,
                                 "é" * 37, "dr_lee-1", "Dr_Lee123"])
def test_password_rules(store, bad):
    with pytest.raises(AuthError):
        auth.create_user(store, "dr_lee", "radiologist", bad)
    assert store.list_readers() == []


def test_good_passwords_accepted_and_only_hashes_stored(store):
    for i, pw in enumerate(["Correct-horse1", "dr_lee-but-long-enough", "7 words of a phrase"]):
        auth.create_user(store, f"dr_lee{i}", "radiologist", pw)
        stored = store.password_hash(f"dr_lee{i}")
        assert stored.startswith("$2") and pw not in stored
        assert auth.verify_password(pw, stored)


def test_disabled_user_cannot_sign_in_and_is_told_why(store, users):
    store.set_reader_active("rad2", False)
    # the right password learns that the account is disabled (issue 14.13)...
    with pytest.raises(AuthError, match="account is disabled"):
        auth.sign_in(store, "rad2", "rad2-Passw0rd")
    # ...a wrong one learns nothing about the account
    with pytest.raises(AuthError, match="unknown user or wrong password"):
        auth.sign_in(store, "rad2", "not-the-Passw0rd")


def test_disabling_an_account_revokes_its_open_session_at_once(store, users, cases):
    rad2 = users["rad2"]
    case = annotate.next_case(store, rad2)
    assert auth.revalidate(store, rad2) == rad2
    annotate.submit_rating(store, rad2, case, annotate.Rating(rating=1))
    store.set_reader_active("rad2", False)
    # the session opened before: pages drop it on their next run...
    assert auth.revalidate(store, rad2) is None
    # ...and a save that was already on screen is refused in core, with nothing written
    before = len(store.feedback_history(reader_id=rad2.id))
    with pytest.raises(PermissionDenied, match="disabled"):
        annotate.submit_rating(store, rad2, case, annotate.Rating(rating=2))
    with pytest.raises(PermissionDenied):
        annotate.skip(store, rad2, case)
    assert len(store.feedback_history(reader_id=rad2.id)) == before
    revoked = store.audit_log(action="session_revoked")
    assert revoked and revoked[0]["actor"] == "rad2" and "disabled" in revoked[0]["detail"]
    # other readers are unaffected; re-enabling lets a fresh sign-in work again
    assert auth.revalidate(store, users["rad1"]) == users["rad1"]
    store.set_reader_active("rad2", True)
    assert auth.revalidate(store, auth.sign_in(store, "rad2", "rad2-Passw0rd")) is not None


def test_admin_disables_and_enables_an_account_audited(store, users):
    admin.set_user_active(store, users["admin"], "rad2", False)
    assert not store.get_reader("rad2").active and auth.revalidate(store, users["rad2"]) is None
    with pytest.raises(AuthError):
        auth.sign_in(store, "rad2", "rad2-Passw0rd")
    with pytest.raises(ImpressionistError, match="your own account"):
        admin.set_user_active(store, users["admin"], "admin", False)
    admin.set_user_active(store, users["admin"], "rad2", True)
    assert auth.sign_in(store, "rad2", "rad2-Passw0rd").username == "rad2"
    acts = [(r["action"], r["actor"]) for r in store.audit_log(limit=50)]
    assert ("user_disabled", "admin") in acts and ("user_enabled", "admin") in acts


def test_a_role_change_revokes_the_session(store, users):
    stale = replace(users["coord"], role="admin")  # a session that claims the old role
    assert auth.revalidate(store, stale) is None
    assert auth.revalidate(store, users["coord"]) == users["coord"]
    expired = replace(users["coord"],
                      signed_in_at=datetime.now(timezone.utc) - auth.SESSION_TTL * 2)
    assert auth.revalidate(store, expired) is None and auth.revalidate(store, None) is None


def test_one_client_spraying_many_names_is_throttled(store, monkeypatch):
    monkeypatch.setattr(auth, "MAX_FAILED_PER_CLIENT", 6)
    auth.create_user(store, "dr_c", "radiologist", "Passw0rd-ok")
    for i in range(6):  # one failure per name: the per-name limit never trips
        with pytest.raises(AuthError, match="wrong password"):
            auth.sign_in(store, f"name{i}", "Guess-Passw0rd1", client="10.0.0.7")
    with pytest.raises(AuthError, match="too many"):
        auth.sign_in(store, "dr_c", "Passw0rd-ok", client="10.0.0.7")
    # another client, and the CLI (no client), still sign in
    assert auth.sign_in(store, "dr_c", "Passw0rd-ok", client="10.0.0.8").username == "dr_c"
    assert auth.sign_in(store, "dr_c", "Passw0rd-ok").username == "dr_c"
    # the address itself never reaches the audit log, only its hash
    dump = repr(store.audit_log(limit=1000))
    assert "10.0.0.7" not in dump and auth.client_key("10.0.0.7") in dump


# -- roles and expiry in core, for every page-facing function -------------------------------------
def _page_functions():
    out = []
    for mod in PAGE_MODULES:
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ != mod.__name__ or name.startswith("_"):
                continue
            if "user" in inspect.signature(fn).parameters:
                out.append(fn)
    return out


PAGE_FUNCTIONS = _page_functions()
# user=None means "the nightly job / the CLI" for these; a signed-in user is checked (below).
SYSTEM_OR_USER = {adapters.list_versions, adapters.promote, adapters.rollback}


def _args(fn, store, user, tmp_path, case):
    dummy = {"store": store, "user": user, "case": case, "rating": annotate.Rating(rating=0),
             "path": tmp_path / "out.csv", "raters": ["rad1"], "reader": "rad1",
             "username": "newbie", "role": "radiologist", "password": "Newbie-Passw0rd",
             "what": "feedback", "design": None, "version": 1}
    kwargs = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in dummy:
            kwargs[name] = dummy[name]
        elif p.default is not inspect.Parameter.empty:
            continue
        elif p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        else:
            kwargs[name] = 1  # ids, counts
    return kwargs


def test_every_page_function_is_found():
    names = {f"{f.__module__}.{f.__name__}" for f in PAGE_FUNCTIONS}
    for must in ("core.feedback.annotate.submit_rating", "core.feedback.annotate.feedback_of",
                 "core.accounts.admin.import_reports", "core.accounts.admin.add_user", "core.adapters.registry.runs_table",
                 "core.studies.rating.submit", "core.studies.exports.export_ratings", "core.studies.results.results"):
        assert must in names
    assert len(names) >= 35


@pytest.mark.parametrize("fn", PAGE_FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_page_function_refuses_no_user_and_an_expired_session(fn, store, users, cases, tmp_path):
    case = store.case(cases[0]["id"])
    expired = replace(users["admin"], signed_in_at=datetime.now(timezone.utc) - timedelta(days=1))
    before = (store.count_feedback(), len(store.list_readers()))
    with pytest.raises(PermissionDenied, match="expired"):
        fn(**_args(fn, store, expired, tmp_path, case))
    if fn not in SYSTEM_OR_USER:
        with pytest.raises(PermissionDenied, match="sign in"):
            fn(**_args(fn, store, None, tmp_path, case))
    assert (store.count_feedback(), len(store.list_readers())) == before


ROLE_CASES = [
    # (function, roles that must be refused)
    (annotate.next_case, ["coord"]), (annotate.progress, ["coord"]),
    (annotate.submit_rating, ["coord"]), (annotate.skip, ["coord"]),
    (annotate.undo_last, ["coord"]), (annotate.retract, ["coord"]),
    (admin.import_reports, ["rad1", "coord"]), (admin.users, ["rad1", "coord"]),
    (admin.add_user, ["rad1", "coord"]), (admin.start_generation, ["rad1", "coord"]),
    (admin.set_user_active, ["rad1", "coord"]),
    (admin.recent_imports, ["rad1"]), (admin.generation_status, ["rad1"]),
    (admin.generation_progress, ["rad1"]), (adapters.rollback_preview, ["rad1"]),
    (history.all_feedback, ["rad1"]), (history.correct, ["coord"]),
    (adapters.list_versions, ["rad1"]), (adapters.promote, ["rad1"]),
    (adapters.rollback, ["rad1"]), (adapters.runs_table, ["rad1"]),
    (adapters.active_table, ["rad1"]),
    (lifecycle.create_study, ["rad1"]), (assignment.assign_raters, ["rad1"]), (lifecycle.pause, ["rad1"]),
    (lifecycle.resume, ["rad1"]), (lifecycle.close, ["rad1"]), (assignment.extend, ["rad1"]),
    (progress.progress, ["rad1"]), (lifecycle.list_studies, ["rad1"]), (lifecycle.study_raters, ["rad1"]),
    (lifecycle.design_options, ["rad1"]), (results.results, ["rad1"]),
    (exports.ratings_table, ["rad1"]), (exports.export_ratings, ["rad1"]),
    (exports.export_preferences, ["rad1"]), (exports.export_html, ["rad1"]),
    (exports.preference_pairs, ["rad1"]),
    (rating.my_studies, ["coord"]), (rating.next_task, ["coord"]), (rating.submit, ["coord"]),
    (rating.undo_last, ["coord"]), (rating.rater_study, ["coord"]),
]


@pytest.mark.parametrize("fn,refused", ROLE_CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_roles_enforced_in_core(fn, refused, store, users, cases, tmp_path):
    case = store.case(cases[0]["id"])
    for who in refused:
        with pytest.raises(PermissionDenied):
            fn(**_args(fn, store, users[who], tmp_path, case))


# -- another reader's data ------------------------------------------------------------------------
def test_another_readers_data_is_refused_in_core(store, users, cases):
    r1, r2 = users["rad1"], users["rad2"]
    case = annotate.next_case(store, r1)
    fid = annotate.submit_rating(store, r1, case, annotate.Rating(
        rating=1, edited_text="Rad1's private edit."))
    # read: the history of another reader
    with pytest.raises(PermissionDenied):
        annotate.feedback_of(store, r2, reader_id=r1.id)
    own = annotate.feedback_of(store, r2)
    assert len(own) == 0 and "Rad1's private edit." not in own.to_string()
    # change: retract someone else's rating; undo never reaches it
    with pytest.raises(PermissionDenied):
        annotate.retract(store, r2, fid)
    assert annotate.undo_last(store, r2) is None and not store.is_retracted(fid)
    # the next case of r2 is not influenced by r1's ratings (queues are per reader)
    assert annotate.next_case(store, r2).report_id == case.report_id
    # radiologists see no adapters, runs or version lists at all (theirs or anyone's)
    for fn in (adapters.runs_table, adapters.active_table):
        with pytest.raises(PermissionDenied):
            fn(store, r2)
    with pytest.raises(PermissionDenied):
        adapters.list_versions(store, user=r2, reader="rad1")
    # coordinators may read everyone's, and that is what the role is for
    assert len(annotate.feedback_of(store, users["coord"], reader_id=r1.id)) == 1


def test_study_tasks_of_another_rater_are_refused(store, users):
    """A rater may not see, submit or undo another rater's study task."""
    from core.ingest.demo import synthetic_reports
    from core.studies.lifecycle import StudyDesign

    store.import_reports(synthetic_reports(30, seed=3), file="s", fmt="demo")
    sid = lifecycle.create_study(store, users["coord"], StudyDesign(
        name="sec", arms=["original", "base"], n_items=6, seed=1, raters=["rad1"], k=1),
        make_texts=lambda reports, arm: [f"Generated {r['id']}." for r in reports])
    task = rating.next_task(store, users["rad1"], sid)
    assert task is not None
    with pytest.raises(PermissionDenied):
        rating.rater_study(store, users["rad2"], sid)
    with pytest.raises(PermissionDenied):
        rating.submit(store, users["rad2"], task.task_id, 0)
    for fn in (rating.next_task, rating.undo_last):
        try:
            assert fn(store, users["rad2"], sid) is None
        except PermissionDenied:
            pass
    # rad1's task is untouched and still theirs to rate
    assert rating.next_task(store, users["rad1"], sid).task_id == task.task_id


# -- the audit log --------------------------------------------------------------------------------
def test_audit_log_records_signins_imports_exports_promotions_rollbacks(store, users, cases,
                                                                        tmp_path):
    import csv

    from core.feedback.importing import import_feedback

    actions = lambda: [r["action"] for r in store.audit_log(limit=10_000)]  # noqa: E731
    assert {"signin", "user_added", "import"} <= set(actions())
    with pytest.raises(AuthError):
        auth.sign_in(store, "rad1", "wrong-Passw0rd")
    assert "signin_failed" in actions()
    f = tmp_path / "r.csv"
    with f.open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "findings", "impression"], ["x1", "Lungs.", "Ok."]])
    admin.import_reports(store, users["admin"], f, fmt="csv")
    row = store.audit_log(action="import", limit=1)[0]
    assert row["actor"] == "admin"
    fb = tmp_path / "fb.csv"
    fb.write_text(f"reader,uid,edited_impression\nrad1,{cases[0]['external_id']},Signed.\n")
    import_feedback(store, fb, actor="admin")
    assert "feedback_import" in actions()
    annotate.record_export(store, users["rad1"], "own feedback", 3)
    assert store.audit_log(action="export", limit=1)[0]["actor"] == "rad1"
    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {})
    adapters.promote(store, "rad1", version, user=users["coord"])
    adapters.rollback(store, "rad1", user=users["admin"])
    assert store.audit_log(action="adapter_promote", limit=1)[0]["actor"] == "coord"
    assert store.audit_log(action="adapter_rollback", limit=1)[0]["actor"] == "admin"


def test_cli_exports_and_backups_are_audited(store, users, cases, tmp_path):
    from core.cli.main import main

    for c in cases[:4]:
        annotate.submit_rating(store, users["rad1"], store.case(c["id"]), annotate.Rating(
            rating=-1, edited_text=f"Edited {c['id']}."))
    assert main(["--db", store.path, "pairs", "--reader", "rad1", "--out",
                 str(tmp_path / "p.jsonl"), "--no-record"]) == 0
    exp = store.audit_log(action="export", limit=1)
    assert exp and exp[0]["actor"] == "cli" and "rad1" in exp[0]["detail"]
    assert main(["--db", store.path, "backup", str(tmp_path / "b.duckdb")]) == 0
    assert store.audit_log(action="backup", limit=1)


# -- nothing secret in any log --------------------------------------------------------------------
def test_no_secret_hash_or_patient_text_in_logs(store, tmp_path, caplog, capsys):
    """A full session (users, sign-ins good and bad, an import with patient text, ratings with
    edits, an export, a backup) logged at DEBUG: neither the Python log, the console, nor the
    audit log contains a password, a password hash or any report text."""
    import csv

    from core.cli.main import main

    caplog.set_level(logging.DEBUG)
    pw = "Very-Secret-Passw0rd"
    admin_pw = "Admin-Secret-Passw0rd"
    auth.create_user(store, "boss", "admin", admin_pw)
    boss = auth.sign_in(store, "boss", admin_pw)
    admin.add_user(store, boss, "dr_a", "radiologist", pw)
    with pytest.raises(AuthError):
        auth.sign_in(store, "dr_a", pw + "x")
    with pytest.raises(AuthError):
        auth.sign_in(store, pw, pw)
    rad = auth.sign_in(store, "dr_a", pw)
    patient = ["Patient JOHN-DOE-4711 has a 3 cm spiculated mass.", "Suspicious for cancer."]
    f = tmp_path / "patients.csv"
    with f.open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "findings", "impression"], ["p1", *patient]])
    admin.import_reports(store, boss, f, fmt="csv")
    rid = store.reports()[0]["id"]
    store.add_generations([{"report_id": rid, "model": "m", "text": "AI says MASS-AI-TEXT."}])
    edit = "EDIT-BY-DR-A: mass in the right upper lobe."
    annotate.submit_rating(store, rad, store.case(rid), annotate.Rating(
        rating=-1, edited_text=edit, comment="COMMENT-PRIVATE"))
    history = annotate.feedback_of(store, rad)
    annotate.record_export(store, rad, "own feedback", len(history))
    assert main(["--db", store.path, "backup", str(tmp_path / "b.duckdb")]) == 0
    assert main(["--db", store.path, "users", "list"]) == 0
    hashes = [store.password_hash(u) for u in ("boss", "dr_a")]
    secrets = [pw, admin_pw, *hashes, *patient, "JOHN-DOE-4711", "MASS-AI-TEXT", edit,
               "COMMENT-PRIVATE"]
    out = capsys.readouterr()
    logs = {"python logging": caplog.text, "stdout": out.out, "stderr": out.err,
            "audit log": repr(store.audit_log(limit=10_000))}
    for where, text in logs.items():
        for s in secrets:
            assert s not in text, f"{s[:12]}... appears in the {where}"


def test_core_has_no_logging_of_form_values():
    """Core never logs through `logging` (so nothing can leak that way); console output lives
    in the CLI and bench scripts only."""
    import re

    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"\b(logging|logger|log)\.(debug|info|warning|error|exception|"
                             r"critical)\(", text):
            offenders.append(f"{path.name}:{text[:m.start()].count(chr(10)) + 1}")
    assert offenders == []


# -- Streamlit settings ---------------------------------------------------------------------------
def test_streamlit_settings_are_hardened():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["enableCORS"] is True  # CORS protection on (XSRF needs it)
    assert 1 <= cfg["server"]["maxUploadSize"] <= 200  # MB, set explicitly
    assert cfg["server"]["maxMessageSize"] <= 200
    assert cfg["server"]["runOnSave"] is False and cfg["server"]["fileWatcherType"] == "none"
    assert cfg["client"]["showErrorDetails"] == "none"  # no tracebacks (or data) to the browser
    assert cfg["client"]["toolbarMode"] == "minimal"
    assert cfg["logger"]["level"] in ("warning", "error")


def test_errors_shown_to_users_carry_no_secret(store, users):
    """Messages of refused actions name roles and fields, never a hash or a password."""
    msgs = []
    for call in (lambda: auth.sign_in(store, "rad1", "bad-Passw0rd"),
                 lambda: auth.create_user(store, "x1", "radiologist", "short"),
                 lambda: admin.users(store, users["rad1"])):
        try:
            call()
        except ImpressionistError as exc:
            msgs.append(str(exc))
    assert len(msgs) == 3
    h = store.password_hash("rad1")
    assert not any(h in m or "bad-Passw0rd" in m or "short" == m for m in msgs)


def test_pages_read_per_reader_data_only_through_checked_core_functions():
    """Pages call the store directly only for data that belongs to no reader (usernames for a
    picker, one report with its AI draft); everything per reader goes through a core function
    that takes the signed-in user. System functions that take a reader id without a user (the
    nightly job's and the CLI's) are never called from a page."""
    import re

    allowed_store = {"list_readers", "case", "migrate"}
    system_only = ("pairs_for_reader", "feedback_history", "feedback_for_training",
                   "active_adapter(", "get_version(", "refresh_drafts", "allocate_version",
                   "commit_version", "impressions_for", "reader_adapter(")
    for page in [*(ROOT / "pages").glob("*.py"), ROOT / "app.py", ROOT / "ui.py"]:
        text = page.read_text(encoding="utf-8")
        used = set(re.findall(r"\bstore\.(\w+)\(", text))
        assert used <= allowed_store, f"{page.name} calls store.{sorted(used - allowed_store)}"
        for name in system_only:
            assert name not in text, f"{page.name} calls {name} (no user check)"


# -- issue 16.7 -----------------------------------------------------------------------------------
def test_parallel_wrong_passwords_cannot_race_past_the_limit(store, monkeypatch):
    """30 sign-ins at once with a wrong password: at most MAX_FAILED_SIGNINS are even checked
    (the attempt is counted and recorded in one transaction before the bcrypt check)."""
    import threading

    auth.create_user(store, "dr_race", "radiologist", "Passw0rd-race")
    checked = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda p, h: checked.append(1) or real(p, h))
    start = threading.Barrier(30)
    outcomes: list[str] = []

    def guess() -> None:
        start.wait()
        try:
            auth.sign_in(store, "dr_race", "Wrong-guess-1", client="10.9.9.9")
        except AuthError as exc:
            outcomes.append("throttled" if "too many" in str(exc) else "wrong")

    threads = [threading.Thread(target=guess) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == auth.MAX_FAILED_SIGNINS
    assert outcomes.count("wrong") == auth.MAX_FAILED_SIGNINS
    assert outcomes.count("throttled") == 30 - auth.MAX_FAILED_SIGNINS
    assert len(store.audit_log(action="signin_failed", actor="dr_race")) == \
        auth.MAX_FAILED_SIGNINS
    # ...and the right password is refused too until the window has passed
    with pytest.raises(AuthError, match="too many"):
        auth.sign_in(store, "dr_race", "Passw0rd-race")


def test_successful_sign_ins_from_one_address_are_not_throttled(store, monkeypatch):
    """A ward's shared address: many good sign-ins never count against the client limit."""
    monkeypatch.setattr(auth, "MAX_FAILED_PER_CLIENT", 3)
    auth.create_user(store, "dr_ward", "radiologist", "Passw0rd-ward")
    for _ in range(6):
        auth.sign_in(store, "dr_ward", "Passw0rd-ward", client="10.1.1.1")


@pytest.mark.parametrize("bad", ["20241231", "1234567890123", "aaaaaaaaA", "Aa1Aa1Aa1Aa1",
                                 "abababab!!"])
def test_all_digit_and_low_variety_passwords_are_refused(store, bad):
    with pytest.raises(AuthError):
        auth.create_user(store, "dr_weak", "radiologist", bad)
    assert store.list_readers() == []


def test_idle_timeout_is_30_minutes_by_default_and_configurable(monkeypatch):
    now = datetime.now(timezone.utc)
    monkeypatch.delenv("IMPRESSIONIST_IDLE_MINUTES", raising=False)
    assert auth.idle_timeout() == timedelta(minutes=30)
    assert not auth.idle_expired(now - timedelta(minutes=29), now)
    assert auth.idle_expired(now - timedelta(minutes=31), now)
    monkeypatch.setenv("IMPRESSIONIST_IDLE_MINUTES", "5")
    assert auth.idle_expired(now - timedelta(minutes=6), now)
    assert not auth.idle_expired(now - timedelta(minutes=4), now)
    monkeypatch.setenv("IMPRESSIONIST_IDLE_MINUTES", "soon")
    with pytest.raises(ValueError, match="IMPRESSIONIST_IDLE_MINUTES"):
        auth.idle_timeout()


def test_an_idle_session_is_signed_out_by_the_app(store, users):
    from streamlit.testing.v1 import AppTest

    def app(idle: timedelta) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.session_state["user"] = users["rad1"]
        at.session_state["last_active"] = datetime.now(timezone.utc) - idle
        return at.run()

    fresh = app(timedelta(minutes=29))
    assert not fresh.exception and fresh.session_state["user"] == users["rad1"]
    stale = app(timedelta(minutes=31))
    assert not stale.exception, stale.exception
    assert "user" not in stale.session_state
    assert "without activity" in stale.info[0].value
    assert store.audit_log(action="session_idle")[0]["actor"] == "rad1"


@pytest.mark.parametrize("change", ["disabled", "role changed"])
@pytest.mark.parametrize("fn", PAGE_FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_page_functions_re_read_the_account_and_refuse_a_stale_user(fn, change, store, users,
                                                                    cases, tmp_path):
    """A page may hold the User object of an account disabled (or re-roled) since: every core
    entry point re-reads the account and refuses it, with nothing written."""
    case = store.case(cases[0]["id"])
    stale = users["admin"]  # admin may call every one of these functions while it stands
    if change == "disabled":
        store.set_reader_active("admin", False)
    else:
        with store.tx() as con:
            con.execute("UPDATE readers SET role = 'coordinator' WHERE username = 'admin'")
    before = (store.count_feedback(), len(store.list_readers()), store.count_reports())
    with pytest.raises(PermissionDenied):
        fn(**_args(fn, store, stale, tmp_path, case))
    assert (store.count_feedback(), len(store.list_readers()), store.count_reports()) == before


def test_system_entry_points_refuse_a_stale_user_and_an_anonymous_call(store, users, cases,
                                                                       tmp_path):
    from core.feedback.importing import import_feedback

    fb = tmp_path / "fb.csv"
    fb.write_text(f"reader,uid,edited_impression\nrad1,{cases[0]['external_id']},Signed.\n")
    for who in ("rad1", "coord"):
        with pytest.raises(PermissionDenied):
            import_feedback(store, fb, user=users[who])
    store.set_reader_active("admin", False)
    with pytest.raises(PermissionDenied, match="disabled"):
        import_feedback(store, fb, user=users["admin"])
    with pytest.raises(PermissionDenied, match="disabled"):
        admin.import_reports(store, users["admin"], fb)
    assert store.count_feedback() == 0
    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {})
    for call in (lambda: adapters.promote(store, "rad1", version),
                 lambda: adapters.rollback(store, "rad1"),
                 lambda: adapters.promote(store, "rad1", version, user=users["admin"])):
        with pytest.raises(PermissionDenied):
            call()
    assert adapters.active_adapter(store, "rad1") is None
    adapters.promote(store, "rad1", version, user=users["coord"])  # a current coordinator may
    assert adapters.active_adapter(store, "rad1").version == version


def test_a_study_rating_needs_a_task_of_that_study(store, users):
    from core.ingest.demo import synthetic_reports
    from core.studies.lifecycle import StudyDesign

    store.import_reports(synthetic_reports(30, seed=3), file="s", fmt="demo")
    sid = lifecycle.create_study(store, users["coord"], StudyDesign(
        name="membership", arms=["original", "base"], n_items=6, seed=1, raters=["rad1"], k=1),
        make_texts=lambda reports, arm: [f"Generated {r['id']}." for r in reports])
    task = rating.next_task(store, users["rad1"], sid)
    row = store.get_study_task(task.task_id)
    case = annotate.Case(
        report_id=row["report_id"], generation_id=row["generation_id"], source="",
        external_id="", findings=row["findings"], impression=None, indication=None,
        comparison=None, ai_text=row["text"], model="", adapter=None, style="", flags={})
    before = store.count_feedback()
    # rad2 is no rater of this study: a rating "for" it is refused in core
    with pytest.raises(PermissionDenied, match="no task"):
        annotate.submit_rating(store, users["rad2"], case, annotate.Rating(rating=1),
                               study_id=sid)
    # nor can rad1 put a rating into a study that has no such task of theirs
    with pytest.raises(PermissionDenied, match="no task"):
        annotate.submit_rating(store, users["rad1"], case, annotate.Rating(rating=1),
                               study_id=sid + 1000)
    assert store.count_feedback() == before
    # the rater's own task goes through the study's submit as before
    scale = rating.rater_study(store, users["rad1"], sid).scale
    assert rating.submit(store, users["rad1"], task.task_id, scale.values[0]) > 0


def test_the_annotate_page_uses_full_uuid_save_keys(store, users, cases):
    import uuid

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages/annotate.py"), default_timeout=30)
    at.session_state["user"] = users["rad1"]
    at.run()
    assert not at.exception, at.exception
    nonce = at.session_state["case_nonce"]
    assert uuid.UUID(hex=nonce).hex == nonce  # 128 bits, not 32


def test_a_session_token_is_signed_expiring_and_revocable(store, users, monkeypatch):
    """The refresh cookie's token (core.accounts.sessions): restores the same user, and is
    refused when tampered with, past its lifetime or idle limit, signed out, after a password
    change, or once the account is disabled."""
    from datetime import datetime, timedelta, timezone

    from core.accounts import sessions

    rad = users["rad1"]
    sid = sessions.new_session_id()
    token = sessions.issue(store, rad, sid)
    user, got_sid = sessions.restore(store, token)
    assert (user, got_sid) == (rad, sid)  # same id, name, role and sign-in time
    body, mac = token.split(".")
    assert sessions.restore(store, body[:-2] + "AA." + mac) is None          # tampered
    assert sessions.restore(store, "not-a-token") is None
    now = datetime.now(timezone.utc)
    assert sessions.restore(store, token, now + auth.SESSION_TTL) is None    # too old
    assert sessions.restore(store, token, now + auth.idle_timeout() + timedelta(minutes=1)) \
        is None                                                              # idle too long
    sessions.revoke(store, "rad1", sid)                                      # signed out
    assert sessions.restore(store, token) is None
    assert sessions.restore(store, sessions.issue(store, rad, "other")) is not None
    # a new password revokes every token issued before it
    token2 = sessions.issue(store, rad, "other")
    store.set_password_hash("rad1", auth.hash_password("an0ther-Passw0rd"))
    assert sessions.restore(store, token2) is None
    token3 = sessions.issue(store, users["rad2"], "third")
    store.set_reader_active("rad2", False)
    assert sessions.restore(store, token3) is None
    assert [r["action"] for r in store.audit_log(action="session_restored")]
