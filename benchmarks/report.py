"""Turn pytest-benchmark JSON files into markdown tables: each provider's median time, and its speed-up over
torch eager and torch.compile measured in the same run (ratio = their median / this median; > 1 is faster).

Usage:
    python benchmarks/report.py [--summary] [--exclude TEXT] [--ceilings CEILINGS.json] RESULT.json [...]
    python benchmarks/report.py --update-readme README.md [--check]

``--update-readme`` regenerates every table of the README that sits between
``<!-- report.py ARGS -->`` and ``<!-- end report.py -->`` from the committed JSON those ARGS name, so that no
figure in the README is typed by hand; ``--check`` only reports (exit 1) whether a table is stale.

With ``--ceilings`` (from ``benchmarks/ceilings.py``, measured on the same device), each case that records the bytes
it must move (``extra_info["bytes"]``) also gets its floor, bytes / measured copy bandwidth, and the fraction of
that floor reached (floor / median; 100% would be a kernel at the copy bandwidth).

Each table is one benchmark group (one case on one device); the machine comes from the JSON's machine_info and
the device name from each benchmark's extra_info.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
from typing import Any, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(<!-- report\.py (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- end report\.py -->)", re.S)

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


def _floor(bench: dict[str, Any], ceilings: Optional[dict[str, Any]]) -> Optional[float]:
    """Seconds that the bytes this case must move take at the device's measured copy bandwidth, or None."""
    nbytes = bench.get("extra_info", {}).get("bytes")
    ceiling = (ceilings or {}).get(bench.get("extra_info", {}).get("device", ""))
    if not nbytes or not ceiling:
        return None
    return nbytes / ceiling["bandwidth_bytes_per_s"]


def _floor_cells(bench: dict[str, Any], ceilings: Optional[dict[str, Any]]) -> str:
    floor = _floor(bench, ceilings)
    if floor is None:
        return " - | - |"
    return f" {_format_time(floor)} | {100 * floor / _median(bench):.1f}% |"


def tables(results: dict[str, Any], ceilings: Optional[dict[str, Any]] = None) -> str:
    """Markdown for one pytest-benchmark JSON document (with floors when ``ceilings`` is given)."""
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
        head, rule = (" floor | of floor |", "---|---|") if ceilings else ("", "")
        lines += [f"**{group}** ({device})", "", "| provider | median | vs torch | vs torch.compile |" + head,
                  "|---|---|---|---|" + rule]
        base = {name: _median(by_provider[name]) if name in by_provider else None for name in BASELINES}
        for provider, bench in by_provider.items():
            median = _median(bench)
            lines.append(f"| {provider} | {_format_time(median)} | {_ratio(base['torch'], median)} | "
                         f"{_ratio(base['torch.compile'], median)} |" + (_floor_cells(bench, ceilings) if ceilings
                                                                          else ""))
        lines.append("")
    return "\n".join(lines)


def summary(results: dict[str, Any], ceilings: Optional[dict[str, Any]] = None) -> str:
    """One markdown table: every fastsn provider of every group, with its median, both ratios and, when
    ``ceilings`` is given, its floor."""
    head, rule = (" floor | of floor |", "---|---|") if ceilings else ("", "")
    peaks = any("peak_bytes" in b.get("extra_info", {}) for b in results["benchmarks"])
    if peaks:  # GPU runs that recorded peak memory (torch.cuda.max_memory_allocated)
        head, rule = head + " peak memory | vs torch |", rule + "---|---|"
    lines = ["| case | provider | median | vs torch | vs torch.compile |" + head, "|---|---|---|---|---|" + rule]
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for bench in results["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], {})[bench["extra_info"].get("provider", "")] = bench
    for group, by_provider in groups.items():
        base = {name: _median(by_provider[name]) if name in by_provider else None for name in BASELINES}
        for provider, bench in by_provider.items():
            if provider.startswith("fastsn"):
                median = _median(bench)
                lines.append(f"| {group} | {provider} | {_format_time(median)} | {_ratio(base['torch'], median)} | "
                             f"{_ratio(base['torch.compile'], median)} |" + (_floor_cells(bench, ceilings)
                                                                              if ceilings else "")
                             + (_peak_cells(bench, by_provider.get("torch")) if peaks else ""))
    return "\n".join(lines)


def _peak_cells(bench: dict[str, Any], torch_bench: Optional[dict[str, Any]]) -> str:
    """Peak memory of a case and its ratio to torch's (above 1: fastsn needs more)."""
    peak = bench.get("extra_info", {}).get("peak_bytes")
    base = (torch_bench or {}).get("extra_info", {}).get("peak_bytes")
    if peak is None:
        return " - | - |"
    return f" {peak / 2**20:.1f} MiB | {f'{peak / base:.2f}x' if base else '-'} |"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--summary", action="store_true", help="one table of the fastsn providers only")
    parser.add_argument("--exclude", action="append", default=[], help="leave out cases whose group contains this")
    parser.add_argument("--ceilings", help="JSON from benchmarks/ceilings.py: adds each case's bandwidth floor")
    parser.add_argument("--update-readme", metavar="README", help="regenerate the README's marked tables")
    parser.add_argument("--check", action="store_true", help="with --update-readme: exit 1 if a table is stale")
    return parser


def render(args: argparse.Namespace, root: pathlib.Path = ROOT) -> str:
    """The markdown that ``args`` ask for (paths relative to ``root``)."""
    ceilings = json.loads((root / args.ceilings).read_text()) if args.ceilings else None
    out = []
    for path in args.results:
        results = json.loads((root / path).read_text())
        results["benchmarks"] = [b for b in results["benchmarks"]
                                 if not any(text in (b.get("group") or b["name"]) for text in args.exclude)]
        out.append((summary if args.summary else tables)(results, ceilings))
    return "\n".join(out)


def update_readme(text: str, root: pathlib.Path = ROOT) -> str:
    """``text`` with every marked table regenerated."""
    def block(match: re.Match) -> str:
        args = _parser().parse_args(shlex.split(match["args"]))
        return match.group(1) + render(args, root).rstrip("\n") + "\n" + match.group(4)
    return _BLOCK.sub(block, text)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.update_readme:
        readme = pathlib.Path(args.update_readme)
        text = readme.read_text()
        new = update_readme(text)
        if args.check:
            if new != text:
                print(f"{readme}: a table differs from the committed results; run {__file__} --update-readme")
                return 1
            return 0
        readme.write_text(new)
        return 0
    if not args.results:
        _parser().error("give RESULT.json files, or --update-readme")
    print(render(args, pathlib.Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
