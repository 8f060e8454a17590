"""Fault injection (issue 7): kill -9 of the app mid-save, of an import half way, of the nightly
job during promotion; a corrupt adapter file; a full disk. After each: the database opens, every
acknowledged rating is there, nothing is half-written, adapters are the last good ones.

Children are real subprocesses killed with SIGKILL. "Half way" is made exact with small hooks
installed in the child only (a wrapped connection that stops right after a given INSERT, inside
the open transaction), so the kill always lands where it is meant to.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import string
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.adapters import registry as adapters
from core.adapters.base import shared_adapter_dir

from core.feedback import annotate
from core.errors import ImpressionistError, StoreError

ROOT = Path(__file__).resolve().parents[2]

# A child-side hook: wraps Store.tx so that the connection stops (prints HOOK and sleeps) right
# after the first statement starting with argv[-1], i.e. inside the still-open transaction.
STOP_AFTER_SQL = textwrap.dedent("""
    import contextlib, sys, time
    from core.store.database import Store

    _HOOK = sys.argv[-1]
    _orig_tx = Store.tx

    class _Con:
        def __init__(self, con):
            self._con = con

        def __getattr__(self, name):
            return getattr(self._con, name)

        def execute(self, sql, *args):
            result = self._con.execute(sql, *args)
            if sql.lstrip().startswith(_HOOK):
                print("HOOK", flush=True)
                time.sleep(300)
            return result

    @contextlib.contextmanager
    def _tx(self):
        with _orig_tx(self) as con:
            yield _Con(con)

    Store.tx = _tx
""")


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_line(proc: subprocess.Popen, want: str, timeout: float = 90.0) -> list[str]:
    """Read the child's stdout until a line equal to ``want``; returns the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended before {want!r}: {proc.stderr.read()[-3000:]}")
        lines.append(line.rstrip("\n"))
        if lines[-1] == want:
            return lines
    raise AssertionError(f"no {want!r} from the child within {timeout} s")


def _wait_until(condition, what: str, timeout: float = 90.0) -> None:
    """Poll a readiness condition (never a fixed sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


class _Output:
    """A child's stdout read line by line in a thread: the child never blocks on a full pipe,
    and the test can wait for what it printed."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []  # complete lines only: a piece without a newline is unsaid
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.endswith("\n"):
                self.lines.append(line[:-1])

    def join(self) -> list[str]:
        """The lines, once the child's stdout is closed (call after killing it)."""
        self._thread.join(timeout=30)
        return self.lines


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# -- kill -9 of the app during a save ------------------------------------------------------------
APP = textwrap.dedent("""
    import sys
    from datetime import datetime, timezone
    from core.feedback import annotate
    from core.accounts.auth import User
    from core.store.database import Store

    db, user_id, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = Store(db)
    user = User(user_id, "rad1", "radiologist", datetime.now(timezone.utc))
    ids = [r["id"] for r in store.reports()]
    print("READY", flush=True)
    k = 0
    while True:
        case = store.case(ids[k % len(ids)])
        token = f"{prefix}-{k}"
        fid = annotate.submit_rating(store, user, case, annotate.Rating(
            rating=k % 5 - 2, edited_text=f"Edit {k}: no acute disease.", comment="c" * (k % 50)),
            client_token=token)
        # acknowledged: submit_rating returned, so the page would now show "Rating saved"
        print(f"{fid} {token}", flush=True)
        k += 1
""")


def test_kill9_app_mid_save_keeps_every_acknowledged_rating(store, users, cases):
    rng = random.Random(7)
    acked: dict[str, int] = {}
    for round_no in range(3):
        proc = _spawn(APP, store.path, str(users["rad1"].id), f"r{round_no}")
        try:
            _wait_line(proc, "READY")
            out = _Output(proc)
            _wait_until(lambda: out.lines or proc.poll() is not None, "a first save")
            # the child saves in a tight loop: a random moment of it, so the kill lands mid-save
            time.sleep(rng.uniform(0.0, 0.9))
            _kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        complete = out.join()  # a last piece without its newline was not acknowledged
        round_acked = {tok: int(fid) for fid, tok in (ln.split() for ln in complete)}
        assert round_acked, "the child saved nothing before the kill"
        acked.update(round_acked)
        # the database opens and holds every acknowledged rating, each exactly once
        assert store.schema_version() >= 1
        rows = store.df("SELECT id, client_token FROM feedback WHERE client_token LIKE ?",
                        [f"r{round_no}-%"])
        in_db = dict(zip(rows["client_token"], rows["id"]))
        assert all(in_db.get(tok) == fid for tok, fid in round_acked.items())
        # at most the one save in flight at the kill committed without being acknowledged
        assert 0 <= len(in_db) - len(round_acked) <= 1
        assert rows["client_token"].is_unique
    assert store.count_feedback(users["rad1"].id) >= len(acked)
    # and the app (this process) goes on saving after the crashes
    case = store.case(cases[0]["id"])
    assert annotate.submit_rating(store, users["rad1"], case, annotate.Rating(rating=0)) > 0


