"""Server-side latency of the annotate screen with a realistically full database.

Fills a fresh database with 10,000 reports (each with an AI impression) and 100,000 ratings
from 50 readers, then times, through the same core functions the page calls:
  * next case: ``core.feedback.annotate.next_case`` + ``progress`` (what a page load does);
  * save: ``core.feedback.annotate.submit_rating`` with an edit.
Goals (issue 3): save p99 < 50 ms, next case p99 < 100 ms.

    .venv/bin/python bench/app_latency.py [--reports 10000] [--ratings 100000] [--n 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def fill(store, n_reports: int, n_ratings: int, n_readers: int = 50) -> list:
    import numpy as np
    import pandas as pd

    from core.accounts import auth
    from core.ingest.demo import synthetic_reports

    os.environ.setdefault("IMPRESSIONIST_BCRYPT_ROUNDS", "4")
    readers = [auth.create_user(store, f"reader{i:02d}", "radiologist", "bench-Passw0rd")
               for i in range(n_readers)]
    store.import_reports(synthetic_reports(n_reports, seed=42), file="bench", fmt="demo")
    reports = pd.DataFrame(store.reports())
    gens = pd.DataFrame({"report_id": reports["id"], "model": "bench-model",
                         "style": "default", "text": reports["impression"],
                         "flags": "{}", "latency_ms": 300.0})
    store.bulk_insert_frame("generations", gens)
    gen_ids = dict(store.df("SELECT report_id, id FROM generations").values.tolist())
    rng = np.random.default_rng(0)
    # each reader rates a prefix-heavy random set, like a real queue, without repeats
    per_reader = n_ratings // n_readers
    rows = []
    for r in readers:
        picks = rng.choice(reports["id"].to_numpy(), size=per_reader, replace=False)
        for rid in picks:
            rows.append((r.id, int(rid), gen_ids[int(rid)], int(rng.integers(-2, 3))))
    fb = pd.DataFrame(rows, columns=["reader_id", "report_id", "generation_id", "rating"])
    fb["kind"] = "rating"
    fb["time_spent_ms"] = rng.integers(2000, 60000, len(fb))
    fb["created_at"] = datetime.now()
    store.bulk_insert_frame("feedback", fb)
    return readers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=10_000)
    ap.add_argument("--ratings", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=300, help="timed operations of each kind")
    args = ap.parse_args(argv)

    from core.feedback import annotate

    from core.accounts import auth
    from core.store.database import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        store.migrate()
        t0 = time.perf_counter()
        readers = fill(store, args.reports, args.ratings)
        fill_s = time.perf_counter() - t0
        user = auth.sign_in(store, readers[0].username, "bench-Passw0rd")
        next_ms, save_ms = [], []
        for i in range(args.n):
            t = time.perf_counter()
            case = annotate.next_case(store, user)
            annotate.progress(store, user)
            next_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            annotate.submit_rating(store, user, case, annotate.Rating(
                rating=i % 5 - 2, omission=bool(i % 3), edited_text=case.ai_text + " Stable.",
                time_spent_ms=5000), client_token=f"bench-{i}")
            save_ms.append((time.perf_counter() - t) * 1000)
        total = store.count_feedback()
        store.close()

    print(f"# app latency — {datetime.now():%Y-%m-%d}, {platform.node()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}")
    print(f"database: {args.reports:,} reports, {total:,} feedback rows "
          f"(filled in {fill_s:.1f} s); {args.n} timed operations each")
    print("| operation | p50 ms | p99 ms | mean ms | goal |")
    print("|---|---|---|---|---|")
    print(f"| next case (queue + progress) | {pct(next_ms, 50):.1f} | {pct(next_ms, 99):.1f} | "
          f"{statistics.mean(next_ms):.1f} | p99 < 100 |")
    print(f"| save rating + edit | {pct(save_ms, 50):.1f} | {pct(save_ms, 99):.1f} | "
          f"{statistics.mean(save_ms):.1f} | p99 < 50 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
