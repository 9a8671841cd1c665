"""``fastsn.nn.LeakyReLU``: ``torch.nn.LeakyReLU`` on fastsn's fused activation, and ``convert_leaky_relu``.

The point is a gradient penalty's double backward: torch's activation sends a zero gradient down to every layer
below it there (a conv backward of zeros per layer), fastsn's sends nothing (see fastsn/ops/_zero_fill.py).
"""
from __future__ import annotations

import torch

from fastsn.ops.bias_leaky_relu import bias_leaky_relu


class LeakyReLU(torch.nn.LeakyReLU):
    """``torch.nn.LeakyReLU`` (same arguments, attributes, repr, empty state_dict and output) computed by
    ``fastsn.ops.bias_leaky_relu``, whose double backward skips the layers below it.

    Two settings keep torch's own op, and so its semantics: ``inplace=True`` (the input is overwritten) and a
    negative ``negative_slope`` (the fused gradient reads the mask from the output, which needs a slope >= 0).

    Args:
        negative_slope: the slope where the input is <= 0.
        inplace: overwrite the input, as torch does.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Args: input, any shape. Returns: leaky_relu(input), input's shape (contiguous, or channels-last as the
        input)."""
        if self.inplace or not self.negative_slope >= 0:
            return super().forward(input)
        return bias_leaky_relu(input, None, self.negative_slope, 1.0)


def convert_leaky_relu(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``torch.nn.LeakyReLU`` in ``model`` (that class exactly, not subclasses) a :class:`LeakyReLU` of
    the same slope, in place; for a gradient penalty through an unchanged D.

    Each activation object is converted where it is (its class changes): one registered under several names or
    shared by several models stays one object, and its hooks, train/eval mode and attributes stay. Activations built
    with ``inplace=True`` become out of place: the same output for every caller that uses the layer's return value
    (``nn.Sequential`` and any usual forward), but the input is no longer overwritten. State_dict keys and values do
    not change (the activation holds none).

    Args:
        model: any module.

    Returns:
        ``model``.
    """
    for module in model.modules():  # (each object once, however many names it has)
        if type(module) is torch.nn.LeakyReLU:
            module.__class__ = LeakyReLU
            module.inplace = False
    return model
