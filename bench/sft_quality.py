"""Draft quality with and without the SFT base adapter, on the test split.

For a seeded sample of test-split reports of the store (the retrieval index holds train + dev
only), prints ROUGE-L and label micro-F1 of (a) the model's few-shot draft alone and (b) the full
coarse-to-fine pipeline with ``llm="always"`` (the draft joins the vote, then the clinical check
and style), for the bare base model and/or an adapter::

    IMPRESSIONIST_DATA=/tmp/sft_data python bench/sft_quality.py --n 100 --adapter none \\
        --json /tmp/sft_base.json
    IMPRESSIONIST_DATA=/tmp/sft_data python bench/sft_quality.py --n 100 \\
        --adapter core/assets/base-adapter --json /tmp/sft_adapter.json \\
        --record core/assets/base-adapter --baseline /tmp/sft_base.json

``--record DIR`` writes the scores (this run = adapter, ``--baseline`` JSON = base model) into
DIR's manifest.json and model card README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("draft_rougeL", "pipeline_rougeL", "draft_label_f1", "pipeline_label_f1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="test reports (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", default="auto",
                    help="'none' (bare model), 'auto' (the shared base adapter) or a directory")
    ap.add_argument("--model", help="base checkpoint (default: the configured one)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", help="write the scores here")
    ap.add_argument("--record", help="adapter directory whose manifest/README get the scores")
    ap.add_argument("--baseline", help="JSON of a --adapter none run (for --record)")
    args = ap.parse_args(argv)

    import torch

    from core.config import settings
    from core.generation.models import ModelSpec, load_generator
    from core.learning.sft import eval_reports, evaluate_drafts
    from core.adapters.base import record_scores
    from core.store.database import Store

    if args.threads:
        torch.set_num_threads(args.threads)
    store = Store(settings().db_path)
    reports, index = eval_reports(store, args.n, args.seed)
    store.close()  # nothing below needs the database
    gen = load_generator(ModelSpec(path=args.model or settings().model_path, device="cpu",
                                   dtype="float32"))
    name, where = None, "none"
    if args.adapter == "auto":
        from core.adapters.base import use_base_adapter

        name = use_base_adapter(gen)
        where = "shared base adapter" if name else "none (no shared base adapter fits)"
    elif args.adapter != "none":
        gen.load_adapter("sft-eval", args.adapter)
        name, where = "sft-eval", args.adapter
    t0 = time.perf_counter()
    res = evaluate_drafts(gen, index, reports, name, batch_size=args.batch_size, progress=True)
    out = {k: round(res[k], 2) for k in KEYS}
    out.update(n=res["n"], adapter=where, seconds=round(time.perf_counter() - t0, 1),
               load=os.getloadavg()[0], examples=[
                   {"uid": r["external_id"], "ref": r["impression"], "draft": d, "final": f}
                   for r, d, f in list(zip(reports, res["drafts"], res["finals"]))[:5]])
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.record:
        base = json.loads(Path(args.baseline).read_text()) if args.baseline else None
        cmd = "IMPRESSIONIST_DATA=<db with the IU import> python bench/sft_quality.py " \
              f"--n {args.n} --seed {args.seed} --adapter none | --adapter {args.adapter}"
        record_scores(args.record, {
            "split": "test", "n": res["n"], "seed": args.seed,
            "note": f"{res['n']} test-split reports (seeded sample), retrieval index on train + "
                    "dev; greedy decoding, max_new_tokens 48, 3 shots.",
            "base": {k: base[k] for k in KEYS} if base else {}, "adapter": {k: out[k] for k in KEYS},
            "command": cmd})
        print(f"recorded the scores in {args.record}/manifest.json and README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
