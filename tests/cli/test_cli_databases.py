"""The command line's contract: --db everywhere, nothing shared between databases, every verb
closes its database (no ``nanobind: leaked`` at exit), and bad input exits 2 before any model
loads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)


def _add_user(db: str, name: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("A-long-Passw0rd\n"))
    assert main(["--db", db, "users", "add", name, "--role", "radiologist"]) == 0


def _promote_versions(db: str, reader: str, n: int, monkeypatch) -> None:
    """``n`` adapter versions promoted one after the other, as n nightly runs would."""
    from core.adapters import registry as adapters
    from core.store.database import Store

    monkeypatch.setenv("IMPRESSIONIST_DB", db)
    store = Store(db)
    try:
        for _ in range(n):
            version, tmp = adapters.allocate_version(store, reader)
            adapters.write_memory(tmp, [])
            adapters.commit_version(store, reader, version, tmp, None, "memory", {})
            adapters.promote(store, reader, version, actor="nightly")
    finally:
        store.close()


@pytest.mark.slow
def test_two_databases_side_by_side_share_nothing(tmp_path, monkeypatch, capsys):
    """Two databases in one folder: each one's reports feed its own drafts, and its adapters,
    retrieval cache and nightly lock live in its own home; the default database is untouched."""
    from core.config import settings
    from core.learning.nightly import nightly_lock

    default_db = os.environ["IMPRESSIONIST_DB"]
    a, b = str(tmp_path / "dbs" / "a.duckdb"), str(tmp_path / "dbs" / "b.duckdb")
    assert main(["--db", a, "demo", "--generate"]) == 0
    theirs = tmp_path / "b-reports.jsonl"
    theirs.write_text("".join(json.dumps({
        "uid": f"b{i}", "findings": f"Small left pleural effusion number {i}. No pneumothorax.",
        "impression": "Bee-only impression."}) + "\n" for i in range(6)))
    assert main(["--db", b, "import", str(theirs)]) == 0
    assert main(["--db", b, "generate", "--limit", "10", "--llm", "off"]) == 0
    assert os.environ["IMPRESSIONIST_DB"] == default_db  # --db lasts one command

    cases = tmp_path / "cases.csv"
    cases.write_text("uid,findings\nq1,Small left pleural effusion. No pneumothorax.\n")
    predictions = {}
    for name, db in (("a", a), ("b", b)):
        out = tmp_path / f"pred-{name}.csv"
        assert main(["--db", db, "generate", "--in", str(cases), "--out", str(out), "--llm", "off"]) == 0
        predictions[name] = out.read_text()
    assert "Bee-only" in predictions["b"] and "Bee-only" not in predictions["a"]

    for db in (a, b):
        _add_user(db, "dr_x", monkeypatch)
    _promote_versions(a, "dr_x", 2, monkeypatch)
    _promote_versions(b, "dr_x", 1, monkeypatch)
    capsys.readouterr()
    assert main(["--db", b, "adapters", "list"]) == 0
    listed = capsys.readouterr().out
    assert "v1" in listed and "v2" not in listed and str(tmp_path / "dbs" / "b-data") in listed

    homes = {db: tmp_path / "dbs" / f"{name}-data" for name, db in (("a", a), ("b", b))}
    assert sorted(p.name for p in (homes[a] / "adapters" / "dr_x").glob("v*")) == ["v1", "v2"]
    assert sorted(p.name for p in (homes[b] / "adapters" / "dr_x").glob("v*")) == ["v1"]
    for home in homes.values():
        assert list((home / "retrieval").glob("index-*.pkl"))

    # one nightly job per database: A's lock held, B's nightly runs and A's is refused
    monkeypatch.setenv("IMPRESSIONIST_DB", a)
    with nightly_lock():
        assert (homes[a] / "nightly.lock").is_file()
        monkeypatch.setenv("IMPRESSIONIST_DB", default_db)
        assert main(["--db", b, "nightly", "--quiet"]) == 0
        assert main(["--db", a, "nightly", "--quiet"]) == 1
        assert "another nightly job" in capsys.readouterr().err
    assert (homes[b] / "nightly.lock").is_file()

    default_home = settings().db_home
    assert default_home == Path(default_db).parent / "test-data"
    assert not default_home.exists() and not Path(default_db).exists()
    assert not {"adapters", "retrieval", "nightly.lock", "logs"} & {
        p.name for p in settings().data_dir.glob("*")}


def test_a_restored_backup_never_uses_another_databases_adapter_files(tmp_path, monkeypatch,
                                                                     capsys):
    """A backup holds the database, not the adapter folders: restored over its own database it
    finds its versions where they were; restored under another database's path its versions
    are looked for in that database's own folder (never the other's), and restore says that
    their files were not restored."""
    from core.adapters import registry as adapters
    from core.store.database import Store

    a, b = str(tmp_path / "dbs" / "a.duckdb"), str(tmp_path / "dbs" / "b.duckdb")
    _add_user(a, "dr_x", monkeypatch)
    _promote_versions(a, "dr_x", 1, monkeypatch)
    backup = str(tmp_path / "bk.duckdb")
    assert main(["--db", a, "backup", backup]) == 0
    capsys.readouterr()
    assert main(["--db", a, "restore", backup]) == 0  # its own database: nothing missing
    assert "warning" not in capsys.readouterr().err

    assert main(["--db", b, "restore", backup]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapter files were not restored" in err[0], err
    assert "dr_x v1" in err[0] and str(tmp_path / "dbs" / "a-data") in err[0], err
    assert main(["--db", b, "adapters", "list"]) == 0
    listed = capsys.readouterr().out
    assert str(tmp_path / "dbs" / "b-data") in listed and "a-data" not in listed, listed
    monkeypatch.setenv("IMPRESSIONIST_DB", b)
    store = Store(b)
    try:
        active = adapters.active_adapter(store, "dr_x")
        assert active.version == 1 and not active.path.exists()  # a's files are never read
        assert active.path.is_relative_to(tmp_path / "dbs" / "b-data")
    finally:
        store.close()


@pytest.mark.slow
def test_every_verb_closes_its_database_and_bad_input_exits_2(tmp_path):
    """Each cheap verb in its own process, as from a shell or cron: the right exit status, one
    clear line for bad input, and never a ``nanobind: leaked`` report or a traceback at exit."""
    db = str(tmp_path / "x.duckdb")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("uid,findings\nq1,Opacit\u00e9 basale droite.\n".encode("latin-1"))
    no_findings = tmp_path / "cols.csv"
    no_findings.write_text("uid,text\nq1,Lungs clear.\n")
    other = tmp_path / "dept.jsonl"
    other.write_text('{"uid": "d1", "findings": "Lungs clear.", "impression": "Normal."}\n')
    model_never_loaded = ["--llm", "always", "--model", str(tmp_path / "no-model-here")]
    steps = [  # (argv, exit status, text the output must contain)
        (["--db", str(tmp_path / "missing.duckdb"), "generate", "--limit", "5"], 2,
         "does not exist"),
        (["--db", db, "demo", "--generate"], 0, "generated 60 AI impressions"),
        (["--db", db, "users", "disable", "nobody"], 2, "no user named 'nobody'"),
        (["--db", db, "users", "disable", "radiologist"], 0, "disabled radiologist"),
        (["--db", db, "users", "enable", "radiologist"], 0, "enabled radiologist"),
        (["--db", db, "users", "list"], 0, "radiologist"),
        (["--db", db, "generate", "--batch-size", "0"], 2, "--batch-size"),
        (["--db", db, "generate", "--style", "fancy"], 2, "unknown style"),
        (["--db", db, "generate", "--in", str(latin1), "--out", "x.csv", *model_never_loaded],
         2, "row 2, field 'findings': not valid UTF-8"),
        (["--db", db, "generate", "--in", str(no_findings), "--out", "x.csv",
          *model_never_loaded], 2, "missing required column 'findings'"),
        (["--db", db, "generate", "--limit", "5"], 0, "generated 0 impressions"),
        (["--db", db, "study", "create", "--name", "s", "--arms", "original,base", "--n", "6"],
         0, "created study 1"),
        (["--db", db, "study", "list"], 0, "s"),
        (["--db", db, "study", "status", "1"], 0, "done 0/0"),
        (["--db", db, "study", "close", "1"], 0, "warning: study 1 has no ratings"),
        (["--db", db, "study", "report", "1", "--metrics", "", "--n-boot", "10"], 0, "ratings 0"),
        (["--db", db, "adapters", "list"], 0, "no adapters yet"),
        (["--db", db, "adapters", "promote", "radiologist", "3"], 2, "no adapter version 3"),
        (["--db", db, "pairs", "--reader", "nobody", "--out", str(tmp_path / "p.jsonl")], 2,
         "nobody"),
        (["--db", db, "nightly", "--quiet", "--min-heldout", "-1"], 2, "--min-heldout"),
        (["--db", db, "nightly", "--quiet"], 0, "nightly: 0 trained"),
        (["--db", db, "import", str(other)], 0, "imported"),
        (["--db", db, "demo"], 2, "only into a new or demo database"),
    ]
    for argv, status, text in steps:
        result = run(*argv)
        shown = f"{argv}\n{result.stdout}\n{result.stderr}"
        assert result.returncode == status, shown
        assert text in result.stdout + result.stderr, shown
        assert "leaked" not in result.stderr and "Traceback" not in result.stderr, shown
        if status == 2:
            assert result.stderr.strip().splitlines()[-1].startswith(("error:", "python -m core")), \
                shown


def test_setup_twice_is_quick_and_bounded(tmp_path):
    """`setup` drafts at most --limit impressions per run and writes the demo reports once;
    a department's database gets no demo data. Needs the prepared embedded model."""
    from core.config import settings
    from core.generation.checkpoint import is_prepared

    if not is_prepared(settings().model_path):
        pytest.skip(f"the embedded model is not prepared at {settings().model_path} "
                    f"(make setup; converting it takes ~40 s)")
    db = str(tmp_path / "demo.duckdb")
    first = run("--db", db, "setup", "--reports", "30", "--limit", "10")
    assert first.returncode == 0, first.stderr
    assert "30 new synthetic reports" in first.stdout and "generated 10 AI" in first.stdout
    again = run("--db", db, "setup", "--reports", "30", "--limit", "10")
    assert "0 new synthetic reports" in again.stdout and "generated 10 AI" in again.stdout
    dept = str(tmp_path / "dept.duckdb")
    other = tmp_path / "dept.jsonl"
    other.write_text('{"uid": "d1", "findings": "Lungs clear.", "impression": "Normal."}\n')
    assert run("--db", dept, "import", str(other)).returncode == 0
    refused = run("--db", dept, "setup")
    assert refused.returncode == 0 and "no demo data" in refused.stdout
    assert "leaked" not in first.stderr + again.stderr + refused.stderr


@pytest.mark.parametrize("argv,needs", [
    ([], ["Import formats", "mimic-cxr", "chexpert-plus", "--map", "Exit status"]),
    (["generate"], ["audience styles", "brief", "bullets", "comprehensive", "--llm"]),
    (["feedback", "import"], ["edited_impression", "ai_text", "-2..2", "-2 much worse",
                              "2 much better"]),
    (["study", "create"], ["absolute", "relative", "acceptability", "-2..2"]),
    (["users"], ["enable", "disable"]),
])
def test_help_is_plain_text_and_says_what_a_user_needs(argv, needs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and "::\n" not in text
    for word in needs:
        assert word in text, word
