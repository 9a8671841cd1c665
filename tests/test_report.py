"""benchmarks/report.py: ratios against torch eager and torch.compile from pytest-benchmark JSON."""
from __future__ import annotations

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "report", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _bench(provider: str, median: float) -> dict:
    return {"name": f"test[{provider}]", "group": "case cpu", "stats": {"median": median},
            "extra_info": {"provider": provider, "device": "cpu (2 cores)"}}


def test_ratios_are_baseline_over_provider():
    results = {"machine_info": {"node": "box", "cpu": {"brand_raw": "Some CPU"}}, "datetime": "2026-11-23",
               "commit_info": {"id": "abcdef1234567890"},
               "benchmarks": [_bench("torch", 4e-3), _bench("torch.compile", 2e-3), _bench("fastsn-cpu", 1e-3)]}
    text = report.tables(results)
    assert "Machine: box, Some CPU; run 2026-11-23, commit abcdef123456." in text
    assert "| fastsn-cpu | 1 ms | 4.00x | 2.00x |" in text
    assert "| torch | 4 ms | 1.00x | 0.50x |" in text


def test_missing_baseline_prints_a_dash():
    results = {"benchmarks": [_bench("fastsn-cpu", 5e-6)]}
    assert "| fastsn-cpu | 5 us | - | - |" in report.tables(results)


def test_summary_lists_fastsn_providers_only():
    results = {"benchmarks": [_bench("torch", 4e-3), _bench("torch.compile", 2e-3), _bench("fastsn-cpu", 1e-3)]}
    text = report.summary(results)
    assert "| case cpu | fastsn-cpu | 1 ms | 4.00x | 2.00x |" in text
    assert "| torch |" not in text


def test_summary_shows_peak_memory_against_torch_when_recorded():
    torch_run, fastsn_run = _bench("torch", 4e-3), _bench("fastsn", 2e-3)
    torch_run["extra_info"]["peak_bytes"], fastsn_run["extra_info"]["peak_bytes"] = 8 * 2**20, 6 * 2**20
    text = report.summary({"benchmarks": [torch_run, fastsn_run]})
    assert "peak memory | vs torch |" in text
    assert "| case cpu | fastsn | 2 ms | 2.00x | - | 6.0 MiB | 0.75x |" in text


def test_floor_is_bytes_over_the_measured_bandwidth():
    bench = _bench("fastsn-cpu", 2e-3)
    bench["extra_info"]["bytes"] = 10**9
    ceilings = {"cpu (2 cores)": {"bandwidth_bytes_per_s": 1e12}}
    results = {"benchmarks": [_bench("torch", 4e-3), bench]}
    assert "| case cpu | fastsn-cpu | 2 ms | 2.00x | - | 1 ms | 50.0% |" in report.summary(results, ceilings)
    assert "| fastsn-cpu | 2 ms | 2.00x | - | 1 ms | 50.0% |" in report.tables(results, ceilings)
    assert "| torch | 4 ms | 1.00x | - | - | - |" in report.tables(results, ceilings)


def test_readme_tables_are_regenerated_from_the_committed_results():
    readme = (report.ROOT / "README.md").read_text()
    assert readme.count("<!-- report.py ") >= 2  # the CPU and the GPU tables
    assert report.update_readme(readme) == readme, "run: python benchmarks/report.py --update-readme README.md"


def test_update_readme_replaces_a_stale_table(tmp_path):
    results = {"benchmarks": [_bench("torch", 4e-3), _bench("fastsn-cpu", 1e-3)]}
    (tmp_path / "r.json").write_text(__import__("json").dumps(results))
    stale = "x\n<!-- report.py --summary r.json -->\n| old |\n<!-- end report.py -->\ny\n"
    fresh = report.update_readme(stale, tmp_path)
    assert "| old |" not in fresh and "| case cpu | fastsn-cpu | 1 ms | 4.00x | - |" in fresh
    assert fresh.startswith("x\n<!-- report.py") and fresh.endswith("<!-- end report.py -->\ny\n")
