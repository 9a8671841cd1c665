"""State of ``fastsn.grouped_spectral_norm``: the normalized weights it computed for the block it wraps.

The spectral-norm parametrization and hook ask :func:`lookup` first; outside a grouped block it returns None.
"""
from __future__ import annotations

from typing import Optional

import torch

# (id(parametrization or hook), id(module) or 0) -> W_sn computed by the grouped op; None outside a block.
# A plain module global, not a ContextVar: torch.compile (dynamo in torch <= 2.11) cannot trace ContextVar.get,
# and a forward compiled with fullgraph=True reads this on every spectral-norm weight.
_table: Optional[dict[tuple[int, int], torch.Tensor]] = None


def lookup(fn: object, module: Optional[torch.nn.Module] = None) -> Optional[torch.Tensor]:
    """The precomputed W_sn of ``fn`` (a parametrization, or a hook on ``module``), or None."""
    if _table is None:
        return None
    return _table.get((id(fn), id(module) if module is not None else 0))
