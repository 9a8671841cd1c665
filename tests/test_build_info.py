"""fastsn::build_info on every backend x device x dtype against its reference, odd shapes, bad input,
and its registration (opcheck, torch.compile)."""
from __future__ import annotations

import pytest
import torch

from fastsn import _backend, _extension
from fastsn.ops.build_info import ABI_VERSION, BACKEND_CODES, BUILD_INFO_FIELDS, build_info, build_info_ref

SHAPES = [(), (0,), (1,), (7,), (3, 5, 7), (1025,), (70001,)]  # 70001 > the CPU grain: several threads


def _sample(shape, dtype, device, nonfinite: int) -> torch.Tensor:
    x = (torch.randn(shape, dtype=torch.float32) * 100).to(dtype)
    flat = x.view(-1)
    if flat.numel():
        positions = torch.randperm(flat.numel())[:nonfinite]
        specials = torch.tensor([float("nan"), float("inf"), -float("inf")])
        flat[positions] = specials[torch.arange(len(positions)) % 3].to(dtype)
    return x.to(device)


def _fields(out: torch.Tensor) -> dict[str, int]:
    return dict(zip(BUILD_INFO_FIELDS, out.tolist()))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend_device, dtype, shape):
    backend, device = backend_device
    x = _sample(shape, dtype, device, nonfinite=5)
    out = build_info(x, backend=backend)
    assert out.dtype == torch.int64 and out.shape == (8,) and out.device == x.device
    got, ref = _fields(out), _fields(build_info_ref(x))
    for field in ("numel", "nonfinite", "device_index", "itemsize"):
        assert got[field] == ref[field], field
    assert got["backend"] == BACKEND_CODES[backend]
    assert got["abi_version"] == ABI_VERSION
    assert got["workers"] >= 1


def test_reference_counts(dtype):
    x = torch.tensor([0.0, float("nan"), 1.0, float("inf"), -float("inf"), -2.5], dtype=dtype)
    assert _fields(build_info_ref(x))["nonfinite"] == 3


def test_float64_values_beyond_float32_are_finite(backend_device):
    backend, device = backend_device
    x = torch.tensor([1e300, -1e300, 3.5e38 * 10, float("nan")], dtype=torch.float64, device=device)
    assert _fields(build_info(x, backend=backend))["nonfinite"] == 1


def test_half_extremes(backend_device):
    backend, device = backend_device
    x = torch.tensor([65504.0, -65504.0, 6e-8, float("inf")], dtype=torch.float16, device=device)
    assert _fields(build_info(x, backend=backend))["nonfinite"] == 1


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded", "sliced"])
def test_non_contiguous(backend_device, layout):
    backend, device = backend_device
    base = _sample((33, 65), torch.float32, device, nonfinite=9)
    x = {"transposed": base.t(), "strided": base[::2, ::3], "expanded": base[:1].expand(4, 65),
         "sliced": base[3:20, 5:]}[layout]
    assert not x.is_contiguous()
    got, ref = _fields(build_info(x, backend=backend)), _fields(build_info_ref(x))
    assert [got[f] for f in ("numel", "nonfinite", "itemsize")] == [ref[f] for f in ("numel", "nonfinite", "itemsize")]


def test_cuda_version_field_reports_the_build(backend_device):
    backend, device = backend_device
    toolkit = (_extension.BUILD or {}).get("cuda_toolkit_version")
    expected = 0
    if backend in ("cpu", "cuda") and toolkit:
        major, minor = toolkit.split(".")
        expected = int(major) * 1000 + int(minor) * 10
    assert _fields(build_info(torch.ones(2, device=device), backend=backend))["cuda_version"] == expected


@pytest.mark.parametrize("bad", [torch.arange(4), torch.ones(3, dtype=torch.complex64),
                                 torch.ones(2, dtype=torch.bool)], ids=["int64", "complex64", "bool"])
def test_bad_dtype_names_the_argument(backend_device, bad):
    backend, device = backend_device
    with pytest.raises(RuntimeError, match="argument 'x' must be float16, bfloat16, float32 or float64"):
        build_info(bad.to(device), backend=backend)


@pytest.mark.parametrize("bad", [None, [1.0, 2.0], 3.0], ids=["None", "list", "float"])
def test_non_tensor_names_the_argument(bad):
    with pytest.raises(TypeError, match="argument 'x' must be a Tensor"):
        build_info(bad)


def test_input_requiring_grad(backend_device):
    backend, device = backend_device
    x = torch.randn(10, device=device, requires_grad=True)
    out = build_info(x, backend=backend)
    assert not out.requires_grad and _fields(out)["numel"] == 10


def _kernel_ops() -> list[tuple[str, str]]:
    pairs = []
    for backend, device in [(b, d) for b in ("cpu", "cuda", "triton") for d in ("cpu", "cuda")]:
        if (device == "cuda") != torch.cuda.is_available() and device == "cuda":
            continue
        if _backend.unavailable_reason(backend, "build_info", device) is None:
            pairs.append(("build_info_triton" if backend == "triton" else "build_info", device))
    return pairs


@pytest.mark.parametrize("op, device", _kernel_ops(), ids=lambda v: str(v))
def test_opcheck(op, device):
    """Schema, fake kernel, autograd registration and AOT dispatch agree (torch.library.opcheck)."""
    x = torch.randn(3, 17, device=device)
    torch.library.opcheck(getattr(torch.ops.fastsn, op).default, (x,))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend_device, compiler):
    backend, device = backend_device
    if compiler == "inductor" and backend != "cpu":
        pytest.skip("one inductor compile (cpu) is enough; aot_eager covers every backend")

    def step(x: torch.Tensor) -> torch.Tensor:
        return build_info(x * 2, backend=backend)

    x = _sample((4, 9), torch.float32, device, nonfinite=2)
    compiled = torch.compile(step, backend=compiler, fullgraph=True)
    out = compiled(x)
    assert out[0].item() == BACKEND_CODES[backend]  # the chosen kernel runs inside the compiled graph
    assert torch.equal(out, step(x))
