"""Benchmark a realistic study end to end and check that planted effects are recovered.

200 IU X-ray-like items (synthetic demo reports), 3 arms, 7 raters, k = 3 (1,800 ratings).
Ratings are simulated: arm effect + rater bias + item difficulty + noise, rounded to -2..2.
Prints: creation time, per-rating latency (next_task + submit through core.study, the path the
page uses), progress time, results time (n_boot=1000, ROUGE-L + label F1), HTML export time,
and the recovered arm shares / rater biases next to the planted ones.

    .venv/bin/python bench/study_results.py [--items 200] [--raters 7] [--k 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IMPRESSIONIST_BCRYPT_ROUNDS", "4")


def main() -> None:
    import numpy as np

    from core import auth, study
    from core.demo import synthetic_reports
    from core.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--raters", type=int, default=7)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    store = Store(os.path.join(tmp, "bench.duckdb"))
    store.migrate()
    coord = (auth.create_user(store, "coord", "coordinator", "Passw0rd-x"),
             auth.sign_in(store, "coord", "Passw0rd-x"))[1]
    raters = {}
    for i in range(args.raters):
        name = f"rad{i}"
        auth.create_user(store, name, "radiologist", "Passw0rd-x")
        raters[name] = auth.sign_in(store, name, "Passw0rd-x")
    store.import_reports(synthetic_reports(max(400, args.items * 2), seed=0), file="bench",
                         fmt="demo")

    def texts(reports, arm):
        return [f"{arm} impression of report {r['id']}." for r in reports]

    arms = ["original", "base", "style:brief"]
    t0 = time.perf_counter()
    sid = study.create_study(store, coord, study.StudyDesign(
        name="Bench", arms=arms, n_items=args.items, seed=1, raters=list(raters), k=args.k),
        make_texts=texts)
    t_create = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    arm_effect = {"original": 0.6, "base": 0.0, "style:brief": -0.4}
    bias = {name: b for name, b in zip(raters, np.linspace(-0.6, 0.6, args.raters))}
    difficulty = rng.normal(0, 0.5, args.items)
    units = store.study_units(sid).set_index("unit_id")
    lat = []
    for name, user in raters.items():
        while True:
            t0 = time.perf_counter()
            task = study.next_task(store, user, sid)
            if task is None:
                break
            arm = units.loc[store.get_study_task(task.task_id)["unit_id"], "arm"]
            score = arm_effect[arm] + bias[name] + difficulty[task.case_number - 1] \
                + rng.normal(0, 0.7)
            value = int(np.clip(np.rint(score), -2, 2))
            t1 = time.perf_counter()
            study.submit(store, user, task.task_id, value, time_spent_ms=3000)
            lat.append((t1 - t0) + (time.perf_counter() - t1))
    t0 = time.perf_counter()
    study.progress(store, coord, sid)
    t_progress = time.perf_counter() - t0
    study.close(store, coord, sid)
    t0 = time.perf_counter()
    res = study.results(store, coord, sid, n_boot=args.n_boot, metrics=("rouge_l", "label_f1"))
    t_results = time.perf_counter() - t0
    t0 = time.perf_counter()
    html = study.export_html(store, coord, sid, os.path.join(tmp, "summary.html"), res=res)
    t_html = time.perf_counter() - t0

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"study: {args.items} items x {len(arms)} arms, {args.raters} raters, k={args.k}: "
          f"{len(lat)} ratings")
    print(f"create (sample, texts, blind, assign): {t_create:.2f} s")
    print(f"rating latency next_task+submit: median {1000 * statistics.median(lat):.1f} ms, "
          f"p95 {1000 * sorted(lat)[int(0.95 * len(lat))]:.1f} ms")
    print(f"progress: {1000 * t_progress:.0f} ms")
    print(f"results (n_boot={args.n_boot}, ROUGE-L + label F1): {t_results:.2f} s")
    print(f"HTML summary: {1000 * t_html:.0f} ms, {len(html) / 1024:.0f} KiB")
    print("\nshare neutral-or-better (Wilson 95% CI):")
    for r in res.shares.itertuples():
        print(f"  {r.arm:12} {r.share:.3f} [{r.lo:.3f}, {r.hi:.3f}]  mean {r.mean:+.2f} "
              f"(planted arm effect {arm_effect[r.arm]:+.1f})")
    print("agreement:")
    for r in res.agreement.itertuples():
        print(f"  {r.statistic:42} {r.estimate:.3f} [{r.lo:.3f}, {r.hi:.3f}]")
    print("per-rater bias (planted -> recovered):")
    for r in res.bias.itertuples():
        print(f"  {r.rater}: {bias[r.rater]:+.2f} -> {r.mean_offset:+.2f}")
    store.close()


if __name__ == "__main__":
    main()
