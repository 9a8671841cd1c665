"""The whole-discriminator spectral-norm refresh of bench_spectral_norm.py, timed with the providers interleaved
(round-robin in one process), for machines too noisy for pytest-benchmark's one-provider-after-another runs: a
slow spell then hits every provider alike.

    python benchmarks/interleaved_refresh.py [--threads N] [--rounds R] [--model sngan biggan128]

Prints, per weight set, each provider's median wall time per refresh over the rounds and its ratio to "torch"
(torch's parametrization, eager, under ``parametrize.cached()``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import conftest  # noqa: F401  (the benchmarks' malloc thresholds)
from bench_spectral_norm import _normalized_model, _refresh, biggan_weights, sngan_weights

PROVIDERS = ("torch", "torch.compile", "fastsn-cpu")
WEIGHT_SETS = {"sngan": sngan_weights, "biggan128": lambda: biggan_weights(32)}  # the CPU sizes of the benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--model", nargs="+", default=list(WEIGHT_SETS), choices=list(WEIGHT_SETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.model:
        shapes = WEIGHT_SETS[name]()
        refresh = {p: _refresh(_normalized_model(shapes, p, "cpu"), p) for p in PROVIDERS}
        for run in refresh.values():  # warm-up (compiles torch.compile's graph)
            run()
        start = time.perf_counter()
        refresh["torch"]()
        repeats = max(1, int(0.2 / (time.perf_counter() - start)))  # about 0.2 s per provider and round
        times: dict[str, list[float]] = {p: [] for p in PROVIDERS}
        for _ in range(args.rounds):
            for provider, run in refresh.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    run()
                times[provider].append((time.perf_counter() - start) / repeats)
        medians = {p: statistics.median(t) for p, t in times.items()}
        print(f"refresh-{name} ({args.threads} threads, {args.rounds} rounds of {repeats}): " + ", ".join(
            f"{p} {medians[p] * 1e3:.3g} ms ({medians['torch'] / medians[p]:.2f}x)" for p in PROVIDERS), flush=True)


if __name__ == "__main__":
    main()
