"""Where the time of the headline cases goes: wall time against the GPU's kernel time, launches, heaviest kernels.

pytest-benchmark gives each provider's time; this says why. For the whole-discriminator spectral-norm refresh
(BigGAN-128-like weights) and the DCGAN penalty step, each provider is timed (synchronized, median of the
iterations) and then profiled with torch.profiler. On a GPU it prints, per iteration: the wall time, the summed
duration of the CUDA kernels (the GPU is busy that long; a wall time well above it means the host, Python and
launches, sets the pace), the number of kernels launched, and the kernels with the most GPU time. On a CPU (a dry
run, or the host's own figures) it prints the wall time and the operators with the most self CPU time.

    python benchmarks/profile_steps.py [--device cuda] [--iterations N]
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Callable

import torch

import conftest  # noqa: F401  (the benchmarks' malloc thresholds)
from bench_gradient_penalty import CASES, penalty_step, provider_model
from bench_spectral_norm import _normalized_model, _refresh, biggan_weights
from conftest import provider_unavailable, synchronized


def _cases(device: str) -> list[tuple[str, str, Callable[[], object]]]:
    """(case, provider, one iteration) for every provider that can run on ``device``; torch.compile last, since its
    compile may take the stage's remaining time."""
    shapes = biggan_weights(96 if device == "cuda" else 32)  # (the sizes of bench_spectral_norm's refresh case)

    def refresh(provider: str) -> tuple[str, str, Callable[[], object]]:
        return "refresh-biggan128", provider, _refresh(_normalized_model(shapes, provider, device), provider)

    fastsn = f"fastsn-{device}"
    cases = [refresh(fastsn)] if not provider_unavailable(fastsn, "spectral_norm", device) else []
    cases.append(refresh("torch"))
    factory, sample, batches = CASES["dcgan64"]
    torch.manual_seed(0)
    base = factory().to(device)
    real = torch.randn(batches[device], *sample, device=device)
    fake = torch.randn(batches[device], *sample, device=device)
    for provider in ("torch", "fastsn-converted-d"):
        model = provider_model(base, provider)
        cases.append((f"penalty-wgan-gp-dcgan64-b{batches[device]}", provider,
                      lambda model=model, provider=provider: penalty_step(model, provider, real, fake, "wgan-gp")))
    return cases + [refresh("torch.compile")]


def _wall_ms(run: Callable[[], object], iterations: int) -> float:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _profile(run: Callable[[], object], device: str, iterations: int) -> list[str]:
    """Lines on what ``iterations`` calls of ``run`` spend, per iteration."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iterations):
            run()
    if device != "cuda":
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
        return [f"  self CPU: {e.key} {e.self_cpu_time_total / iterations / 1e3:.3f} ms ({e.count // iterations}x)"
                for e in top]
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    for event in kernels:
        busy[event.name] += event.time_range.elapsed_us()
        count[event.name] += 1
    lines = [f"  GPU kernels: {sum(busy.values()) / iterations / 1e3:.3f} ms busy, {len(kernels) // iterations} "
             "launches per iteration"]
    for name in sorted(busy, key=busy.get, reverse=True)[:5]:
        lines.append(f"  kernel: {name[:90]} {busy[name] / iterations / 1e3:.3f} ms ({count[name] // iterations}x)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    print(f"# profile_steps on {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, torch "
          f"{torch.__version__}", flush=True)
    for case, provider, run in _cases(args.device):
        timed = synchronized(run, args.device)
        for _ in range(3):  # warm-up: compiles torch.compile's graph, fills the allocator's cache
            timed()
        wall = _wall_ms(timed, args.iterations)
        lines = _profile(timed, args.device, max(1, args.iterations // 2))
        print(f"{case} {provider}: wall {wall:.3f} ms per iteration", *lines, sep="\n", flush=True)


if __name__ == "__main__":
    main()
