"""Where should the model write, and when is its text shown? A sweep on held-out reports that
are never test: the dev split (index = train) and ``--loo`` train reports (leave-one-out).

One pass of the coarse stage and one of the model (under the base adapter, ``llm="always"``);
then, for each threshold t, the model's text is kept where the vote agreement is below t and the
verified coarse draft elsewhere; with the consensus check (``C2FConfig(llm="auto")``'s today) the
model's text is kept there only where :meth:`CoarseToFine.prefers_model` says it agrees with the
neighbours' impressions more than the draft. t = 0 is retrieval only, t = 2 the model everywhere.
Each row's paired bootstrap is against the setting before 2026-12-08 (t = 0.45, no check).

    IMPRESSIONIST_BASE_ADAPTER=core/assets/base-adapter .venv/bin/python bench/tune_writer.py [--loo 500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.evaluation.metrics import label_f1, rouge  # noqa: E402
from core.generation.check import fails  # noqa: E402
from core.generation.retrieval import RetrievalIndex, consensus, tidy  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402
from quality import IU_CSV, paired_bootstrap  # noqa: E402


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


GRID = (0.0, 0.3, 0.45, 0.6, 0.8, 2.0)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loo", type=int, default=500,
                    help="train reports (a seeded sample) also queried, leave-one-out (0: dev only)")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="the model's dtype (auto: bfloat16 on a CPU with native bf16, else float32)")
    args = ap.parse_args(argv)

    from core.config import settings
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.base import use_base_adapter

    torch.set_num_threads(2)
    train, dev = load_iu_csv(IU_CSV, "train"), load_iu_csv(IU_CSV, "dev")
    rng = random.Random(0)
    queries = dev + (rng.sample(train, args.loo) if args.loo else [])
    n_dev = len(dev)
    refs = [r["impression"] for r in queries]
    seen = Counter(_norm(r["findings"]) for r in train)  # (a LOO query's own findings are in it once)
    novel = [i for i, r in enumerate(queries) if seen[_norm(r["findings"])] == (0 if i < n_dev else 1)]
    config = C2FConfig()
    index = RetrievalIndex.build(train, config.retrieval)
    coarse = CoarseToFine(index, None, replace(config, llm="off"))
    c_out = coarse.generate(queries)
    _, neighbours, votes = coarse.coarse(queries)
    gen = load_generator(ModelSpec(path=settings().model_path, device="cpu", dtype=args.dtype))
    base = use_base_adapter(gen)
    dtype = str(gen.dtype).removeprefix("torch.")
    t0 = time.perf_counter()
    m_out = CoarseToFine(index, gen, replace(config, llm="always"), base_adapter=base).generate(queries)
    print(f"# dev split {n_dev} reports + {args.loo} leave-one-out train reports ({len(novel)} whose "
          f"findings are not verbatim in the index), index train {len(train)}; model ({dtype}) pass "
          f"{time.perf_counter() - t0:.0f} s; {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}\n")
    # the check as shipped: both texts verified, scored alike (and a draft that fails the check
    # never replaces the model's text); as first written (2026-12-08 00:19): the model's verified
    # text against the vote's own score of the raw draft, reader bonus included
    shipped = [coarse.prefers_model(q, nb, m.text, c.text) or fails(c.flags)
               for q, nb, m, c in zip(queries, neighbours, m_out, c_out)]
    first = [not nb or not v["text"] or consensus(
        [tidy(m.text)], *coarse.support(nb), [coarse._prior(q, tidy(m.text))]).scores[0] > v["score"]
        for q, nb, m, v in zip(queries, neighbours, m_out, votes)]
    checks = {"no": [True] * len(queries), "first (vote score)": first, "yes (shipped)": shipped}

    def texts(t: float, keep: list[bool]) -> list[str]:
        return [m.text if c.flags["agreement"] < t and k else c.text for c, m, k in zip(c_out, m_out, keep)]

    before = texts(0.45, checks["no"])
    print("| threshold t | consensus check | model texts shown | ROUGE-L | not in index | label micro-F1 | "
          "- before, paired bootstrap | not in index |\n|---:|---|---:|---:|---:|---:|---|---|")
    rows = []
    for t in GRID:
        for check, keep in checks.items():
            got = texts(t, keep)
            b, bn = paired_bootstrap(got, before, refs), paired_bootstrap(
                [got[i] for i in novel], [before[i] for i in novel], [refs[i] for i in novel])
            row = {"t": t, "check": check, "model": sum(g != c.text for g, c in zip(got, c_out)),
                   "rougeL": rouge(got, refs)["rougeL"],
                   "rougeL_novel": rouge([got[i] for i in novel], [refs[i] for i in novel])["rougeL"],
                   "label_f1": label_f1(got, refs)["micro_f1"], "vs_before": b, "vs_before_novel": bn}
            rows.append(row)
            print(f"| {t} | {check} | {row['model']} | {row['rougeL']:.2f} | "
                  f"{row['rougeL_novel']:.2f} | {row['label_f1']:.3f} | {b['mean']:+.2f} ({b['ci95'][0]:+.2f} "
                  f"to {b['ci95'][1]:+.2f}) | {bn['mean']:+.2f} ({bn['ci95'][0]:+.2f} to {bn['ci95'][1]:+.2f}) |")
    out = ROOT / "bench" / "out" / f"tune_writer-{dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
