"""Impression quality on the fixed IU X-ray test split (issue 4): baselines vs the shipped pipeline.

The retrieval index holds the ``train`` + ``dev`` reports only (:mod:`core.ingest.splits`); the ``test``
reports are only ever queried, never indexed, tuned on or trained on. Printed as markdown, written
as JSON to ``bench/out/quality.json``.

Systems (every metric from :func:`core.evaluation.metrics.evaluate`; critical recall defined below):

(a) ``constant``: "No acute cardiopulmonary abnormality." for every report;
(b) ``tfidf-1nn``: the documented baseline: plain ``sklearn`` ``TfidfVectorizer()`` (word unigrams,
    defaults) over the findings, copy the impression of the most similar indexed report;
(c) ``c2f default``: :class:`core.generation.pipeline.CoarseToFine` with :class:`core.generation.pipeline.C2FConfig`
    defaults, exactly what ``python -m core generate`` runs (its ``llm="off"`` never drafts while
    neighbours exist, so loading the model changes nothing), style ``default``;
(d) ``c2f + LLM`` (``--llm-n`` reports, a subset because SmolLM2 on 2 cores is slow):
    ``llm="auto"`` and ``llm="always"`` with the embedded SmolLM2-135M-Instruct (and the shared
    base adapter of :mod:`core.learning.sft` when one fits); compared with (b) and (c) on the same subset.

Also: typo robustness (3% of the findings words of the test queries get one character typo,
seeded; the index is untouched), the four styles (label F1 vs the reference, ROUGE-L vs the
default output, one example each), speed (end-to-end impressions/s in one batch, tokens/s per
stage from :class:`core.generation.pipeline.StageStats`), ``--tune``: a grid over k/power/bonuses on
the ``dev`` split with a ``train``-only index (never on test), and ``--tune-loo``: the vote settings
one at a time, leave-one-out over train + dev (2,528 reports: a gain of a few tenths is visible).

Critical-finding recall: over the (report, observation) pairs where the *findings* report a
critical finding (:func:`core.clinical.verifier.check_impression` of the findings against an empty
impression), the share that the impression states (not listed as missing).

    .venv/bin/python bench/quality.py                      # everything, ~17 min on dev-2c at load 10
    .venv/bin/python bench/quality.py --llm-n 0 --no-bertscore   # quick: no model, no MiniLM
    .venv/bin/python bench/quality.py --tune [--tune-llm]  # dev-split grid only (~20 min)
    .venv/bin/python bench/quality.py --tune-loo           # leave-one-out, train + dev (~5 min)
    .venv/bin/python bench/quality.py --speed-only         # the speed table only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.clinical.verifier import check_impression  # noqa: E402
from core.evaluation.metrics import evaluate, inject_typos, label_f1, rouge, rouge_l  # noqa: E402
from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.generation.retrieval import RetrievalIndex, tidy  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402

IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"
CONSTANT = "No acute cardiopulmonary abnormality."
STYLES = ("default", "brief", "bullets", "comprehensive")


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ------------------------------------------------------------------------------------- systems

class TfidfNN:
    """The documented baseline: plain word TF-IDF over findings, copy the 1-NN impression."""

    def __init__(self, index_rows: list[dict]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.rows = index_rows
        self.vec = TfidfVectorizer().fit([r["findings"] for r in index_rows])
        self.matrix = self.vec.transform([r["findings"] for r in index_rows])

    def predict(self, reports: list[dict], leave_one_out: bool = False) -> list[str]:
        """The nearest index row's impression; ``leave_one_out``: the reports are the index rows
        themselves, and none is its own neighbour."""
        sims = (self.vec.transform([r["findings"] for r in reports]) @ self.matrix.T).toarray()
        if leave_one_out:
            assert reports is self.rows, "leave-one-out queries the index rows themselves"
            sims[range(len(reports)), range(len(reports))] = -1.0
        return [tidy(self.rows[int(i)]["impression"]) for i in sims.argmax(axis=1)]


def critical_recall(findings: list[str], preds: list[str]) -> dict:
    """Share of the critical findings reported in the findings that the impressions state."""
    total = stated = reports = 0
    for f, p in zip(findings, preds):
        crit = set(check_impression(f, "").missing_critical)
        if not crit:
            continue
        reports += 1
        total += len(crit)
        stated += len(crit - set(check_impression(f, p).missing_critical))
    return {"critical_recall": stated / total if total else None, "critical_n": total, "critical_reports": reports}


CRITICAL_OBS = ("Pneumothorax", "Free Air", "Edema", "Consolidation", "Pneumonia", "Mass")


def score(preds: list[str], refs: list[str], findings: list[str], bert: bool) -> dict:
    res = evaluate(preds, refs, findings=findings, with_bertscore=bert)
    res.update(critical_recall(findings, preds))
    lab = res.pop("label")
    crit = [x for x in lab["per_label"] if x.label in CRITICAL_OBS]
    support = sum(x.support for x in crit)
    res["critical_label_recall_ref"] = sum(x.tp for x in crit) / support if support else None
    res["critical_label_support_ref"] = support
    res["label_micro_f1"] = lab["micro_f1"]
    res["label_macro_f1"] = lab["macro_f1"]
    res["label_micro_f1_no_nf"] = lab["micro_f1_no_nf"]
    res["label_exact"] = lab["exact_match"]
    return res


COLS = [("rouge1", "R-1", "{:.2f}"), ("rouge2", "R-2", "{:.2f}"), ("rougeL", "R-L", "{:.2f}"),
        ("bleu", "BLEU", "{:.2f}"), ("bertscore_f1", "BERTScore F1", "{:.4f}"),
        ("label_micro_f1", "label micro-F1", "{:.3f}"), ("label_micro_f1_no_nf", "micro-F1 w/o NF", "{:.3f}"),
        ("label_macro_f1", "label macro-F1", "{:.3f}"), ("critical_recall", "critical recall", "{:.3f}"),
        ("critical_label_recall_ref", "crit. label recall vs ref", "{:.3f}"),
        ("consistency_pred", "consistency", "{:.3f}")]


def table(rows: dict[str, dict]) -> str:
    cols = [c for c in COLS if any(c[0] in r and r[c[0]] is not None for r in rows.values())]
    out = ["| system | n | " + " | ".join(c[1] for c in cols) + " |",
           "|---|---:|" + "---:|" * len(cols)]
    for name, r in rows.items():
        cells = [c[2].format(r[c[0]]) if r.get(c[0]) is not None else "-" for c in cols]
        out.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def paired_bootstrap(a: list[str], b: list[str], refs: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean per-report ROUGE-L of ``a`` minus ``b`` with a paired bootstrap 95% interval."""
    import random

    diff = [100 * (rouge_l(x, r) - rouge_l(y, r)) for x, y, r in zip(a, b, refs)]
    rng = random.Random(seed)
    n = len(diff)
    means = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return {"mean": sum(diff) / n, "ci95": [means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]],
            "better": sum(d > 0 for d in diff), "worse": sum(d < 0 for d in diff), "n_boot": n_boot}


