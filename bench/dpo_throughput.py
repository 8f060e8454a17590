"""DPO training throughput (pairs/s) of the nightly job's trainer on a Llama of a given shape.

The issue's reference on an H100: TRL DPO with LoRA on an 8B-shaped model, 7.2 pairs/s (27% MFU),
8.4 with Liger. This runs ``core.learning.dpo.train_dpo`` (the nightly job's code: LoRA, weighted
length-grouped sampler, bf16 and Liger on a GPU) on a random-init checkpoint of the shape
(random weights are fine for speed) with IU-shaped synthetic pairs, and prints pairs/s and an
MFU estimate (6 * params * tokens for policy forward+backward, plus 2 * params * tokens for the
reference forward; peak from --peak-tflops).

    python bench/dpo_throughput.py --shape 8b --pairs 256 --batch 8      # on a GPU
    python bench/dpo_throughput.py --shape tiny --pairs 16 --batch 4     # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backend_throughput import SHAPES, checkpoint  # noqa: E402

FINDINGS = ("The heart is normal in size. The mediastinum is unremarkable. There is a small "
            "left pleural effusion. No pneumothorax. Degenerative changes of the spine.")


def pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Findings: {FINDINGS} (case {i})\nImpression:"}]
        out.append({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": "Small left pleural effusion."}],
                    "rejected": [{"role": "assistant",
                                  "content": "No acute cardiopulmonary abnormality."}],
                    "weight": 1.0 + (i % 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100)")
    ap.add_argument("--workdir", help="keep the checkpoint here (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    from core.learning.train import TrainConfig
    from core.learning.dpo import train_dpo

    work, base = checkpoint(args.shape, args.workdir, "impressionist-dpo-")
    cfg = TrainConfig(epochs=1, batch_size=args.batch, progress=False, max_length=512)
    data = pairs(args.pairs)
    result = train_dpo(base, data, work / "adapter", cfg)
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    c = AutoConfig.from_pretrained(base)
    h, inter, layers, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    n_params = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + 2 * v * h
    ex = data[0]
    text = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
    tokens = 2 * (len(tok(text)["input_ids"]) + 8)  # chosen + rejected rows, ~8 answer tokens
    flops_per_pair = 8 * n_params * tokens
    achieved = result.examples_per_s * flops_per_pair / 1e12
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"{args.shape} Llama ({n_params / 1e9:.2f} B params), {device}, batch {args.batch}, "
          f"{args.pairs} pairs, {result.steps} steps in {result.train_s:.1f} s: "
          f"{result.examples_per_s:.2f} pairs/s, ~{achieved:.1f} TFLOP/s "
          f"(~{100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops:.0f} TFLOP/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
