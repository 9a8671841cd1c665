"""Build and load fastsn's CUDA kernels compiled for the CPU (see cuda_emulation.h), replacing the CPU kernels of
the fastsn ops in this process: afterwards the "cpu" backend runs the CUDA code. For a test process of its own
(tests/test_cuda_emulation.py starts one): nothing else should run in a process that loaded it.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.utils.cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the emulated .cu files, by op (csrc/cuda/<op>_cuda.cu); build_info is not: it reports which kernel ran
OPS = ("spectral_norm", "bias_leaky_relu", "gradient_penalty", "interpolate", "minibatch_l1_similarity",
       "minibatch_stddev", "mlp_input_gradient")


def load(build_directory: str | None = None) -> str:
    """Compile (cached by ninja in ``build_directory``, default build/cuda_emulation) and load the library.

    Returns:
        The path of the loaded library.
    """
    import fastsn  # noqa: F401  (the schemas and the real CPU kernels first: the emulated ones replace them)

    build_directory = build_directory or os.path.join(ROOT, "build", "cuda_emulation")
    os.makedirs(build_directory, exist_ok=True)
    sources = []
    for op in OPS:  # a C++ file per op that includes its .cu (cpp_extension compiles .cu files with nvcc)
        source = os.path.join(build_directory, f"{op}_cuda_emulated.cpp")
        text = f'#include "cuda/{op}_cuda.cu"\n'
        if not os.path.exists(source) or open(source).read() != text:
            with open(source, "w") as f:
                f.write(text)
        sources.append(source)
    sources.append(os.path.join(ROOT, "tests", "cuda_emulation", "cuda_emulation.cpp"))  # the fiber switch
    try:  # cpp_extension runs `ninja` from PATH: the pinned wheel's (.ci/requirements.txt) when installed
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel", once per op: intended
        path = torch.utils.cpp_extension.load(
            name="fastsn_cuda_emulation", sources=sources, build_directory=build_directory,
            extra_cflags=["-std=c++20", "-O1", "-DFASTSN_CUDA_EMULATION", "-DFASTSN_WITH_CUDA=1",
                          f"-I{os.path.join(ROOT, 'csrc')}", f"-I{os.path.join(ROOT, 'tests', 'cuda_emulation')}"],
            is_python_module=False, verbose=False)
    for op in OPS:  # the CPU kernel of every op of the file now comes from the .cu
        for name in torch.ops.fastsn:
            if name.startswith(op) and not name.endswith("_triton"):
                dump = torch._C._dispatch_dump(f"fastsn::{name}")
                cpu = next(line for line in dump.splitlines() if line.startswith("CPU:"))
                assert f"cuda/{op}_cuda.cu" in cpu, f"fastsn::{name}: the CPU kernel is not the emulated one: {cpu}"
    return path
