"""Drop-in ``torch.nn`` replacements built on fastsn's ops.

``fastsn.nn.utils.parametrizations.spectral_norm`` and ``fastsn.nn.utils.spectral_norm`` /
``remove_spectral_norm`` replace torch's two spectral-norm APIs; ``GradientPenalty`` is the module form of
``fastsn.gradient_penalty``; ``FusedLeakyReLU`` is bias + leaky ReLU + gain, fused, and ``LeakyReLU`` is
``torch.nn.LeakyReLU`` on the same op (a faster double backward); ``MinibatchDiscrimination``
and ``MinibatchStdDev`` let D see the whole batch (fused, without an N x N tensor).
"""
from fastsn.nn import utils
from fastsn.nn.fused_leaky_relu import FusedLeakyReLU
from fastsn.nn.gradient_penalty import GradientPenalty
from fastsn.nn.leaky_relu import LeakyReLU
from fastsn.nn.minibatch_discrimination import MinibatchDiscrimination
from fastsn.nn.minibatch_stddev import MinibatchStdDev

__all__ = ["FusedLeakyReLU", "GradientPenalty", "LeakyReLU", "MinibatchDiscrimination", "MinibatchStdDev", "utils"]
