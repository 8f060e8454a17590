"""Does the model earn its place? Coarse to fine on the IU X-ray fixed test split (issue 12).

Index = train + dev; the test reports are only queried. Systems, all through the shipped code:

* ``TF-IDF 1-NN``: plain word TF-IDF over the findings, copy the nearest impression (the baseline);
* ``coarse draft alone``: retrieval + vote, verified (``llm="off"``: the ablation without a model);
* ``model alone``: the model under the base adapter writing every impression with no draft in its
  prompt (``llm="always", draft_in_prompt=False``);
* ``shipped default``: :class:`core.generation.pipeline.C2FConfig` defaults (``llm="auto"``): the model
  under the base adapter writes from the findings and the coarse draft where the neighbours
  disagree, the verified coarse draft stands elsewhere; a model text that fails the check falls
  back to the flagged draft. ``--llm always`` measures the model writing every impression.

Reported: ROUGE-L and label micro-F1 (core.evaluation.metrics) overall and on the test reports whose findings
do not occur verbatim in the index; a paired bootstrap of the per-report ROUGE-L difference to
1-NN; the share of final texts that differ from every retrieved impression (the model wrote
something new); where the texts came from; end-to-end impressions/s of the default.

    IMPRESSIONIST_BASE_ADAPTER=core/assets/base-adapter .venv/bin/python bench/c2f_quality.py [--n 281]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.generation.models import BATCH_SIZE  # noqa: E402
from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.evaluation.metrics import label_f1, rouge  # noqa: E402
from core.generation.retrieval import RetrievalIndex, tidy  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402
from quality import IU_CSV, TfidfNN, paired_bootstrap  # noqa: E402


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=IU_CSV)
    ap.add_argument("--n", type=int, default=0, help="first N test reports (0: all)")
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-model-alone", action="store_true", help="skip the model-alone ablation")
    ap.add_argument("--no-length-hint", action="store_true",
                    help="ablation: batch the model's rows by prompt length only (as before "
                         "2026-12-07), not by the draft's length first")
    ap.add_argument("--llm", choices=("auto", "always"), default=C2FConfig().llm,
                    help="the default's llm mode (default: the shipped one)")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="the model's dtype (auto: bfloat16 on a CPU with native bf16, else float32)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "c2f_quality.json")
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"reports file {args.csv} absent", file=sys.stderr)
        return 2
    import torch

    from core.config import settings
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.base import use_base_adapter

    torch.set_num_threads(args.threads)
    index_rows = load_iu_csv(args.csv, ("train", "dev"))
    test = load_iu_csv(args.csv, "test")
    if args.n:
        test = test[:args.n]
    refs = [r["impression"] for r in test]
    verbatim_index = {_norm(r["findings"]) for r in index_rows}
    novel = [i for i, r in enumerate(test) if _norm(r["findings"]) not in verbatim_index]
    config = C2FConfig(llm=args.llm)
    index = RetrievalIndex.build(index_rows, config.retrieval)
    gen = load_generator(ModelSpec(path=settings().model_path, device="cpu", dtype=args.dtype))
    base = use_base_adapter(gen)
    dtype = str(gen.dtype).removeprefix("torch.")
    if args.no_length_hint:
        plain = gen.generate
        gen.generate = lambda *a, length_hint=None, **kw: plain(*a, **kw)
    adapter_dir = os.environ.get("IMPRESSIONIST_BASE_ADAPTER", "the shared base adapter")
    print(f"# Coarse to fine on the IU X-ray test split: {len(test)} reports ({len(novel)} whose findings "
          f"are not verbatim in the index); {time.strftime('%Y-%m-%d %H:%M')}, load "
          f"{os.getloadavg()[0]:.1f}; base adapter: {adapter_dir if base else 'none (bare model)'}; "
          f"model {dtype}\n")

    texts: dict[str, list[str]] = {"TF-IDF 1-NN": TfidfNN(index_rows).predict(test)}
    coarse = CoarseToFine(index, None, replace(config, llm="off"))
    texts["coarse draft alone (llm off)"] = [o.text for o in coarse.generate(test)]
    _, neighbours, _ = coarse.coarse(test)
    if not args.no_model_alone:
        # the model writes every impression, without the draft (under "auto" it would write only
        # where the neighbours disagree and the drafts would stand elsewhere)
        alone = CoarseToFine(index, gen, replace(config, llm="always", draft_in_prompt=False),
                             base_adapter=base)
        texts["model alone (no draft in prompt)"] = [o.text for o in alone.generate(test, batch_size=args.batch_size)]
    full = CoarseToFine(index, gen, config, base_adapter=base)
    t0 = time.perf_counter()
    outs = full.generate(test, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    name = f"default pipeline (llm={config.llm})"
    texts[name] = [o.text for o in outs]
    default = texts[name]

    result: dict = {"n": len(test), "n_novel": len(novel), "base_adapter": adapter_dir if base else None,
                    "dtype": dtype, "systems": {}}
    print("| system | ROUGE-L | ROUGE-L, findings not in index | label micro-F1 | label micro-F1, not in index |")
    print("|---|---:|---:|---:|---:|")
    for name, preds in texts.items():
        sub_p, sub_r = [preds[i] for i in novel], [refs[i] for i in novel]
        row = {"rougeL": rouge(preds, refs)["rougeL"], "rougeL_novel": rouge(sub_p, sub_r)["rougeL"] if novel else None,
               "label_f1": label_f1(preds, refs)["micro_f1"],
               "label_f1_novel": label_f1(sub_p, sub_r)["micro_f1"] if novel else None}
        result["systems"][name] = row
        print(f"| {name} | {row['rougeL']:.2f} | {row['rougeL_novel']:.2f} | {row['label_f1']:.3f} | "
              f"{row['label_f1_novel']:.3f} |")
    nn = texts["TF-IDF 1-NN"]
    boot = paired_bootstrap(default, nn, refs)
    boot_novel = paired_bootstrap([default[i] for i in novel], [nn[i] for i in novel], [refs[i] for i in novel])
    new_text = sum(tidy(t) not in {tidy(nb.impression) for nb in nbs} for t, nbs in zip(default, neighbours))
    sources = Counter(o.flags.get("source") for o in outs)
    flagged = sum(bool(o.flags.get("needs_review")) for o in outs)
    stats = full.last_stats.as_dict()
    result.update({"bootstrap_vs_nn": boot, "bootstrap_vs_nn_novel": boot_novel,
                   "differs_from_every_retrieved": new_text / len(test), "sources": dict(sources),
                   "flagged": flagged, "wall_s": wall, "impressions_per_s": len(test) / wall, "stages": stats})
    print(f"\nShipped default - 1-NN, paired bootstrap of per-report ROUGE-L: {boot['mean']:+.2f} "
          f"(95% CI {boot['ci95'][0]:+.2f} to {boot['ci95'][1]:+.2f}); on the {len(novel)} reports not in "
          f"the index: {boot_novel['mean']:+.2f} (95% CI {boot_novel['ci95'][0]:+.2f} to "
          f"{boot_novel['ci95'][1]:+.2f}).")
    print(f"Final texts that differ from every retrieved impression: {new_text} of {len(test)} "
          f"({100 * new_text / len(test):.1f}%). Sources: {dict(sources)}; flagged for review: {flagged}.")
    print(f"Speed, end to end, the shipped default (llm={config.llm!r}: the model wrote "
          f"{stats['n_llm']} of them): {len(test)} in {wall:.1f} s = "
          f"**{len(test) / wall:.2f} impressions/s** (batch {args.batch_size}, {args.threads} threads); "
          f"stages: retrieve {stats['retrieve_s']:.1f} s, vote {stats['vote_s']:.1f} s, model "
          f"{stats['llm_s']:.1f} s, check+style {stats['fine_s']:.1f} s.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
