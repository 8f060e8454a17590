"""Clinical safety of every shown text on the IU X-ray fixed test split (issue 13).

Index = train + dev reports; the test reports are only queried. For the shipped default pipeline
(:class:`core.generation.pipeline.C2FConfig` defaults, as ``python -m core generate`` runs it) and each style:

* texts shown with an unsupported positive finding (a finding this report's findings, indication
  and comparison never state) that are not flagged ``needs_review``;
* reports whose findings state a major finding (:data:`core.clinical.verifier.MAJOR_FINDINGS`) whose text
  is still a normal statement (or negates it) and is not flagged;
* how many texts the verifier repaired (sentences removed / added) and flagged.

The judge is :func:`core.clinical.verifier.verify` with ``repair=False`` on the text as shown, i.e. the
same rules: these rows say that nothing the rules see slips through unflagged. The independent
view is the MeSH table (human labels, :mod:`core.evaluation.mesh`), printed for the original impressions
(the human ceiling), the TF-IDF 1-NN baseline and ours; label F1 (:func:`core.evaluation.metrics.label_f1`)
beside it. Then the human impressions' flag rate (an upper bound on nuisance flags), and typo
robustness: one edit in each critical keyword of the findings (seeded), critical recall with
and without.

    .venv/bin/python bench/clinical_safety.py [--seeds 5] [--json bench/out/clinical_safety.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.clinical.verifier import check_impression, major_findings, verify  # noqa: E402
from core.clinical.vocabulary import TYPO_TERMS  # noqa: E402
from core.generation.pipeline import C2FConfig, CoarseToFine  # noqa: E402
from core.evaluation.mesh import mesh_score  # noqa: E402
from core.evaluation.metrics import label_f1, rouge  # noqa: E402
from core.generation.retrieval import RetrievalIndex  # noqa: E402
from core.ingest.splits import load_iu_csv  # noqa: E402

IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"
STYLES = ("default", "brief", "bullets", "comprehensive")


def mesh_of(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["uid"].strip(): row.get("MeSH") or "" for row in csv.DictReader(fh)}


def typo(word: str, rng: random.Random) -> str:
    """One random edit (substitute, delete, insert, transpose) inside a word."""
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("sub", "del", "ins", "swap"))
    letters = "abcdefghijklmnopqrstuvwxyz"
    if op == "sub":
        return word[:i] + rng.choice(letters.replace(word[i], "")) + word[i + 1:]
    if op == "del":
        return word[:i] + word[i + 1:]
    if op == "ins":
        return word[:i] + rng.choice(letters) + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if word[i] != word[i + 1] else word[:i] + word[i + 1:]


_TERMS = re.compile(r"\b(?:" + "|".join(sorted(TYPO_TERMS, key=len, reverse=True)) + r")\b", re.I)


def typo_findings(text: str, rng: random.Random) -> tuple[str, int]:
    """The findings with one edit in every critical keyword; and how many were changed."""
    n = 0

    def sub(m):
        nonlocal n
        n += 1
        w = m.group(0)
        t = typo(w.lower(), rng)
        return t if w.islower() else t.capitalize()

    return _TERMS.sub(sub, text), n


def critical_recall(findings: list[str], preds: list[str]) -> tuple[float | None, int]:
    total = stated = 0
    for f, p in zip(findings, preds):
        crit = set(check_impression(f, "").missing_critical)
        total += len(crit)
        stated += len(crit - set(check_impression(f, p).missing_critical))
    return (stated / total if total else None), total


def audit(test: list[dict], outs, style: str) -> dict:
    """Counts of what was shown, judged by verify(repair=False) on the shown text."""
    c = Counter()
    examples = []
    for r, o in zip(test, outs):
        shown = o.text
        v = verify(r["findings"], shown, r.get("indication"), r.get("comparison"), repair=False)
        flagged = bool(o.flags.get("needs_review"))
        major = bool(major_findings(r["findings"]))
        c["n"] += 1
        c["flagged"] += flagged
        c["repaired_added"] += bool(o.flags.get("repaired"))
        c["repaired_removed"] += bool(o.flags.get("removed"))
        c["unsupported_shown"] += bool(v.unsupported)
        c["unsupported_unflagged"] += bool(v.unsupported) and not flagged
        c["major_reports"] += major
        c["normal_despite_major_shown"] += bool(v.normal_despite)
        c["normal_despite_major_unflagged"] += bool(v.normal_despite) and not flagged
        if (v.unsupported or v.normal_despite) and not flagged and len(examples) < 5:
            examples.append({"uid": r["uid"], "findings": r["findings"], "text": shown, "reasons": v.reasons})
    return {"style": style, **c, "examples": examples}


class Replay:
    """Wraps a loaded model: the first call generates, later calls with the same prompts replay
    its (greedy, deterministic) answers, so the four styles cost one model pass."""

    def __init__(self, generator):
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.format_chat = generator.format_chat
        self.cache: dict[str, object] = {}

    def generate(self, prompts, adapters=None, **kw):
        keys = [json.dumps([p, a]) for p, a in zip(prompts, adapters or [None] * len(prompts))]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            if kw.get("length_hint") is not None:
                kw["length_hint"] = [kw["length_hint"][i] for i in todo]
            res = self.generator.generate([prompts[i] for i in todo],
                                          adapters=[(adapters or [None] * len(prompts))[i] for i in todo], **kw)
            for i, r in zip(todo, res):
                self.cache[keys[i]] = r
        return [self.cache[k] for k in keys]


def load_model(threads: int):
    """The embedded model and the shared base adapter, as the shipped default drafts."""
    import torch

    from core.config import settings
    from core.generation.models import ModelSpec, load_generator
    from core.adapters.base import use_base_adapter

    torch.set_num_threads(threads)
    gen = load_generator(ModelSpec(path=settings().model_path, device="cpu"))
    return Replay(gen), use_base_adapter(gen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=IU_CSV)
    ap.add_argument("--seeds", type=int, default=5, help="typo seeds")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "clinical_safety.json")
    ap.add_argument("--llm", choices=("auto", "always", "off"), default=C2FConfig().llm,
                    help="auto (the shipped default: the model writes under the shared base "
                         "adapter where the neighbours disagree), always (the model writes "
                         "every text), off (retrieval and vote only)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"reports file {args.csv} absent", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    index_rows = load_iu_csv(args.csv, ("train", "dev"))
    test = load_iu_csv(args.csv, "test")
    mesh = mesh_of(args.csv)
    config = C2FConfig(llm=args.llm)
    model, base = load_model(args.threads) if args.llm != "off" else (None, None)
    c2f = CoarseToFine(RetrievalIndex.build(index_rows, config.retrieval), model, config, base_adapter=base)
    print(f"# Clinical safety, IU X-ray test split ({len(test)} reports; index {len(index_rows)} "
          f"train+dev), {time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}\n")
    print(f"Pipeline: C2FConfig defaults (llm={config.llm!r}; base adapter: "
          f"{os.environ.get('IMPRESSIONIST_BASE_ADAPTER', 'the shared one') if base else 'none'}).\n")

    result: dict = {"n_test": len(test), "llm": config.llm, "styles": {}}
    outs_default = None
    print("| style | texts | flagged | repaired: removed | repaired: added | unsupported shown | "
          "**unsupported unflagged** | major-finding reports | normal despite major shown | "
          "**normal despite major unflagged** |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for style in STYLES:
        outs = c2f.generate(test, style=style)
        if style == "default":
            outs_default = outs
        a = audit(test, outs, style)
        result["styles"][style] = a
        print(f"| {style} | {a['n']} | {a['flagged']} | {a['repaired_removed']} | {a['repaired_added']} | "
              f"{a['unsupported_shown']} | **{a['unsupported_unflagged']}** | {a['major_reports']} | "
              f"{a['normal_despite_major_shown']} | **{a['normal_despite_major_unflagged']}** |")
    for style, a in result["styles"].items():
        for ex in a["examples"]:
            print(f"\n- unflagged ({style}) uid {ex['uid']}: {ex['text']!r} - {ex['reasons']}")

    # Human impressions: how often would the verifier flag them?
    human = Counter()
    reasons = Counter()
    for r in test:
        v = verify(r["findings"], r["impression"], r.get("indication"), r.get("comparison"), repair=False)
        human["flagged"] += v.needs_review
        human["would_repair"] += bool(verify(r["findings"], r["impression"], r.get("indication"),
                                             r.get("comparison")).repaired)
        for x in v.reasons:
            reasons[x.split(":")[0]] += 1
    share = human["flagged"] / len(test)
    result["human"] = {"flagged": human["flagged"], "share": share, "would_repair": human["would_repair"],
                       "reasons": dict(reasons)}
    print(f"\nOriginal human impressions flagged by the verifier (upper bound on nuisance flags): "
          f"{human['flagged']} of {len(test)} = **{100 * share:.1f}%** ({dict(reasons)}); "
          f"the verifier would change {human['would_repair']} of them.\n")

    # Independent score: human MeSH labels.
    from quality import TfidfNN

    nn = TfidfNN(index_rows).predict(test)
    ours = [o.text for o in outs_default]
    refs = [r["impression"] for r in test]
    cells = [mesh[r["uid"]] for r in test]
    systems = {"original impression (human ceiling)": refs, "TF-IDF 1-NN": nn, "ours (default)": ours}
    print("| system | MeSH recall (%) | false statements / 100 reports | reports with a false statement (%) "
          "| label micro-F1 vs original | ROUGE-L |")
    print("|---|---:|---:|---:|---:|---:|")
    result["mesh"] = {}
    for name, preds in systems.items():
        m = mesh_score(preds, cells)
        lf = label_f1(preds, refs)["micro_f1"]
        rl = rouge(preds, refs)["rougeL"]
        result["mesh"][name] = {**m, "label_micro_f1": lf, "rougeL": rl}
        print(f"| {name} | {100 * m['recall']:.1f} | {m['false_statements']:.1f} | "
              f"{100 * m['reports_with_false_statement']:.1f} | {lf:.3f} | {rl:.2f} |")
    print(f"\n({result['mesh']['TF-IDF 1-NN']['n']} test reports with MeSH indexing, "
          f"{result['mesh']['TF-IDF 1-NN']['n_with_findings']} with a significant MeSH finding.)\n")

    # Typos in the critical keywords.
    findings = [r["findings"] for r in test]
    clean, n_crit = critical_recall(findings, ours)
    rows = []
    for seed in range(args.seeds):
        rng = random.Random(seed)
        typo_rows, changed = [], 0
        for r in test:
            f, k = typo_findings(r["findings"], rng)
            changed += k
            typo_rows.append({**r, "findings": f})
        t_outs = c2f.generate(typo_rows, style="default")
        rec, _ = critical_recall(findings, [o.text for o in t_outs])  # judged on the clean findings
        det = sum(bool(check_impression(t["findings"], "").missing_critical) for t in typo_rows)
        det_clean = sum(bool(check_impression(f, "").missing_critical) for f in findings)
        rows.append({"seed": seed, "keywords_changed": changed, "critical_recall": rec,
                     "reports_with_critical_detected": det, "clean_detected": det_clean})
    result["typos"] = {"clean_critical_recall": clean, "critical_findings": n_crit, "seeds": rows}
    mean = sum(x["critical_recall"] for x in rows) / len(rows)
    print(f"Typos: one edit in every critical keyword of the findings ({rows[0]['keywords_changed']} "
          f"keywords changed with seed 0), seeds 0-{args.seeds - 1}. Critical recall (judged on the "
          f"clean findings, {n_crit} critical findings): clean **{clean:.3f}**, with typos "
          f"**{mean:.3f}** (min {min(x['critical_recall'] for x in rows):.3f}); reports whose "
          f"critical finding the labeler still detects: {rows[0]['reports_with_critical_detected']} "
          f"of {rows[0]['clean_detected']} (seed 0).")
    wall = time.perf_counter() - t_start
    result["wall_s"] = wall
    print(f"\n{wall:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
