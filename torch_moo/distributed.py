"""What the optimizers share across ranks under :mod:`torch.distributed`."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["mean_across_ranks"]


def mean_across_ranks(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all ranks of the default process group (``tensor`` itself without one).

    The all-reduce is enqueued on the device stream, so on NCCL it adds no host synchronisation.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.div_(dist.get_world_size())
