"""Phase 2.0's SAE training: sae-lens's dense TopK decoder against our sparse one, on the same activations.

    python -m benchmarks.sae_decoder [--layer 5] [--seeds 3] [--data-dir data]

Records one layer's activations on phase 2.0's corpus (with the phase 1 prompts of `--data-dir` when
it has them), trains the stock `TopKTrainingSAE` once and `SparseDecoderTopKSAE` with `--seeds`
seeds (phase 2.0's seed first), and measures each on held-out code as phase 2.0 does: training time,
FVU, ΔCE. The spread over seeds is the yardstick for "the same quality".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from sae_lens import SAE, TopKTrainingSAE

from benchmarks.report import report
from common.activation_cache import record_windows
from common.code_corpus import corpus_windows
from common.config import Config
from common.saes import massive_norm_threshold, reconstruction_stats
from common.utils import manifest_path
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_0 import training
from phase2_0.quality import delta_cross_entropy, mean_next_token_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    config = Config()

    model, tokenizer = load_model_and_tokenizer(config.model_name, "cpu")
    phase1 = manifest_path(args.data_dir, "1").parent / "dataset_sae.parquet"
    prompts = pd.read_parquet(phase1, columns=["prompt"])["prompt"].drop_duplicates().tolist() if phase1.is_file() else []
    train_windows, held_windows = corpus_windows(tokenizer, config.sae_context_tokens, config.sae_train_tokens,
                                                 config.sae_eval_tokens, extra_train_texts=prompts)
    held = record_windows(model, held_windows, [args.layer])[args.layer]
    delta_ce_windows = held_windows[:max(1, -(-config.sae_delta_ce_tokens // (config.sae_context_tokens - 2)))]
    clean_loss = mean_next_token_loss(model, delta_ce_windows)
    cached = record_windows(model, train_windows, [args.layer])[args.layer]
    train = cached[cached.norm(dim=1) <= massive_norm_threshold(cached)]
    max_norm = massive_norm_threshold(held)
    held_typical = held[held.norm(dim=1) <= max_norm]
    metadata = {"model_name": config.model_name, "hook_name": f"model.layers.{args.layer}",
                "context_size": config.sae_context_tokens, "prepend_bos": True, "dataset_path": "benchmark"}

    first_seed = config.seed + args.layer  # phase 2.0's seed for this layer
    runs = [("stock dense decoder", TopKTrainingSAE, first_seed)]
    runs += [("sparse decoder", training.SparseDecoderTopKSAE, first_seed + 100 * i) for i in range(args.seeds)]
    results = []
    for name, sae_class, seed in runs:
        settings = training.SaeTrainingSettings(config.sae_width, config.sae_k, config.sae_epochs,
                                                config.sae_batch_tokens, config.sae_lr, seed)
        started = time.perf_counter()
        sae, record = training.train_sae(train, settings, metadata, sae_class)
        train_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            sae.save_inference_model(folder)
            inference = SAE.load_from_disk(Path(folder))
        results.append({"decoder": name, "seed": seed, "train_s": round(train_s, 1),
                        "ms_per_step": round(1000 * train_s / record["steps"], 1),
                        "fvu": reconstruction_stats(inference, held_typical)["fvu"],
                        "delta_ce_nats": delta_cross_entropy(model, delta_ce_windows, args.layer, inference, clean_loss,
                                                             max_norm)})
        print(results[-1], flush=True)
    stock, sparse = results[0], results[1:]
    report("sae_decoder", f"layer {args.layer}: stock {stock['train_s']:.0f} s, FVU {stock['fvu']:.4f}, ΔCE "
                          f"{stock['delta_ce_nats']:+.3f}; sparse {min(r['train_s'] for r in sparse):.0f}-"
                          f"{max(r['train_s'] for r in sparse):.0f} s, FVU {min(r['fvu'] for r in sparse):.4f}-"
                          f"{max(r['fvu'] for r in sparse):.4f}, ΔCE {min(r['delta_ce_nats'] for r in sparse):+.3f}-"
                          f"{max(r['delta_ce_nats'] for r in sparse):+.3f} over {len(sparse)} seeds",
           {"layer": args.layer, "training_tokens": len(train), "runs": results})


if __name__ == "__main__":
    main()
