"""Shared fixtures. Every test gets its own database; nothing touches data/ or a model hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_IU = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray" / "reports.csv"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Point the app at a per-test database and keep everything offline and on the CPU."""
    monkeypatch.setenv("IMPRESSIONIST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMPRESSIONIST_DB", str(tmp_path / "data" / "test.duckdb"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("IMPRESSIONIST_BCRYPT_ROUNDS", "4")
    # .streamlit/config.toml hides error details from users; page tests need them.
    monkeypatch.setenv("STREAMLIT_CLIENT_SHOW_ERROR_DETAILS", "full")
    yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """One tiny random model of SmolLM2's architecture for the whole session (seed 0), built
    once: tests load it, train adapters from it and write their outputs elsewhere (never into it)."""
    from core.generation.checkpoint import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def iu_csv() -> Path:
    if not SHARED_IU.exists():
        pytest.skip(f"real IU X-ray data absent at {SHARED_IU}")
    return SHARED_IU


USERS = [("rad1", "radiologist"), ("rad2", "radiologist"), ("coord", "coordinator"),
         ("admin", "admin")]


def _add_users(store) -> None:
    from core.accounts import auth

    for name, role in USERS:
        auth.create_user(store, name, role, f"{name}-Passw0rd")


def _add_cases(store) -> None:
    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(12, seed=3), file="synthetic", fmt="demo")
    store.add_generations({"report_id": r["id"], "model": "test-model",
                           "text": f"AI impression for report {r['id']}.", "latency_ms": 5.0}
                          for r in store.reports())


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory):
    """``seeded_db(users, cases)``: a database at the current schema, with the accounts of
    :func:`users` and the reports of :func:`cases` when asked, built once per worker and kind.
    Migrating a new file and making the accounts and reports takes ~0.35 s a test, through
    ~90 small transactions; copying a file ~10 ms (the migration tests migrate for real)."""
    from core.store.database import Store

    made: dict[tuple[bool, bool], Path] = {}

    def path(users: bool, cases: bool) -> Path:
        if (users, cases) not in made:
            p = tmp_path_factory.mktemp("template") / "seeded.duckdb"
            s = Store(p)
            try:
                s.migrate()
                if users:
                    _add_users(s)
                if cases:
                    _add_cases(s)
            finally:
                s.close()
            made[users, cases] = p
        return made[users, cases]

    return path


@pytest.fixture
def store(seeded_db, request):
    """A fresh database for this test; already holding the accounts and reports of the
    ``users`` and ``cases`` fixtures when the test uses them (those fixtures only sign in and
    read: a test that uses them always has them in ``request.fixturenames``)."""
    from core.store.database import Store

    path = Path(os.environ["IMPRESSIONIST_DB"])
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seeded_db("users" in request.fixturenames, "cases" in request.fixturenames),
                    path)
    s = Store(path)
    s.migrate()  # nothing pending: one check, as every process that opens the store does
    yield s
    s.close()


@pytest.fixture
def users(store):
    """One user per role, plus a second radiologist (passwords: '<name>-Passw0rd'), signed in;
    the accounts come with the store (:func:`store`)."""
    from core.accounts import auth

    return {name: auth.sign_in(store, name, f"{name}-Passw0rd") for name, _ in USERS}


@pytest.fixture
def cases(store):
    """Twelve synthetic reports, each with a stored AI impression (no model needed); they come
    with the store (:func:`store`)."""
    return store.reports()
