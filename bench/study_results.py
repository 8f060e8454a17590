"""A simulated human-evaluation study end to end, with the planted truth to compare against.

Design (defaults): 200 synthetic demo reports (items), 3 arms (original, base, style:brief),
7 raters, k = 3 raters per (item, arm): 1,800 ratings, every one made through core.studies.rating
(next_task + submit, the path the Study queue page uses).

Simulation: a rater's latent score for a unit is

    arm effect + text quality q + rater bias + item difficulty + noise(sd 0.7)

rounded and clipped to the -2..2 scale. Generated arms get a per-text quality q ~ N(0, 0.5)
and their text is the report's own impression with words dropped (fewer when q is high), so
ROUGE-L / label F1 against the original impression genuinely track quality. Error boxes are
ticked from the latent score (factual error), the dropped words (omission) and at random
(style). The "truth" of every agreement statistic, share, mean difference and rater offset is
measured on a separate fully crossed simulation (all raters x 20,000 units) of the same model,
and ``--reps`` more simulated studies of the same design (the pure core.studies.results.compute_results)
give the coverage of the reported 95% intervals.

Prints: creation time, rating latency, progress time, results time (n_boot 1000, ROUGE-L +
label F1, optionally BERTScore), HTML summary time and size, then estimate [95% CI] vs truth.

    .venv/bin/python bench/study_results.py [--items 200] [--raters 7] [--k 3] [--reps 20]
        [--bertscore] [--html PATH] [--db PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IMPRESSIONIST_BCRYPT_ROUNDS", "4")

ARM_EFFECT = {"original": 0.6, "base": 0.0, "style:brief": -0.4}
Q_SD, DIFF_SD, NOISE_SD = 0.5, 0.5, 0.7
SCALE = (-2, -1, 0, 1, 2)
AGREEMENT = ("Krippendorff's alpha (ordinal)", "Fleiss' kappa",
             "Mean pairwise Cohen's kappa (quadratic)")


def _hseed(*parts) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def quality(report_id: int, arm: str) -> float:
    """The planted quality of one generated text (0 for the original impression)."""
    import numpy as np

    if arm == "original":
        return 0.0
    return float(np.random.default_rng(_hseed("q", report_id, arm)).normal(0, Q_SD))


def keep_fraction(q: float) -> float:
    return min(1.0, max(0.3, 0.8 + 0.3 * q))


def degrade(text: str, q: float, seed: int) -> str:
    """The impression with ~(1 - keep_fraction(q)) of its words dropped (at least one kept)."""
    import numpy as np

    words = text.split()
    n_keep = max(1, round(len(words) * keep_fraction(q)))
    keep = sorted(np.random.default_rng(seed).choice(len(words), n_keep, replace=False))
    out = " ".join(words[i] for i in keep)
    return out if out.endswith(".") else out + "."


def rate(rng, arm: str, q: float, bias: float, difficulty: float):
    """(rating, answers, latent score) of one simulated rating."""
    import numpy as np

    latent = ARM_EFFECT[arm] + q + bias + difficulty + rng.normal(0, NOISE_SD)
    value = int(np.clip(np.rint(latent), -2, 2))
    answers = {"factual_error": bool(latent + rng.normal(0, 0.5) < -1.2),
               "omission": bool(keep_fraction(q) < 0.75 and rng.random() < 0.8),
               "style_issue": bool(rng.random() < (0.25 if arm == "style:brief" else 0.1)),
               "critical_missed": False}
    return value, answers, latent


def population_truth(raters: list[str], bias: dict[str, float], n_units: int = 20_000,
                     seed: int = 99) -> dict:
    """Every statistic on a fully crossed simulation (all raters rate n_units units)."""
    import numpy as np
    import pandas as pd

    from core.studies import agreement

    rng = np.random.default_rng(seed)
    arms = list(ARM_EFFECT)
    unit_arm = rng.choice(arms, n_units)
    q = np.where(unit_arm == "original", 0.0, rng.normal(0, Q_SD, n_units))
    diff = rng.normal(0, DIFF_SD, n_units)
    eff = np.array([ARM_EFFECT[a] for a in unit_arm])
    b = np.array([bias[r] for r in raters])[:, None]
    latent = eff + q + diff + b + rng.normal(0, NOISE_SD, (len(raters), n_units))
    m = np.clip(np.rint(latent), -2, 2)
    truth = {
        AGREEMENT[0]: agreement.krippendorff_alpha(m, "ordinal", value_domain=SCALE),
        AGREEMENT[1]: agreement.fleiss_kappa(m.T, categories=SCALE),
        AGREEMENT[2]: agreement.mean_pairwise_kappa(m, SCALE),
    }
    for arm in arms:
        cols = m[:, unit_arm == arm]
        truth[f"share {arm}"] = float((cols >= 0).mean())
        truth[f"mean {arm}"] = float(cols.mean())
    for a, c in [(a, c) for i, a in enumerate(arms) for c in arms[i + 1:]]:
        truth[f"diff {a} - {c}"] = truth[f"mean {a}"] - truth[f"mean {c}"]
    long = pd.DataFrame({"rater": np.repeat(raters, n_units), "unit": np.tile(np.arange(n_units),
                                                                              len(raters)),
                         "score": m.ravel()})
    for rb in agreement.per_rater_bias(long, "rater", "unit", "score"):
        truth[f"offset {rb.rater}"] = rb.mean_offset
    return truth


def estimates(res) -> dict[str, tuple[float, float, float]]:
    """statistic -> (estimate, lo, hi) from a StudyResults."""
    out = {}
    for r in res.agreement.itertuples():
        out[r.statistic] = (r.estimate, r.lo, r.hi)
    for r in res.shares.itertuples():
        out[f"share {r.arm}"] = (r.share, r.lo, r.hi)
        out[f"share {r.arm} (item bootstrap)"] = (r.share, r.boot_lo, r.boot_hi)
    for r in res.paired.itertuples():
        out[f"diff {r.arm_a} - {r.arm_b}"] = (r.mean_diff, r.lo, r.hi)
    for r in res.bias.itertuples():
        out[f"offset {r.rater}"] = (r.mean_offset, r.lo, r.hi)
    return out


def main() -> None:
    import numpy as np

    from core.accounts import auth

    from core.ingest.demo import synthetic_reports
    from core.store.database import Store
    from core.studies import exports, lifecycle, progress, rating, results, stats

    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--raters", type=int, default=7)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20,
                    help="extra simulated studies (pure compute_results, n_boot 200) for "
                         "interval coverage; 0 to skip")
    ap.add_argument("--bertscore", action="store_true", help="also time BERTScore (MiniLM)")
    ap.add_argument("--html", help="copy the HTML summary here")
    ap.add_argument("--db", help="keep the study database here (a new file; default: a "
                                 "temporary one, deleted at the end)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    if args.db and Path(args.db).exists():
        raise SystemExit(f"--db {args.db}: the file exists; name a new one")
    store = Store(args.db or os.path.join(tmp, "bench.duckdb"))
    store.migrate()
    auth.create_user(store, "coord", "coordinator", "Passw0rd-x")
    coord = auth.sign_in(store, "coord", "Passw0rd-x")
    users = {}
    for i in range(args.raters):
        auth.create_user(store, f"rad{i}", "radiologist", "Passw0rd-x")
        users[f"rad{i}"] = auth.sign_in(store, f"rad{i}", "Passw0rd-x")
    raters = list(users)
    bias = {name: float(b) for name, b in zip(raters, np.linspace(-0.6, 0.6, args.raters))}
    store.import_reports(synthetic_reports(max(400, args.items * 2), seed=0), file="bench",
                         fmt="demo")

    def texts(reports, arm):
        return [degrade(r["impression"], quality(r["id"], arm), _hseed("drop", r["id"], arm))
                for r in reports]

    texts.model_name = "simulated"
    arms = list(ARM_EFFECT)
    t0 = time.perf_counter()
    sid = lifecycle.create_study(store, coord, lifecycle.StudyDesign(
        name="Simulated study", arms=arms, n_items=args.items, seed=1, raters=raters,
        k=args.k), make_texts=texts)
    t_create = time.perf_counter() - t0

    units = store.study_units(sid)
    unit_of = units.set_index("unit_id")
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, DIFF_SD, args.items)
    t_next, t_submit = [], []
    for name, user in users.items():
        while True:
            t0 = time.perf_counter()
            task = rating.next_task(store, user, sid)
            t_next.append(time.perf_counter() - t0)
            if task is None:
                break
            u = unit_of.loc[store.get_study_task(task.task_id)["unit_id"]]   # the oracle
            value, answers, _ = rate(rng, u["arm"], quality(int(u["report_id"]), u["arm"]),
                                     bias[name], difficulty[int(u["slot"])])
            t0 = time.perf_counter()
            rating.submit(store, user, task.task_id, value, answers=answers,
                         time_spent_ms=int(rng.lognormal(9, 0.4)))
            t_submit.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    prog = progress.progress(store, coord, sid)
    t_progress = time.perf_counter() - t0
    lifecycle.close(store, coord, sid)
    t0 = time.perf_counter()
    res = results.results(store, coord, sid, n_boot=args.n_boot, metrics=("rouge_l", "label_f1"))
    t_results = time.perf_counter() - t0
    t0 = time.perf_counter()
    results.results(store, coord, sid, n_boot=args.n_boot, metric_fns={})
    t_results_nometrics = time.perf_counter() - t0
    t_bert = None
    if args.bertscore:
        t0 = time.perf_counter()
        res = results.results(store, coord, sid, n_boot=args.n_boot,
                            metrics=("rouge_l", "label_f1", "bertscore"))
        t_bert = time.perf_counter() - t0
    html_path = os.path.join(tmp, "summary.html")
    t0 = time.perf_counter()
    html = exports.export_html(store, coord, sid, html_path, res=res)
    t_html = time.perf_counter() - t0
    if args.html:
        shutil.copy(html_path, args.html)
    t0 = time.perf_counter()
    table = exports.ratings_table(store, coord, sid)
    t_table = time.perf_counter() - t0

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"study: {args.items} items x {len(arms)} arms, {args.raters} raters, k={args.k}: "
          f"{len(t_submit)} ratings ({prog.total} tasks)")
    print(f"create (sample + stratify, texts, blind, assign): {t_create:.2f} s")
    med = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    p95 = lambda xs: 1000 * sorted(xs)[int(0.95 * len(xs))]  # noqa: E731
    print(f"next_task: median {med(t_next):.1f} ms, p95 {p95(t_next):.1f} ms; submit: median "
          f"{med(t_submit):.1f} ms, p95 {p95(t_submit):.1f} ms")
    print(f"progress dashboard: {1000 * t_progress:.0f} ms")
    print(f"results, n_boot={args.n_boot}: {t_results:.2f} s with ROUGE-L + label F1, "
          f"{t_results_nometrics:.2f} s without metrics"
          + (f", {t_bert:.2f} s with BERTScore too" if t_bert is not None else ""))
    print(f"HTML summary: {1000 * t_html:.0f} ms, {len(html) / 1024:.0f} KiB, "
          f"{html.count('<svg')} inline SVG figures; ratings table with key: "
          f"{1000 * t_table:.0f} ms, {len(table)} rows")

    t0 = time.perf_counter()
    truth = population_truth(raters, bias)
    t_truth = time.perf_counter() - t0
    est = estimates(res)
    print(f"\ntruth: fully crossed simulation, {args.raters} raters x 20,000 units "
          f"({t_truth:.1f} s)")
    print(f"{'statistic':44} {'estimate':>8} {'95% CI':>17} {'truth':>8}  in CI")
    for key in [*AGREEMENT, *[k for k in est if k.startswith(("share", "diff", "offset"))]]:
        t = truth.get(key.replace(" (item bootstrap)", ""))
        e, lo, hi = est[key]
        inside = "yes" if lo <= t <= hi else "NO"
        print(f"{key:44} {e:8.3f} [{lo:7.3f}, {hi:7.3f}] {t:8.3f}  {inside}")

    # Automatic metrics vs human ratings and vs the noise-free truth of each text.
    um = res.unit_metrics.merge(units[["slot", "arm", "report_id"]], on=["slot", "arm"])
    true_score = [ARM_EFFECT[a] + quality(int(rid), a) + difficulty[int(s)]
                  for s, a, rid in zip(um["slot"], um["arm"], um["report_id"])]
    rho_h, _ = stats.spearman(um["mean_rating"], true_score)
    print(f"\nautomatic metrics on {len(um)} generated texts (vs original impression); Spearman "
          f"rho with the mean human rating, and with the planted true score "
          f"(mean human rating vs truth: {rho_h:.3f}):")
    for r in res.correlations.itertuples():
        rho_t, _ = stats.spearman(um[r.metric], true_score)
        print(f"  {r.metric:10} rho(human) {r.rho:+.3f} (p {r.p_value:.2g}, n {r.n}), "
              f"rho(truth) {rho_t:+.3f}")

    if args.reps > 0:
        base = res.ratings.copy()
        study_row = res.study | {"arms": arms, "scale": store.get_study(sid)["scale"],
                                 "questions": store.get_study(sid)["questions"]}
        hits: dict[str, list[bool]] = {}
        values: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for rep in range(args.reps):
            r2 = np.random.default_rng(1000 + rep)
            diff2 = r2.normal(0, DIFF_SD, args.items)
            q2 = {(s, a): (0.0 if a == "original" else r2.normal(0, Q_SD))
                  for s in range(args.items) for a in arms}
            frame = base.copy()
            frame["rating"] = [rate(r2, a, q2[(int(s), a)], bias[name], diff2[int(s)])[0]
                               for s, a, name in zip(frame["slot"], frame["arm"],
                                                     frame["rater"])]
            rep_res = results.compute_results(study_row, frame, n_boot=200, seed=rep,
                                            metric_fns={})
            for key, (e, lo, hi) in estimates(rep_res).items():
                t = truth.get(key.replace(" (item bootstrap)", ""))
                if t is None or math.isnan(lo):
                    continue
                hits.setdefault(key, []).append(lo <= t <= hi)
                values.setdefault(key, []).append(e)
        t_reps = time.perf_counter() - t0
        print(f"\ncoverage of the 95% intervals over {args.reps} more simulated studies of the "
              f"same design (n_boot 200; {t_reps / args.reps:.2f} s each):")
        print(f"{'statistic':44} {'mean est':>8} {'truth':>8} {'bias':>7} {'covered':>8}")
        for key in [*AGREEMENT, *[k for k in hits if k.startswith(("share", "diff"))]]:
            t = truth[key.replace(" (item bootstrap)", "")]
            m = float(np.mean(values[key]))
            print(f"{key:44} {m:8.3f} {t:8.3f} {m - t:+7.3f} "
                  f"{sum(hits[key]):>4}/{len(hits[key])}")
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
