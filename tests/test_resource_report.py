"""benchmarks/resource_report.py: launch capture, cuobjdump parsing and the spill gate (no compile here: CI runs
the whole report)."""
from __future__ import annotations

import importlib
import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    "resource_report", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "resource_report.py")
resource_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resource_report)

pytest.importorskip("triton")
needs_jit_binder = pytest.mark.skipif(not resource_report.jit_binder_available(),
                                      reason="the capture uses Triton 3.8's JIT internals")


def test_parse_cuobjdump_resource_usage():
    text = ("Resource usage:\n Common:\n  GLOBAL:0\n Function _Z3fooPf:\n  REG:40 STACK:8 SHARED:1024 LOCAL:0 "
            "CONSTANT[0]:900 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert resource_report._parse_resources(text) == [
        {"function": "_Z3fooPf", "regs": 40, "stack": 8, "shared": 1024, "local": 0}]


def test_spill_gate_needs_an_accepted_entry():
    row = {"kernel": "_k", "config": "BLOCK=64, ptr *fp16", "stack": 8, "local": 0}
    assert "stack 8 B" in resource_report._spill_problem(row, {})
    assert resource_report._spill_problem(row, {"_k [BLOCK=64": "why"}) is None
    assert resource_report._spill_problem(row, {"_k [BLOCK=128": "why"}) is not None
    assert resource_report._spill_problem(dict(row, stack=0), {}) is None


def test_spill_gate_passes_a_call_frame_without_local_loads_or_stores():
    row = {"kernel": "_k", "config": "BLOCK=64, ptr *fp32", "stack": 8, "local": 0, "local_ops": 0}
    assert resource_report._spill_problem(row, {}) is None
    assert "stack 8 B" in resource_report._spill_problem(dict(row, local_ops=2), {})


@needs_jit_binder
def test_capture_specializes_as_the_jit():
    """Ints equal to 1 become constexprs, ints divisible by 16 and aligned pointers get tt.divisibility 16."""
    launches = resource_report.capture(quick=True)
    specs = [s for s in launches.values() if s["kernel"] == "_bias_leaky_relu_kernel"]
    kernels = importlib.import_module("fastsn.triton_kernels.bias_leaky_relu")
    names = resource_report._jit_function(kernels._bias_leaky_relu_kernel).arg_names
    ones = [s for s in specs if s["text"]["ones"]]
    assert ones and all(s["signature"][name] == "constexpr" for s in ones for name in s["text"]["ones"])
    pointer = names.index("x_ptr")
    assert all(s["attrs"][(pointer,)] == [["tt.divisibility", 16]] for s in specs)
    assert any("div16" in resource_report._config_text(s) for s in launches.values())


def test_accepted_spills_have_reasons():
    for name, reason in resource_report.accepted_spills().items():
        assert name and reason


@needs_jit_binder
def test_capture_records_every_kernel_without_running_them():
    launches = resource_report.capture(quick=True)
    kernels = {key[0] for key in launches}
    assert kernels == {"_build_info_kernel", "_sn_pass_kernel", "_sn_finalize_kernel", "_sn_normalize_kernel",
                       "_sn_dot_partials_kernel", "_sn_normalize_backward_kernel", "_bias_leaky_relu_kernel",
                       "_bias_leaky_relu_backward_kernel", "_penalty_rows_kernel", "_chunk_sums_kernel",
                       "_chunk_scale_kernel", "_interpolate_kernel",
                       "_interpolate_backward_kernel", "_l1_similarity_kernel", "_l1_similarity_backward_kernel",
                       "_stddev_stats_kernel", "_stddev_concat_kernel", "_stddev_gamma_kernel",
                       "_stddev_backward_kernel", "_mlp_matmul_kernel", "_mlp_first_delta_kernel",
                       "_mlp_column_sum_kernel", "_sn_grouped_widen_kernel", "_sn_grouped_pass_kernel",
                       "_sn_grouped_finalize_kernel", "_sn_grouped_normalize_kernel", "_sn_grouped_dot_partials_kernel",
                       "_sn_grouped_normalize_backward_kernel"}
    spec = next(s for s in launches.values() if s["kernel"] == "_sn_normalize_kernel")
    assert spec["signature"]["eps"] == "fp64" and spec["signature"]["BLOCK"] == "constexpr"
