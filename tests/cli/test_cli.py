"""CLI tests: python -m core <verb>, run in a subprocess like a user would."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)


@pytest.mark.slow
def test_users_add_reads_password_from_stdin(store):
    store.close()  # the CLI is another process; let it have the file
    result = run("users", "add", "dr_cli", "--role", "radiologist", stdin="Str0ng-password\n")
    assert result.returncode == 0, result.stderr
    assert "Str0ng-password" not in result.stdout + result.stderr
    listed = run("users", "list")
    assert "dr_cli" in listed.stdout and "radiologist" in listed.stdout
    weak = run("users", "add", "dr_weak", "--role", "radiologist", stdin="short\n")
    assert weak.returncode == 2 and "at least 8" in weak.stderr


@pytest.mark.slow
def test_import_counts_and_reimport_adds_nothing(tmp_path, store):
    store.close()
    f = tmp_path / "reports.jsonl"
    f.write_text('{"uid": "1", "findings": "Lungs clear.", "impression": "Normal."}\n'
                 '{"uid": "2", "findings": "Small effusion.", "impression": "Effusion."}\n')
    first = run("import", str(f))
    assert first.returncode == 0, first.stderr
    assert "2 reports imported, 0 skipped" in first.stdout
    again = run("import", str(f))
    assert "0 reports imported, 2 skipped" in again.stdout


def test_bad_file_exits_2_naming_row_and_field_and_writes_nothing(tmp_path, store):
    store.close()
    f = tmp_path / "broken.csv"
    f.write_text("uid,findings,impression\n1,Lungs clear.,Normal.\n2,,Normal.\n")
    result = run("import", str(f))
    assert result.returncode == 2
    assert "broken.csv" in result.stderr and "row 3" in result.stderr \
        and "findings" in result.stderr
    from core.store.database import Store

    s = Store(os.environ["IMPRESSIONIST_DB"])
    assert s.count_reports() == 0
    s.close()


def test_a_malformed_map_is_bad_input_exit_2(tmp_path, store):
    store.close()
    f = tmp_path / "r.csv"
    f.write_text("uid,text,imp\n1,Lungs clear.,Normal.\n")
    result = run("import", str(f), "--format", "csv", "--map", "findings")
    assert result.returncode == 2 and "expected FIELD=COLUMN" in result.stderr
    assert "Traceback" not in result.stderr


def test_iu_xray_import_and_broken_copy(tmp_path, iu_csv, store):
    store.close()
    result = run("import", str(iu_csv))
    assert result.returncode == 0, result.stderr
    assert "2,809 reports imported" in result.stdout
    text = iu_csv.read_text(encoding="utf-8")
    # cut the file in the middle of the findings of a row about two thirds in
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    findings = rows[1900][6]
    start = text.index("\n" + rows[1900][0] + ",")
    cut = text.index(findings, start) + len(findings) // 2
    broken = tmp_path / "reports-broken.csv"
    broken.write_text(text[:cut], encoding="utf-8")
    bad = run("import", str(broken), "--format", "iu-xray")
    assert bad.returncode == 2 and "reports-broken.csv" in bad.stderr
    from core.store.database import Store

    s = Store(os.environ["IMPRESSIONIST_DB"])
    assert s.count_reports() == 2809
    s.close()


@pytest.mark.slow
def test_generate_csv_in_and_out_with_and_without_the_model(tmp_path, store, tiny):
    """`generate --in/--out` retrieves from the store; `--llm always` makes the model draft too."""
    import csv
    import json

    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(30, seed=4), file="s", fmt="demo")
    store.close()
    model = tiny
    cases = tmp_path / "cases.csv"
    cases.write_text("uid,findings,indication\nq1,Small left pleural effusion. No pneumothorax.,Cough\n"
                     "q2,Heart size normal. Lungs are clear.,\n")
    for llm in ("off", "always"):
        out = tmp_path / f"pred-{llm}.csv"
        result = run("generate", "--in", str(cases), "--out", str(out), "--model", str(model),
                     "--llm", llm, "--style", "brief")
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(out.open()))
        assert [r["uid"] for r in rows] == ["q1", "q2"] and all(r["prediction"] for r in rows)
        flags = [json.loads(r["flags"]) for r in rows]
        assert {f["llm"] for f in flags} == {llm == "always"}
        assert {r["style"] for r in rows} == {"brief"}
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,findings\nq1,\n")
    result = run("generate", "--in", str(bad), "--out", str(tmp_path / "x.csv"), "--model", str(model))
    assert result.returncode == 2 and "row 2" in result.stderr and "findings" in result.stderr


@pytest.mark.slow
def test_outputs_are_checked_before_the_work_and_a_typo_in_readers_is_an_error(tmp_path, store):
    """generate never writes over its own input; an output under a file or in a folder that
    cannot be written is refused before any work; nightly --readers names an unknown user."""
    store.close()
    cases = tmp_path / "cases.csv"
    cases.write_text("uid,findings,impression\nP1,Lungs clear.,Normal chest.\n")
    assert run("import", str(cases)).returncode == 0
    same = run("generate", "--in", str(cases), "--out", str(cases), "--llm", "off")
    assert same.returncode == 2 and "is also the input file" in same.stderr
    assert cases.read_text() == "uid,findings,impression\nP1,Lungs clear.,Normal chest.\n"
    under = run("generate", "--in", str(cases), "--out", str(cases / "x.csv"), "--llm", "off")
    assert under.returncode == 2 and "is a file, not a folder" in under.stderr
    ghost = run("nightly", "--readers", "ghost")
    assert ghost.returncode == 2 and "--readers ghost: no such user" in ghost.stderr
    assert "Traceback" not in same.stderr + under.stderr + ghost.stderr


@pytest.mark.parametrize("argv", [
    ["users", "list"], ["users", "disable", "dr_x"], ["adapters", "list"],
    ["adapters", "rollback", "dr_x"], ["study", "list"], ["study", "report", "1"],
    ["pairs", "--reader", "dr_x", "--out", "{tmp}/p.jsonl"], ["nightly", "--quiet"],
    ["backup", "{tmp}/b.duckdb"], ["feedback", "import", "{tmp}/fb.csv"],
    ["generate", "--limit", "1"], ["train-sft", "--max-steps", "1"],
])
def test_a_verb_that_needs_data_refuses_a_missing_database_naming_it(argv, tmp_path, capsys):
    """A typo in --db must not create an empty database and answer from it with status 0."""
    from core.cli.main import main

    db = tmp_path / "typo" / "x.duckdb"
    assert main(["--db", str(db), *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"database {db} does not exist" in err[0], err
    assert not db.exists() and not db.parent.exists()


def test_the_verbs_that_make_a_database_still_make_one(tmp_path, monkeypatch, capsys):
    import io

    from core.cli.main import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("A-long-Passw0rd\n"))
    first = tmp_path / "new" / "a.duckdb"
    assert main(["--db", str(first), "users", "add", "dr_x", "--role", "radiologist"]) == 0
    assert first.is_file()
    assert main(["--db", str(first), "users", "list"]) == 0
    assert "dr_x" in capsys.readouterr().out
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"uid": "1", "findings": "Lungs clear.", "impression": "Normal."}\n')
    second = tmp_path / "new" / "b.duckdb"
    assert main(["--db", str(second), "import", str(reports)]) == 0 and second.is_file()


@pytest.mark.slow
def test_generate_for_a_reader_without_an_adapter_says_the_shared_base_writes(
        tmp_path, store, users, cases, tiny, capsys):
    """--help promises "their active adapter": without one, one notice line on stderr and the
    shared pipeline writes; a reader with an adapter gets no notice; an unknown name is an
    error (status 2) before the model loads."""
    import csv

    from core.adapters import registry as adapters
    from core.cli.main import main

    version, tmp = adapters.allocate_version(store, "rad2")
    adapters.write_memory(tmp, [])
    adapters.commit_version(store, "rad2", version, tmp, None, "memory", {})
    adapters.promote(store, "rad2", version, actor="test")
    inp = tmp_path / "in.csv"
    inp.write_text("uid,findings\nq1,Small left pleural effusion. No pneumothorax.\n")

    def generate(reader: str) -> tuple[int, list[str]]:
        out = tmp_path / f"{reader}.csv"
        status = main(["--db", store.path, "generate", "--in", str(inp), "--out", str(out),
                       "--reader", reader, "--model", str(tiny), "--llm", "off"])
        lines = [ln for ln in capsys.readouterr().err.splitlines()
                 if ln.strip() and "%|" not in ln]  # less the progress bars
        if status == 0:
            assert [r["uid"] for r in csv.DictReader(out.open())] == ["q1"]
        return status, lines

    status, lines = generate("rad1")
    assert status == 0 and lines == [
        "rad1 has no active adapter: the shared base writes their impressions"], lines
    status, lines = generate("rad2")
    assert status == 0 and not [ln for ln in lines if "no active adapter" in ln], lines
    status, lines = generate("nobody")
    assert status == 2 and lines == ["error: no user named 'nobody'"], lines