def c2f_predict(c2f: CoarseToFine, reports: list[dict], style: str = "default", batch_size: int = 8):
    t0 = time.perf_counter()
    outs = c2f.generate(reports, style=style, batch_size=batch_size)
    wall = time.perf_counter() - t0
    return [o.text for o in outs], outs, c2f.last_stats.as_dict(), wall


# ------------------------------------------------------------------------------------- tuning

def tune(csv_path: Path, bert: bool) -> dict:
    """Grid over the vote settings on dev (index = train only). Prints the best settings."""
    train, dev = load_iu_csv(csv_path, "train"), load_iu_csv(csv_path, "dev")
    refs, findings = [r["impression"] for r in dev], [r["findings"] for r in dev]
    base = C2FConfig()
    results = []
    indexes = {}
    grid = []
    for ind_w in (0.0, 0.3):
        for k in (10, 20, 40):
            for power in (3.0, 6.0, 10.0):
                for cov in (0.0, 0.1, 0.2, 0.3):
                    grid.append(replace(base, k=k, power=power, coverage_bonus=cov,
                                        retrieval=replace(base.retrieval, indication_weight=ind_w)))
    for extra in ({"contradiction_penalty": 0.0}, {"contradiction_penalty": 0.4}, {"own_bonus": 0.0},
                  {"own_bonus": 0.1}, {"prior_penalty": 0.1}):
        grid.append(replace(base, **extra))
    grid.append(replace(base, retrieval=replace(base.retrieval, author_bonus=0.0)))
    grid.append(replace(base, retrieval=replace(base.retrieval, comparison_weight=0.2)))
    nn = TfidfNN(train).predict(dev)
    print(f"\n### --tune: dev split ({len(dev)} reports), index = train ({len(train)})\n")
    print(f"TF-IDF 1-NN on dev: ROUGE-L {rouge(nn, refs)['rougeL']:.2f}, label micro-F1 "
          f"{label_f1(nn, refs)['micro_f1']:.3f}\n")
    for cfg in grid:
        key = repr(cfg.retrieval)
        if key not in indexes:
            indexes[key] = RetrievalIndex.build(train, cfg.retrieval)
        preds = [o.text for o in CoarseToFine(indexes[key], None, cfg).generate(dev)]
        r = rouge(preds, refs)["rougeL"]
        f = label_f1(preds, refs)["micro_f1"]
        results.append({"config": asdict(cfg), "rougeL": r, "label_micro_f1": f, "default": cfg == base})
    results.sort(key=lambda x: -(x["rougeL"] + 20 * x["label_micro_f1"]))
    print("| rank | k | power | coverage | contradiction | own | prior | indication w | author | comparison w "
          "| R-L | label micro-F1 | |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    shown = results[:12] + [x for x in results[12:] if x["default"]]
    for x in shown:
        c = x["config"]
        rank = results.index(x) + 1
        print(f"| {rank} | {c['k']} | {c['power']} | {c['coverage_bonus']} | {c['contradiction_penalty']} | "
              f"{c['own_bonus']} | {c['prior_penalty']} | {c['retrieval']['indication_weight']} | "
              f"{c['retrieval']['author_bonus']} | {c['retrieval']['comparison_weight']} | {x['rougeL']:.2f} | "
              f"{x['label_micro_f1']:.3f} | {'**default**' if x['default'] else ''} |")
    print(f"\n(ranked by ROUGE-L + 20 x label micro-F1; {len(results)} configurations)")
    return {"dev_n": len(dev), "nn_rougeL": rouge(nn, refs)["rougeL"], "results": results}


def tune_loo(csv_path: Path, n_boot: int = 1000) -> dict:
    """Vote settings, leave-one-out over train + dev (never test): each report is drafted from all
    the others (``exclude_self``), so a setting is judged on 2,528 reports instead of dev's 286.
    Each setting is compared with the current default by a paired bootstrap of per-report ROUGE-L."""
    import random

    rows = load_iu_csv(csv_path, ("train", "dev"))
    refs = [r["impression"] for r in rows]
    base = C2FConfig()
    indexes: dict[str, RetrievalIndex] = {}

    def run(cfg: C2FConfig) -> tuple[list[float], list[str]]:
        key = repr(cfg.retrieval)
        if key not in indexes:
            indexes[key] = RetrievalIndex.build(rows, cfg.retrieval)
        texts = [o.text for o in CoarseToFine(indexes[key], None, replace(cfg, llm="off")).generate(rows)]
        return [100 * rouge_l(t, r) for t, r in zip(texts, refs)], texts

    b_scores, b_texts = run(base)
    nn = TfidfNN(rows).predict(rows, leave_one_out=True)
    vs_nn = paired_bootstrap(b_texts, nn, refs, n_boot)
    print(f"\n### --tune-loo: leave-one-out over train + dev ({len(rows)} reports)\n\n"
          f"current default (retrieval and vote, verified): ROUGE-L {sum(b_scores) / len(rows):.2f}, "
          f"label micro-F1 {label_f1(b_texts, refs)['micro_f1']:.3f}; TF-IDF 1-NN "
          f"{rouge(nn, refs)['rougeL']:.2f}, {label_f1(nn, refs)['micro_f1']:.3f}; default minus 1-NN "
          f"{vs_nn['mean']:+.2f} (95% CI {vs_nn['ci95'][0]:+.2f} to {vs_nn['ci95'][1]:+.2f})\n\n| setting | ROUGE-L | label micro-F1 | minus default "
          f"| 95% CI |\n|---|---:|---:|---:|---|")
    grid = {f"{name}={v}": replace(base, **{name: v}) for name, values in (
        ("coverage_bonus", (0.0, 0.1, 0.3)), ("contradiction_penalty", (0.0, 0.2, 0.4, 0.6)),
        ("prior_penalty", (0.0, 0.1, 0.2)), ("own_bonus", (0.0, 0.05, 0.1, 0.2)),
        ("power", (4.0, 8.0)), ("k", (10, 40))) for v in values if getattr(base, name) != v}
    grid.update({f"retrieval.{name}={v}": replace(base, retrieval=replace(base.retrieval, **{name: v}))
                 for name, values in (("author_bonus", (0.0, 0.1)), ("indication_weight", (0.0, 0.5)),
                                      ("comparison_weight", (0.0, 0.2)))
                 for v in values if getattr(base.retrieval, name) != v})
    rng, results = random.Random(0), []
    for name, cfg in grid.items():
        scores, texts = run(cfg)
        diff = [a - b for a, b in zip(scores, b_scores)]
        n = len(diff)
        means = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
        row = {"setting": name, "rougeL": sum(scores) / n, "label_micro_f1": label_f1(texts, refs)["micro_f1"],
               "diff": sum(diff) / n, "ci95": [means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]]}
        results.append(row)
        print(f"| {name} | {row['rougeL']:.2f} | {row['label_micro_f1']:.3f} | {row['diff']:+.2f} | "
              f"{row['ci95'][0]:+.2f} to {row['ci95'][1]:+.2f} |", flush=True)
    return {"n": len(rows), "default_rougeL": sum(b_scores) / len(rows), "nn_rougeL": rouge(nn, refs)["rougeL"],
            "default_minus_nn": vs_nn, "results": results}


