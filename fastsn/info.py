"""``python -m fastsn.info``: what fastsn was built with, what this process can run, and a probe of each backend.

Exit status 1 when the build cannot serve this torch (extension failed to load although it was built, or the
CUDA major version of the build differs from torch's); 0 otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Optional, TextIO

import torch

import fastsn
from fastsn import _backend, _extension
from fastsn.ops.build_info import BACKEND_CODES, BUILD_INFO_FIELDS, build_info


def _triton_version() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except Exception as exc:  # report, do not fail: info must run on broken installs
        return f"unusable ({type(exc).__name__}: {exc})"
    return triton.__version__


def _each_backend(op: str, device: str, check: Callable[[str], str]) -> dict[str, str]:
    """{backend: result} of ``check(backend)`` for every backend, or why that backend cannot run ``op`` here."""
    results = {}
    for name in _backend.BACKENDS[1:]:
        reason = _backend.unavailable_reason(name, op, device)
        if reason is not None:
            results[name] = f"unavailable: {reason}"
            continue
        try:
            results[name] = check(name)
        except Exception as exc:  # report, do not fail: info must run on broken installs
            results[name] = f"FAILED: {type(exc).__name__}: {exc}"
    return results


def _probe(device: str) -> dict[str, str]:
    """Run fastsn::build_info with every backend on a small tensor of ``device`` holding one NaN."""
    x = torch.arange(37, dtype=torch.float32, device=device)
    x[5] = float("nan")

    def check(name: str) -> str:
        fields = dict(zip(BUILD_INFO_FIELDS, build_info(x, backend=name).tolist()))
        ok = fields["backend"] == BACKEND_CODES[name] and fields["numel"] == 37 and fields["nonfinite"] == 1
        return ("ok" if ok else f"WRONG: {fields}") + f" (workers: {fields['workers']})"

    return _each_backend("build_info", device, check)


def _probe_spectral_norm(device: str) -> dict[str, str]:
    """One power iteration and W / sigma on a small weight with every backend, against the reference."""
    from fastsn.ops import spectral_norm as sn

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 3, 3, 3, generator=generator).to(device)
    u0 = torch.nn.functional.normalize(torch.randn(16, generator=generator), dim=0).to(device)
    v0 = torch.nn.functional.normalize(torch.randn(27, generator=generator), dim=0).to(device)
    expected, _ = sn.spectral_norm(weight, u0.clone(), v0.clone(), backend="ref")

    def check(name: str) -> str:
        normalized, sigma = sn.spectral_norm(weight, u0.clone(), v0.clone(), backend=name)
        error = float((normalized - expected).abs().max())
        return ("ok" if error < 1e-4 else "WRONG") + f" (sigma {float(sigma):.4f}, max |diff| vs ref {error:.1e})"

    return _each_backend("spectral_norm", device, check)


def collect(probe: bool = True) -> dict[str, Any]:
    """The configuration as a dict (what :func:`show_config` prints).

    Args:
        probe: also run the build_info op with every backend on every visible device.
    """
    build = _extension.BUILD or {}
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    compiled = [key.lower() for key in ("CPU", "CUDA") if _extension.has_kernel("build_info", key)]
    config: dict[str, Any] = {
        "fastsn": fastsn.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "extension_loaded": _extension.loaded(),
        "extension_error": _extension.LOAD_ERROR,
        "backends_compiled": compiled,
        "build": build,
        "gpus": gpus,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        "fastsn_backend_env": os.environ.get("FASTSN_BACKEND"),
        "problems": [],
    }
    if build and not _extension.loaded():
        config["problems"].append(f"fastsn._C was built but does not load: {_extension.LOAD_ERROR}")
    mismatch = _extension.cuda_mismatch(build.get("cuda_toolkit_version"), torch.version.cuda)
    if mismatch:
        config["problems"].append(mismatch)
    if _extension.cuda_compiled():
        config["problems"] += [f"cuda:{i}: {p}" for i in range(len(gpus)) if (p := _extension.gpu_arch_mismatch(i))]
    if probe:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(len(gpus))]
        config["probe"] = {f"fastsn::build_info on {device}": _probe(device) for device in devices}
        config["probe"].update({f"spectral norm on {device}": _probe_spectral_norm(device) for device in devices})
        for what, results in config["probe"].items():
            config["problems"] += [f"probe {name}, {what}: {r}" for name, r in results.items()
                                   if r.startswith(("FAILED", "WRONG"))]
    return config


def _print(config: dict[str, Any], out: TextIO) -> None:
    build = config["build"]
    rows = [
        ("fastsn", config["fastsn"]),
        ("python", config["python"]),
        ("torch", f"{config['torch']} (CUDA {config['torch_cuda'] or 'none: CPU-only build'})"),
        ("triton", config["triton"] or "not installed"),
        ("extension fastsn._C", "loaded" if config["extension_loaded"] else f"NOT loaded: {config['extension_error']}"),
        ("backends compiled", ", ".join(config["backends_compiled"]) or "none (reference only)"),
        ("built against", f"torch {build['torch_version']}, CUDA toolkit {build['cuda_toolkit_version'] or 'none'}"
                          if build else "never built"),
        ("CUDA arch list", (build.get("cuda_arch_list") or "-") if build else "-"),
        ("CUDA kernels", build.get("cuda_choice", "-") if build else "-"),
        ("GPU seen", ", ".join(config["gpus"]) or "none"),
        ("TRITON_INTERPRET", "1" if config["triton_interpret"] else "unset"),
        ("FASTSN_BACKEND", config["fastsn_backend_env"] or "unset (auto)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    for what, results in config.get("probe", {}).items():
        print(f"\nprobe {what}:", file=out)
        for name, result in results.items():
            print(f"  {name:<7} {result}", file=out)
    for problem in config["problems"]:
        print(f"\nerror: {problem}", file=out)


def show_config(out: TextIO = sys.stdout, probe: bool = True) -> dict[str, Any]:
    """Print the configuration and return it (see :func:`collect`)."""
    config = collect(probe=probe)
    _print(config, out)
    return config


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastsn.info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the configuration as JSON")
    parser.add_argument("--no-probe", action="store_true", help="do not run the build_info op on each backend")
    args = parser.parse_args(argv)
    if args.json:
        config = collect(probe=not args.no_probe)
        print(json.dumps(config, indent=2))
    else:
        config = show_config(probe=not args.no_probe)
    return 1 if config["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