# -- kill -9 of an import half way ---------------------------------------------------------------
IMPORT = STOP_AFTER_SQL + textwrap.dedent("""
    from core.ingest.reports import import_file
    store = Store(sys.argv[1])
    print("START", flush=True)
    import_file(store, sys.argv[2], fmt="csv", actor="fault-test")
    print("DONE", flush=True)
""")


def _csv(path: Path, n: int) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "findings", "impression"])
        for i in range(n):
            w.writerow([f"k{i}", f"Finding {i}: heart size normal, lungs clear.", f"Normal {i}."])
    return path


def test_kill9_import_half_way_writes_nothing_then_reimport_works(store, users, tmp_path):
    from core.ingest.reports import import_file

    f = _csv(tmp_path / "big.csv", 3000)
    audits = len(store.audit_log(limit=10_000))
    proc = _spawn(IMPORT, store.path, str(f), "INSERT INTO reports")
    try:
        _wait_line(proc, "HOOK")  # 3,000 reports inserted, transaction still open
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.count_reports() == 0
    assert store.imports() == []
    assert len(store.audit_log(limit=10_000)) == audits  # no "import" audit row either
    result = import_file(store, f, fmt="csv", actor="fault-test")
    assert (result.imported, store.count_reports()) == (3000, 3000)
    assert [a["action"] for a in store.audit_log(limit=5)][0] == "import"


# A child that stops between two committed staging chunks of a report import.
STAGED_IMPORT = textwrap.dedent("""
    import sys, time
    from core.store.database import Store
    from core.ingest.reports import import_file
    import core.store.reports as reports

    reports.STAGE_ROWS = 500
    _orig = Store._stage_chunk
    done = []

    def _stage_chunk(self, *args):
        _orig(self, *args)
        done.append(1)
        if len(done) == 2:  # two chunks committed, the publish not begun
            print("HOOK", flush=True)
            time.sleep(300)

    Store._stage_chunk = _stage_chunk
    store = Store(sys.argv[1])
    import_file(store, sys.argv[2], fmt="csv", actor="fault-test")
    print("DONE", flush=True)
""")


def test_kill9_between_staged_import_chunks_shows_nothing_and_the_next_import_cleans_up(
        store, users, tmp_path):
    from core.ingest.reports import import_file

    f = _csv(tmp_path / "big.csv", 3000)
    proc = _spawn(STAGED_IMPORT, store.path, str(f))
    try:
        _wait_line(proc, "HOOK")  # 1,000 reports staged and committed, none published
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.count_reports() == 0 and store.imports() == []
    staged = store.df("SELECT count(*) AS n FROM report_staging")["n"][0]
    assert staged == 1000  # committed, and invisible to every reader of reports
    result = import_file(store, f, fmt="csv", actor="fault-test")
    assert (result.imported, store.count_reports()) == (3000, 3000)
    # the dead import's stage (its process is gone) went with the next import's first step
    assert store.df("SELECT (SELECT count(*) FROM report_staging) + (SELECT count(*) FROM "
                    "report_stages) AS n")["n"][0] == 0


FEEDBACK_IMPORT = STOP_AFTER_SQL + textwrap.dedent("""
    from core.feedback.importing import import_feedback
    store = Store(sys.argv[1])
    import_feedback(store, sys.argv[2], actor="fault-test")
    print("DONE", flush=True)
""")


