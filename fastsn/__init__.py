"""fastsn: fast spectral normalization, gradient penalties and minibatch discrimination for PyTorch GANs.

C++/CUDA and Triton kernels behind drop-in ``torch.nn`` replacements, each with a pure-PyTorch reference
twin; which one runs is decided in :mod:`fastsn._backend` (``backend=`` argument, :func:`use_backend`,
``FASTSN_BACKEND``, or automatic).
"""
import torch  # noqa: F401  (fastsn._C links against libtorch: torch must be loaded first)

from fastsn import _extension
from fastsn._backend import BACKENDS, BackendUnavailableError, available_backends, use_backend
from fastsn import ops, nn
from fastsn.nn.utils.convert import convert_spectral_norm, spectral_norms
from fastsn.nn.utils.grouped import grouped_spectral_norm
from fastsn.nn.gradient_penalty import gradient_penalty
from fastsn.nn.leaky_relu import convert_leaky_relu
from fastsn.nn.utils.parametrizations import spectral_norm

__version__ = (_extension.BUILD or {}).get("version", "0+unbuilt")


def show_config() -> dict:
    """Print fastsn's build and runtime configuration (as ``python -m fastsn.info``) and return it as a dict."""
    from fastsn.info import show_config as _show_config

    return _show_config()


__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "convert_leaky_relu", "convert_spectral_norm",
           "gradient_penalty", "grouped_spectral_norm", "nn", "ops", "show_config", "spectral_norm", "spectral_norms",
           "use_backend"]
