"""State of ``fastsn.grouped_spectral_norm``: the normalized weights it computed for the block it wraps.

The spectral-norm parametrization and hook ask :func:`lookup` first; outside a grouped block it returns None.
"""
from __future__ import annotations

import contextvars
from typing import Optional

import torch

# (id(parametrization or hook), id(module) or 0) -> W_sn computed by the grouped op
_table: contextvars.ContextVar[Optional[dict[tuple[int, int], torch.Tensor]]] = contextvars.ContextVar(
    "fastsn_grouped_spectral_norm", default=None)


def lookup(fn: object, module: Optional[torch.nn.Module] = None) -> Optional[torch.Tensor]:
    """The precomputed W_sn of ``fn`` (a parametrization, or a hook on ``module``), or None."""
    table = _table.get()
    if table is None:
        return None
    return table.get((id(fn), id(module) if module is not None else 0))
