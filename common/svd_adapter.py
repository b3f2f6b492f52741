"""The SVD-rotation adapter of seed 004 (InnerPiSSA): a linear layer's top singular directions, rotated and rescaled
by an amount a coefficient c sets.

For a weight W (out x in), the PiSSA split keeps its top r singular triplets, W = U diag(S) V^T + W_res, and freezes
the residual. The adapter learns a skew-symmetric r x r generator per rotated side and a log-scale lambda per
singular value; at coefficient c the layer computes

    W(c) = (U R_u(c)) diag(S * exp(c * lambda)) (V R_v(c))^T + W_res,    R(c) = Cayley(c * A) = (I - cA)^-1 (I + cA).

At c = 0 both rotations are the identity and the scale is 1, so W(0) = W exactly; at -c each rotation is the inverse
(the transpose) of the one at +c and each scale the reciprocal, so -c undoes in weight space what +c does. The
seed's journal found rotating V ahead of rotating U, which is the default here. The adapted layer is never rewritten:
a forward hook adds x (W(c) - W)^T, a rank-r correction, so rows of one batch can carry different coefficients.

The LoRA baseline's weight change has the same shape of correction: W(c) = W + c * scale * B A, a `LowRankWeight`,
so one hook and one decode applier serve both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

from common.hooks import decoder_layers


@dataclass(frozen=True)
class AdaptedWeight:
    """One adapted linear layer: where it sits, its frozen factors, and the learnable generators."""
    layer: int  # decoder layer
    path: str  # the module within that layer, e.g. "mlp.up_proj"
    u: torch.Tensor  # [out, r], frozen
    s: torch.Tensor  # [r], frozen
    v: torch.Tensor  # [in, r], frozen
    skew_v: torch.Tensor | None  # [r, r] generator of V's rotation (its skew-symmetric part is used); None: not rotated
    skew_u: torch.Tensor | None
    log_scale: torch.Tensor  # [r], lambda

    @property
    def name(self) -> str:
        return f"layer_{self.layer}.{self.path}"

    def mixing(self, coefficients: torch.Tensor) -> torch.Tensor:
        """[n, r, r]: R_v(c) diag(S exp(c lambda)) R_u(c)^T - diag(S) for each coefficient, so that the correction
        of input x at that coefficient is (x V) M U^T."""
        c = coefficients.to(self.s.device, self.s.dtype)[:, None, None]
        scaled = torch.diag_embed(self.s * torch.exp(c[:, :, 0] * self.log_scale))
        if self.skew_v is not None:
            scaled = cayley(c * skew(self.skew_v)) @ scaled
        if self.skew_u is not None:
            scaled = scaled @ cayley(c * skew(self.skew_u)).transpose(-1, -2)
        return scaled - torch.diag(self.s)

    def correction(self, x: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        """x (W(c) - W)^T for x [batch, seq, in] and mixing [batch, r, r] (one coefficient per row)."""
        projected = x @ self.v.to(x.device, x.dtype)
        return (projected @ mixing.to(x.device, x.dtype)) @ self.u.to(x.device, x.dtype).T

    def to(self, device: torch.device | str) -> AdaptedWeight:
        moved = {name: getattr(self, name) for name in ("u", "s", "v", "skew_v", "skew_u", "log_scale")}
        return replace(self, **{name: None if t is None else t.to(device) for name, t in moved.items()})

    def weight_at(self, coefficient: float) -> torch.Tensor:
        """W(c) - W as a dense [out, in] matrix (for checks and for export; generation uses `correction`)."""
        mixing = self.mixing(torch.tensor([coefficient], dtype=self.s.dtype))[0]
        return self.u @ mixing.T @ self.v.T


@dataclass(frozen=True)
class LowRankWeight:
    """A LoRA weight change (PEFT's lora_A as `down`, lora_B as `up`, alpha / r as `scale`) with a coefficient:
    W(c) = W + c * scale * up down^T, so c = 0 is the base model and -c subtracts what +c adds."""
    layer: int
    path: str
    down: torch.Tensor  # [in, r]
    up: torch.Tensor  # [out, r]
    scale: float

    @property
    def name(self) -> str:
        return f"layer_{self.layer}.{self.path}"

    def mixing(self, coefficients: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.down.shape[1], dtype=self.down.dtype, device=self.down.device)
        return coefficients.to(self.down.device, self.down.dtype)[:, None, None] * self.scale * eye

    def correction(self, x: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        projected = x @ self.down.to(x.device, x.dtype)
        return (projected @ mixing.to(x.device, x.dtype)) @ self.up.to(x.device, x.dtype).T

    def to(self, device: torch.device | str) -> LowRankWeight:
        return replace(self, down=self.down.to(device), up=self.up.to(device))

    def weight_at(self, coefficient: float) -> torch.Tensor:
        return coefficient * self.scale * self.up @ self.down.T


def skew(generator: torch.Tensor) -> torch.Tensor:
    return generator - generator.transpose(-1, -2)


def cayley(skew_symmetric: torch.Tensor) -> torch.Tensor:
    """(I - K)^-1 (I + K): orthogonal for skew-symmetric K, the identity at K = 0, and Cayley(-K) = Cayley(K)^T."""
    eye = torch.eye(skew_symmetric.shape[-1], dtype=skew_symmetric.dtype, device=skew_symmetric.device)
    return torch.linalg.solve(eye - skew_symmetric, eye + skew_symmetric)


def linear_at(model: torch.nn.Module, layer: int, path: str) -> torch.nn.Linear:
    module = decoder_layers(model)[layer].get_submodule(path)
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"layer {layer} {path} is a {type(module).__name__}, not a linear layer")
    return module


def split_weight(model: torch.nn.Module, layer: int, path: str, rank: int, rotate_v: bool = True,
                 rotate_u: bool = False, generator: torch.Generator | None = None) -> AdaptedWeight:
    """The PiSSA split of one layer's weight, with fresh generators: small random ones, as the seed's journal starts
    them (zero would train as well: the Cayley map's derivative at 0 is 2c dK), so seeds give different starts."""
    weight = linear_at(model, layer, path).weight.detach().float().cpu()
    if rank > min(weight.shape):
        raise ValueError(f"rank {rank} is larger than layer {layer} {path}'s {tuple(weight.shape)}")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    small = 1e-3

    def fresh() -> torch.Tensor:
        return small * torch.randn(rank, rank, generator=generator)

    return AdaptedWeight(layer, path, u[:, :rank].contiguous(), s[:rank].contiguous(), vh[:rank].T.contiguous(),
                         fresh() if rotate_v else None, fresh() if rotate_u else None,
                         small * torch.randn(rank, generator=generator))


@contextlib.contextmanager
def adapted(model: torch.nn.Module, weights: Sequence[AdaptedWeight | LowRankWeight], coefficients: torch.Tensor
            ) -> Iterator[None]:
    """Every forward pass inside the block runs with the adapters at `coefficients` (one per batch row, or one for
    all); gradients flow to the generators. The hooks always come off."""
    flat = coefficients.reshape(-1)
    handles = []
    try:
        for weight in weights:
            def hook(_module, inputs, output, weight=weight):
                x = inputs[0]
                rows = flat.expand(x.shape[0]) if flat.numel() == 1 else flat
                return output + weight.correction(x, weight.mixing(rows))
            handles.append(linear_at(model, weight.layer, weight.path).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
