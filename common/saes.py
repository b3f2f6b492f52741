"""Sparse autoencoders, always through sae-lens: where the SAE of a layer comes from, and reading it.

`sae_source` (config) names one of three kinds:
- `train`: phase 2.0 trains one SAE per layer and saves it in sae-lens format under its folder;
- a sae-lens release (e.g. `gemma-scope-2b-pt-res-canonical`), with `sae_id_template` giving the
  SAE id of a layer (`layer_{layer}/width_16k/canonical`): `SAE.from_pretrained`;
- a local directory: `{layer}` in it is filled in, otherwise `<dir>/layer_{L}` is used when it
  exists: `SAE.load_from_disk`.
Every SAE here reads the output of decoder layer L, the site phase 1 records and steering writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.errors import PipelineError

TRAIN = "train"
MASSIVE_NORM_RATIO = 10.0


def massive_norm_threshold(activations: torch.Tensor) -> float:
    """Residual norm above which a token counts as a massive activation (an attention sink).

    Besides position 0, a few tokens (here: first tokens after BOS) reach 40-120x the median norm.
    They hold ~40% of the variance of held-out code while being 0.03% of its tokens, so they would
    dominate both training and FVU; SAEs are trained and measured without them, and the count is reported.
    """
    return MASSIVE_NORM_RATIO * float(activations.norm(dim=1).median())


def source_kind(sae_source: str) -> str:
    if sae_source == TRAIN:
        return "trained"
    if "{layer}" in sae_source or Path(sae_source).expanduser().exists():
        return "disk"
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    if sae_source in get_pretrained_saes_directory():
        return "release"
    raise PipelineError(f"config key 'sae_source' = {sae_source!r}: not 'train', not an existing directory "
                        "and not a sae-lens release name (see sae_lens/pretrained_saes.yaml)")


def layer_source(sae_source: str, sae_id_template: str, layer: int, trained_dir: Path) -> dict[str, Any]:
    """A JSON-able record that `load_sae` turns into the SAE of `layer`."""
    kind = source_kind(sae_source)
    if kind == "trained":
        return {"kind": kind, "path": str(trained_dir / f"sae_layer_{layer}"), "layer": layer}
    if kind == "release":
        return {"kind": kind, "release": sae_source, "sae_id": sae_id_template.format(layer=layer), "layer": layer}
    root = Path(sae_source.format(layer=layer)).expanduser()
    if "{layer}" not in sae_source and (root / f"layer_{layer}").is_dir():
        root = root / f"layer_{layer}"
    return {"kind": kind, "path": str(root), "layer": layer}


def load_sae(record: dict[str, Any], device: str = "cpu"):
    """The sae-lens SAE a `layer_source` record describes, in float32 on `device`."""
    from sae_lens import SAE

    try:
        if record["kind"] == "release":
            return SAE.from_pretrained(record["release"], record["sae_id"], device=device, dtype="float32")
        return SAE.load_from_disk(record["path"], device=device, dtype="float32")
    except (OSError, ValueError, KeyError) as exc:
        where = record.get("path") or f"{record.get('release')}/{record.get('sae_id')}"
        raise PipelineError(f"cannot load the SAE of layer {record['layer']} from {where}: {exc}") from exc


@torch.no_grad()
def encode_rows(sae, activations: torch.Tensor, batch_rows: int = 4096) -> torch.Tensor:
    """[n_rows, d_sae] latent activations of `activations` ([n_rows, d_in]), on the CPU."""
    device = sae.W_dec.device
    parts = [sae.encode(activations[start:start + batch_rows].to(device)).cpu()
             for start in range(0, len(activations), batch_rows)]
    return torch.cat(parts) if parts else torch.empty(0, sae.cfg.d_sae)


@torch.no_grad()
def reconstruction_stats(sae, activations: torch.Tensor, batch_rows: int = 4096) -> dict[str, Any]:
    """FVU, relative error, mean L0, and per-latent firing counts over `activations`.

    FVU divides the squared error by the variance around the rows' own mean; relative error divides
    it by the rows' squared norm. They differ a lot on rows that share most of their activation,
    such as phase 1's (always the same template token): there the variance is a tiny part of the norm.
    """
    device = sae.W_dec.device
    mean = activations.mean(0).to(device)
    squared_error = total_variance = total_energy = l0_sum = 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for start in range(0, len(activations), batch_rows):
        batch = activations[start:start + batch_rows].to(device)
        latents = sae.encode(batch)
        reconstruction = sae.decode(latents)
        squared_error += float(((batch - reconstruction) ** 2).sum())
        total_variance += float(((batch - mean) ** 2).sum())
        total_energy += float((batch ** 2).sum())
        active = latents > 0
        l0_sum += float(active.sum())
        fires += active.sum(0).cpu()
    n_rows = max(len(activations), 1)
    return {"fvu": squared_error / total_variance if total_variance > 0 else float("nan"),
            "relative_error": squared_error / total_energy if total_energy > 0 else float("nan"),
            "mean_l0": l0_sum / n_rows, "n_rows": len(activations), "fire_counts": fires}
