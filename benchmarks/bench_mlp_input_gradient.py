"""mlp_input_gradient (a leaky-ReLU MLP's input gradient and its backward to the weights, the core of a gradient
penalty on an MLP discriminator) against the same computation in plain PyTorch: ``autograd.grad(D(x).sum(), x,
create_graph=True)``, then a backward of a loss of g to the weights.

Cases: the 2-D toy MLP's discriminator (2 -> 128 -> 128 -> 1, batch 512) and a wider one (2 -> 512 -> 512 -> 512 -> 1,
batch 4096 on a GPU, 1024 on a CPU). torch.compile is not a provider: it cannot trace the double backward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.mlp_input_gradient import mlp_input_gradient

PROVIDERS = ("torch", "fastsn-cpu", "fastsn-cuda", "fastsn-triton")
CASES = {  # name: (layer sizes, batch per device)
    "mlp-2d": ((2, 128, 128, 1), {"cpu": 512, "cuda": 512}),
    "mlp-wide": ((2, 512, 512, 512, 1), {"cpu": 1024, "cuda": 4096}),
}
SLOPE = 0.2


def _torch_input_gradient(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    h = x
    for w, b in zip(weights[:-1], biases):
        h = F.leaky_relu(F.linear(h, w, b), SLOPE)
    (g,) = torch.autograd.grad(F.linear(h, weights[-1]).sum(), x, create_graph=True)
    return g


@pytest.mark.parametrize("case", list(CASES))
def test_input_gradient_and_backward(benchmark, provider, device, case):
    reason = provider_unavailable(provider, "mlp_input_gradient", device)
    if reason:
        pytest.skip(reason)
    sizes, batches = CASES[case]
    if interpreted(provider, device):
        sizes, batch = (2, 16, 16, 1), 8
    else:
        batch = batches[device]
    torch.manual_seed(0)
    weights = [(torch.randn(sizes[k + 1], sizes[k], device=device) / sizes[k] ** 0.5).requires_grad_()
               for k in range(len(sizes) - 1)]
    biases = [torch.zeros(size, device=device, requires_grad=True) for size in sizes[1:-1]]
    x = torch.randn(batch, sizes[0], device=device)

    def run() -> torch.Tensor:
        if provider == "torch":
            g = _torch_input_gradient(x, weights, biases)
        else:
            g = mlp_input_gradient(x, weights, biases, [SLOPE] * len(biases), [1.0] * len(biases),
                                   backend=provider.removeprefix("fastsn-"))
        grads = torch.autograd.grad(g.square().sum(), weights)
        return grads[0]

    timed = synchronized(run, device)
    timed()  # warm-up: compiles Triton kernels outside the timing
    benchmark.group = f"mlp_input_gradient {case} {device} b={batch}"
    benchmark.extra_info.update(provider=provider, device=device_name(device), batch=batch)
    assert torch.isfinite(benchmark(timed)).all()
