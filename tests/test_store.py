import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]


def test_migrate_is_idempotent(store):
    v = store.schema_version()
    assert v >= 1
    assert store.migrate() == v


def test_import_reports_dedups(store):
    from core.demo import synthetic_reports

    recs = synthetic_reports(10, seed=1)
    assert store.import_reports(recs, "a.csv", "demo") == (10, 0)
    assert store.import_reports(recs, "a.csv", "demo") == (0, 10)
    assert store.count_reports() == 10
    imports = store.imports()
    assert [i["n_imported"] for i in imports] == [0, 10]


def test_import_is_one_transaction(store):
    from core.demo import synthetic_reports

    class Boom:
        def __iter__(self):
            yield from synthetic_reports(3, seed=2)
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        store.import_reports(Boom(), "b.csv", "demo")
    assert store.count_reports() == 0
    assert store.imports() == []


def test_feedback_is_append_only_and_current_view(store, users, cases):
    rad = users["rad1"]
    case = store.next_case(rad.id)
    fid = store.add_feedback(reader_id=rad.id, report_id=case.report_id,
                             generation_id=case.generation_id, kind="rating", rating=1)
    assert store.next_case(rad.id).report_id != case.report_id
    store.add_feedback(reader_id=rad.id, report_id=case.report_id,
                       generation_id=case.generation_id, kind="retraction", retracts=fid)
    # retracted: the case is back in the queue, and both rows are still there
    assert store.next_case(rad.id).report_id == case.report_id
    assert store.count_feedback(rad.id) == 2
    assert store.is_retracted(fid)


def test_double_submit_with_same_token_writes_once(store, users, cases):
    rad = users["rad1"]
    case = store.next_case(rad.id)
    kw = dict(reader_id=rad.id, report_id=case.report_id, generation_id=case.generation_id,
              kind="rating", rating=0, client_token="tok-1")
    assert store.add_feedback(**kw) == store.add_feedback(**kw)
    assert store.count_feedback(rad.id) == 1


def test_unknown_feedback_field_refused(store):
    with pytest.raises(StoreError):
        store.add_feedback(reader_id=1, report_id=1, kind="rating", rating=1, evil="x")


def test_queue_only_shows_ready_cases(store, users):
    from core.demo import synthetic_reports

    store.import_reports(synthetic_reports(3, seed=9), "c", "demo")
    assert store.next_case(users["rad1"].id) is None
    rid = store.reports()[1]["id"]
    store.add_generations([{"report_id": rid, "model": "m", "text": "t"}])
    assert store.next_case(users["rad1"].id).report_id == rid
    assert store.queue_progress(users["rad1"].id) == (0, 1)


_OTHER_PROCESS = """
import sys, time
from core.store import Store
path, seconds, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = Store(path)
ok = 0
end = time.monotonic() + seconds
while time.monotonic() < end and ok < n:
    s.audit("other-process", "tick", {"i": ok})
    ok += 1
    time.sleep(0.002)
s.close()
print(ok)
"""


def test_two_processes_share_the_file(store):
    """The app (this process) and two other processes all write while the others run.

    Real subprocesses (not multiprocessing): spawn re-imports ``__main__``, which after a page
    test is a Streamlit page file.
    """
    procs = [subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, store.path, "120", "60"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    mine = 0
    end = time.monotonic() + 120  # a count, not a rate: the bound only stops a hang
    while time.monotonic() < end and mine < 60:
        store.audit("this-process", "tick", {"i": mine})
        mine += 1
        time.sleep(0.002)
    others = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        others.append(int(out.strip()))
    assert others == [60, 60] and mine == 60
    assert len(store.audit_log(limit=1000, action="tick")) == 180


def test_backup_while_writing_then_restore(store, users, cases, tmp_path):
    import threading

    from core import annotate

    rad = users["rad1"]
    stop = threading.Event()
    saved = []

    def writer():
        while not stop.is_set():
            case = annotate.next_case(store, rad)
            if case is None:
                break
            saved.append(annotate.submit_rating(store, rad, case, annotate.Rating(rating=0)))

    t = threading.Thread(target=writer)
    t.start()
    counts = store.backup(tmp_path / "b1.duckdb")
    stop.set()
    t.join()
    assert counts["reports"] == 12 and counts["readers"] == 4
    assert counts["feedback"] <= len(saved)
    # more writes after the backup, then restore: the database is the backup again
    store.add_feedback(reader_id=rad.id, report_id=cases[0]["id"], kind="skip")
    restored = store.restore(tmp_path / "b1.duckdb")
    assert store.count_feedback() == restored["feedback"] == counts["feedback"]
    assert store.count_reports() == 12


def test_restore_refuses_a_non_database(store, tmp_path):
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database")
    with pytest.raises(StoreError, match="not a usable"):
        store.restore(junk)
    assert store.schema_version() >= 1