def test_kill9_feedback_import_half_way_writes_nothing(store, users, cases, tmp_path):
    import csv

    from core.feedback.importing import import_feedback

    f = tmp_path / "fb.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["reader", "uid", "edited_impression", "ai_text"])
        for r in cases:
            w.writerow(["rad2", r["external_id"], f"Signed impression {r['id']}.", "Draft."])
    before = (store.count_feedback(), len(store.generations_for_report(cases[0]["id"])))
    proc = _spawn(FEEDBACK_IMPORT, store.path, str(f), "INSERT INTO feedback (")
    try:
        _wait_line(proc, "HOOK")  # drafts and the first feedback row written, not committed
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (store.count_feedback(), len(store.generations_for_report(cases[0]["id"]))) == before
    assert import_feedback(store, f, actor="fault-test").imported == len(cases)


# -- kill -9 of the nightly job during promotion -----------------------------------------------
NIGHTLY = STOP_AFTER_SQL + textwrap.dedent("""
    from core.adapters import registry as adapters
    from core.learning import nightly
    from core.learning.gate import GateResult
    from core.learning.nightly import NightlyConfig, run_nightly

    where = sys.argv[2]
    nightly.gate = lambda cand, cur, cfg: GateResult(True, "forced by the fault test")

    def _stop(*args, **kw):
        print("HOOK", flush=True)
        time.sleep(300)

    if where == "before-promotion":
        nightly.promote = _stop          # candidate committed as v2, promotion not started
    elif where == "after-promotion":
        adapters._write_pointer = _stop  # promotion committed, pointer file not yet rewritten
    store = Store(sys.argv[1])
    run_nightly(store, NightlyConfig(method="memory", force=True, min_pairs=1,
                                     min_heldout_reports=1, refresh_per_reader=0,
                                     readers=["rad1"]), progress=False)
    print("DONE", flush=True)
""")


def _seed_rated(store, user, n: int = 24, unrated: int = 4) -> None:
    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(n, seed=5), file="synthetic", fmt="demo")
    reports = store.reports()
    store.add_generations({"report_id": r["id"], "model": "test-model",
                           "text": "No acute cardiopulmonary abnormality."} for r in reports)
    for r in reports[:n - unrated]:
        annotate.submit_rating(store, user, store.case(r["id"]), annotate.Rating(
            rating=-1, edited_text=f"1. {r['impression'] or 'No acute disease.'}"))


def _good_v1(store) -> adapters.AdapterVersion:
    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [{"report_id": 1, "findings": "f", "impression": "v1 memory"}])
    av = adapters.commit_version(store, "rad1", version, tmp, None, "memory", {"rougeL": 1.0})
    adapters.promote(store, "rad1", av.version, actor="test")
    return av


@pytest.mark.parametrize("where", ["before-promotion", "inside-promotion", "after-promotion"])
def test_kill9_nightly_during_promotion_keeps_a_consistent_active_adapter(store, users, where):
    from core.learning.nightly import NightlyConfig, run_nightly

    _seed_rated(store, users["rad1"])
    v1 = _good_v1(store)
    n_feedback = store.count_feedback()
    hook = "INSERT INTO active_adapters" if where == "inside-promotion" else "-- no sql hook"
    proc = _spawn(NIGHTLY, store.path, where, hook)
    try:
        _wait_line(proc, "HOOK", timeout=120)
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    rid = users["rad1"].id
    promotions = [e for e in store.adapter_events(rid) if e["action"] == "promote"]
    audit = store.audit_log(action="adapter_promote", limit=100)
    active = adapters.active_adapter(store, "rad1")
    assert store.count_feedback() == n_feedback
    v2 = store.get_adapter(rid, v1.version + 1)
    assert v2 is not None and Path(v2["path"]).is_dir()  # the candidate was fully committed
    if where == "after-promotion":
        # the promotion transaction committed: v2 is active, recorded once in events and audit
        assert active.version == v1.version + 1
        assert len(promotions) == len(audit) == 2
        assert adapters.read_pointer("rad1") == v1.version  # stale until the next start
    else:
        # killed before or inside the promotion transaction: still the last good version
        assert active.version == v1.version and active.path == v1.path
        assert len(promotions) == len(audit) == 1
        assert adapters.read_pointer("rad1") == v1.version
        assert adapters.read_memory(active.path)[0]["impression"] == "v1 memory"
    # the next nightly start heals everything: dead run abandoned, pointer re-synced
    report = run_nightly(store, NightlyConfig(readers=["nobody"]), progress=False)
    assert len(report.abandoned) == 1
    assert adapters.read_pointer("rad1") == adapters.active_adapter(store, "rad1").version
    assert not list(adapters.reader_dir("rad1").glob(".tmp-*"))


