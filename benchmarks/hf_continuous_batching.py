"""transformers' own continuous batching (`generate_batch`, paged attention) against this project's engine.

    python -m benchmarks.hf_continuous_batching [--prompts 32] [--max-new-tokens 128] [--batch-size 32]

Same prompts, greedy, no stop strings (transformers' manager knows only end-of-sequence and a token
budget, so both engines run to those), and a steering hook in place in both runs: a random unit
direction at `--layer` with `--alpha` (default 0: the hook runs, the tokens should not change).
transformers packs every running request into one sequence, so its hook adds the vector to every
token; ours adds it per row. Reports generated tokens per second of each and how many outputs agree.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

from benchmarks.report import report
from common.config import DEFAULT_MODEL_ALIAS
from common.datasets import load_problems
from common.directions import random_directions
from common.generation import generate_batch
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.interventions import ResidualAddition, residual_added
from common_simplified.model_loader import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--model", default=DEFAULT_MODEL_ALIAS)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model, "cpu" if not torch.cuda.is_available() else "auto")
    builder = PromptBuilder(resolve_prompt_style("auto", tokenizer), tokenizer)
    prompts = [builder.build(p.to_row()) for p in load_problems("synthetic").problems[:args.prompts]]
    steering = ResidualAddition(random_directions(args.layer, model.config.hidden_size, 1, seed=0)[0], args.alpha)

    started = time.perf_counter()
    ours = generate_batch(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                          add_special_tokens=builder.adds_special_tokens, intervention=steering,
                          batch_size=args.batch_size)
    ours_s = time.perf_counter() - started

    inputs = [tokenizer(p, add_special_tokens=builder.adds_special_tokens)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    with residual_added(model, steering):  # every position of the packed batch, as ours steers every token
        theirs = model.generate_batch(inputs=inputs, generation_config=config, warmup=False)
    theirs_s = time.perf_counter() - started
    their_tokens = [list(out.generated_tokens) for out in sorted(theirs.values(), key=lambda o: int(o.request_id[4:]))]
    their_texts = [tokenizer.decode([t for t in tokens if t != tokenizer.eos_token_id], skip_special_tokens=True)
                   for tokens in their_tokens]

    our_tokens = sum(r.n_new_tokens for r in ours)
    hf_tokens = sum(len([t for t in tokens if t != tokenizer.eos_token_id]) for tokens in their_tokens)
    agree = sum(a.text == b for a, b in zip(ours, their_texts)) / len(prompts)
    rates = {"ours": our_tokens / ours_s, "transformers_generate_batch": hf_tokens / theirs_s}
    report("hf_continuous_batching",
           f"ours {rates['ours']:.1f} tok/s vs transformers generate_batch {rates['transformers_generate_batch']:.1f} "
           f"tok/s ({rates['ours'] / rates['transformers_generate_batch']:.1f}x), {100 * agree:.0f}% of outputs agree",
           {"args": vars(args), "seconds": {"ours": ours_s, "transformers_generate_batch": theirs_s},
            "tokens": {"ours": our_tokens, "transformers_generate_batch": hf_tokens}, "tokens_per_s": rates,
            "agreeing_fraction": agree, "attn_implementation": model.config._attn_implementation})


if __name__ == "__main__":
    main()
