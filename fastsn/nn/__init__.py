"""Drop-in ``torch.nn`` replacements built on fastsn's ops.

``fastsn.nn.utils.parametrizations.spectral_norm`` and ``fastsn.nn.utils.spectral_norm`` /
``remove_spectral_norm`` replace torch's two spectral-norm APIs.
"""
from fastsn.nn import utils

__all__ = ["utils"]
