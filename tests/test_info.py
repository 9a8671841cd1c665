"""python -m fastsn.info / fastsn.show_config(): versions, backends compiled, the CUDA match check."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

import fastsn
from fastsn import _extension, info


def test_show_config_prints_and_returns_the_facts():
    out = io.StringIO()
    config = info.show_config(out=out)
    text = out.getvalue()
    assert config["torch"] == torch.__version__ and torch.__version__ in text
    assert config["fastsn"] == fastsn.__version__
    for key in ("backends compiled", "CUDA arch list", "GPU seen", "probe fastsn::build_info on cpu"):
        assert key in text
    assert config["probe"]["fastsn::build_info on cpu"]["ref"].startswith("ok")
    assert config["probe"]["spectral norm on cpu"]["ref"].startswith("ok")
    assert "probe spectral norm on cpu" in text
    assert config["problems"] == []


def test_module_entry_point_json():
    proc = subprocess.run([sys.executable, "-m", "fastsn.info", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert config["backends_compiled"] == [k for k in ("cpu", "cuda") if _extension.has_kernel("build_info", k.upper())]
    if _extension.BUILD:
        assert config["backends_compiled"] == _extension.BUILD["backends_compiled"]
        assert config["build"]["torch_version"] == torch.__version__
    assert config["gpus"] == ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if torch.cuda.is_available() else [])


def test_module_entry_point_text_and_exit_status():
    proc = subprocess.run([sys.executable, "-m", "fastsn.info", "--no-probe"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "backends compiled" in proc.stdout and "probe" not in proc.stdout


@pytest.mark.parametrize("build_cuda, torch_cuda, ok", [
    (None, "13.0", True), (None, None, True), ("13.0", "13.0", True), ("13.0", "13.2", True),
    ("12.4", "13.0", False), ("13.0", None, False),
])
def test_cuda_major_version_check(build_cuda, torch_cuda, ok):
    problem = _extension.cuda_mismatch(build_cuda, torch_cuda)
    assert (problem is None) == ok
    if not ok:
        assert build_cuda in problem and "rebuild" in problem


def test_mismatch_is_reported_as_an_error(monkeypatch):
    monkeypatch.setattr(_extension, "BUILD", dict(_extension.BUILD or {}, cuda_toolkit_version="11.8"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    out = io.StringIO()
    config = info.show_config(out=out, probe=False)
    assert any("CUDA 11.8" in p for p in config["problems"])
    assert "error: fastsn._C was compiled with CUDA 11.8 but torch uses CUDA 13.0" in out.getvalue()


@pytest.mark.parametrize("capability, arch_list, ok", [
    ((9, 0), "9.0", True), ((9, 0), "8.0;9.0+PTX", True), ((8, 6), "8.0", True), ((8, 0), "8.6", False),
    ((8, 0), "9.0", False), ((10, 0), "9.0", False), ((10, 0), "9.0+PTX", True), ((9, 0), "9.0a", True),
    ((9, 1), "9.0a", False), ((7, 5), "Hopper", True), ((9, 0), None, True),
])
def test_gpu_arch_check(capability, arch_list, ok):
    problem = _extension.arch_mismatch(capability, arch_list)
    assert (problem is None) == ok
    if not ok:
        assert f'TORCH_CUDA_ARCH_LIST="{capability[0]}.{capability[1]}"' in problem
