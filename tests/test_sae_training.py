"""Phase 2.0 pieces on the tiny model: corpus, one-pass activation cache, sae-lens training, ΔCE, SAE sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.activation_cache import record_windows
from common.code_corpus import corpus_windows, stdlib_files, token_windows
from common.errors import PipelineError
from common.saes import layer_source, load_sae, reconstruction_stats, source_kind
from phase2_0.quality import delta_cross_entropy, mean_next_token_loss
from phase2_0.training import SaeTrainingSettings, shuffled_batches, train_sae


def test_held_out_files_never_reach_training_and_windows_start_with_bos(tiny_model):
    _, tokenizer = tiny_model
    files = list(stdlib_files())
    held = [f for f in files if f.held_out]
    assert len(files) > 300 and 0.05 < len(held) / len(files) < 0.15
    assert not any("/test/" in f"/{f.relative_path}" or "site-packages" in f.relative_path for f in files)
    train, held_out = corpus_windows(tokenizer, 32, 2000, 600, extra_train_texts=["def marker_function(): pass"])
    assert train.shape[1] == 32 and (train[:, 0] == tokenizer.bos_token_id).all()
    assert train[:, 1:].numel() >= 2000 and held_out[:, 1:].numel() >= 600
    marker = tokenizer("def marker_function(): pass", add_special_tokens=False)["input_ids"]
    assert train[0, 1:1 + len(marker)].tolist() == marker  # extra texts come first
    again, _ = corpus_windows(tokenizer, 32, 2000, 600, extra_train_texts=["def marker_function(): pass"])
    assert torch.equal(train, again)
    held_windows = token_windows([f.text for f in held], tokenizer, 32, 600)
    assert torch.equal(held_windows, held_out)


def test_one_pass_cache_equals_full_forward_hidden_states(tiny_model):
    model, tokenizer = tiny_model
    windows, _ = corpus_windows(tokenizer, 16, 150, 15)
    hooks_before = [len(block._forward_hooks) for block in model.model.layers]
    cached = record_windows(model, windows, [1, 2], batch_windows=4)
    assert [len(block._forward_hooks) for block in model.model.layers] == hooks_before
    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    for layer in (1, 2):
        expected = hidden[layer + 1][:, 1:, :].reshape(-1, hidden[0].shape[-1])  # hidden_states[0] = embeddings
        assert torch.allclose(cached[layer], expected, atol=1e-5)


def test_shuffled_batches_visit_every_row_once_per_epoch():
    rows = torch.arange(12, dtype=torch.float32).unsqueeze(1)
    batches = shuffled_batches(rows, 4, seed=0)
    epoch = torch.cat([next(batches) for _ in range(3)]).flatten()
    assert sorted(epoch.tolist()) == list(range(12))
    assert not torch.equal(epoch, torch.cat([next(batches) for _ in range(3)]).flatten())  # reshuffled


@pytest.fixture(scope="module")
def tiny_activations(tiny_model) -> tuple[torch.Tensor, torch.Tensor]:
    model, tokenizer = tiny_model
    train, held = corpus_windows(tokenizer, 32, 6000, 1500)
    return record_windows(model, train, [2])[2], record_windows(model, held, [2])[2]


def test_sae_lens_training_on_cached_activations_learns_and_round_trips(tiny_activations, tmp_path: Path):
    from sae_lens import SAE

    train, held = tiny_activations
    settings = SaeTrainingSettings(width=128, k=8, epochs=30, batch_tokens=256, lr=4e-3, seed=0)
    sae, record = train_sae(train, settings, {"model_name": "tiny", "hook_name": "model.layers.2"})
    assert record["steps"] == 30 * (len(train) // 256)
    stats = reconstruction_stats(sae, held)
    assert stats["mean_l0"] <= 8 and stats["fvu"] < 0.6  # a random 64-d model: far better than the mean (1.0)
    sae.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.architecture() == "topk" and loaded.cfg.metadata.hook_name == "model.layers.2"
    with torch.no_grad():
        assert torch.allclose(loaded.encode(held[:50]), sae.encode(held[:50]), atol=1e-5)
    assert reconstruction_stats(loaded, held)["fvu"] == pytest.approx(stats["fvu"], rel=1e-4)


class _Exact(torch.nn.Module):
    """A perfect 'SAE' (encode and decode are the identity), and a useless one (decode to zero)."""

    def __init__(self, zero: bool = False):
        super().__init__()
        self.zero = zero

    def encode(self, x):
        return x

    def decode(self, z):
        return torch.zeros_like(z) if self.zero else z


def test_delta_ce_is_zero_for_a_perfect_reconstruction_and_positive_for_a_useless_one(tiny_model):
    model, tokenizer = tiny_model
    _, windows = corpus_windows(tokenizer, 24, 200, 200)
    clean = mean_next_token_loss(model, windows)
    hooks_before = [len(block._forward_hooks) for block in model.model.layers]
    assert delta_cross_entropy(model, windows, 1, _Exact(), clean, max_norm=float("inf")) == pytest.approx(0, abs=1e-5)
    assert delta_cross_entropy(model, windows, 1, _Exact(zero=True), clean, max_norm=float("inf")) > 1e-3
    assert delta_cross_entropy(model, windows, 1, _Exact(zero=True), clean, max_norm=0.0) == pytest.approx(0, abs=1e-5)
    assert [len(block._forward_hooks) for block in model.model.layers] == hooks_before


def test_sae_sources_resolve_and_bad_names_fail_clearly(tmp_path: Path):
    assert source_kind("train") == "trained"
    assert source_kind("gemma-scope-2b-pt-res-canonical") == "release"
    record = layer_source("gemma-scope-2b-pt-res-canonical", "layer_{layer}/width_16k/canonical", 7, tmp_path)
    assert record == {"kind": "release", "release": "gemma-scope-2b-pt-res-canonical",
                      "sae_id": "layer_7/width_16k/canonical", "layer": 7}
    (tmp_path / "mine" / "layer_3").mkdir(parents=True)
    assert layer_source(str(tmp_path / "mine"), "", 3, tmp_path)["path"] == str(tmp_path / "mine" / "layer_3")
    assert layer_source(str(tmp_path / "sae_{layer}"), "", 4, tmp_path)["path"] == str(tmp_path / "sae_4")
    with pytest.raises(PipelineError, match="sae_source"):
        source_kind("no-such-release-or-directory")
    with pytest.raises(PipelineError, match="cannot load the SAE of layer 3"):
        load_sae({"kind": "disk", "path": str(tmp_path / "mine" / "layer_3"), "layer": 3})


def test_gemma_scope_loads_through_sae_lens_from_a_local_hub_cache(tmp_path: Path, monkeypatch):
    """The real GemmaScope path (sae-lens release -> hf_hub_download -> params.npz conversion), fed
    from an offline Hugging Face cache that holds one substitute SAE of the published shape."""
    import huggingface_hub.constants as hub_constants

    from phase2_5_simplified.sae_analyzer import load_gemma_scope_sae

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    folder = get_pretrained_saes_directory()["gemma-scope-2b-pt-res-canonical"].saes_map["layer_5/width_16k/canonical"]
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--google--gemma-scope-2b-pt-res"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / folder
    target.mkdir(parents=True)
    rng = np.random.default_rng(0)
    d_in, d_sae = 2304, 16384
    w_enc = rng.normal(0, 0.02, size=(d_in, d_sae)).astype(np.float16)
    np.savez(target / "params.npz", W_enc=w_enc, W_dec=w_enc.T.copy(), b_enc=np.zeros(d_sae, np.float16),
             b_dec=np.zeros(d_in, np.float16), threshold=np.full(d_sae, 0.05, np.float16))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    sae = load_gemma_scope_sae(5)
    assert sae.cfg.architecture() == "jumprelu" and (sae.cfg.d_in, sae.cfg.d_sae) == (d_in, d_sae)
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"  # the output of layer 5: our site
    x = torch.tensor(rng.normal(0, 1, size=(4, d_in)), dtype=torch.float32)
    pre = x @ torch.tensor(w_enc, dtype=torch.float32)
    expected = torch.where(pre > 0.05, pre, torch.zeros_like(pre))
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), expected, atol=1e-3)


def test_the_sparse_decoder_computes_sae_lens_losses_and_gradients():
    """Our TopK SAE decodes only the active latents; its losses and gradients are sae-lens's own."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    from phase2_0.training import SparseDecoderTopKSAE

    torch.manual_seed(0)
    config = TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, dtype="float32", device="cpu")
    reference = TopKTrainingSAE(config)
    ours = SparseDecoderTopKSAE(config)
    ours.load_state_dict(reference.state_dict())
    with torch.no_grad():  # decoder rows of unequal norm, so the rescaling by them is exercised
        for sae in (reference, ours):
            sae.W_dec.mul_(torch.linspace(0.5, 2.0, 64)[:, None])
    batch = TrainStepInput(sae_in=torch.randn(32, 16), coefficients={}, dead_neuron_mask=torch.arange(64) % 3 == 0,
                           n_training_steps=0, is_logging_step=False)
    outputs = [sae.training_forward_pass(batch) for sae in (reference, ours)]
    for name in ("mse_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(outputs[1].losses[name], outputs[0].losses[name], rtol=1e-5, atol=1e-6)
    assert outputs[0].losses["auxiliary_reconstruction_loss"] > 0
    for output in outputs:
        output.loss.backward()
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(dict(ours.named_parameters())[name].grad, parameter.grad, rtol=1e-4, atol=1e-6)
