"""Impressions/s of each generation backend with 1 and with 8 LoRA adapters in one batch.

The production shape is Llama-3.1-8B (random weights are fine for speed: nothing here reads the
text). The script writes a random-init checkpoint of the requested shape (tokenizer: the
prepared SmolLM2 one, 49,152 tokens) and random LoRA adapters (rank 16, attention + MLP), then
times ``generate`` at batch 32 with IU-length prompts and a fixed number of new tokens
(``min_tokens = max_tokens``, no early stop, so every backend does the same work).

    # on a GPU node (vllm installed next to the project):
    python bench/backend_throughput.py --shape 8b --backends transformers,vllm
    # CPU smoke run of the harness (tiny shape):
    python bench/backend_throughput.py --shape tiny --backends transformers --rows 8 --new-tokens 8

Reference on an H100 (issue 7): transformers+PEFT 0.91 impressions/s (64 new tokens, batch 32,
1 adapter) and 0.55 with 8 mixed adapters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "8b": (4096, 14336, 32, 32, 8),
    "1b": (2048, 8192, 16, 32, 8),
    "tiny": (64, 128, 2, 4, 2),
}


def make_checkpoint(dest: Path, shape: str, tokenizer_from: Path) -> Path:
    """A random-init Llama of ``shape`` saved in bf16 with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=4096, eos_token_id=eos, pad_token_id=eos,
                      bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
                      architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def checkpoint(shape: str, workdir: str | None, prefix: str) -> tuple[Path, Path]:
    """A work folder (``workdir``, else a new temp dir) and, in it, a random-init checkpoint of
    ``shape`` (made once; kept when ``workdir`` is reused)."""
    from core.generation.checkpoint import DEFAULT_MODEL_DIR

    work = Path(workdir or tempfile.mkdtemp(prefix=prefix))
    base = work / f"llama-{shape}"
    if not (base / "config.json").is_file():
        make_checkpoint(base, shape, DEFAULT_MODEL_DIR)
    return work, base


def make_adapters(base: Path, dest: Path, n: int) -> list[Path]:
    """``n`` random rank-16 LoRA adapters for ``base`` (B initialised non-zero so they matter)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from core.generation.models import default_lora_config

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    peft = get_peft_model(model, default_lora_config(model))
    out = []
    for i in range(n):
        torch.manual_seed(i)
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.data.normal_(0, 0.01)
        d = dest / f"reader{i}"
        peft.save_pretrained(d)
        out.append(d)
    return out


def prompts(n: int) -> list[list[dict]]:
    from core.generation.prompts import impression_messages

    findings = ("The heart is normal in size. The mediastinum is unremarkable. There is a small "
                "left pleural effusion with adjacent atelectasis. No pneumothorax. Degenerative "
                "changes of the thoracic spine.")
    return [impression_messages(f"{findings} Case {i}.", indication="Shortness of breath")
            for i in range(n)]


def time_backend(backend: str, base: Path, adapters: list[Path], n_adapters: int, rows: int,
                 new_tokens: int, batch: int) -> dict:
    from core.generation.backends import load_backend

    gen = load_backend(backend, base) if backend == "transformers" else \
        load_backend(backend, base, max_loras=max(n_adapters, 1), max_lora_rank=16)
    names = []
    for i, path in enumerate(adapters[:n_adapters]):
        gen.load_adapter(f"reader{i}", path)
        names.append(f"reader{i}")
    rows_adapters = [names[i % len(names)] for i in range(rows)]
    ps = prompts(rows)
    # With min_new_tokens == max_new_tokens no row stops early: equal work on every backend.
    if backend == "transformers":
        gen.model.generation_config.min_new_tokens = new_tokens
    gen.generate(ps[:batch], adapters=rows_adapters[:batch], max_new_tokens=4, batch_size=batch)  # warm-up
    start = time.perf_counter()
    out = gen.generate(ps, adapters=rows_adapters, max_new_tokens=new_tokens, batch_size=batch)
    wall = time.perf_counter() - start
    tokens = sum(o.new_tokens for o in out)
    return {"backend": backend, "adapters": n_adapters, "rows": rows, "batch": batch,
            "new_tokens_per_row": tokens / rows, "wall_s": round(wall, 2),
            "impressions_per_s": round(rows / wall, 3), "new_tokens_per_s": round(tokens / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--backends", default="transformers,vllm")
    ap.add_argument("--adapters", default="1,8")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--workdir", help="keep the checkpoint here (default: a temp dir)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    work, base = checkpoint(args.shape, args.workdir, "impressionist-bench-")
    counts = [int(x) for x in args.adapters.split(",")]
    adapters = make_adapters(base, work / "adapters", max(counts))
    results = []
    for backend in args.backends.split(","):
        for n in counts:
            try:
                r = time_backend(backend, base, adapters, n, args.rows, args.new_tokens, args.batch)
            except Exception as exc:  # a missing backend is a row of the table, not a crash
                r = {"backend": backend, "adapters": n, "error": f"{type(exc).__name__}: {exc}"}
            results.append(r)
            print(json.dumps(r), flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{args.shape} Llama, {device}, batch {args.batch}, {args.new_tokens} new tokens\n")
    print("| backend | adapters | impressions/s | new tokens/s | wall s |\n|---|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['backend']} | {r['adapters']} | - | - | {r['error']} |")
        else:
            print(f"| {r['backend']} | {r['adapters']} | {r['impressions_per_s']} | "
                  f"{r['new_tokens_per_s']} | {r['wall_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
