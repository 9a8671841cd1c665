"""The training loop: n_critic D steps then one G step per step, Adam with TTUR learning rates, the gradient
penalty of the backend, the collapse monitor, and DistributedDataParallel when torch.distributed is initialized
(each process draws its own share of the batch; gradients are averaged by DDP, so the penalty of the global batch is
the mean of the per-process penalties).

D's step runs inside ``fastsn.grouped_spectral_norm(D)`` (backend fastsn) or
``torch.nn.utils.parametrize.cached()`` (backend torch): each spectral norm's power iteration runs once per step
(not once per forward) in both, so the two backends compute the same thing.

``--pack M`` (PacGAN): real batches are packed with real, fake with fake (:func:`fastsn.train.models.pack_samples`)
before D sees them, in D's step, its penalty (per packed sample norms) and G's step. ``--ema BETA``: the monitor and
the final metrics measure an exponential moving average of G's weights (batch-norm statistics copied from G).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

import fastsn
from fastsn.train import losses
from fastsn.train.config import DEFAULT_GP_WEIGHT, TrainConfig, schedule_factor
from fastsn.train.data import make_dataset
from fastsn.train.evaluate import Evaluator
from fastsn.train.models import ModelOptions, SwitchableFeatures, build_models, pack_samples, z_dim
from fastsn.train.monitor import Check, CollapseMonitor
from fastsn.train.penalties import gradient_penalty
from fastsn.train.spectra import layer_spectra
from fastsn.train.unroll import unrolled_generator_loss

ADAM_BETAS = (0.5, 0.9)
# seeds of the independent random streams (data, latents, penalty draws): offsets from --seed, times the rank
_STREAMS = {"data": 1, "z": 2, "gp": 3}


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        config: the settings (with the penalty and D's base learning rate as they ended, after any strengthening).
        history: {"step", "d_loss", "g_loss", "penalty"}: one entry per step (losses of the step's last D update).
        checks: the monitor's checks; events: its collapse events (with what was done).
        metrics: final metrics (rank 0; {} elsewhere). ms_per_step: training time per step, monitor excluded.
        samples: the final evaluation's samples (for pictures). G, D: the trained modules (unwrapped).
        stopped_at: the step a "stop" event ended training at, else None.
        diverged_at: the step whose D loss, G loss or penalty was NaN or infinite (training ended there; the
            report evaluates the last G, whose non-finite samples its metrics count), else None.
        G_ema: the moving average of G's weights that was evaluated (--ema), else None.
    """
    config: dict
    history: dict[str, list]
    checks: list[Check]
    events: list[dict]
    metrics: dict
    ms_per_step: float
    samples: Optional[torch.Tensor]
    G: torch.nn.Module
    D: torch.nn.Module
    stopped_at: Optional[int] = None
    world_size: int = 1
    G_ema: Optional[torch.nn.Module] = None
    diverged_at: Optional[int] = None


class _Pair(torch.nn.Module):
    """D on real and on fake batches in one call: one DDP forward per backward, while minibatch layers still see
    real and fake samples apart. Returns (scores on real (N, 1), scores on fake (N, 1)) for packed (N, ...) inputs."""

    def __init__(self, D: torch.nn.Module) -> None:
        super().__init__()
        self.D = D

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.D(real), self.D(fake)


def _spectral_norm_block(backend: str, D: torch.nn.Module) -> contextlib.AbstractContextManager:
    if backend == "fastsn":
        return fastsn.grouped_spectral_norm(D)
    return torch.nn.utils.parametrize.cached()