def test_nightly_without_a_model_marks_its_run_failed_and_keeps_the_adapter(store, users,
                                                                             tmp_path):
    from core.learning.nightly import NightlyConfig, run_nightly

    _seed_rated(store, users["rad1"])
    v1 = _good_v1(store)
    with pytest.raises(ImpressionistError, match="nomodel"):
        run_nightly(store, NightlyConfig(method="dpo", force=True, min_pairs=1,
                                         min_heldout_reports=1, refresh_per_reader=0,
                                         readers=["rad1"], model_path=str(tmp_path / "nomodel")),
                    progress=False)
    run = store.training_runs()[0]
    assert run["status"] == "failed" and "nomodel" in run["error"]
    assert adapters.active_adapter(store, "rad1").version == v1.version


# -- a corrupt adapter file ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_with_lora(tmp_path_factory):
    """The tiny test model and a real (untrained) PEFT LoRA adapter for it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.generation.checkpoint import make_tiny_model

    root = tmp_path_factory.mktemp("tinylora")
    model = make_tiny_model(root / "model")
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(root / "lora")
    return str(model), root / "lora"


def _lora_version(store, lora: Path) -> adapters.AdapterVersion:
    import shutil

    version, tmp = adapters.allocate_version(store, "rad1")
    for f in lora.iterdir():
        shutil.copy2(f, tmp / f.name)
    adapters.write_memory(tmp, [{"report_id": i, "findings": f"Finding {i}.",
                                 "impression": f"Impression {i}."} for i in range(4)])
    return adapters.commit_version(store, "rad1", version, tmp, None, "dpo", {"rougeL": 1.0})


def test_corrupt_adapter_file_is_a_clear_error_and_drafting_falls_back(store, users,
                                                                       tiny_with_lora):
    import torch

    from core.generation.personal import Drafter, refresh_drafts
    from core.errors import AdapterError
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.files import check_adapter_files
    from core.learning.nightly import NightlyConfig, run_nightly

    model, lora = tiny_with_lora
    _seed_rated(store, users["rad1"])
    good = _lora_version(store, lora)
    bad = _lora_version(store, lora)
    adapters.promote(store, "rad1", bad.version, actor="test")
    weights = bad.path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated, as by a crash or a full disk
    check_adapter_files(good.path)
    with pytest.raises(AdapterError, match="adapter_model.safetensors is damaged"):
        check_adapter_files(bad.path)
    gen = load_generator(ModelSpec(path=model, device="cpu"))
    with pytest.raises(AdapterError, match=str(weights)):
        gen.load_adapter("rad1", bad.path)
    # the failed load left the base model untouched (PEFT never saw the file)
    assert type(gen.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert gen.adapters == {}
    # drafting: the damaged reader's rows fall back to the shared weights, flagged; others work
    drafter = Drafter(gen, store.reports())
    report = store.reports()[0]
    out = drafter.draft([report, report], [adapters.active_adapter(store, "rad1"), good])
    assert "damaged" in out[0].flags["adapter_error"] and out[0].text
    assert "adapter_error" not in out[1].flags and out[1].text
    # pre-drafting the queue does not crash either
    assert refresh_drafts(store, drafter, ["rad1"], per_reader=2) == 2
    # nor does the nightly job: it evaluates against the damaged version without crashing, and a
    # memory night never copies the damaged weights into the new version
    res = run_nightly(store, NightlyConfig(method="memory", force=True, min_pairs=1,
                                           min_heldout_reports=1, refresh_per_reader=0,
                                           readers=["rad1"], model_path=model),
                      generator=gen, progress=False)
    o = res.outcomes[0]
    assert o.status == "succeeded", o.reason
    new = adapters.get_version(store, "rad1", o.version)
    assert not (new.path / "adapter_model.safetensors").exists()
    # a damaged shared base adapter is skipped: everyone drafts with the bare base model
    import shutil

    shared = bad.path.parent / "shared-copy"
    shutil.copytree(bad.path, shared)
    os.environ["IMPRESSIONIST_BASE_ADAPTER"] = str(shared)
    try:
        assert shared_adapter_dir() is None
        shutil.copy2(good.path / "adapter_model.safetensors", shared)
        assert shared_adapter_dir() == shared
    finally:
        del os.environ["IMPRESSIONIST_BASE_ADAPTER"]
    # rolling back to the last good version by hand works and drafts with it again
    adapters.rollback(store, "rad1", good.version, actor="test")
    out = drafter.draft([report], [adapters.active_adapter(store, "rad1")])
    assert "adapter_error" not in out[0].flags


# -- a full disk ---------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    yield from _tmpfs(tmp_path, "3m")


@pytest.fixture
def roomier_disk(tmp_path):
    """An 8 MiB tmpfs: room for the database's first checkpoint (~4.4 MB)."""
    yield from _tmpfs(tmp_path, "8m")


