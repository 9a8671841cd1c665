"""Hopper resources of every GPU kernel, without a GPU: registers, shared memory, stack and local memory (spills).

Triton: every kernel configuration the ops launch over a sweep of weight shapes, dtypes and modes is captured (the
kernels are replaced by recorders, so nothing runs), compiled ahead of time for sm_90 with
``triton.compile(..., target=GPUTarget("cuda", 90, 32))``, and its cubin read with cuobjdump. A compile failure
fails the report. CUDA: ``cuobjdump --dump-resource-usage`` of the built ``fastsn._C`` (its sm_90 code).

Each launch is specialized as Triton's JIT would specialize it on the GPU (its own argument binder: ints equal to 1
become constexprs, 16-byte aligned pointers and ints divisible by 16 get tt.divisibility), so the code compiled is the
code the GPU runs. A kernel whose SASS loads or stores local memory (STL/LDL: a spill, or an array the compiler could
not keep in registers) fails the report unless ``benchmarks/accepted_spills.txt`` lists it: one
``<substring of "kernel [config]">  # reason`` per line. A stack without local loads or stores (a call frame, e.g.
the IEEE division's slow path) is reported and passes.

Usage:
    python benchmarks/resource_report.py [--out REPORT.md] [--jobs N] [--quick]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterator, Optional

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
ACCEPTED = ROOT / "benchmarks" / "accepted_spills.txt"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# Triton: capture the launches, compile them for sm_90
# ---------------------------------------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records the launch, runs nothing."""

    def __init__(self, fn: Any, launches: dict) -> None:
        from triton.runtime.jit import create_function_from_signature

        self.fn, self.launches = fn, launches
        # the JIT's own argument binder for sm_90 (made once per kernel, as the JIT does)
        self.binder = create_function_from_signature(fn.signature, fn.params, _sm90_backend())

    def __getitem__(self, grid: Any):
        def launch(*args: Any, **kwargs: Any) -> None:
            key, spec = _specialize(self.fn, self.binder, args, kwargs)
            self.launches.setdefault(key, spec)
        return launch


_SM90_BACKEND: list = []  # the compiler backend of sm_90, made once


def _sm90_backend() -> Any:
    if not _SM90_BACKEND:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        _SM90_BACKEND.append(make_backend(GPUTarget("cuda", 90, 32)))
    return _SM90_BACKEND[0]


def jit_binder_available() -> bool:
    """Whether this Triton has the JIT internals the capture uses (those of Triton 3.8: its argument binder and
    ``JITFunction._pack_args``); they change between releases (the GPU machines may carry an older Triton)."""
    from triton.runtime import jit
    return hasattr(jit, "create_function_from_signature") and hasattr(jit.JITFunction, "_pack_args")


