"""The whole penalty step of bench_gradient_penalty.py, timed with the providers interleaved (round-robin in one
process), for machines too noisy for pytest-benchmark's one-provider-after-another runs: a slow spell then hits
every provider alike.

    python benchmarks/interleaved_penalty_step.py [--threads N] [--rounds R] [--case mlp-2d dcgan64]

Prints, per case and kind, each provider's median wall time per step over the rounds and its ratio to "torch".
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import conftest  # noqa: F401  (the benchmarks' malloc thresholds)
from bench_gradient_penalty import CASES, PROVIDERS, penalty_step, provider_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--case", nargs="+", default=["mlp-2d", "dcgan64"], choices=[c for c in CASES])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for case in args.case:
        factory, sample, batches = CASES[case]
        torch.manual_seed(0)
        base = factory()
        models = {provider: provider_model(base, provider) for provider in PROVIDERS}
        real, fake = torch.randn(batches["cpu"], *sample), torch.randn(batches["cpu"], *sample)
        for kind in ("wgan-gp", "r1+r2"):
            def step(provider: str) -> None:
                penalty_step(models[provider], provider, real, fake, kind)

            start = time.perf_counter()
            step("torch")
            repeats = max(1, int(0.2 / (time.perf_counter() - start)))  # about 0.2 s per provider and round
            times: dict[str, list[float]] = {p: [] for p in PROVIDERS}
            for provider in PROVIDERS:
                step(provider)  # warm-up
            for _ in range(args.rounds):
                for provider in PROVIDERS:
                    start = time.perf_counter()
                    for _ in range(repeats):
                        step(provider)
                    times[provider].append((time.perf_counter() - start) / repeats)
            medians = {p: statistics.median(t) for p, t in times.items()}
            print(f"{case} {kind} ({args.threads} threads, {args.rounds} rounds of {repeats}): " + ", ".join(
                f"{p} {medians[p] * 1e3:.3g} ms ({medians['torch'] / medians[p]:.2f}x)" for p in PROVIDERS),
                flush=True)


if __name__ == "__main__":
    main()
