"""State of ``fastsn.grouped_spectral_norm``: the normalized weights it computed for the block it wraps.

The spectral-norm parametrization and hook ask :func:`lookup` first; outside a grouped block it returns None. A
weight is handed out only while the layer still reads the tensors it was computed from: inside the block,
``torch.func.functional_call`` (or any swap of the weight, u or v) computes afresh, as it would without the block.
"""
from __future__ import annotations

from typing import Optional

import torch

# A weight the grouped ops computed, with the tensors it was computed from: (W_sn, source, u, v), where source is
# the parametrization's `original` or the hook's `<name>_orig`, and u, v the buffers the power iteration read (and
# updated). A plain tuple: one is made per weight and block.
Entry = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

# (id(parametrization or hook), id(module) or 0) -> Entry; None outside a block.
# A plain module global, not a ContextVar: torch.compile (dynamo in torch <= 2.11) cannot trace ContextVar.get,
# and a forward compiled with fullgraph=True reads this on every spectral-norm weight.
_table: Optional[dict[tuple[int, int], Entry]] = None


def valid(entry: Entry, source: Optional[torch.Tensor], u: Optional[torch.Tensor], v: Optional[torch.Tensor]
          ) -> bool:
    """Whether ``entry`` was computed from exactly these tensors (not from ones swapped out since)."""
    return entry[1] is source and entry[2] is u and entry[3] is v


def lookup(fn: object, source: torch.Tensor, u: Optional[torch.Tensor], v: Optional[torch.Tensor],
           module: Optional[torch.nn.Module] = None) -> Optional[torch.Tensor]:
    """The precomputed W_sn of ``fn`` (a parametrization, or a hook on ``module``) if it was computed from
    ``source``, ``u`` and ``v`` (the tensors the layer reads now), else None."""
    if _table is None:
        return None
    entry = _table.get((id(fn), id(module) if module is not None else 0))
    return entry[0] if entry is not None and valid(entry, source, u, v) else None
