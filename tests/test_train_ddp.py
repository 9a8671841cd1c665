"""fastsn-train under DistributedDataParallel with 2 CPU processes (gloo): D's gradients with the gradient penalty
and spectral norm equal those of one process on the whole batch, every rank ends with the same weights and u, v
(also with unrolled G steps, and after collapse events that strengthen the regularization), and
``torchrun --nproc_per_node=2 -m fastsn.train`` runs end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastsn
from fastsn.train import losses
from fastsn.train.config import TrainConfig
from fastsn.train.loop import _Pair, discriminator_backward, train
from fastsn.train.models import ModelOptions, build_models
from fastsn.train.monitor import CollapseMonitor

WORLD = 2
HALF = 8

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(50 + rank)
    return torch.randn(HALF, 2, generator=g), torch.randn(HALF, 2, generator=g)


class _AlwaysCollapsing(CollapseMonitor):
    """A monitor that reports a collapse at every check from the second on (rank 0 is the only one that checks)."""

    def check(self, check):
        self.checks.append(check)
        if len(self.checks) < 2:
            return None
        event = {"step": check.step, "measure": "modes", "value": 0.0, "best": 8.0, "action": self.action}
        self.events.append(event)
        return event


def _worker(rank: int, init_file: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # one D step of a DDP-wrapped D on this rank's half, penalty draws from this rank's generator
        _, D = build_models(ModelOptions("ring8", "fastsn", sn=True), seed=0)
        pair = torch.nn.parallel.DistributedDataParallel(_Pair(D))
        real, fake = _batch(rank)
        discriminator_backward("fastsn", pair, D, real, fake, "bce", "wgan-gp", 10.0,
                               torch.Generator().manual_seed(70 + rank))
        grads = {n: p.grad.clone() for n, p in D.named_parameters()}
        # a whole run: every rank must end with the same state
        result = train(TrainConfig(steps=3, batch_size=2 * HALF, sn=True, gp="r1", mbstd=True, mbd=True),
                       evaluate=False)
        state = {f"{k}.{n}": v.clone() for k, m in (("G", result.G), ("D", result.D))
                 for n, v in m.state_dict().items()}
        # unrolled G steps: G's DDP wrapper runs K + 1 forwards before one backward
        unrolled = train(TrainConfig(steps=2, batch_size=2 * HALF, sn=True, unroll=2), evaluate=False)
        state.update({f"unrolled.{k}.{n}": v.clone() for k, m in (("G", unrolled.G), ("D", unrolled.D))
                      for n, v in m.state_dict().items()})
        # collapse events seen by rank 0's monitor: every rank applies the same policies (lr-d, penalty, mbd)
        from fastsn.train import loop
        loop.CollapseMonitor = _AlwaysCollapsing
        strengthened = train(TrainConfig(steps=4, batch_size=2 * HALF, gp="wgan-gp", on_collapse="strengthen",
                                         strengthen="lr-d,penalty,mbd", monitor_every=1))
        state.update({f"strengthened.{k}.{n}": v.clone() for k, m in (("G", strengthened.G), ("D", strengthened.D))
                      for n, v in m.state_dict().items()})
        used = {k: strengthened.config[k] for k in ("lr_d", "gp_weight", "mbd_switched_on")}
        results[rank] = {"grads": grads, "state": state, "world": result.world_size, "strengthened": used}
    finally:
        dist.destroy_process_group()


def _reference_grads() -> dict[str, torch.Tensor]:
    """One process, the whole batch: the mean of the two halves' losses and penalties, one spectral-norm refresh."""
    _, D = build_models(ModelOptions("ring8", "fastsn", sn=True), seed=0)
    total = 0.0
    with fastsn.grouped_spectral_norm(D):
        for rank in range(WORLD):
            real, fake = _batch(rank)
            loss = losses.d_loss("bce", D(real), D(fake))
            penalty = fastsn.gradient_penalty(D, real, fake, kind="wgan-gp", weight=10.0,
                                              generator=torch.Generator().manual_seed(70 + rank))
            total = total + (loss + penalty) / WORLD
        total.backward()
    return {n: p.grad.clone() for n, p in D.named_parameters()}


def test_ddp_gradients_match_one_process_and_ranks_agree(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
        finally:
            os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.__setitem__("OMP_NUM_THREADS", saved)
        results = dict(results)
    reference = _reference_grads()
    for rank in range(WORLD):
        assert results[rank]["world"] == WORLD
        for name, value in reference.items():
            torch.testing.assert_close(results[rank]["grads"][name], value, rtol=1e-5, atol=1e-7, msg=name)
        assert results[rank]["strengthened"] == {"lr_d": 5e-4, "gp_weight": 20.0, "mbd_switched_on": True}
        for key, value in results[0]["state"].items():  # weights, u and v identical on every rank
            assert torch.equal(results[rank]["state"][key], value), key


def test_torchrun_two_processes_end_to_end(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "fastsn.train", "--sn", "--gp",
                           "wgan-gp", "--steps", "3", "--batch-size", "32", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["runs"]["run"]["world_size"] == 2
    assert report["runs"]["run"]["steps_done"] == 3 and "modes" in report["runs"]["run"]["metrics"]