def _specialize(fn: Any, binder: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """(dedup key, compile spec) of one launch, specialized as Triton's JIT specializes it on an sm_90 GPU: the
    JIT's own argument binder gives the argument types, the constexprs (an int argument equal to 1 becomes one) and
    the alignment attributes (tt.divisibility 16 for 16-byte aligned pointers and ints divisible by 16), which change
    the code (vector widths, index math). Captured tensors are CPU tensors, aligned like CUDA allocations."""
    backend = _sm90_backend()
    bound, specialization, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    launch_options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    key = (fn.__name__, repr(signature), repr(constexprs), repr(attrs), tuple(sorted(launch_options.items())))
    # for the report's config text: the kernel's own constexprs, the ints the JIT made constexpr (equal to 1), and
    # the ints it knows divisible by 16
    params = list(zip(fn.params, specialization))
    text = {"declared": {p.name: bound[p.name] for p, _ in params if p.is_constexpr},
            "ones": [p.name for p, (kind, _) in params if kind == "constexpr" and not p.is_constexpr],
            "div16": [p.name for p, (kind, attr) in params if attr == "D" and not kind.startswith("*")]}
    return key, {"kernel": fn.__name__, "module": fn.__module__, "signature": signature, "constexprs": constexprs,
                 "attrs": attrs, "options": launch_options, "text": text}


def _sweep_shapes(quick: bool) -> Iterator[tuple[tuple[int, ...], int]]:
    """(shape, dim) pairs that reach every block configuration of the spectral-norm launchers: both fast axes
    (inner == 1 and inner > 1), heights and widths from 1 to 2^15 in powers of 4 (and their neighbours)."""
    sizes = [1, 3, 16, 64, 200, 1024, 4096, 2**15] if not quick else [1, 64, 4096]
    for h, w in itertools.product(sizes, sizes):
        if h * w > 2**24:
            continue
        yield (h, w), 0            # M = W (rows contiguous)
        yield (w, h), 1            # M = W^T (columns contiguous, inner == 1)
        if w >= 9:                 # conv-like: (O, h, 3, 3), dim 1: inner 9 > 1
            yield (w // 9, h, 3, 3), 1


def _jit_function(kernel: Any) -> Any:
    """The JITFunction of a kernel (under TRITON_INTERPRET=1, @triton.jit gives an InterpretedFunction)."""
    if hasattr(kernel, "params"):
        return kernel
    from triton.runtime.jit import JITFunction
    return JITFunction(kernel.fn)


def _load_kernels():
    from fastsn.triton_kernels import bias_leaky_relu as blr_mod, build_info as bi_mod
    from fastsn.triton_kernels import gradient_penalty as gp_mod, interpolate as ip_mod, spectral_norm as sn_mod
    from fastsn.triton_kernels import minibatch_l1_similarity as ml_mod, minibatch_stddev as msd_mod
    from fastsn.triton_kernels import mlp_input_gradient as mig_mod
    return [bi_mod, sn_mod, blr_mod, gp_mod, ip_mod, ml_mod, msd_mod, mig_mod]


def _capture_mlp_input_gradient(mig_mod: Any, dtype: torch.dtype) -> None:
    """The mlp_input_gradient launches: one layer (the broadcast without a mask, the column sum of grad) and three
    layers (bias + activation with and without a bias and with and without storing h, the first delta, the mask
    epilogue with and without the half-precision copy, plain products, the column sum), each with 16-wide tiles
    (a few samples, narrow layers), full tiles, and sizes divisible by 16 (the usual shapes: aligned vector
    accesses); full tiles again with int64 offsets (WIDE: a tensor past 2^31 elements, as _span tells)."""
    span = mig_mod._span
    try:
        for batch, sizes, wide in ((3, (5, 5, 5), False), (70, (40, 70, 70), False), (64, (32, 64, 64), False),
                                   (70, (40, 70, 70), True)):
            mig_mod._span = (lambda t: 2**31) if wide else span
            x, grad = torch.zeros(batch, sizes[0], dtype=dtype), torch.zeros(batch, sizes[0], dtype=dtype)
            w = torch.zeros(1, sizes[0], dtype=dtype)
            mig_mod.mlp_input_gradient_triton(x, [w], [], [], [])
            mig_mod.mlp_input_gradient_backward_triton(grad, [w], [], [], [], [])
            weights = [torch.zeros(sizes[l + 1], sizes[l], dtype=dtype) for l in range(2)] + \
                [torch.zeros(1, sizes[2], dtype=dtype)]
            for biases in ([None, None], [torch.zeros(sizes[1], dtype=dtype), torch.zeros(sizes[2], dtype=dtype)]):
                _, deltas, positive = mig_mod.mlp_input_gradient_triton(x, weights, biases, [0.2, 0.2], [1.0, 1.0])
            mig_mod.mlp_input_gradient_backward_triton(grad, weights, deltas, positive, [0.2, 0.2], [1.0, 1.0])
    finally:
        mig_mod._span = span


def _capture_grouped_spectral_norm(sn_mod: Any, dtype: torch.dtype) -> None:
    """The grouped spectral-norm launches: the power iteration (widen, BILINEAR and FUSED passes of the block
    configurations of a small group, finalize), the normalize and its backward, with and without 16-byte aligned
    addresses, and the backward with int64 element indices (WIDE: a weight past 2^31 elements, as wide_offsets
    tells)."""
    group = [((4, 3), 0), ((3, 5, 2, 2), 1), ((6, 2, 3), 2), ((2, 300), 0), ((600, 2), 1)]
    dims = [dim for _, dim in group]
    hs = [shape[dim] for shape, dim in group]
    ws = [math.prod(shape) // h for (shape, _), h in zip(group, hs)]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    wide_offsets = sn_mod.wide_offsets
    try:
        for aligned, wide in ((True, False), (False, False), (True, True)):
            weights = [torch.zeros(math.prod(shape) + (0 if aligned else 1), dtype=dtype)[(0 if aligned else 1):]
                       .view(shape) for shape, _ in group]
            us, vs = [torch.zeros(h, dtype=dtype) for h in hs], [torch.zeros(w, dtype=dtype) for w in ws]
            sn_mod.spectral_norm_grouped_power_iteration_triton(weights, us, vs, dims, [0, 1, 2, 1, 0], [1e-12] * 5,
                                                                [True, False, True, True, True])
            u_flat, v_flat, sigmas = torch.zeros(sum(hs), dtype=dtype), torch.zeros(sum(ws), dtype=dtype), \
                torch.ones(len(group), dtype=acc)
            sn_mod.spectral_norm_grouped_normalize_triton(weights, u_flat, v_flat, sigmas, dims, [1e-12] * 5)
            sn_mod.wide_offsets = (lambda n, block: True) if wide else wide_offsets
            grads = [torch.zeros(w.numel() + (0 if aligned else 1), dtype=dtype)[(0 if aligned else 1):].view(w.shape)
                     for w in weights]
            sn_mod.spectral_norm_grouped_normalize_backward_triton(grads, weights, u_flat, v_flat, sigmas, dims,
                                                                   [1e-12] * 5)
    finally:
        sn_mod.wide_offsets = wide_offsets


def capture(quick: bool = False) -> dict:
    """Every distinct Triton launch of the fastsn ops over the sweep, as compile specs."""
    if not jit_binder_available():
        import triton
        raise SystemExit(f"resource_report.py needs the JIT internals of Triton 3.8 (this is {triton.__version__})")
    launches: dict = {}
    modules = _load_kernels()
    saved = []
    for module in modules:
        for name, obj in list(vars(module).items()):
            if hasattr(obj, "arg_names") and callable(getattr(obj, "run", None)):  # a @triton.jit kernel
                saved.append((module, name, obj))
                setattr(module, name, _Recorder(_jit_function(obj), launches))
    try:
        bi_mod, sn_mod, blr_mod, gp_mod, ip_mod, ml_mod, msd_mod, mig_mod = modules
        for dtype in DTYPES:
            bi_mod.build_info_triton(torch.zeros(8, dtype=dtype))
            x = torch.zeros(2, 3, 4, dtype=dtype)
            for bias in (torch.zeros(3, dtype=dtype), None):
                y = blr_mod.bias_leaky_relu_triton(x, bias, 1, 0.2, 1.0)
            blr_mod.bias_leaky_relu_backward_triton(x, y, 0.2, 1.0)
            for mode in (0, 1, 2):
                gp_mod.gradient_penalty_head_triton(torch.zeros(4, 5, dtype=dtype), mode, 1.0, 1.0)
                # rows cut into chunks: 4 per row, and MAX_CHUNKS (the widest vector of partial sums) with the
                # program target of a GPU with 1024 SMs
                gp_mod.gradient_penalty_head_triton(torch.zeros(2, 40000, dtype=dtype), mode, 1.0, 1.0)
                target = gp_mod.program_target
                gp_mod.program_target = lambda t: 4 * 1024
                try:
                    gp_mod.gradient_penalty_head_triton(torch.zeros(1, gp_mod.MAX_CHUNKS * gp_mod.MIN_CHUNK,
                                                                    dtype=dtype), mode, 1.0, 1.0)
                finally:
                    gp_mod.program_target = target
            x = torch.zeros(4, 5, dtype=dtype)
            ip_mod.interpolate_triton(x, x, torch.zeros(4, dtype=torch.float64 if dtype == torch.float64 else
                                                        torch.float32))
            ip_mod.interpolate_backward_triton(x, torch.zeros(4))
            m = torch.zeros(5, 3, 4, dtype=dtype)
            ml_mod.minibatch_l1_similarity_triton(m)
            ml_mod.minibatch_l1_similarity_backward_triton(torch.zeros(5, 3, dtype=dtype), m)
            x = torch.zeros(4, 4, 2, 2, dtype=dtype)
            msd_mod.minibatch_stddev_triton(x, 2, 1)
            msd_mod.minibatch_stddev_backward_triton(torch.zeros(4, 5, 2, 2, dtype=dtype), x, 2, 1)
            _capture_mlp_input_gradient(mig_mod, dtype)
            _capture_grouped_spectral_norm(sn_mod, dtype)
        for (shape, dim), dtype in itertools.product(_sweep_shapes(quick), DTYPES):
            weight = torch.empty(shape, dtype=dtype)
            h = shape[dim]
            w = weight.numel() // h
            u, v = torch.ones(h, dtype=dtype), torch.ones(w, dtype=dtype)
            for iterations, u_first in ((0, True), (1, True), (1, False)):
                sigma, uc, vc = sn_mod.spectral_norm_power_iteration_triton(weight, u, v, dim, iterations, 1e-12,
                                                                            u_first)
            sigma = torch.ones((), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            sn_mod.spectral_norm_normalize_triton(weight, uc, vc, sigma, dim, 1e-12)
            sn_mod.spectral_norm_normalize_backward_triton(torch.empty_like(weight), weight, uc, vc, sigma, dim, 1e-12)
    finally:
        for module, name, obj in saved:
            setattr(module, name, obj)
    return launches


def _compile_one(spec: dict) -> dict:
    """Compile one launch for sm_90 and read its cubin's resources (runs in a worker process)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(getattr(importlib.import_module(spec["module"]), spec["kernel"]))
    result = {"kernel": spec["kernel"], "config": _config_text(spec)}
    try:
        src = ASTSource(fn, spec["signature"], constexprs=spec["constexprs"], attrs=spec["attrs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(spec["options"]))
        result.update(_cubin_resources(compiled.asm["cubin"]))
        result["shared"] = max(result.get("shared", 0), int(compiled.metadata.shared))
    except Exception as error:  # noqa: BLE001  (reported, and fails the run)
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return result


def _config_text(spec: dict) -> str:
    """The kernel's constexprs, the int arguments the JIT specialized to 1, the launch options, the pointer types,
    and the int arguments known divisible by 16."""
    text = spec["text"]
    parts = [f"{k}={getattr(v, 'name', v)}" for k, v in text["declared"].items()] + [f"{k}=1" for k in text["ones"]]
    ptrs = sorted({t for t in spec["signature"].values() if t.startswith("*")})
    parts += [f"{k}={v}" for k, v in spec["options"].items()] + ["ptr " + "/".join(ptrs)]
    if text["div16"]:
        parts.append("div16 " + "/".join(text["div16"]))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# cuobjdump
# ---------------------------------------------------------------------------------------------------------------

def cuobjdump() -> str:
    import triton
    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    found = shutil.which("cuobjdump") or (str(bundled) if bundled.exists() else None)
    if not found:
        raise SystemExit("cuobjdump not found (it ships in triton's wheel and in the CUDA toolkit)")
    return found


_RESOURCE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _parse_resources(text: str) -> list[dict]:
    return [{"function": m[1], "regs": int(m[2]), "stack": int(m[3]), "shared": int(m[4]), "local": int(m[5])}
            for m in _RESOURCE.finditer(text)]


_LOCAL_MEMORY_OPS = re.compile(r"\b(?:STL|LDL)\b")


def _cubin_resources(cubin: bytes) -> dict:
    """Registers, shared, stack and local bytes of a one-kernel cubin; where it has a stack or local memory, also
    ``local_ops``: its local loads and stores (STL/LDL) in the SASS. A stack without them is a call frame (e.g. the
    IEEE division's slow-path subroutine), not a spill."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
        rows = _parse_resources(text)
        if not rows:
            raise RuntimeError("cuobjdump printed no resource usage")
        result = {k: rows[0][k] for k in ("regs", "stack", "shared", "local")}
        if result["stack"] or result["local"]:
            sass = subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
            result["local_ops"] = len(_LOCAL_MEMORY_OPS.findall(sass))
    return result


def cuda_resources() -> list[dict]:
    """Resources of every kernel in the built fastsn._C (empty when it has no CUDA code)."""
    try:
        import fastsn._C as extension
    except ImportError as error:
        raise SystemExit(f"fastsn._C is not built: {error}")
    lib = extension.__file__
    text = subprocess.run([cuobjdump(), "--dump-resource-usage", lib], capture_output=True, text=True).stdout
    rows = _parse_resources(text)
    for row in rows:
        row["kernel"] = _demangle(row["function"])
    return rows


def _demangle(name: str) -> str:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return name
    out = subprocess.run([cxxfilt, name], capture_output=True, text=True).stdout.strip()
    return re.sub(r"\(anonymous namespace\)::|fastsn::", "", out) or name


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------

def accepted_spills() -> dict[str, str]:
    """{kernel name substring: reason} from benchmarks/accepted_spills.txt."""
    accepted = {}
    if ACCEPTED.exists():
        for line in ACCEPTED.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition("#")
                if not reason.strip():
                    raise SystemExit(f"{ACCEPTED}: every accepted spill needs a reason after '#': {line!r}")
                accepted[name.strip()] = reason.strip()
    return accepted


def _spill_problem(row: dict, accepted: dict[str, str]) -> Optional[str]:
    if row.get("stack", 0) == 0 and row.get("local", 0) == 0:
        return None
    if row.get("local_ops") == 0:  # a call frame: no local load or store in the SASS
        return None
    name = f"{row.get('kernel', '')} [{row.get('config', '')}]" if row.get("config") else row.get("kernel", "")
    if any(key in name for key in accepted):
        return None
    return f"{name}: stack {row.get('stack')} B, local {row.get('local')} B"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown report here too")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel Triton compiles")
    parser.add_argument("--quick", action="store_true", help="a smaller shape sweep")
    args = parser.parse_args(argv)
    accepted = accepted_spills()

    launches = capture(args.quick)
    specs = list(launches.values())
    print(f"Triton: {len(specs)} distinct launch configurations; compiling each for sm_90", flush=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        triton_rows = list(pool.map(_compile_one, specs))
    cuda_rows = cuda_resources()

    lines = ["# Kernel resources on sm_90 (Hopper)", "",
             f"torch {torch.__version__}; Triton configurations compiled ahead of time: {len(triton_rows)}.", "",
             "## Triton (per kernel: the configuration using the most registers, and the maxima)", "",
             "| kernel | configs | max regs | max shared (B) | max stack (B) | max local (B) | max STL/LDL | "
             "heaviest config |",
             "|---|---|---|---|---|---|---|---|"]
    problems = [f"{r['kernel']} [{r['config']}]: compile failed: {r['error']}" for r in triton_rows if "error" in r]
    ok_rows = [r for r in triton_rows if "error" not in r]
    for kernel in sorted({r["kernel"] for r in ok_rows}):
        rows = [r for r in ok_rows if r["kernel"] == kernel]
        worst = max(rows, key=lambda r: r["regs"])
        lines.append(f"| {kernel} | {len(rows)} | {worst['regs']} | {max(r['shared'] for r in rows)} | "
                     f"{max(r['stack'] for r in rows)} | {max(r['local'] for r in rows)} | "
                     f"{max(r.get('local_ops', 0) for r in rows)} | {worst['config']} |")
    lines += ["", "## CUDA (fastsn._C, sm_90)", "", "| kernel | regs | shared (B) | stack (B) | local (B) |",
              "|---|---|---|---|---|"]
    lines += [f"| `{r['kernel']}` | {r['regs']} | {r['shared']} | {r['stack']} | {r['local']} |" for r in cuda_rows]
    if not cuda_rows:
        lines.append("| (no CUDA code in this build) | | | | |")
    problems += [p for r in ok_rows + cuda_rows if (p := _spill_problem(r, accepted))]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["none: no compile failure, no spill"])
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        pathlib.Path(args.out).write_text(report)
    return 1 if problems else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # the interpreter replaces @triton.jit functions (and the helpers the kernels call), which cannot compile
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sys.exit(main())
