"""Drop-in replacements for ``torch.nn.utils``' spectral norm: ``spectral_norm``/``remove_spectral_norm``
(the hook API) here, and ``parametrizations.spectral_norm`` (the parametrization API)."""
from fastsn.nn.utils import parametrizations
from fastsn.nn.utils.spectral_norm import remove_spectral_norm, spectral_norm

__all__ = ["parametrizations", "remove_spectral_norm", "spectral_norm"]
