"""Where should the model write? A dev-split sweep (never test) of ``llm="auto"``'s threshold.

Index = train only; queries = the dev split. One pass of the coarse stage and one of the model
(under the base adapter, ``llm="always"``); then, for each threshold t, the model's text is kept
where the vote agreement is below t and the verified coarse draft elsewhere (what
``C2FConfig(llm="auto", llm_threshold=t)`` shows). t = 0 is retrieval only, t = 2 the model
everywhere.

    IMPRESSIONIST_BASE_ADAPTER=core/assets/base-adapter .venv/bin/python bench/tune_writer.py [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.evaluation.metrics import label_f1, rouge  # noqa: E402
from core.generation.retrieval import RetrievalIndex  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402
from quality import IU_CSV  # noqa: E402

GRID = (0.0, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8, 2.0)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="the model's dtype (auto: bfloat16 on a CPU with native bf16, else float32)")
    args = ap.parse_args(argv)

    from core.config import settings
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.base import use_base_adapter

    torch.set_num_threads(2)
    train, dev = load_iu_csv(IU_CSV, "train"), load_iu_csv(IU_CSV, "dev")
    refs = [r["impression"] for r in dev]
    config = C2FConfig()
    index = RetrievalIndex.build(train, config.retrieval)
    c_out = CoarseToFine(index, None, replace(config, llm="off")).generate(dev)
    gen = load_generator(ModelSpec(path=settings().model_path, device="cpu", dtype=args.dtype))
    base = use_base_adapter(gen)
    dtype = str(gen.dtype).removeprefix("torch.")
    t0 = time.perf_counter()
    m_out = CoarseToFine(index, gen, replace(config, llm="always"), base_adapter=base).generate(dev)
    print(f"# dev split {len(dev)} reports, index train {len(train)}; model ({dtype}) pass "
          f"{time.perf_counter() - t0:.0f} s; {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| threshold t | model texts | ROUGE-L | label micro-F1 |\n|---:|---:|---:|---:|")
    rows = []
    for t in GRID:
        pick = [m if c.flags["agreement"] < t else c for c, m in zip(c_out, m_out)]
        texts = [o.text for o in pick]
        row = {"t": t, "model": sum(c.flags["agreement"] < t for c in c_out),
               "rougeL": rouge(texts, refs)["rougeL"], "label_f1": label_f1(texts, refs)["micro_f1"]}
        rows.append(row)
        print(f"| {t} | {row['model']} | {row['rougeL']:.2f} | {row['label_f1']:.3f} |")
    out = ROOT / "bench" / "out" / f"tune_writer-{dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