def ema_decay(beta: float, updates: int) -> float:
    """The moving average's decay after ``updates`` G steps: min(beta, (1 + t) / (10 + t)), so that the average
    forgets the random initialization within the first steps instead of after ~1 / (1 - beta) of them (the ramp of
    TensorFlow's ExponentialMovingAverage with num_updates)."""
    return min(beta, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, decay: float) -> None:
    """G_ema's parameters <- decay * G_ema's + (1 - decay) * G's; buffers (batch-norm statistics) copied from G."""
    for averaged, current in zip(G_ema.parameters(), G.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(G_ema.buffers(), G.buffers()):
        averaged.copy_(current)


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` in the block (G's step does not need D's)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sigmas(D: torch.nn.Module) -> dict[str, float]:
    return {name: float(sigma) for name, sigma in fastsn.spectral_norms(D).items()}


def _non_finite_loss(history: dict[str, list]) -> Optional[str]:
    """The name of the last step's first loss that is NaN or infinite ("D loss", "G loss", "penalty"), else None."""
    for key, name in (("d_loss", "D loss"), ("g_loss", "G loss"), ("penalty", "penalty")):
        if not math.isfinite(history[key][-1]):
            return name
    return None


def discriminator_backward(backend: str, pair: torch.nn.Module, D: torch.nn.Module, real: torch.Tensor,
                           fake: torch.Tensor, loss: str, gp_kind: str, gp_weight: float,
                           gp_generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """D's loss and penalty on one batch, backpropagated into D's gradients (one spectral-norm refresh).

    Args:
        backend: "fastsn" or "torch"; pair: D on (real, fake) (a :class:`_Pair`, DDP-wrapped under DDP); D: the bare D
            (the penalty's extra forward runs on it: its parameter gradients join the same DDP all-reduce, which
            fires once per parameter per backward).
        real, fake: (N, ...) batches, already packed (--pack); loss: the adversarial loss; gp_kind, gp_weight,
            gp_generator: the penalty.

    Returns:
        (D's loss, the penalty), detached scalars.
    """
    with _spectral_norm_block(backend, D):
        real_scores, fake_scores = pair(real, fake)
        loss_d = losses.d_loss(loss, real_scores, fake_scores)
        penalty = (gradient_penalty(backend, D, real, fake, gp_kind, gp_weight, gp_generator)
                   if gp_kind != "none" else torch.zeros((), device=real.device))
        (loss_d + penalty).backward()
    return loss_d.detach(), penalty.detach()


class Strength:
    """What ``--on-collapse strengthen`` can change, and its policies (``--strengthen``).

    Args:
        gp_kind, gp_weight: the penalty at the start; D: the discriminator (for its switchable minibatch layer).
    """

    def __init__(self, gp_kind: str, gp_weight: float, D: torch.nn.Module) -> None:
        self.gp_kind, self.gp_weight = gp_kind, gp_weight
        self.switches = [m for m in D.modules() if isinstance(m, SwitchableFeatures)]
        self.mbd_on = False

    def apply(self, policy: str, base_lr: dict[str, float]) -> dict:
        """Apply one policy; return what it changed, for the collapse event.

        penalty: double the penalty weight (no penalty: R1 at its default weight). mbd: switch minibatch
        discrimination on (already on, or --mbd given from the start: no change). lr-d: halve D's base learning rate.
        """
        if policy == "penalty":
            if self.gp_kind == "none":
                self.gp_kind, self.gp_weight = "r1", DEFAULT_GP_WEIGHT["r1"]
            else:
                self.gp_weight *= 2
            return {"policy": policy, "gp": self.gp_kind, "gp_weight": self.gp_weight}
        if policy == "mbd":
            changed = bool(self.switches) and not self.mbd_on
            for switch in self.switches:
                switch.switch_on()
            self.mbd_on = self.mbd_on or changed
            return {"policy": policy, "mbd": "switched on" if changed else "no change (already on)"}
        if policy == "lr-d":
            base_lr["d"] *= 0.5
            return {"policy": policy, "lr_d": base_lr["d"]}
        raise ValueError(f"--strengthen: unknown policy {policy!r}")


def train(config: TrainConfig, progress: Optional[Callable[[int, dict], None]] = None,
          evaluate: bool = True, initial: Optional[tuple[dict, dict]] = None) -> RunResult:
    """Train G and D per ``config`` and evaluate G.

    Args:
        config: the settings (validated here).
        progress: called after every step with (step, {"d_loss", "g_loss", "modes"}) on rank 0.
        evaluate: run the collapse monitor and the final metrics (False: training only, e.g. for --compare).
        initial: (G's, D's) state_dicts to start from instead of the seeded initialization (--compare starts both
            backends from one state: their spectral norms' 15 registration iterations round differently).

    Returns:
        The run's :class:`RunResult`.
    """
    config.validate()
    rank, world = _world()
    if config.batch_size % world:
        raise ValueError(f"--batch-size: {config.batch_size} does not split over {world} processes")
    if (config.batch_size // world) % config.pack:
        raise ValueError(f"--batch-size: each process's share, {config.batch_size} / {world} = "
                         f"{config.batch_size // world}, is not divisible by --pack {config.pack}")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    batch = config.batch_size // world
    data = make_dataset(config.data)
    latent = z_dim(config.data)
    G, D = build_models(ModelOptions.from_config(config), config.seed)
    if initial is not None:
        G.load_state_dict(initial[0])
        D.load_state_dict(initial[1])
    dtype = getattr(torch, config.dtype)
    G, D = G.to(device, dtype), D.to(device, dtype)
    G_ema = copy.deepcopy(G) if config.ema > 0 else None
    G_eval = G if G_ema is None else G_ema  # what the monitor and the final metrics measure
    train_G, train_pair = G, _Pair(D)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_G = torch.nn.parallel.DistributedDataParallel(G, device_ids=ids)
        train_pair = torch.nn.parallel.DistributedDataParallel(train_pair, device_ids=ids)
    lr_g, lr_d = config.learning_rates
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=ADAM_BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=ADAM_BETAS)
    base_lr = {"g": lr_g, "d": lr_d}  # the schedule's factor multiplies these; --strengthen lr-d lowers "d"
    streams = {name: torch.Generator().manual_seed(config.seed * 1000 + offset + 100 * rank)
               for name, offset in _STREAMS.items()}
    gp_generator = streams["gp"] if device.type == "cpu" else torch.Generator(device).manual_seed(
        config.seed * 1000 + _STREAMS["gp"] + 100 * rank)
    strength = Strength(config.gp, config.penalty_weight, D)
    evaluator = Evaluator(data, config.cache_dir) if evaluate and rank == 0 else None
    monitor = CollapseMonitor(config.on_collapse)
    history: dict[str, list] = {"step": [], "d_loss": [], "g_loss": [], "penalty": []}
    train_seconds, stopped_at, diverged_at, last_modes, events_seen = 0.0, None, None, None, 0

    def real_batch() -> torch.Tensor:
        return data.sample(batch, streams["data"]).to(device, dtype)

    def latents() -> torch.Tensor:
        return torch.randn(batch, latent, generator=streams["z"]).to(device, dtype)

    for step in range(1, config.steps + 1):
        started = time.perf_counter()
        factor = schedule_factor(config.schedule, step - 1, config.steps)
        for optimizer, key in ((opt_g, "g"), (opt_d, "d")):
            optimizer.param_groups[0]["lr"] = base_lr[key] * factor
        for _ in range(config.n_critic):
            real, z = pack_samples(real_batch(), config.pack), latents()
            with torch.no_grad():
                fake = pack_samples(train_G(z), config.pack)
            opt_d.zero_grad(set_to_none=True)
            loss_d, penalty = discriminator_backward(config.backend, train_pair, D, real, fake, config.loss,
                                                     strength.gp_kind, strength.gp_weight, gp_generator)
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        if config.unroll:
            # G looks through K differentiable updates of a copy of D (fastsn.train.unroll); D itself is untouched
            loss_g = unrolled_generator_loss(D, opt_d, lambda: pack_samples(train_G(latents()), config.pack),
                                             lambda: pack_samples(real_batch(), config.pack), config.loss,
                                             config.unroll)
            loss_g.backward()
        else:
            z = latents()
            with _frozen(D), _spectral_norm_block(config.backend, D):
                loss_g = losses.g_loss(config.loss, D(pack_samples(train_G(z), config.pack)))
                loss_g.backward()
        opt_g.step()
        if G_ema is not None:
            update_ema(G_ema, G, ema_decay(config.ema, step))
        train_seconds += time.perf_counter() - started
        history["step"].append(step)
        history["d_loss"].append(loss_d.item())
        history["g_loss"].append(loss_g.item())
        history["penalty"].append(penalty.item())
        diverged = _non_finite_loss(history)
        if world > 1:
            # every process leaves the loop at the same step: a NaN on one rank reaches the others only through
            # the next all-reduce of gradients
            flag = torch.tensor([1.0 if diverged else 0.0], device=device)
            dist.all_reduce(flag, dist.ReduceOp.MAX)
            diverged = diverged or ("loss on another process" if flag.item() else None)
        if diverged:
            diverged_at = step
            if rank == 0:
                warnings.warn(f"fastsn-train: training diverged at step {step} ({diverged} is not finite); "
                              f"stopped there, and the report evaluates the last G", stacklevel=2)
            break

        event = None
        if evaluator is not None and (step % config.check_every == 0 or step == config.steps):
            modes, diversity = evaluator.monitor(G_eval, latent, step, device)
            last_modes = modes
            event = monitor.check(Check(step, modes, diversity, _sigmas(D), layer_spectra(D)))
        collapsed = event is not None
        if world > 1 and config.on_collapse != "warn":
            # rank 0 decides; every process must act on the same events: the same penalty, learning rate and
            # minibatch switch, and leaving the loop at the same step
            flag = torch.tensor([1.0 if collapsed else 0.0], device=device)
            dist.broadcast(flag, 0)
            collapsed = bool(flag.item())
        stop = False
        if collapsed:
            events_seen += 1
            if config.on_collapse == "strengthen":
                policies = config.policies
                change = strength.apply(policies[min(events_seen, len(policies)) - 1], base_lr)
                if event is not None:
                    event.update(change)
            if event is not None:
                warnings.warn(f"fastsn-train: collapse at step {step}: {event['measure']} fell to "
                              f"{event['value']:.3g} from {event['best']:.3g} ({config.on_collapse})", stacklevel=2)
            stop = config.on_collapse == "stop"
        if progress is not None and rank == 0:
            progress(step, {"d_loss": history["d_loss"][-1], "g_loss": history["g_loss"][-1], "modes": last_modes})
        if stop:
            stopped_at = step
            break

    final, samples = ({}, None)
    if evaluator is not None:
        final, samples = evaluator.final(G_eval, latent, device)
    steps_done = len(history["step"])
    used = config.to_dict()
    used.update({"gp": strength.gp_kind, "gp_weight": strength.gp_weight, "lr_d": base_lr["d"],
                 "mbd_switched_on": strength.mbd_on})
    return RunResult(used, history, monitor.checks, monitor.events, final, 1000 * train_seconds / max(steps_done, 1),
                     samples, G, D, stopped_at, world, G_ema, diverged_at)
