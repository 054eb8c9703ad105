"""What the optimizers share across ranks under :mod:`torch.distributed`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["mean_across_ranks", "means_across_ranks", "sum_across_ranks", "broadcast_from_first", "world_size"]


def _world() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_ranks(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all ranks of the default process group (``tensor`` itself without one).

    The all-reduce is enqueued on the device stream, so on NCCL it adds no host synchronisation.
    """
    if not _world():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.div_(dist.get_world_size())


def sum_across_ranks(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all ranks of the default process group, in place (``tensor`` itself without one)."""
    if _world():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def means_across_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`mean_across_ranks` of several tensors of one dtype, in one all-reduce (``tensors`` themselves
    without a process group)."""
    if not _world() or not tensors:
        return tensors
    flat = mean_across_ranks(torch.cat([tensor.reshape(-1) for tensor in tensors]))
    return [part.view_as(tensor) for part, tensor in zip(flat.split([tensor.numel() for tensor in tensors]), tensors)]


def broadcast_from_first(tensors: list[Tensor]) -> list[Tensor]:
    """Rank 0's values of ``tensors`` (same shapes and dtypes on every rank), sent in one broadcast.

    Boolean tensors travel as ``uint8`` (gloo has no bool); ``tensors`` themselves without a process group.
    """
    if not _world() or not tensors:
        return tensors
    flat = torch.cat(
        [tensor.reshape(-1).to(torch.uint8 if tensor.dtype == torch.bool else tensor.dtype) for tensor in tensors]
    )
    dist.broadcast(flat, src=0)
    return [
        part.view_as(tensor).to(tensor.dtype)
        for part, tensor in zip(flat.split([tensor.numel() for tensor in tensors]), tensors)
    ]