# ------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default=str(IU_CSV), help="IU X-ray reports.csv")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality.json"))
    ap.add_argument("--no-bertscore", action="store_true")
    ap.add_argument("--llm-n", type=int, default=24,
                    help="test reports for llm=always (auto runs on all of them); 0: no model at all")
    ap.add_argument("--llm-modes", default="auto,always")
    ap.add_argument("--batch-size", type=int, default=8, help="model batch size")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    ap.add_argument("--typo-rate", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0, help="typo seed of the full evaluation")
    ap.add_argument("--extra-typo-seeds", default="1,2,3,4", help="more seeds: ROUGE-L/label F1 only")
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--speed-only", action="store_true", help="only the speed section (written to quality-speed.json)")
    ap.add_argument("--tune", action="store_true", help="only the dev-split grid (never test)")
    ap.add_argument("--tune-loo", action="store_true",
                    help="only the vote settings, leave-one-out over train + dev (never test)")
    args = ap.parse_args(argv)
    csv_path = Path(args.csv)
    if not csv_path.is_file():
        print(f"error: {csv_path}: no such file (the IU X-ray reports.csv)", file=sys.stderr)
        return 2
    bert = not args.no_bertscore
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.node(),
            "cpus": os.cpu_count(), "load_start": load_avg(), "command": " ".join(["bench/quality.py", *sys.argv[1:]])}
    print(f"# Impression quality on the IU X-ray test split\n\n{meta['date']}, {meta['cpus']} CPUs, "
          f"load average at start {meta['load_start']}\n")
    out_path = Path(args.out)
    if args.tune or args.tune_loo:
        res = {"meta": meta, "tune": tune_loo(csv_path) if args.tune_loo else tune(csv_path, bert)}
        out_path = out_path.with_name(out_path.stem + ("-tune-loo.json" if args.tune_loo else "-tune.json"))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=2, default=str))
        print(f"\nwrote {out_path}")
        return 0

    index_rows = load_iu_csv(csv_path, ("train", "dev"))
    test = load_iu_csv(csv_path, "test")
    assert not {r["uid"] for r in index_rows} & {r["uid"] for r in test}, "test leaked into the index"
    refs, findings = [r["impression"] for r in test], [r["findings"] for r in test]
    print(f"index: train+dev {len(index_rows)} reports; test: {len(test)} reports "
          f"(blank findings/impression dropped)\n")
    result: dict = {"meta": meta, "n_index": len(index_rows), "n_test": len(test)}

    # ---- (a)-(c): full test split
    cfg = C2FConfig()
    t0 = time.perf_counter()
    index = RetrievalIndex.build(index_rows, cfg.retrieval)
    build_s = time.perf_counter() - t0
    c2f = CoarseToFine(index, None, cfg)
    nn = TfidfNN(index_rows)
    if not args.speed_only:  # the quality sections
        preds = {"(a) constant normal": [CONSTANT] * len(test), "(b) TF-IDF 1-NN": nn.predict(test)}
        c2f_texts, c2f_outs, _, _ = c2f_predict(c2f, test)
        preds["(c) c2f default"] = c2f_texts
        systems = {name: score(p, refs, findings, bert) for name, p in preds.items()}
        human = critical_recall(findings, refs)
        human["consistency_ref"] = systems["(c) c2f default"].get("consistency_ref")
        print("## Systems (full test split)\n")
        print(table(systems))
        print(f"\nReference (radiologists') impressions: critical recall {human['critical_recall']:.3f} over "
              f"{human['critical_n']} critical findings in {human['critical_reports']} reports, consistency "
              f"{human['consistency_ref']:.3f}.")
        flagged = sum(bool(o.flags.get("needs_review")) for o in c2f_outs)
        repaired = sum(bool(o.flags.get("repaired")) for o in c2f_outs)
        print(f"c2f default: {flagged} of {len(test)} flagged needs_review, {repaired} repaired (critical finding added).")
        d_rl = systems["(c) c2f default"]["rougeL"] - systems["(b) TF-IDF 1-NN"]["rougeL"]
        d_f1 = systems["(c) c2f default"]["label_micro_f1"] - systems["(b) TF-IDF 1-NN"]["label_micro_f1"]
        boot = paired_bootstrap(c2f_texts, preds["(b) TF-IDF 1-NN"], refs)
        print(f"\n**c2f default - TF-IDF 1-NN: {d_rl:+.2f} ROUGE-L, {d_f1:+.3f} label micro-F1** "
              f"(goal: >= +2 ROUGE-L, F1 not lower). Paired bootstrap of the per-report ROUGE-L difference: "
              f"{boot['mean']:+.2f}, 95% CI {boot['ci95'][0]:+.2f} to {boot['ci95'][1]:+.2f} ({boot['n_boot']} resamples); "
              f"c2f better on {boot['better']} reports, worse on {boot['worse']}.")
        result.update({"systems": systems, "reference": human, "c2f_flagged": flagged, "c2f_repaired": repaired,
                       "delta_vs_nn": {"rougeL": d_rl, "label_micro_f1": d_f1, "bootstrap_rougeL": boot}})

        # ---- typo robustness
        noisy = [{**r, "findings": inject_typos(r["findings"], args.typo_rate, seed=args.seed)} for r in test]
        changed = sum(a["findings"] != b["findings"] for a, b in zip(test, noisy))
        typo = {"(b) TF-IDF 1-NN + typos": score(nn.predict(noisy), refs, findings, bert),
                "(c) c2f default + typos": score(c2f_predict(c2f, noisy)[0], refs, findings, bert)}
        drop_c2f = systems["(c) c2f default"]["rougeL"] - typo["(c) c2f default + typos"]["rougeL"]
        drop_nn = systems["(b) TF-IDF 1-NN"]["rougeL"] - typo["(b) TF-IDF 1-NN + typos"]["rougeL"]
        print(f"\n## Typo robustness ({args.typo_rate:.0%} of findings words, seed {args.seed}; "
              f"{changed} of {len(test)} findings changed; index untouched; metrics against the clean findings)\n")
        print(table(typo))
        per_seed = [{"seed": args.seed, "drop_c2f": drop_c2f, "drop_nn": drop_nn,
                     "f1_drop_c2f": systems["(c) c2f default"]["label_micro_f1"]
                     - typo["(c) c2f default + typos"]["label_micro_f1"]}]
        for seed in [int(x) for x in args.extra_typo_seeds.split(",") if x.strip()]:
            nz = [{**r, "findings": inject_typos(r["findings"], args.typo_rate, seed=seed)} for r in test]
            tc = c2f_predict(c2f, nz)[0]
            per_seed.append({"seed": seed, "drop_c2f": systems["(c) c2f default"]["rougeL"] - rouge(tc, refs)["rougeL"],
                             "drop_nn": systems["(b) TF-IDF 1-NN"]["rougeL"] - rouge(nn.predict(nz), refs)["rougeL"],
                             "f1_drop_c2f": systems["(c) c2f default"]["label_micro_f1"] - label_f1(tc, refs)["micro_f1"]})
        mean = {k: sum(x[k] for x in per_seed) / len(per_seed) for k in ("drop_c2f", "drop_nn", "f1_drop_c2f")}
        print(f"\nROUGE-L drop, seed {args.seed}: c2f default {drop_c2f:.2f}, TF-IDF 1-NN {drop_nn:.2f}. Over seeds "
              f"{', '.join(str(x['seed']) for x in per_seed)}: c2f mean {mean['drop_c2f']:.2f} (range "
              f"{min(x['drop_c2f'] for x in per_seed):.2f} to {max(x['drop_c2f'] for x in per_seed):.2f}), "
              f"TF-IDF 1-NN mean {mean['drop_nn']:.2f}; c2f label micro-F1 drop mean {mean['f1_drop_c2f']:.3f} "
              f"(goal: c2f ROUGE-L drop < 2; negative = better with typos)")
        result["typos"] = {"rate": args.typo_rate, "seed": args.seed, "changed": changed, "systems": typo,
                           "drop_rougeL_c2f": drop_c2f, "drop_rougeL_nn": drop_nn, "per_seed": per_seed,
                           "mean_drop": mean}

        # ---- styles
        print("\n## Styles (full test split; same retrieval and vote, rendered by core.generation.styles)\n")
        print("| style | label micro-F1 vs reference | critical recall | ROUGE-L vs reference | ROUGE-L vs default "
              "output | identical to default | mean words |\n|---|---:|---:|---:|---:|---:|---:|")
        styles: dict = {}
        style_texts = {}
        for st in STYLES:
            texts = c2f_texts if st == "default" else c2f_predict(c2f, test, style=st)[0]
            style_texts[st] = texts
            cr = critical_recall(findings, texts)
            styles[st] = {"label_micro_f1": label_f1(texts, refs)["micro_f1"], "critical_recall": cr["critical_recall"],
                          "rougeL_ref": rouge(texts, refs)["rougeL"], "rougeL_vs_default": rouge(texts, c2f_texts)["rougeL"],
                          "identical_to_default": sum(a == b for a, b in zip(texts, c2f_texts)) / len(texts),
                          "mean_words": sum(len(t.split()) for t in texts) / len(texts)}
            s = styles[st]
            print(f"| {st} | {s['label_micro_f1']:.3f} | {s['critical_recall']:.3f} | {s['rougeL_ref']:.2f} | "
                  f"{s['rougeL_vs_default']:.2f} | {s['identical_to_default']:.2f} | {s['mean_words']:.1f} |")
        # an example: the first test report whose default impression is not the plain normal one
        from core.clinical.labeler import label, positive_findings

        def abnormal(t: str) -> bool:
            return bool(positive_findings(label(t)))

        ex = next((i for i, t in enumerate(c2f_texts) if abnormal(t) and 6 <= len(t.split()) <= 20
                   and check_impression(findings[i], t).ok), 0)
        print(f"\nExample (test uid {test[ex]['uid']}). Findings: {findings[ex]!r}\n")
        for st in STYLES:
            body = style_texts[st][ex].replace("\n", "<br>")
            print(f"- **{st}**: {body}")
        result["styles"] = {"metrics": styles, "example": {"uid": test[ex]["uid"], "findings": findings[ex],
                                                           **{st: style_texts[st][ex] for st in STYLES}}}

    # ---- speed of the default pipeline
    runs = []
    for _ in range(max(1, args.speed_repeats)):  # a fresh pipeline each time: its label cache starts empty
        _, _, stats, wall = c2f_predict(CoarseToFine(index, None, cfg), test)
        runs.append((wall, stats))
    wall, stats = min(runs, key=lambda x: x[0])
    speed = {"n": len(test), "wall_s": wall, "all_runs_impressions_per_s": [len(test) / w for w, _ in runs], "impressions_per_s": len(test) / wall, "index_build_s": build_s,
             "stages": stats, "load": load_avg(),
             "retrieve_findings_tokens_per_s": stats["findings_tokens"] / stats["retrieve_s"] if stats["retrieve_s"] else None,
             "vote_reports_per_s": len(test) / stats["vote_s"] if stats["vote_s"] else None,
             "fine_reports_per_s": len(test) / stats["fine_s"] if stats["fine_s"] else None}
    print(f"\n## Speed: default pipeline, {len(test)} test reports in one batch, best of {len(runs)} "
          f"(fresh pipeline each run; load average {speed['load']}; all runs: "
          f"{', '.join(f'{len(test) / w:.1f}' for w, _ in runs)} impressions/s)\n")
    print("| stage | seconds | throughput |\n|---|---:|---:|")
    print(f"| index build (train+dev, once per import, cached on disk) | {build_s:.2f} | {len(index_rows) / build_s:.0f} reports/s |")
    print(f"| 1. retrieve (TF-IDF char+word, k={cfg.k}) | {stats['retrieve_s']:.3f} | "
          f"{speed['retrieve_findings_tokens_per_s']:.0f} findings tokens/s |")
    print(f"| 2. MBR vote | {stats['vote_s']:.3f} | {speed['vote_reports_per_s']:.0f} reports/s |")
    print(f"| 3. LLM draft (off in the default) | {stats['llm_s']:.3f} | - |")
    print(f"| 4-6. check, repair, style | {stats['fine_s']:.3f} | {speed['fine_reports_per_s']:.0f} reports/s |")
    print(f"| **end to end** | {wall:.3f} | **{speed['impressions_per_s']:.1f} impressions/s** |")
    one = CoarseToFine(index, None, cfg)  # the app's case: one report at a time, a long-lived pipeline
    lat = []
    for r in test[:60]:
        t0 = time.perf_counter()
        one.generate([r])
        lat.append(1000 * (time.perf_counter() - t0))
    lat.sort()
    speed["single_report_ms"] = {"n": len(lat), "p50": lat[len(lat) // 2], "p90": lat[int(0.9 * len(lat)) - 1],
                                 "max": lat[-1]}
    print(f"\nOne report per call (first {len(lat)} test reports, one long-lived pipeline): p50 "
          f"{speed['single_report_ms']['p50']:.0f} ms, p90 {speed['single_report_ms']['p90']:.0f} ms, max "
          f"{speed['single_report_ms']['max']:.0f} ms.")
    result["speed"] = speed

    # ---- (d) LLM drafting, subset
    if args.llm_n > 0 and not args.speed_only:
        result["llm"] = llm_section(args, index, nn, test, bert)

    meta["load_end"] = load_avg()
    if args.speed_only:
        out_path = out_path.with_name(out_path.stem + "-speed.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nload average at end {meta['load_end']}; wrote {out_path}")
    return 0


def llm_section(args, index, nn: TfidfNN, test: list[dict], bert: bool) -> dict:
    """(d): ``llm="auto"`` over the whole test split (the model drafts only where the neighbours
    disagree), ``llm="always"`` over the first ``--llm-n`` test reports; baselines on the same rows."""
    import torch

    from core.generation.checkpoint import DEFAULT_MODEL_DIR
    from core.generation.models import ModelSpec, load_generator

    out: dict = {}
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        print(f"\n## (d) LLM drafting: skipped, no model at {DEFAULT_MODEL_DIR} (run python -m core setup)")
        out["skipped"] = "no model"
        return out
    torch.set_num_threads(args.threads)
    gen = load_generator(ModelSpec(path=DEFAULT_MODEL_DIR, device="cpu"))
    base_adapter = None
    try:
        from core.adapters.base import use_base_adapter

        base_adapter = use_base_adapter(gen)
    except Exception as exc:  # noqa: BLE001 - optional module of another issue; report and go on
        print(f"(base adapter unavailable: {exc})")
    out["base_adapter"] = base_adapter
    for mode in [m.strip() for m in args.llm_modes.split(",") if m.strip()]:
        subset = test if mode == "auto" else test[: args.llm_n]
        refs, findings = [r["impression"] for r in subset], [r["findings"] for r in subset]
        rows = {"(b) TF-IDF 1-NN": score(nn.predict(subset), refs, findings, bert),
                "(c) c2f default": score([o.text for o in CoarseToFine(index, None, C2FConfig()).generate(subset)],
                                         refs, findings, bert)}
        c2f = CoarseToFine(index, gen, C2FConfig(llm=mode), base_adapter=base_adapter)
        texts, outs, stats, wall = c2f_predict(c2f, subset, batch_size=args.batch_size)
        name = f"(d) c2f llm={mode}" + (" + base adapter" if base_adapter else " (bare SmolLM2-135M)")
        rows[name] = score(texts, refs, findings, bert)
        won = sum(o.flags.get("from") == "model" for o in outs)
        s = {**stats, "wall_s": wall, "drafts": stats["n_llm"], "draft_won_vote": won,
             "prompt_tokens_per_s": stats["llm_prompt_tokens"] / stats["llm_s"] if stats["llm_s"] else None,
             "new_tokens_per_s": stats["llm_new_tokens"] / stats["llm_s"] if stats["llm_s"] else None,
             "impressions_per_s": len(subset) / wall, "load": load_avg(),
             "examples": [{"uid": r["uid"], "text": o.text, "from": o.flags.get("from")}
                          for r, o in zip(subset, outs) if o.flags.get("llm")][:5]}
        which = "all test reports" if mode == "auto" else f"first {len(subset)} test reports (file order)"
        dtype = str(gen.dtype).removeprefix("torch.")
        print(f"\n## (d) LLM drafting, llm={mode}: {which}; SmolLM2-135M-Instruct {dtype} on CPU, "
              f"{args.threads} torch threads, batch {args.batch_size}, adapter: {base_adapter or 'none (bare model)'}\n")
        print(table(rows))
        pt = f"{s['prompt_tokens_per_s']:.0f}" if s["prompt_tokens_per_s"] else "-"
        nt = f"{s['new_tokens_per_s']:.1f}" if s["new_tokens_per_s"] else "-"
        print(f"\nDrafts {s['drafts']} of {len(subset)}; a draft won the vote {won} times. LLM stage "
              f"{s['llm_s']:.1f} s: {s['llm_prompt_tokens']} prompt tokens ({pt}/s), {s['llm_new_tokens']} new tokens "
              f"({nt}/s), both over the same stage time (prefill and decode are not timed apart); end to end "
              f"{s['impressions_per_s']:.2f} impressions/s (load average {s['load']}).")
        for e in s["examples"][:3]:
            print(f"- uid {e['uid']} ({e['from']}): {e['text']}")
        out[mode] = {"n": len(subset), "systems": rows, "stage": s}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
