"""Gradient penalties for GAN discriminators: WGAN-GP, WGAN-LP, R1, R2 and DRAGAN, with per-sample norms.

``fastsn.gradient_penalty(D, real, fake, kind=...)`` returns the weighted penalty as a scalar with its graph, so
``(loss_D + penalty).backward()`` trains D through the double backward. ``fastsn.nn.GradientPenalty`` is the
module form, with StyleGAN2's lazy regularization.

Conventions (each sample's gradient g_i = dD(x_i)/dx_i, its norm over every non-batch dimension; means over the
batch):
    wgan-gp   weight * mean((|g_i| - center)^2) at x_i = e_i real_i + (1 - e_i) fake_i, e_i ~ U[0, 1) per sample
              (Gulrajani et al. 2017)
    wgan-lp   weight * mean(max(0, |g_i| - center)^2) at the same interpolates (Petzka et al. 2018)
    r1, r2    zero-centred at the real (r1) or fake (r2) samples: StyleGAN2's weight / 2 * mean(|g_i|^2) by default;
              ``convention="mescheder"`` gives weight * mean(|g_i|^2), as Mescheder et al.'s code (GAN_stability)
              computes it. ``center`` does not apply.
    dragan    weight * mean((|g_i| - center)^2) at x_i = real_i + e_i * 0.5 * std(real) * n_i, n_i ~ U[0, 1)
              elementwise, e_i ~ U[0, 1) per sample, std over the whole batch with the N divisor (Kodali et al.
              2017, as their numpy code; a batch of one element has std 0, not torch.std's NaN).
``kind=("r1", "r2")`` computes both in ONE forward and double backward over cat([real, fake]) and returns their sum;
that needs a discriminator that treats samples independently (no batch statistics, no minibatch layers).
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch

from fastsn.nn._leaky_mlp import leaky_mlp
from fastsn.nn._sequential_scores import sequential_scores
from fastsn.nn.minibatch_discrimination import MinibatchDiscrimination
from fastsn.nn.minibatch_stddev import MinibatchStdDev
from fastsn.ops.gradient_penalty import MODES, gradient_penalty_head
from fastsn.ops.interpolate import draw_eps, interpolate
from fastsn.ops.mlp_input_gradient import mlp_input_gradient

KINDS = ("wgan-gp", "wgan-lp", "r1", "r2", "dragan")
CONVENTIONS = ("stylegan2", "mescheder")
_NEEDS_FAKE = ("wgan-gp", "wgan-lp", "r2")
_NEEDS_REAL = ("wgan-gp", "wgan-lp", "r1", "dragan")

Kind = Union[str, Sequence[str]]


def _kinds(kind: Kind) -> tuple[str, ...]:
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"gradient_penalty(): argument 'kind' must be one of {KINDS} or ('r1', 'r2'), got {kind!r}")
    if len(kinds) > 1 and sorted(kinds) != ["r1", "r2"]:
        raise ValueError("gradient_penalty(): argument 'kind' combines only ('r1', 'r2') (one batched double "
                         f"backward over cat([real, fake])), got {kind!r}")
    return kinds


def _check_inputs(kinds: tuple[str, ...], real: Optional[torch.Tensor], fake: Optional[torch.Tensor]) -> None:
    for name, tensor, needed in (("real", real, _NEEDS_REAL), ("fake", fake, _NEEDS_FAKE)):
        if any(k in needed for k in kinds):
            if tensor is None:
                raise ValueError(f"gradient_penalty(): kind {'/'.join(kinds)!r} needs argument '{name}'")
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise TypeError(f"gradient_penalty(): argument '{name}' must be a floating-point tensor, got "
                                f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
            if tensor.dim() < 1 or tensor.shape[0] == 0:
                raise ValueError(f"gradient_penalty(): argument '{name}' must hold a batch of at least one sample, "
                                 f"got shape {tuple(tensor.shape)}")
    uses_both = len(kinds) > 1 or kinds[0] in ("wgan-gp", "wgan-lp")
    if uses_both:
        if real.shape != fake.shape:
            raise ValueError(f"gradient_penalty(): arguments 'real' and 'fake' must have the same shape, got "
                             f"{tuple(real.shape)} and {tuple(fake.shape)}")
        if real.dtype != fake.dtype:
            raise ValueError(f"gradient_penalty(): arguments 'real' and 'fake' must have the same dtype, got "
                             f"{real.dtype} and {fake.dtype}")
        if real.device != fake.device:
            raise ValueError(f"gradient_penalty(): arguments 'real' and 'fake' must be on one device, got "
                             f"{real.device} and {fake.device}")


def penalty_inputs(kinds: tuple[str, ...], real: Optional[torch.Tensor], fake: Optional[torch.Tensor],
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The points where the penalty differentiates D, detached from real and fake's graphs. Interpolates come from
    the fused op :func:`fastsn.ops.interpolate` (one factor per sample, drawn from ``generator``).

    Returns:
        (B, ...) for one kind; (2B, ...) = cat([real, fake]) for ("r1", "r2").
    """
    if len(kinds) > 1:
        return torch.cat([real.detach(), fake.detach()])
    kind = kinds[0]
    if kind == "r1":
        return real.detach()
    if kind == "r2":
        return fake.detach()
    if kind == "dragan":
        x = real.detach()
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        perturbed = x + 0.5 * x.std(correction=0) * noise
        return interpolate(perturbed, x, draw_eps(x, generator))  # x + e_i * (perturbed - x)
    return interpolate(real.detach(), fake.detach(), draw_eps(real, generator))