def _tmpfs(tmp_path, size: str):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_a_clear_error_and_every_acknowledged_rating_survives(small_disk):
    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.store.database import Store

    db = small_disk / "db.duckdb"
    s = Store(db)
    try:
        s.migrate()
        auth.create_user(s, "rad1", "radiologist", "rad1-Passw0rd")
        user = auth.sign_in(s, "rad1", "rad1-Passw0rd")
        s.import_reports(synthetic_reports(5, seed=1), "x", "demo")
        s.add_generations([{"report_id": r["id"], "model": "m", "text": "t"} for r in s.reports()])
        case = s.case(s.reports()[0]["id"])
        rng = random.Random(0)
        acked: list[int] = []
        error = None
        for k in range(2000):  # ~15 kB of incompressible text per rating: full in < 100
            text = "".join(rng.choice(string.ascii_letters + " ") for _ in range(15_000))
            try:
                acked.append(annotate.submit_rating(s, user, case, annotate.Rating(
                    rating=0, edited_text=text), client_token=f"t{k}"))
            except ImpressionistError as exc:
                error = exc
                break
        assert error is not None, "the 3 MiB disk never filled up"
        assert isinstance(error, StoreError)
        assert "No space left on device" in str(error) and "nothing was saved" in str(error)
        assert len(acked) > 5
        # reads still work on the same store; a small write either fits or fails just as clearly
        assert s.count_feedback() == len(acked)
        try:
            acked.append(annotate.skip(s, user, case, client_token="small"))
        except StoreError as exc:
            assert "could not save the skip" in str(exc)
    finally:
        s.close()
    # the database reopens with every acknowledged rating, and nothing else
    s2 = Store(db)
    try:
        ids = set(s2.df("SELECT id FROM feedback")["id"])
        assert ids == set(acked)
        assert s2.schema_version() >= 1
    finally:
        s2.close()


# -- backup and restore from the CLI while an app process saves ---------------------------------
APP_TOLERANT = APP.replace("""        fid = annotate.submit_rating(""", """        try:
          fid = annotate.submit_rating(""").replace("""            client_token=token)
""", """            client_token=token)
        except Exception as exc:
          print(f"ERR {type(exc).__name__}: {exc}", flush=True)
          k += 1
          continue
""")


def test_cli_backup_and_restore_while_an_app_process_saves(store, users, cases, tmp_path):
    from core.cli.main import main

    proc = _spawn(APP_TOLERANT, store.path, str(users["rad1"].id), "live")
    import duckdb

    def live(con) -> dict:
        return dict(con.execute("SELECT client_token, id FROM feedback WHERE client_token LIKE "
                                "'live-%'").fetchall())

    try:
        _wait_line(proc, "READY")
        out = _Output(proc)
        saved = lambda n: len(out.lines) >= n or proc.poll() is not None  # noqa: E731
        _wait_until(lambda: saved(3), "the app's first saves, for the backup to catch")
        assert main(["--db", store.path, "backup", str(tmp_path / "b.duckdb")]) == 0
        n = len(out.lines)
        _wait_until(lambda: saved(n + 3), "saves the backup lacks, before the restore")
        assert main(["--db", store.path, "restore", str(tmp_path / "b.duckdb")]) == 0
        con = duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True)
        snap = live(con)
        con.close()

        def saved_after_restore() -> bool:
            with store.tx() as con:
                return bool(set(live(con)) - set(snap)) or proc.poll() is not None

        _wait_until(saved_after_restore, "a save of the app into the restored database")
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = out.join()
    assert not [ln for ln in lines if ln.startswith("ERR")], lines[:5]
    assert snap, "the backup caught none of the app's ratings"
    # after the restore: everything in the backup, plus what the app saved after the restore
    with store.tx() as con:
        now = live(con)
    assert all(now.get(t) == i for t, i in snap.items())
    assert len(now) > len(snap)  # the app went on saving into the restored database
    assert store.schema_version() >= 1


