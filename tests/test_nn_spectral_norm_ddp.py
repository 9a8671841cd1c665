"""fastsn's spectral norms under DistributedDataParallel behave as torch's: two CPU processes (gloo), each training
a torch-SN and a fastsn-SN twin wrapped in DDP on its own half of the batch. DDP broadcasts rank 0's buffers (u, v)
before each forward and averages the gradients, so u, v and the weights must match torch's on every rank and agree
across ranks. (DataParallel needs two GPUs: not covered here.)"""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastsn.nn.utils as fnu

WORLD = 2
APIS = {"parametrizations": (torch.nn.utils.parametrizations.spectral_norm, fnu.parametrizations.spectral_norm),
        "hook": (torch.nn.utils.spectral_norm, fnu.spectral_norm)}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, init_file: str, api: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch_sn, fastsn_sn = APIS[api]
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.LeakyReLU(0.2), torch.nn.Flatten(),
                                   torch.nn.Linear(6 * 4 * 4, 1))
        models = {}
        for name, sn in (("torch", torch_sn), ("fastsn", fastsn_sn)):
            model = copy.deepcopy(base)
            torch.manual_seed(1 + rank)  # ranks draw different u, v: DDP's first broadcast must align them
            model[0], model[3] = sn(model[0]), sn(model[3])
            models[name] = torch.nn.parallel.DistributedDataParallel(model)
        optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.05) for name, m in models.items()}
        for step in range(3):
            torch.manual_seed(100 + step)
            batch = torch.randn(2 * WORLD, 3, 6, 6)[rank * 2:(rank + 1) * 2]
            for name, model in models.items():
                optimizers[name].zero_grad()
                model(batch).square().mean().backward()
                optimizers[name].step()
        states = {name: _state(m.module) for name, m in models.items()}
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, states["fastsn"])
        results[rank] = {"torch": states["torch"], "fastsn": states["fastsn"], "all_fastsn": gathered}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("api", list(APIS))
def test_ddp_matches_torch_on_every_rank(tmp_path, api):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    init_file = str(tmp_path / "init")
    with mp.Manager() as manager:
        results = manager.dict()
        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            mp.spawn(_worker, args=(init_file, api, results), nprocs=WORLD, join=True)
        finally:
            for k, v in env.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        results = dict(results)
    for rank in range(WORLD):
        ours, reference = results[rank]["fastsn"], results[rank]["torch"]
        assert ours.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=f"rank {rank}: {key}")
        for other in results[rank]["all_fastsn"]:  # every rank holds the same weights and the same u, v
            for key, value in other.items():
                torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=f"rank {rank}: {key}")
