"""Measure the two ceilings of this machine's devices once: memory bandwidth (a large device-to-device copy,
bytes read plus bytes written) and the matrix-product rate (float32 on a CPU, bfloat16 on a GPU), for the floors
that ``benchmarks/report.py --ceilings`` prints next to each benchmark.

Usage:
    python benchmarks/ceilings.py [--out CEILINGS.json]

The JSON maps each device name, as the benchmarks write it in ``extra_info["device"]``, to
``{"bandwidth_bytes_per_s", "matmul_flops_per_s", "matmul_dtype", "date"}``; an existing file is updated.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import device_name, devices  # noqa: E402


def _median_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(device: str) -> dict:
    """Copy bandwidth and matmul rate of ``device``, on random data (zeros can run faster)."""
    gpu = device == "cuda"
    n = (1 << 28) if gpu else (1 << 25)  # 1 GiB / 128 MiB of float32: far past the caches
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, 20 if gpu else 10)
    del src, dst
    size, dtype = (8192, torch.bfloat16) if gpu else (2048, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    mm_s = _median_seconds(lambda: a @ b, device, 10 if gpu else 5)
    return {"bandwidth_bytes_per_s": 2 * 4 * n / copy_s, "matmul_flops_per_s": 2 * size**3 / mm_s,
            "matmul_dtype": str(dtype).replace("torch.", ""), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file to write (updated in place when it exists)")
    args = parser.parse_args(argv)
    results = json.loads(pathlib.Path(args.out).read_text()) if args.out and pathlib.Path(args.out).exists() else {}
    for device in devices():
        results[device_name(device)] = ceiling = measure(device)
        print(f"{device_name(device)}: copy {ceiling['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (read + write), "
              f"{ceiling['matmul_dtype']} matmul {ceiling['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
