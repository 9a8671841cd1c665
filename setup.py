"""Builds fastsn and its one extension, ``fastsn._C`` (C++ CPU kernels, plus CUDA kernels when asked for).

Knobs (environment variables):
    FORCE_CUDA=1            compile csrc/cuda/*.cu even without a visible GPU (CI does this).
    FORCE_ONLY_CPU=1        never compile CUDA sources.
    TORCH_CUDA_ARCH_LIST    e.g. "9.0" or "8.0;9.0"; a CUDA build without a GPU defaults to "9.0".
    CUDA_HOME               CUDA toolkit root; otherwise found from the real nvcc or /usr/local/cuda.
    MAX_JOBS                parallel compile jobs (ninja).
    NVCC_FLAGS              extra nvcc flags, shell-split.
    DEBUG=1                 -O0 -g (and -lineinfo for nvcc) instead of -O3.

Build with ``pip install --no-build-isolation .`` (or ``-e .``): an isolated build would fetch a second torch.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Optional

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit_root(path: Optional[str]) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit root, even when the ``nvcc`` on PATH is a wrapper script.

    Order: CUDA_HOME / CUDA_PATH; the directory above the real nvcc (symlinks resolved, and a
    ``exec /path/to/nvcc`` wrapper script read); /usr/local/cuda. A candidate counts only if it holds
    include/cuda_runtime.h, so a wrapper in /usr/local/bin never makes /usr/local the root.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit_root(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc = os.path.realpath(nvcc)
        candidates = [os.path.dirname(os.path.dirname(nvcc))]
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):  # a shell wrapper: look for the absolute nvcc path it runs
                candidates += [os.path.dirname(os.path.dirname(p.decode()))
                               for p in re.findall(rb"(/[^\s\"']*/bin/nvcc)\b", head)]
        except OSError:
            pass
        for root in candidates:
            if _is_toolkit_root(root):
                return root
    if _is_toolkit_root("/usr/local/cuda"):
        return "/usr/local/cuda"
    return None


def _nvcc_version(cuda_home: str) -> Optional[str]:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _nvidia_wheel_includes() -> list[str]:
    """Headers of the ``nvidia-*`` wheels torch depends on (cuBLAS etc.), needed by ATen/cuda/CUDAContext.h
    when the toolkit itself ships without them."""
    dirs: list[str] = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


# --- torch must already be installed: we build against it -------------------------------------------
# CUDA_HOME must be right before torch.utils.cpp_extension is imported: it guesses once, at import.
_cuda_home = None if _env_flag("FORCE_ONLY_CPU") else find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit("error: fastsn compiles against the installed PyTorch, and this build cannot import torch (pip's "
             "build isolation hides it): install torch first, then run pip install --no-build-isolation .")


def want_cuda() -> tuple[bool, str]:
    """Whether to compile csrc/cuda, and why (printed, and recorded in the build facts)."""
    if _env_flag("FORCE_ONLY_CPU"):
        return False, "FORCE_ONLY_CPU=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if _cuda_home is None:
        if _env_flag("FORCE_CUDA"):
            sys.exit("error: FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root "
                     "(the directory holding bin/nvcc and include/cuda_runtime.h).")
        return False, "no CUDA toolkit (nvcc) found"
    if _env_flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available():
        return True, "GPU visible"
    return False, "no GPU visible (set FORCE_CUDA=1 to compile the CUDA kernels anyway)"


def _visible_gpu_arches() -> str:
    """What torch compiles for when TORCH_CUDA_ARCH_LIST is unset: each visible GPU, PTX for the newest."""
    arches = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    names = [f"{major}.{minor}" for major, minor in arches]
    return ";".join(names[:-1] + [names[-1] + "+PTX"])


def check_shared_libstdcxx() -> None:
    """Stop a build whose C++ compiler would link libstdc++ statically into fastsn._C.

    torch already loads the system's shared libstdc++; a second, static copy in fastsn._C has its own locale
    tables, and the first error message it formats (any TORCH_CHECK) crashes the process. Seen on a GPU image
    whose CC/CXX (/opt/gcc) ship only libstdc++.a. FASTSN_ALLOW_STATIC_LIBSTDCXX=1 skips this check.
    """
    if _env_flag("FASTSN_ALLOW_STATIC_LIBSTDCXX") or not sys.platform.startswith("linux"):
        return
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run(shlex.split(cxx) + ["-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return  # not a GCC-style driver: nothing to ask
    if found and not os.path.isabs(found):
        sys.exit(f"error: the C++ compiler {cxx!r} has no shared libstdc++ (-print-file-name=libstdc++.so gives "
                 f"{found!r}), so fastsn._C would carry a static copy beside the one torch loads, and crash on its "
                 "first error message. Build with a compiler whose libstdc++ is shared, e.g. "
                 "CC=/usr/bin/gcc CXX=/usr/bin/g++ pip install --no-build-isolation . "
                 "(FASTSN_ALLOW_STATIC_LIBSTDCXX=1 builds anyway).")


def build_extension():
    check_shared_libstdcxx()
    with_cuda, why = want_cuda()
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"]  # Python's own CFLAGS bring -O3 -DNDEBUG: override
    cxx_flags = list(opt)
    nvcc_flags = opt + ["--expt-relaxed-constexpr"] + (["-lineinfo"] if debug else [])
    nvcc_flags += shlex.split(os.environ.get("NVCC_FLAGS", ""))
    link_flags: list[str] = []
    if torch.backends.openmp.is_available():
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    cuda_version = None
    arch_list = None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            print("fastsn: no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling for 9.0 (Hopper); "
                  "set TORCH_CUDA_ARCH_LIST for other GPUs.")
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or _visible_gpu_arches()
        cuda_version = _nvcc_version(_cuda_home)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += _nvidia_wheel_includes()
    defines = [("FASTSN_WITH_CUDA", "1" if with_cuda else "0")]
    if cuda_version:
        major, minor = cuda_version.split(".")
        defines.append(("FASTSN_CUDA_VERSION", str(int(major) * 1000 + int(minor) * 10)))

    print(f"fastsn: building fastsn._C with CPU kernels{' and CUDA kernels' if with_cuda else ''} ({why}).")
    ext_cls = CUDAExtension if with_cuda else CppExtension
    ext = ext_cls(
        name="fastsn._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=defines,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else cxx_flags,
        extra_link_args=link_flags,
    )
    facts = {
        "version": VERSION,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_toolkit_version": cuda_version,
        "cuda_home": _cuda_home if with_cuda else None,
        "cuda_arch_list": arch_list,
        "backends_compiled": ["cpu", "cuda"] if with_cuda else ["cpu"],
        "cuda_choice": why,
        "openmp": torch.backends.openmp.is_available(),
        "debug": debug,
        "python": sys.version.split()[0],
    }
    return ext, facts


def write_build_config(facts: dict) -> None:
    """The build's facts, importable as ``fastsn._build_config.BUILD`` even when _C fails to load."""
    lines = ['"""Written by setup.py at build time; not tracked by git."""', "BUILD = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in facts.items()]
    lines += ["}", ""]
    with open(os.path.join(ROOT, "fastsn", "_build_config.py"), "w") as f:
        f.write("\n".join(lines))


_ext, _facts = build_extension()
write_build_config(_facts)

setup(
    version=VERSION,
    packages=["fastsn", "fastsn.ops", "fastsn.nn", "fastsn.nn.utils", "fastsn.train", "fastsn.triton_kernels"],
    package_dir={"fastsn": "fastsn", "fastsn.triton_kernels": "triton_kernels"},
    ext_modules=[_ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
