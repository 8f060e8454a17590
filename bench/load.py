"""Load test (issue 7): 50 simulated radiologists rating and editing at once, through the same code
the app uses, while the nightly job trains and an import runs in other processes.

* "the app": one process, one shared :class:`core.store.database.Store` (as ``ui.get_store`` gives every
  Streamlit session), one thread per radiologist. Each loops: ``annotate.next_case`` ->
  ``annotate.submit_rating`` (mostly with an edit), sometimes ``skip`` or ``undo_last``, with a
  short random think time. Every call that returns is an *acknowledged* save (the page would
  say "Rating saved"); its client token, returned id and latency are recorded.
* optionally a second app process (``--second-app N``: N more radiologists, same loop), as when
  two Streamlit servers share one database;
* ``python -m core nightly`` in a loop (DPO training on the tiny test model by default, or the
  embedded SmolLM2-135M with ``--model embedded``) on a reader with prior ratings;
* ``python -m core import`` in a loop, each time a new CSV of ``--import-rows`` reports;
* one ``python -m core backup`` half way through (checked for consistency at the end).

At the end every acknowledged save is looked up: zero lost (acknowledged but absent), zero
duplicated (more rows than acknowledgements), retractions exactly as acknowledged, imports all
or nothing; p50/p99 latency of save and next case; every error any call raised.

    .venv/bin/python bench/load.py [--readers 50] [--seconds 120] [--second-app 10]
                                   [--model tiny|embedded] [--think-ms 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# -- one simulated radiologist -------------------------------------------------------------------
def radiologist(store, user, deadline: float, think_ms: float, seed: int, log: dict,
                lock: threading.Lock, prefetch: bool = True) -> None:
    """Rate/edit/skip/undo until ``deadline``; append every acknowledged action to ``log``.

    As the Annotate page does: with ``prefetch`` the case after the one on screen is fetched
    while the reader thinks (``prefetch_ms``, off the reader's path), the save checks it in its
    own transaction, and the reader waits for the queue (``next_ms``) only when that check
    fails, after an undo, or at the start. ``wait_ms`` is what the reader waits from pressing
    Submit/Skip to the next case: the save plus any queue query after it.
    """
    from core.feedback import annotate

    def ask_queue():
        """The queue query a reader waits for (``next_ms``)."""
        t = time.perf_counter()
        found = annotate.next_case(store, user)
        with lock:
            log["next_ms"].append((time.perf_counter() - t) * 1000)
        return found

    rng = random.Random(seed)
    k = 0
    case = None
    while time.monotonic() < deadline:
        k += 1
        try:
            if case is None:
                case = ask_queue()
                if case is None:
                    with lock:
                        log["queue_empty"] += 1
                    time.sleep(0.5)
                    continue
            ahead = None
            if prefetch:  # the page, once the case is drawn
                t = time.perf_counter()
                ahead = annotate.next_case(store, user, besides=case.report_id)
                with lock:
                    log["prefetch_ms"].append((time.perf_counter() - t) * 1000)
            time.sleep(rng.expovariate(1000 / think_ms) if think_ms > 0 else 0)
            roll = rng.random()
            token = f"{user.username}-{k}"
            t = time.perf_counter()
            upcoming = None
            if roll < 0.08:
                fid, upcoming = annotate.skip_and_next(store, user, case, ahead,
                                                       client_token=token,
                                                       time_spent_ms=rng.randint(1000, 9000))
                kind = "skip"
            elif roll < 0.13:
                last = annotate.undo_last(store, user)
                fid, kind, token = (last["id"] if last else None), "undo", None
            else:
                edit = None
                if roll < 0.75:  # most ratings come with an edit
                    edit = (f"{case.ai_text} Follow-up in {rng.randint(1, 12)} weeks. "
                            f"<b>x</b> '; DROP TABLE feedback; -- {rng.random():.6f}")
                fid, upcoming = annotate.submit_and_next(store, user, case, annotate.Rating(
                    rating=rng.randint(-2, 2), factual_error=rng.random() < 0.1,
                    omission=rng.random() < 0.2, comment="load test" if roll < 0.3 else None,
                    edited_text=edit, time_spent_ms=rng.randint(2000, 60000)),
                    ahead, client_token=token)
                kind = "rating"
            ms = (time.perf_counter() - t) * 1000
            with lock:
                if kind == "undo":
                    if fid is not None:
                        log["undone"].append(fid)
                    log["undo_ms"].append(ms)
                else:
                    log["acked"].append((token, int(fid), kind, user.id))
                    log["save_ms"].append(ms)
                    log["served_ahead"] += upcoming is not None
            case = upcoming  # None: the queue is asked at the top of the loop
            if kind != "undo" and case is None:
                case = ask_queue()
                if case is None:
                    continue
            if kind != "undo":
                with lock:
                    log["wait_ms"].append((time.perf_counter() - t) * 1000)
        except Exception as exc:  # every error is counted; the load goes on
            with lock:
                log["errors"].append(f"{user.username}: {type(exc).__name__}: {exc}"[:500])
                if len(log["errors"]) <= 3:
                    log["tracebacks"].append(traceback.format_exc()[-2000:])
            case = None
            time.sleep(0.1)


def run_app(db: str, usernames: list[str], password: str, seconds: float, think_ms: float,
            seed: int, prefetch: bool = True) -> dict:
    """One "app process": one Store shared by one thread per signed-in radiologist."""
    from core.accounts import auth
    from core.store.database import Store

    store = Store(db)
    users = [auth.sign_in(store, name, password) for name in usernames]
    log = {"acked": [], "undone": [], "save_ms": [], "next_ms": [], "undo_ms": [],
           "prefetch_ms": [], "wait_ms": [], "served_ahead": 0,
           "errors": [], "tracebacks": [], "queue_empty": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=radiologist, args=(store, u, deadline, think_ms,
                                                          seed + i, log, lock, prefetch),
                                daemon=True)
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the hand-over as this process saw it: opens, waits for the file, longest transaction
    log["store_stats"] = {k: round(v, 3) if isinstance(v, float) else v
                          for k, v in store.stats.items()}
    store.close()
    return log


# -- background processes ------------------------------------------------------------------------
NIGHTLY_LOOP = """
import subprocess, sys, time, json
deadline = time.monotonic() + float(sys.argv[1])
cmd = sys.argv[2:]
runs = []
while time.monotonic() < deadline:
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    runs.append({"rc": p.returncode, "s": round(time.monotonic() - t, 1),
                 "tail": (p.stdout + p.stderr)[-600:]})
print(json.dumps(runs))
"""


def write_import_csv(path: Path, start: int, n: int, seed: int) -> None:
    from core.ingest.demo import synthetic_reports

    reps = synthetic_reports(n, seed=seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "findings", "impression", "indication"])
        for i, r in enumerate(reps):
            w.writerow([f"imp{start + i}", r.findings, r.impression, r.indication or ""])


IMPORT_LOOP = """
import subprocess, sys, time, json
deadline = time.monotonic() + float(sys.argv[1])
db, files = sys.argv[2], sys.argv[3:]
runs = []
for f in files:
    if time.monotonic() > deadline:
        break
    t = time.monotonic()
    # --allow-duplicates: the synthetic reports repeat their texts, and what is measured here is
    # that an import lands whole or not at all (not the cross-format duplicate check).
    p = subprocess.run([sys.executable, "-m", "core", "--db", db, "import", f, "--format", "csv",
                        "--allow-duplicates"], capture_output=True, text=True)
    runs.append({"file": f, "rc": p.returncode, "s": round(time.monotonic() - t, 2),
                 "out": (p.stdout + p.stderr)[-400:]})
print(json.dumps(runs))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=50, help="radiologists in the app process")
    ap.add_argument("--second-app", type=int, default=0,
                    help="radiologists in a second app process (0: none)")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--think-ms", type=float, default=300,
                    help="mean pause between seeing a case and saving (exponential)")
    ap.add_argument("--reports", type=int, default=3000)
    ap.add_argument("--import-rows", type=int, default=2000)
    ap.add_argument("--model", default="tiny",
                    help="'tiny' (random tiny Llama), 'embedded' (SmolLM2-135M) or a path")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--no-nightly", action="store_true", help="no nightly job (baseline)")
    ap.add_argument("--no-import", action="store_true", help="no import loop (baseline)")
    ap.add_argument("--no-backup", action="store_true", help="no backup half way")
    ap.add_argument("--no-prefetch", action="store_true",
                    help="the page before issue 16's prefetch: the reader waits for the save, "
                         "then for the next case (a second transaction)")
    ap.add_argument("--json", help="write the full result here")
    args = ap.parse_args(argv)
    os.environ.setdefault("IMPRESSIONIST_BCRYPT_ROUNDS", "4")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from core.feedback import annotate

    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.store.database import Store

    from core.config import settings

    embedded = str(settings().model_path)  # before IMPRESSIONIST_DATA points at the temp dir
    tmp = Path(tempfile.mkdtemp(prefix="impressionist-load-"))
    os.environ["IMPRESSIONIST_DATA"] = str(tmp / "data")
    db = str(tmp / "data" / "load.duckdb")
    os.environ["IMPRESSIONIST_DB"] = db
    password = "load-Passw0rd"
    store = Store(db)
    store.migrate()
    n_app = args.readers + args.second_app
    names = [f"reader{i:02d}" for i in range(n_app)]
    for name in names + ["trainee"]:
        auth.create_user(store, name, "radiologist", password)
    store.import_reports(synthetic_reports(args.reports, seed=42), file="load", fmt="demo")
    reports = store.reports()
    store.add_generations({"report_id": r["id"], "model": "load-model",
                           "text": "No acute cardiopulmonary abnormality.", "latency_ms": 1.0}
                          for r in reports)
    # the reader the nightly job trains: 60 edited ratings before the load starts
    trainee = auth.sign_in(store, "trainee", password)
    for r in reports[:60]:
        annotate.submit_rating(store, trainee, store.case(r["id"]), annotate.Rating(
            rating=-1, edited_text=f"1. {r['impression'] or 'No acute disease.'}"))
    base_feedback = store.count_feedback()
    base_reports = store.count_reports()
    store.close()

    if args.model == "tiny":
        from core.generation.checkpoint import make_tiny_model

        model = str(make_tiny_model(tmp / "tiny"))
    elif args.model == "embedded":
        model = embedded
    else:
        model = args.model
    env = dict(os.environ)
    procs: dict[str, subprocess.Popen] = {}
    nightly_cmd = [sys.executable, "-m", "core", "--db", db, "nightly", "--model", model,
                   "--force", "--readers", "trainee", "--min-pairs", "1", "--epochs",
                   str(args.epochs), "--max-pairs", "32", "--quiet", "--refresh", "5",
                   "--threads", "1"]
    procs["nightly"] = None if args.no_nightly else subprocess.Popen(
        [sys.executable, "-c", NIGHTLY_LOOP, str(args.seconds), *nightly_cmd], cwd=ROOT,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    files = []
    for j in range(20):
        f = tmp / f"import{j}.csv"
        write_import_csv(f, j * args.import_rows, args.import_rows, seed=100 + j)
        files.append(str(f))
    procs["import"] = None if args.no_import else subprocess.Popen(
        [sys.executable, "-c", IMPORT_LOOP, str(args.seconds), db, *files], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if args.second_app:
        procs["app2"] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", db,
             ",".join(names[args.readers:]), password, str(args.seconds), str(args.think_ms)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    backup_result: dict = {}

    def backup_later() -> None:
        if args.no_backup:
            return
        time.sleep(args.seconds / 2)
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "core", "--db", db, "backup",
                            str(tmp / "mid.duckdb")], cwd=ROOT, env=env, capture_output=True,
                           text=True)
        backup_result.update(rc=p.returncode, s=round(time.monotonic() - t, 2),
                             out=(p.stdout + p.stderr)[-400:])

    bt = threading.Thread(target=backup_later)
    bt.start()
    t0 = time.monotonic()
    log = run_app(db, names[:args.readers], password, args.seconds, args.think_ms, seed=1,
                  prefetch=not args.no_prefetch)
    app_s = time.monotonic() - t0
    bt.join()
    outs = {}
    for name, p in procs.items():
        if p is None:
            continue
        out, err = p.communicate(timeout=max(600, args.seconds * 3))
        outs[name] = out.strip().splitlines()[-1] if out.strip() else ""
        if p.returncode != 0:
            outs[name + "_stderr"] = err[-2000:]
    if args.second_app:
        log2 = json.loads(outs["app2"])
        for k in ("acked", "undone", "save_ms", "next_ms", "undo_ms", "prefetch_ms", "wait_ms",
                  "errors", "tracebacks"):
            log[k] += [tuple(x) if k == "acked" else x for x in log2[k]]
        log["queue_empty"] += log2["queue_empty"]
        log["served_ahead"] += log2["served_ahead"]
    nightly_runs = json.loads(outs["nightly"]) if outs.get("nightly") else []
    import_runs = json.loads(outs["import"]) if outs.get("import") else []

    # -- verification ----------------------------------------------------------------------------
    store = Store(db)
    rows = store.df("SELECT id, client_token, kind, reader_id FROM feedback "
                    "WHERE client_token LIKE 'reader%'")
    by_token = {t: (int(i), k, int(r)) for i, t, k, r in rows.itertuples(index=False)}
    acked = log["acked"]
    lost = [a for a in acked if by_token.get(a[0]) != (a[1], a[2], a[3])]
    acked_tokens = Counter(a[0] for a in acked)
    dup_acks = sum(c - 1 for c in acked_tokens.values() if c > 1)
    unacked_rows = [t for t in by_token if t not in acked_tokens]
    retractions = store.df("SELECT retracts FROM feedback WHERE kind = 'retraction' AND "
                           "reader_id IN (SELECT id FROM readers WHERE username LIKE 'reader%')")
    retracted = Counter(int(x) for x in retractions["retracts"])
    undone = Counter(log["undone"])
    retraction_mismatch = sum(abs(retracted[k] - undone[k]) for k in set(retracted) | set(undone))
    double_retracted = sum(1 for c in retracted.values() if c > 1)
    total_feedback = store.count_feedback()
    expected_total = (base_feedback + len(acked) + len(log["undone"]) + len(unacked_rows))
    trainee_new = store.count_feedback(trainee.id) - 60
    imported_ok = [r for r in import_runs if r["rc"] == 0]
    n_reports = store.count_reports()
    imports = store.imports(limit=1000)
    all_or_nothing = all(i["n_imported"] in (0, args.import_rows) for i in imports
                         if i["format"] == "csv")
    runs = store.training_runs(limit=100)
    # the mid-run backup: opens, and is a consistent snapshot of the final database
    backup_ok = None
    if backup_result.get("rc") == 0:
        import duckdb

        con = duckdb.connect(str(tmp / "mid.duckdb"), read_only=True)
        snap = con.execute("SELECT id, client_token, kind, rating, edited_text, retracts "
                           "FROM feedback ORDER BY id").fetchall()
        orphan = con.execute("SELECT count(*) FROM feedback f WHERE kind = 'retraction' AND "
                             "NOT EXISTS (SELECT 1 FROM feedback g WHERE g.id = f.retracts)"
                             ).fetchall()[0][0]
        snap_reports = con.execute("SELECT count(*) FROM reports").fetchall()[0][0]
        con.close()
        final = {r["id"]: tuple(r.values()) for r in store._rows(
            "SELECT id, client_token, kind, rating, edited_text, retracts FROM feedback")}
        same = all(final.get(r[0]) == tuple(r) for r in snap)
        backup_ok = {"feedback_rows": len(snap), "reports": snap_reports,
                     "rows_identical_in_final_db": same, "orphan_retractions": orphan,
                     "reports_multiple_of_import": (snap_reports - base_reports)
                     % args.import_rows == 0, "backup_s": backup_result["s"]}
    store.close()

    errors = Counter(e.split(": ", 1)[1].split(":")[0] for e in log["errors"])
    result = {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.node()}, {os.cpu_count()} cores",
        "load_before": os.getloadavg(),
        "config": vars(args), "model": model, "app_seconds": round(app_s, 1),
        "readers": n_app, "acked_saves": len(acked),
        "acked_ratings": sum(1 for a in acked if a[2] == "rating"),
        "acked_skips": sum(1 for a in acked if a[2] == "skip"),
        "undos": len(log["undone"]), "lost": len(lost), "duplicated_acks": dup_acks,
        "rows_without_ack": len(unacked_rows), "retraction_mismatch": retraction_mismatch,
        "double_retracted": double_retracted,
        "feedback_rows": total_feedback, "feedback_rows_expected": expected_total,
        "saves_per_s": round(len(acked) / app_s, 1),
        "save_ms": {"p50": round(pct(log["save_ms"], 50), 1),
                    "p99": round(pct(log["save_ms"], 99), 1),
                    "max": round(max(log["save_ms"], default=float("nan")), 1),
                    "mean": round(statistics.mean(log["save_ms"]), 1) if log["save_ms"] else None},
        "next_case_ms": {"p50": round(pct(log["next_ms"], 50), 1),
                         "p99": round(pct(log["next_ms"], 99), 1),
                         "max": round(max(log["next_ms"], default=float("nan")), 1)},
        "submit_to_next_case_ms": {"p50": round(pct(log["wait_ms"], 50), 1),
                                   "p99": round(pct(log["wait_ms"], 99), 1),
                                   "max": round(max(log["wait_ms"], default=float("nan")), 1)},
        "prefetch_ms": {"p50": round(pct(log["prefetch_ms"], 50), 1),
                        "p99": round(pct(log["prefetch_ms"], 99), 1)},
        "served_ahead": log["served_ahead"],
        "undo_ms_p99": round(pct(log["undo_ms"], 99), 1),
        "app_store": log["store_stats"],
        "errors": len(log["errors"]), "error_kinds": dict(errors),
        "error_samples": log["errors"][:5], "tracebacks": log["tracebacks"][:2],
        "queue_empty": log["queue_empty"],
        "nightly_runs": [{"rc": r["rc"], "s": r["s"]} for r in nightly_runs],
        "nightly_db_runs": Counter(r["status"] for r in runs),
        "nightly_fail_tail": [r["tail"] for r in nightly_runs if r["rc"] != 0][:1],
        "trainee_feedback_changed": trainee_new,
        "imports_ok": len(imported_ok), "imports_failed": len(import_runs) - len(imported_ok),
        "import_s": [r["s"] for r in import_runs],
        "import_fail_tail": [r["out"] for r in import_runs if r["rc"] != 0][:1],
        "reports": n_reports, "reports_expected": base_reports + args.import_rows * len(
            imported_ok), "imports_all_or_nothing": all_or_nothing,
        "backup": backup_ok or backup_result,
        "stderr": {k: v for k, v in outs.items() if k.endswith("_stderr")},
    }
    ok = (result["lost"] == 0 and dup_acks == 0 and not unacked_rows and
          retraction_mismatch == 0 and result["errors"] == 0 and
          total_feedback == expected_total and n_reports == result["reports_expected"])
    result["verdict"] = "PASS" if ok else "FAIL"
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    print(f"\n{result['verdict']}: {len(acked):,} acknowledged saves ({result['acked_ratings']:,} "
          f"ratings, {result['acked_skips']:,} skips) + {len(log['undone'])} undos by {n_app} "
          f"readers in {app_s:.0f} s; lost {result['lost']}, duplicated {dup_acks}, "
          f"unacknowledged rows {len(unacked_rows)}, errors {result['errors']}; save p50 "
          f"{result['save_ms']['p50']} ms p99 {result['save_ms']['p99']} ms; "
          f"{len(nightly_runs)} nightly runs, {len(imported_ok)} imports")
    return 0 if ok else 1


def worker_main(argv: list[str]) -> int:
    """``load.py --worker DB NAMES PASSWORD SECONDS THINK_MS``: the second app process."""
    db, names, password, seconds, think_ms = argv
    log = run_app(db, names.split(","), password, float(seconds), float(think_ms), seed=1000)
    print(json.dumps(log))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        raise SystemExit(worker_main(sys.argv[2:]))
    raise SystemExit(main())