# -- issue 16: the file lock under real faults ---------------------------------------------------
def _spawn_io(code: str, *args: str) -> subprocess.Popen:
    """A child whose stdin the test writes to (one line releases what it holds)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _tickets(db: str) -> list[Path]:
    queue = Path(db + ".queue")
    return sorted(queue.glob("*.ticket")) if queue.is_dir() else []


# A program outside Impressionist's protocol (an admin's duckdb shell, a BI tool): it opens the
# file with DuckDB directly (retrying while the app still lingers on it) and keeps it open.
OUTSIDER = textwrap.dedent("""
    import sys, time
    import duckdb
    while True:
        try:
            con = duckdb.connect(sys.argv[1])
            break
        except duckdb.IOException:
            time.sleep(0.01)
    print("HOLD", flush=True)
    sys.stdin.readline()
    con.close()
    print("FREE", flush=True)
""")

# A process of the protocol that holds the file inside an open transaction until told to go.
HOLDER = textwrap.dedent("""
    import sys
    from core.store.database import Store
    store = Store(sys.argv[1])
    with store.tx():
        print("HOLD", flush=True)
        sys.stdin.readline()
    try:
        store.close()
    finally:  # on a full disk closing may fail; the lock is given back all the same
        print("FREE", flush=True)
""")


def test_an_outsider_holding_the_file_past_every_retry_never_freezes_the_store(
        store, users, cases, monkeypatch):
    """Issue 16.1: all connect retries used up before the timeout must neither return without
    a connection nor keep the lock: the save waits for the outsider and then goes through."""
    import duckdb

    rad = users["rad1"]
    case = store.case(cases[0]["id"])
    attempts: list[float] = []
    real_connect = duckdb.connect

    def counting_connect(*args, **kwargs):
        attempts.append(time.monotonic())
        return real_connect(*args, **kwargs)

    outsider = _spawn_io(OUTSIDER, store.path)
    try:
        _wait_line(outsider, "HOLD")
        monkeypatch.setattr(duckdb, "connect", counting_connect)
        result: dict = {}

        def save() -> None:
            try:
                result["id"] = annotate.submit_rating(store, rad, case, annotate.Rating(
                    rating=1), client_token="through-the-outsider")
            except BaseException as exc:  # noqa: BLE001 - the test reports it below
                result["error"] = exc

        saver = threading.Thread(target=save)
        saver.start()
        # The old loop gave up silently after 50 attempts (~26 s, inside the 60 s timeout).
        _wait_until(lambda: len(attempts) > 50 or not saver.is_alive(),
                    "more than 50 connect attempts")
        _release(outsider)
        _wait_line(outsider, "FREE")
        saver.join(timeout=90)
    finally:
        if outsider.poll() is None:
            outsider.kill()
    assert "error" not in result, repr(result.get("error"))
    assert store.get_feedback(result["id"])["client_token"] == "through-the-outsider"
    # and every later transaction works: nothing of the long wait was leaked
    assert annotate.skip(store, rad, store.case(cases[1]["id"])) > result["id"]


def test_an_outsider_past_the_timeout_is_database_busy_and_nothing_is_held(store, users, cases):
    import fcntl

    from core.errors import StoreBusy
    from core.store.database import Store

    impatient = Store(store.path, lock_timeout=1.5)
    outsider = _spawn_io(OUTSIDER, store.path)
    try:
        _wait_line(outsider, "HOLD")
        with pytest.raises(StoreBusy, match="database busy.*nothing was saved"):
            impatient.audit("test", "tick", {})
        # the failed open let go of the lock file: anyone may take it now
        with open(store.path + ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
        _release(outsider)
        _wait_line(outsider, "FREE")
    finally:
        if outsider.poll() is None:
            outsider.kill()
    impatient.audit("test", "tick", {})
    impatient.close()
    assert store.audit_log(action="tick")


WAITER = textwrap.dedent("""
    import sys
    from core.store.database import Store
    store = Store(sys.argv[1])
    print("WAITING", flush=True)
    store.audit(sys.argv[2], "turn", {})
    store.close()
    print("DONE", flush=True)
