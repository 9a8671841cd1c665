"""Unrolled GAN (Metz et al. 2017): G's loss is taken against the discriminator D would become after K more of its own
updates, and G's gradient flows through those updates (how D would react to G's samples), which discourages G from
hopping between modes that D can chase.

The K updates are Adam steps, written out as tensor arithmetic so that autograd differentiates through them, starting
from D's parameters and from D's optimizer state (first and second moments, step count) as they are now, with D's
current learning rate, betas and eps: torch.optim.Adam's update, step for step. They run on copies through
``torch.func.functional_call``: D's own parameters, buffers (spectral-norm u and v included) and optimizer state are
left as they were; only G's gradients come out. Each unrolled step sees a fresh real batch and a fresh batch of G's
samples (with their graph to G), as D's real steps do; it uses D's adversarial loss only (the penalty is not
unrolled, as in Metz et al.).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import functional_call

from fastsn.train import losses


def _adam_state(optimizer: torch.optim.Adam, parameter: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(exp_avg, exp_avg_sq, steps taken) of one parameter, zeros and 0 before its first step."""
    state = optimizer.state.get(parameter, {})
    if not state:
        return torch.zeros_like(parameter), torch.zeros_like(parameter), 0.0
    return state["exp_avg"].detach(), state["exp_avg_sq"].detach(), float(state["step"])


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 whose gradient at 0 is 0, not inf (a parameter with an exactly zero gradient, e.g. a
    minibatch layer switched off, would otherwise turn every gradient into NaN)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def unrolled_generator_loss(D: torch.nn.Module, optimizer: torch.optim.Adam, generate: Callable[[], torch.Tensor],
                            real_batch: Callable[[], torch.Tensor], loss: str, steps: int) -> torch.Tensor:
    """G's loss against D after ``steps`` differentiable Adam updates of D.

    Args:
        D: the discriminator (bare, not DDP-wrapped), in training mode; (N, ...) -> (N, 1).
        optimizer: D's Adam (one parameter group; its state is read, not changed).
        generate: returns a fresh batch of G's samples (N, ...) with their graph to G's parameters.
        real_batch: returns a fresh real batch (N, ...).
        loss: the adversarial loss (see :mod:`fastsn.train.losses`).
        steps: K >= 0, the unrolled updates (K = 0: the plain G loss, computed on copies of D's state).

    Returns:
        The scalar G loss of D's K-step future on a fresh batch of G's samples; its backward fills G's gradients (and
        none of D's).
    """
    if steps < 0:
        raise ValueError(f"--unroll: must be an integer >= 0, got {steps}")
    if len(optimizer.param_groups) != 1:
        raise ValueError("unrolled_generator_loss: D's optimizer must have one parameter group")
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = float(group["lr"]), group["betas"], float(group["eps"])
    names = [name for name, _ in D.named_parameters()]
    originals = dict(D.named_parameters())
    # leaves that require grad, so that autograd.grad can differentiate D's loss with respect to them
    params = {name: p.detach().requires_grad_(True) for name, p in originals.items()}
    buffers = {name: b.clone() for name, b in D.named_buffers()}  # u, v updated in place on these copies
    moments = {name: _adam_state(optimizer, originals[name]) for name in names}

    def scores(x: torch.Tensor) -> torch.Tensor:
        return functional_call(D, (params, buffers), (x,))

    for _ in range(steps):
        real, fake = real_batch(), generate()
        loss_d = losses.d_loss(loss, scores(real), scores(fake))
        grads = torch.autograd.grad(loss_d, [params[n] for n in names], create_graph=True)
        updated = {}
        for name, grad in zip(names, grads):
            exp_avg, exp_avg_sq, taken = moments[name]
            taken += 1
            exp_avg = beta1 * exp_avg + (1 - beta1) * grad
            exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
            moments[name] = (exp_avg, exp_avg_sq, taken)
            # torch.optim.Adam: p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
            denominator = (_safe_sqrt(exp_avg_sq) / (1 - beta2 ** taken) ** 0.5) + eps
            updated[name] = params[name] - (lr / (1 - beta1 ** taken)) * exp_avg / denominator
        params = updated
    return losses.g_loss(loss, scores(generate()))