def _warn_if_samples_mix(discriminator: torch.nn.Module) -> None:
    """kind=("r1", "r2") runs real and fake through D as one batch: warn where a layer of D is known to mix the
    samples of a batch (then the sum differs from r1 + r2 taken apart). Other such layers cannot be told apart."""
    if not isinstance(discriminator, torch.nn.Module):  # a function: nothing to look into
        return
    for name, module in discriminator.named_modules():
        batch_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (
            module.training or not module.track_running_stats)
        if batch_norm or isinstance(module, (MinibatchDiscrimination, MinibatchStdDev)):
            warnings.warn(f"gradient_penalty(): kind=('r1', 'r2') runs real and fake through the discriminator as one "
                          f"batch, but its layer {name or type(module).__name__!r} ({type(module).__name__}) mixes the "
                          "samples of a batch: the result is not r1 + r2 taken apart (pass kind='r1' and kind='r2' "
                          "separately)", stacklevel=3)
            return


def _scores(discriminator: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = sequential_scores(discriminator, x)  # a plain Sequential: its activations on fastsn's op
    if out is None:
        out = discriminator(x)
    if not isinstance(out, torch.Tensor) or out.shape not in ((x.shape[0],), (x.shape[0], 1)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"gradient_penalty(): the discriminator must return one score per sample, shape "
                         f"({x.shape[0]},) or ({x.shape[0]}, 1), got {shape}")
    return out


def _input_gradients(scores: torch.Tensor, x: torch.Tensor, scaler: Optional["torch.amp.GradScaler"]
                     ) -> torch.Tensor:
    """dsum(D)/dx with its graph (create_graph), unscaled when a GradScaler scaled it (PyTorch's AMP recipe)."""
    total = scores.sum()
    if not total.requires_grad:
        raise ValueError("gradient_penalty(): the discriminator's output does not depend on its input (no "
                         "autograd path from the input to the scores)")
    if scaler is not None:
        total = scaler.scale(total)
    (grad,) = torch.autograd.grad(total, x, create_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError("gradient_penalty(): the discriminator's output does not depend on its input (no "
                         "autograd path from the input to the scores)")
    if scaler is not None and scaler.is_enabled():
        grad = grad * (1.0 / scaler.get_scale())
    return grad


def penalty_from_gradients(grad: torch.Tensor, kind: str, weight: float, center: float,
                           convention: str = "stylegan2") -> torch.Tensor:
    """The weighted penalty of one kind from the input gradients g (B, ...), by the fused head op
    (``fastsn.ops.gradient_penalty_head``): per-sample norms over every non-batch dimension, accumulated in float32
    for float16/bfloat16 gradients, on the backend that ``fastsn.use_backend`` selects.

    Returns:
        A scalar (float32 for half-precision g, else g's dtype), differentiable in g.
    """
    if kind in ("r1", "r2") and convention == "stylegan2":
        weight = weight / 2
    if isinstance(weight, torch.Tensor):  # (a learned or scheduled weight keeps its gradient: the kernels take floats)
        return weight * gradient_penalty_head(grad.reshape(grad.shape[0], -1), MODES[kind], 1.0, center)
    return gradient_penalty_head(grad.reshape(grad.shape[0], -1), MODES[kind], weight, center)


def gradient_penalty(discriminator: torch.nn.Module, real: Optional[torch.Tensor],
                     fake: Optional[torch.Tensor] = None, *, kind: Kind = "wgan-gp", weight: float = 10.0,
                     center: float = 1.0, scaler: Optional["torch.amp.GradScaler"] = None,
                     generator: Optional[torch.Generator] = None, convention: str = "stylegan2") -> torch.Tensor:
    """The weighted gradient penalty of ``discriminator``, a scalar with its graph (add it to D's loss).

    Args:
        discriminator: maps a batch (B, ...) to one score per sample, (B,) or (B, 1).
        real: real samples (B, ...); needed by wgan-gp, wgan-lp, r1 and dragan.
        fake: generated samples, real's shape; needed by wgan-gp, wgan-lp and r2. Detached: no gradient reaches G.
        kind: "wgan-gp", "wgan-lp", "r1", "r2", "dragan", or ("r1", "r2") for both in one batched double backward.
        weight: the penalty's coefficient (lambda, or gamma for r1/r2).
        center: the target norm of wgan-gp, wgan-lp and dragan (1.0); r1 and r2 are zero-centred.
        scaler: a ``torch.amp.GradScaler`` under mixed precision: the input gradients are taken of the scaled
            scores and unscaled before the norm; scale the returned loss with the same scaler as usual.
        generator: a ``torch.Generator`` on the inputs' device for the interpolation and noise draws.
        convention: r1/r2 only: "stylegan2" (weight / 2 * mean |g|^2, default) or "mescheder" (weight * mean |g|^2).

    Returns:
        A scalar tensor: float32 for float16/bfloat16 inputs, else the inputs' dtype.

    Raises:
        ValueError: an unknown kind or convention, a missing input, real/fake of different shapes or dtypes, scores
            that are not one per sample, or scores that do not depend on the input.
        TypeError: non-floating-point inputs.
        RuntimeError: grad mode off (under torch.no_grad() or torch.inference_mode()).
    """
    kinds = _kinds(kind)
    if convention not in CONVENTIONS:
        raise ValueError(f"gradient_penalty(): argument 'convention' must be one of {CONVENTIONS}, got "
                         f"{convention!r}")
    _check_inputs(kinds, real, fake)
    if not torch.is_grad_enabled():  # (before D runs: its forward may update buffers, e.g. a power iteration)
        raise RuntimeError("gradient_penalty(): needs grad mode, which is off (called under torch.no_grad() or "
                           "torch.inference_mode())")
    if len(kinds) > 1:
        _warn_if_samples_mix(discriminator)
    x = penalty_inputs(kinds, real, fake, generator)
    mlp = leaky_mlp(discriminator, x) if scaler is None or not scaler.is_enabled() else None
    if mlp is not None:  # a leaky-ReLU MLP: its input gradient and that gradient's backward as one fused op
        grad = mlp_input_gradient(x, mlp.weights, mlp.biases, mlp.negative_slopes, mlp.gains)
    else:
        x.requires_grad_(True)
        grad = _input_gradients(_scores(discriminator, x), x, scaler)
    if len(kinds) == 1:
        return penalty_from_gradients(grad, kinds[0], weight, center, convention)
    batch = real.shape[0]
    return (penalty_from_gradients(grad[:batch], "r1", weight, center, convention)
            + penalty_from_gradients(grad[batch:], "r2", weight, center, convention))


class GradientPenalty(torch.nn.Module):
    """Module form of :func:`gradient_penalty` with lazy regularization (StyleGAN2): applied on every
    ``every``-th call (the first, then every ``every``), multiplied by ``every``; the calls in between return 0.

    Args:
        kind, weight, center: as :func:`gradient_penalty`.
        every: apply the penalty on one call in ``every`` (1: every call).
        convention: as :func:`gradient_penalty` (r1/r2 only).

    The call count is saved in the state_dict (extra state), so a resumed run keeps its schedule.
    """

    def __init__(self, kind: Kind = "wgan-gp", weight: float = 10.0, center: float = 1.0, every: int = 1,
                 convention: str = "stylegan2") -> None:
        super().__init__()
        _kinds(kind)
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"GradientPenalty(): argument 'every' must be a positive int, got {every!r}")
        if convention not in CONVENTIONS:
            raise ValueError(f"GradientPenalty(): argument 'convention' must be one of {CONVENTIONS}, got "
                             f"{convention!r}")
        self.kind, self.weight, self.center, self.every, self.convention = kind, weight, center, every, convention
        self.calls = 0

    def forward(self, discriminator: torch.nn.Module, real: Optional[torch.Tensor],
                fake: Optional[torch.Tensor] = None, *, scaler: Optional["torch.amp.GradScaler"] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The penalty times ``every`` on an applying call, else a zero scalar (no graph) on the inputs' device."""
        if real is None and fake is None:
            raise ValueError("GradientPenalty(): needs argument 'real' or 'fake'")
        if self.calls % self.every != 0:
            self.calls += 1
            like = real if real is not None else fake
            return torch.zeros((), device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))
        penalty = self.every * gradient_penalty(discriminator, real, fake, kind=self.kind, weight=self.weight,
                                                center=self.center, scaler=scaler, generator=generator,
                                                convention=self.convention)
        self.calls += 1  # a call that raised is not counted: the schedule stays where it was
        return penalty

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, weight={self.weight}, center={self.center}, every={self.every}, "
                f"convention={self.convention!r}")