""")


def test_waiting_processes_are_served_in_order_while_the_app_keeps_writing(store, users):
    """Issue 16.4: a process that waits is served before the app's next thread, and waiters
    in the order they came (a queue of tickets), however busy the app is."""
    holding, go = threading.Event(), threading.Event()

    def hold() -> None:
        with store.tx():
            holding.set()
            go.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    app_threads: list[threading.Thread] = []
    try:
        for i in range(3):
            procs.append(_spawn(WAITER, store.path, f"waiter{i}"))
            _wait_line(procs[-1], "WAITING")
            _wait_until(lambda: len(_tickets(store.path)) == i + 1, f"waiter{i} in the queue")

        def app(k: int) -> None:  # sessions saving as fast as they can
            while not stop.is_set():
                store.audit(f"app{k}", "tick", {})

        app_threads = [threading.Thread(target=app, args=(k,)) for k in range(4)]
        for t in app_threads:
            t.start()
        go.set()
        holder.join()
        for p in procs:
            _wait_line(p, "DONE")
    finally:
        go.set()
        stop.set()
        for t in app_threads:
            t.join()
        for p in procs:
            if p.poll() is None:
                p.kill()
    turns = [r["actor"] for r in reversed(store.audit_log(action="turn"))]
    assert turns == ["waiter0", "waiter1", "waiter2"]
    assert _tickets(store.path) == []


def test_a_stale_or_future_dated_waiter_marker_does_not_make_the_store_hand_over(
        store, users, monkeypatch):
    """Issue 16.4: a ``.want`` marker with an mtime in the future, and a ticket left by a dead
    waiter, must not make the holder close and reopen the file after every transaction."""
    import duckdb

    from core.store.database import Store

    store.close()  # nobody else has the file: the new store never has to wait for it
    future = time.time() + 3600
    want = Path(store.path + ".want")
    want.write_text("4242")
    os.utime(want, (future, future))
    queue = Path(store.path + ".queue")
    queue.mkdir(exist_ok=True)
    dead = queue / f"{1:020d}-4242-deadbeef.ticket"  # nobody holds a lock on it
    dead.write_text("")
    os.utime(dead, (future, future))
    opens: list[int] = []
    real_connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect",
                        lambda *a, **kw: opens.append(1) or real_connect(*a, **kw))
    busy = Store(store.path, linger=60)
    try:
        for i in range(20):
            busy.audit("test", "tick", {"i": i})
    finally:
        busy.close()
    assert len(opens) == 1
    assert not dead.exists()  # recognised as dead and cleared away


def test_a_folder_where_the_lock_file_should_be_is_a_nothing_saved_error(store, users, cases):
    from core.store.database import Store

    rad = users["rad1"]
    case = store.case(cases[0]["id"])
    before = store.count_feedback()
    store.close()
    lock = Path(store.path + ".lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()  # tampered: a folder named like the lock file
    broken = Store(store.path)
    with pytest.raises(StoreError, match="lock file.*nothing was saved"):
        annotate.submit_rating(broken, rad, case, annotate.Rating(rating=0))
    lock.rmdir()
    assert annotate.submit_rating(broken, rad, case, annotate.Rating(rating=0)) > 0
    assert broken.count_feedback() == before + 1
    broken.close()


def test_the_lock_file_deleted_while_held_costs_a_wait_not_a_second_writer(store, users):
    from core.errors import StoreBusy
    from core.store.database import Store

    holder = _spawn_io(HOLDER, store.path)
    try:
        _wait_line(holder, "HOLD")
        os.unlink(store.path + ".lock")  # an administrator "cleaning up"
        second = Store(store.path, lock_timeout=1.5)
        # a new lock file is created and taken, but DuckDB still refuses: busy, nothing held
        with pytest.raises(StoreBusy, match="nothing was saved"):
            second.audit("second", "tick", {})
        _release(holder)
        _wait_line(holder, "FREE")
    finally:
        if holder.poll() is None:
            holder.kill()
    second.audit("second", "tick", {})
    second.close()
    store.audit("first", "tick", {})
    assert {r["actor"] for r in store.audit_log(action="tick")} == {"first", "second"}


# On 3 MiB the database's first checkpoint (at the hand-over to the holder, ~4.4 MB) filled the
# disk before the filler did, and the save after the filler was gone passed only while the
# WAL's last page had room left: 8 MiB.
def test_disk_full_while_waiting_for_the_file_is_a_nothing_saved_error(roomier_disk):
    """Issue 16.6: waiting for another process on a full disk never raises a raw OSError."""
    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.store.database import Store

    db = roomier_disk / "db.duckdb"
    s = Store(db)
    try:
        s.migrate()
        auth.create_user(s, "rad1", "radiologist", "rad1-Passw0rd")
        user = auth.sign_in(s, "rad1", "rad1-Passw0rd")
        s.import_reports(synthetic_reports(3, seed=1), "x", "demo")
        s.add_generations([{"report_id": r["id"], "model": "m", "text": "t"}
                           for r in s.reports()])
        case = s.case(s.reports()[0]["id"])
        holder = _spawn_io(HOLDER, str(db))
        try:
            _wait_line(holder, "HOLD")
            filler = roomier_disk / "filler"
            with filler.open("wb") as fh:  # fill the disk to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(os.urandom(64 * 1024))
                        fh.flush()
            result: dict = {}

            def save() -> None:
                try:
                    result["id"] = annotate.submit_rating(s, user, case, annotate.Rating(
                        rating=0, edited_text="x" * 5000), client_token="full")
                except BaseException as exc:  # noqa: BLE001 - judged below
                    result["error"] = exc

            saver = threading.Thread(target=save)
            saver.start()
            _wait_until(lambda: not saver.is_alive() or _tickets(str(db)),
                        "the save failed or waits in the queue")
            _release(holder)
            _wait_line(holder, "FREE")
            saver.join(timeout=90)
        finally:
            if holder.poll() is None:
                holder.kill()
        error = result.get("error")
        assert error is None or isinstance(error, StoreError), repr(error)
        if error is not None:
            assert "nothing was saved" in str(error)
        filler.unlink()
        # the disk has room again: the save goes through and nothing was half-written
        fid = annotate.submit_rating(s, user, case, annotate.Rating(rating=0),
                                     client_token="full")
        assert fid == result.get("id", fid)
        assert s.count_feedback() == 1
    finally:
        s.close()


# -- issue 16.4: a long feedback import commits in chunks and resumes ---------------------------
CHUNKED_FEEDBACK_IMPORT = textwrap.dedent("""
    import contextlib, sys, time
    from core.store.database import Store

    _seen = 0
    _orig_tx = Store.tx

    class _Con:
        def __init__(self, con):
            self._con = con

        def __getattr__(self, name):
            return getattr(self._con, name)

        def execute(self, sql, *args):
            global _seen
            result = self._con.execute(sql, *args)
            if sql.lstrip().startswith("INSERT INTO feedback ("):
                _seen += 1
                if _seen == 2:  # the second chunk is written, its transaction still open
                    print("HOOK", flush=True)
                    time.sleep(300)
            return result

    @contextlib.contextmanager
    def _tx(self):
        with _orig_tx(self) as con:
            yield _Con(con)

    Store.tx = _tx
    from core.feedback.importing import import_feedback
    store = Store(sys.argv[1])
    print(import_feedback(store, sys.argv[2], actor="fault-test", chunk_rows=5).summary(),
          flush=True)
