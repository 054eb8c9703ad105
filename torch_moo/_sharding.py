"""Parameters held as DTensors (FSDP2's ``fully_shard``, tensor parallelism): local shards and full tensors.

A DTensor's rank holds its *local shard*; :func:`local` is that shard (a view: writing it writes
the parameter). The methods work on local shards between updates and meet the full tensors only
where a decision needs them (:func:`full`, one all-gather), taking back their own shard with
:func:`local_part` (no communication).

:mod:`torch.distributed.tensor` is not imported here (it takes about a second): a DTensor exists
only once its module is loaded, so :func:`is_sharded` looks for the class there.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeGuard

from torch import Tensor

from torch_moo.distributed import world_size

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "by_shard_weight",
    "check_unsharded",
    "distinct_shards",
    "full",
    "is_sharded",
    "local",
    "local_part",
    "placed_like",
    "shard_weight",
    "sharded_like",
]


def check_unsharded(params: Iterable[Tensor], owner: str, reason: str) -> None:
    """Raise a ValueError naming ``owner`` and ``reason`` if a parameter is a DTensor."""
    if any(is_sharded(p) for p in params):
        raise ValueError(
            f"{owner} does not take DTensor parameters (FSDP2's fully_shard, tensor parallelism): {reason}"
        )


def is_sharded(tensor: object) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a DTensor (FSDP2, tensor parallelism)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (a view of its storage); ``tensor`` itself otherwise."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def full(tensor: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor); ``tensor`` itself otherwise."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_part(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's shard of ``whole`` (the full tensor, the same on every rank) under ``like``'s placements.

    No communication: each rank cuts its own piece (``src_data_rank=None``). ``whole`` itself when
    ``like`` is not a DTensor.
    """
    if not is_sharded(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None).to_local()


def sharded_like(shard: Tensor, like: Tensor) -> Tensor:
    """The DTensor whose local shard is ``shard``, with ``like``'s mesh, placements and global shape;
    ``shard`` itself when ``like`` is not a DTensor."""
    if not is_sharded(like):
        return shard
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        shard, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride()
    )


def placed_like(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor`` (a gradient) with ``like``'s placements: a ``Partial`` one is reduced here, once."""
    if is_sharded(tensor) and is_sharded(like) and tensor.placements != like.placements:
        return tensor.redistribute(like.device_mesh, like.placements)
    return tensor


def distinct_shards(tensor: Tensor) -> int:
    """How many different pieces ``tensor`` is cut into: the product of the mesh sizes along which it
    is sharded (a replicated mesh dimension holds copies); 1 for a plain tensor."""
    if not is_sharded(tensor):
        return 1
    mesh = tensor.device_mesh
    return math.prod(mesh.size(dim) for dim, placement in enumerate(tensor.placements) if placement.is_shard())


def shard_weight(tensor: Tensor) -> float:
    r"""The weight that makes a sum over every rank of the default process group count each distinct
    shard once: :math:`s / W` with :math:`s` = :func:`distinct_shards` and :math:`W` ranks.

    Each of the :math:`s` pieces is held by :math:`W / s` ranks (its copies along replicated mesh
    dimensions, and ranks outside the mesh that hold the same parameter on a mesh of their own,
    whose data-parallel gradients the sharding engine has already averaged)."""
    return distinct_shards(tensor) / world_size()


def by_shard_weight(tensors: Sequence[Tensor]) -> dict[float, list[int]]:
    """The indices of the DTensors among ``tensors``, grouped by :func:`shard_weight` (in order)."""
    groups: dict[float, list[int]] = {}
    for index, tensor in enumerate(tensors):
        if is_sharded(tensor):
            groups.setdefault(shard_weight(tensor), []).append(index)
    return groups
