"""Generation throughput of the default model on CPU: impressions/s and new tokens/s.

Runs the prepared SmolLM2-135M-Instruct over N IU X-ray findings (zero-shot prompt from
core.generation.prompts) at several batch sizes and dtypes, and prints a markdown table. Uses
/work/shared/data/iu_xray/reports.csv when present, else seeded synthetic findings.

    python bench/generation_speed.py
    python bench/generation_speed.py --n 30 --batch-sizes 1,8,16 --dtypes bfloat16,float32

Numbers depend on the machine and on whatever else runs on it; the load average is printed.
Greedy decoding; rows stop at <|im_end|> or max_new_tokens.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.generation.checkpoint import DEFAULT_MODEL_DIR, prepare_default_model
from core.generation.models import ModelSpec, load_generator  # noqa: E402
from core.generation.prompts import impression_messages  # noqa: E402

IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"


def load_findings(n: int) -> tuple[list[dict], str]:
    """The first n IU reports with findings, or n seeded synthetic ones when the CSV is absent."""
    if IU_CSV.is_file():
        with IU_CSV.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["findings"].strip()][:n]
        return rows, f"IU X-ray ({IU_CSV})"
    rng = random.Random(0)
    parts = [
        "The heart is normal in size.", "The mediastinum is unremarkable.", "The lungs are clear.",
        "Mild cardiomegaly.", "Small left pleural effusion.", "No pneumothorax.", "Bibasilar atelectasis.",
        "Degenerative changes of the thoracic spine.", "Calcified granuloma in the right upper lobe.",
    ]
    rows = [{"findings": " ".join(rng.sample(parts, 4)), "indication": "", "comparison": ""} for _ in range(n)]
    return rows, "synthetic (IU CSV absent)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory")
    parser.add_argument("--n", type=int, default=30, help="number of reports")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args(argv)

    import torch

    if Path(args.model).resolve() == DEFAULT_MODEL_DIR.resolve():
        prepare_default_model()
    rows, source = load_findings(args.n)
    prompts = [impression_messages(r["findings"], r.get("indication"), r.get("comparison")) for r in rows]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtypes = args.dtypes.split(",")

    print(f"model {args.model}; {len(prompts)} reports from {source}; max_new_tokens={args.max_new_tokens}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    table = []
    texts: dict[str, list[str]] = {}
    for dtype in dtypes:
        start = time.perf_counter()
        gen = load_generator(ModelSpec(args.model, dtype=dtype, device=args.device))
        load_s = time.perf_counter() - start
        gen.generate(prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up: first call allocates
        for bs in batch_sizes:
            start = time.perf_counter()
            res = gen.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=bs)
            wall = time.perf_counter() - start
            tokens = sum(r.new_tokens for r in res)
            table.append((dtype, bs, len(res) / wall, tokens / wall, tokens / len(res),
                          sum(r.truncated for r in res), wall, load_s, os.getloadavg()[0]))
            texts.setdefault(dtype, [r.text for r in res])
        first = gen.generate(prompts[:1], max_new_tokens=args.max_new_tokens)[0]
        print(f"{dtype} sample: {first.text!r}")

    print()
    print("| dtype | batch | impressions/s | new tokens/s | tokens/impression | hit max | wall s | load s | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dtype, bs, ips, tps, tpi, trunc, wall, load_s, la in table:
        print(f"| {dtype} | {bs} | {ips:.2f} | {tps:.1f} | {tpi:.1f} | {trunc}/{len(prompts)} | {wall:.1f} "
              f"| {load_s:.1f} | {la:.2f} |")
    if len(texts) == 2:
        a, b = texts.values()
        same = sum(x == y for x, y in zip(a, b))
        print(f"\ngreedy texts identical across {' vs '.join(texts)}: {same}/{len(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