""")


def test_kill9_between_feedback_import_chunks_keeps_whole_chunks_and_resumes(store, users,
                                                                             cases, tmp_path):
    import csv

    from core.feedback.importing import import_feedback

    f = tmp_path / "fb.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["reader", "uid", "edited_impression", "ai_text"])
        for r in cases:  # 12 rows: chunks of 5, 5 and 2
            w.writerow(["rad2", r["external_id"], f"Signed impression {r['id']}.", "Draft."])
    before = store.count_feedback()
    proc = _spawn(CHUNKED_FEEDBACK_IMPORT, store.path, str(f))
    try:
        _wait_line(proc, "HOOK")
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the first chunk is committed whole, the second not at all
    assert store.count_feedback() == before + 5
    assert store.df("SELECT count(*) AS n FROM generations WHERE model = 'imported-draft'"
                    )["n"][0] == 5
    unfinished = store.df("SELECT * FROM feedback_imports")
    assert len(unfinished) == 1 and unfinished["finished_at"].isna().all()
    # running the same file again resumes that import and writes each row once
    result = import_feedback(store, f, actor="fault-test", chunk_rows=5)
    assert result.resumed and result.import_id == int(unfinished["id"][0])
    assert (result.imported, result.skipped) == (7, 5)
    rows = store.df("SELECT client_token FROM feedback WHERE source = 'import'")
    assert len(rows) == 12 and rows["client_token"].is_unique
    assert store.df("SELECT finished_at FROM feedback_imports")["finished_at"].notna().all()
