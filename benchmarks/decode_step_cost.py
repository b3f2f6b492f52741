"""What one decode step costs at each batch size: the ceiling on what batching can gain.

    python -m benchmarks.decode_step_cost [--batch-sizes 1,2,4,8,16] [--context-tokens 300] [--steps 30]

A random prompt of `context-tokens` is prefilled, then `steps` greedy decode steps are timed (best
of `repeats`). Tokens per second at batch b = b / step time: where the step time stops growing with
b, rows are nearly free, and a batch only pays off while its rows are all still writing.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.report import report
from common.config import DEFAULT_MODEL_ALIAS
from common_simplified.model_loader import load_model_and_tokenizer


@torch.inference_mode()
def step_seconds(model, batch_size: int, context_tokens: int, steps: int) -> float:
    ids = torch.randint(100, 1000, (batch_size, context_tokens), generator=torch.Generator().manual_seed(0))
    output = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    started = time.perf_counter()
    for _ in range(steps):
        output = model(input_ids=output.logits[:, -1].argmax(-1)[:, None], past_key_values=output.past_key_values,
                       use_cache=True, logits_to_keep=1)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--context-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=DEFAULT_MODEL_ALIAS)
    args = parser.parse_args()

    model, _ = load_model_and_tokenizer(args.model, "cpu" if not torch.cuda.is_available() else "auto")
    step_seconds(model, 1, 16, 2)  # warm-up
    step_ms = {int(b): 1000 * min(step_seconds(model, int(b), args.context_tokens, args.steps)
                                  for _ in range(args.repeats)) for b in args.batch_sizes.split(",")}
    tokens_per_s = {b: 1000 * b / ms for b, ms in step_ms.items()}
    report("decode_step_cost", ", ".join(f"batch {b}: {ms:.0f} ms/step ({tokens_per_s[b]:.0f} tok/s)"
                                         for b, ms in step_ms.items()),
           {"args": vars(args), "step_ms": step_ms, "tokens_per_s": tokens_per_s})


if __name__ == "__main__":
    main()
