"""Turn pytest-benchmark JSON files into markdown tables: each provider's median time, and its speed-up over
torch eager and torch.compile measured in the same run (ratio = their median / this median; > 1 is faster).

Usage:
    python benchmarks/report.py [--summary] RESULT.json [RESULT.json ...]

Each table is one benchmark group (one case on one device); the machine comes from the JSON's machine_info and
the device name from each benchmark's extra_info.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Optional

BASELINES = ("torch", "torch.compile")


def _median(bench: dict[str, Any]) -> float:
    return float(bench["stats"]["median"])


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(baseline: Optional[float], value: float) -> str:
    return f"{baseline / value:.2f}x" if baseline else "-"


def tables(results: dict[str, Any]) -> str:
    """Markdown for one pytest-benchmark JSON document."""
    machine = results.get("machine_info", {})
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in results["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", "?"))
    lines = [f"Machine: {machine.get('node', '?')}, {cpu}; run {results.get('datetime', '?')}, "
             f"commit {results.get('commit_info', {}).get('id', '?')[:12]}.", ""]
    for group, benches in groups.items():
        by_provider = {b["extra_info"].get("provider", b["name"]): b for b in benches}
        device = benches[0]["extra_info"].get("device", "?")
        lines += [f"**{group}** ({device})", "", "| provider | median | vs torch | vs torch.compile |",
                  "|---|---|---|---|"]
        base = {name: _median(by_provider[name]) if name in by_provider else None for name in BASELINES}
        for provider, bench in by_provider.items():
            median = _median(bench)
            lines.append(f"| {provider} | {_format_time(median)} | {_ratio(base['torch'], median)} | "
                         f"{_ratio(base['torch.compile'], median)} |")
        lines.append("")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """One markdown table: every fastsn provider of every group, with its median and both ratios."""
    lines = ["| case | provider | median | vs torch | vs torch.compile |", "|---|---|---|---|---|"]
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for bench in results["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], {})[bench["extra_info"].get("provider", "")] = bench
    for group, by_provider in groups.items():
        base = {name: _median(by_provider[name]) if name in by_provider else None for name in BASELINES}
        for provider, bench in by_provider.items():
            if provider.startswith("fastsn"):
                median = _median(bench)
                lines.append(f"| {group} | {provider} | {_format_time(median)} | {_ratio(base['torch'], median)} | "
                             f"{_ratio(base['torch.compile'], median)} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--summary", action="store_true", help="one table of the fastsn providers only")
    args = parser.parse_args(argv)
    for path in args.results:
        with open(path) as f:
            print((summary if args.summary else tables)(json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
