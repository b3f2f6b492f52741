"""Steered generation: one prompt at a time (the original's way) against continuous batching, and the hook's cost.

    python -m benchmarks.steered_generation [--prompts 64] [--batch-size 32] [--alpha 10] [--layer 15]

Same prompts (the first problems of the synthetic set, built as the pipeline builds them), greedy, the
same steering and the pipeline's default stop rules in both runs; reports generated tokens per second
of each, their ratio, and how many generations are token-identical (same token count and text). Then
the batched run with the steering at alpha 0 against no steering at all: the cost of the hooks
themselves.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from benchmarks.report import report
from common.config import DEFAULT_MODEL_ALIAS, Config
from common.datasets import load_problems
from common.directions import random_directions
from common.generation import EngineSettings, GenerationRequest, generate
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.interventions import ResidualAddition
from common_simplified.model_loader import load_model_and_tokenizer


def _generate(model, tokenizer, builder, problems, batch_size: int, max_new_tokens: int, steering,
              repeats: int) -> tuple[list, float]:
    """The outputs, and the best wall time of `repeats` identical runs (greedy: the outputs repeat too)."""
    requests = [GenerationRequest(builder.build(p), stopper=builder.stopper(p), code_opened=builder.code_opened(p),
                                  intervention=steering, key=i) for i, p in enumerate(problems)]
    settings = EngineSettings(max_new_tokens, batch_size, (), builder.adds_special_tokens, Config().degeneration_limits)
    best_s = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = sorted(generate(model, tokenizer, requests, settings), key=lambda result: result.request.key)
        best_s = min(best_s, time.perf_counter() - started)
    return outputs, best_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=Config().batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--model", default=DEFAULT_MODEL_ALIAS)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest counts")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model, "cpu" if not torch.cuda.is_available() else "auto")
    builder = PromptBuilder(resolve_prompt_style("auto", tokenizer), tokenizer)
    problems = [p.to_row() for p in load_problems("synthetic").problems[:args.prompts]]
    direction = random_directions(args.layer, model.config.hidden_size, 1, seed=0)[0]
    steering = ResidualAddition(direction, args.alpha)

    _generate(model, tokenizer, builder, problems[:1], 1, 16, steering, 1)  # warm-up: first-call costs not timed
    runs = {name: _generate(model, tokenizer, builder, problems, batch_size, args.max_new_tokens, hook, args.repeats)
            for name, batch_size, hook in (("one_at_a_time", 1, steering), ("batched", args.batch_size, steering),
                                           ("no_hook", args.batch_size, None),
                                           ("hook_alpha_0", args.batch_size, ResidualAddition(direction, 0.0)))}
    (one_by_one, _), (batched, _), (no_hook, _), (zero_hook, _) = runs.values()

    tokens = {name: sum(o.n_new_tokens for o in outputs) for name, (outputs, _) in runs.items()}
    seconds = {name: elapsed_s for name, (_, elapsed_s) in runs.items()}
    rate = {k: tokens[k] / seconds[k] for k in tokens}
    identical = sum(a.text == b.text and a.n_new_tokens == b.n_new_tokens
                    for a, b in zip(one_by_one, batched)) / len(problems)
    speedup = rate["batched"] / rate["one_at_a_time"]
    overhead = rate["no_hook"] / rate["hook_alpha_0"] - 1
    report("steered_generation",
           f"batched ({args.batch_size}) {rate['batched']:.1f} tok/s vs one at a time {rate['one_at_a_time']:.1f} "
           f"tok/s = {speedup:.2f}x, {100 * identical:.0f}% token-identical; hooks at alpha 0 cost "
           f"{100 * overhead:+.1f}% tok/s",
           {"args": vars(args), "tokens": tokens, "seconds": seconds, "tokens_per_s": rate, "speedup": speedup,
            "identical_fraction": identical, "hook_overhead": overhead,
            "alpha_0_equals_no_hook": [a.text for a in zero_hook] == [b.text for b in no_hook],
            "stop_reasons": pd.Series([o.stop_reason for o in one_by_one]).value_counts().to_dict(),
            "new_tokens_per_prompt": pd.Series([o.n_new_tokens for o in one_by_one]).describe().to_dict()})


if __name__ == "__main__":
    main()
