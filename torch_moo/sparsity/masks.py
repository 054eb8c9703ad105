r"""Pure mask operations: group scores, top-k selection with deterministic ties, drop and grow.

A mask lives on *units*: single weights (``"element"``), output neurons or channels (``"row"``)
or input neurons or channels (``"column"``). Where they lie in the weight is its
``Layout`` (``torch_moo._layout``): along dimensions 0 and 1 of ``nn.Linear`` and ``nn.ConvNd``
weights (``(out, in / groups, *kernel)``), along dimensions 1 and 0 of ``nn.ConvTransposeNd``
weights (``(in, out / groups, *kernel)``) and ``nn.Embedding`` tables; with ``groups`` > 1,
each group's channels along dimension 1 are separate units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torch_moo._device import reads_are_free
from torch_moo._layout import DENSE, Layout, expand_units, unit_axis, unit_count, units_first

__all__ = [
    "STRUCTURES",
    "Layout",
    "unit_count",
    "unit_norms",
    "expand",
    "top_count",
    "drop_and_grow",
    "exploration_bonus",
]

STRUCTURES = ("element", "row", "column")


def unit_norms(tensor: Tensor, structure: str, layout: Layout = DENSE) -> Tensor:
    r""":math:`|w|` per element, or the :math:`\ell_2` norm of each unit (float32, dense: a sparse
    gradient, such as ``nn.Embedding(sparse=True)``'s, is densified, its duplicate entries summed).

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> unit_norms(w, "row"), unit_norms(w, "row", Layout(outputs=1))
        (tensor([5., 1.]), tensor([3.0000, 4.1231]))
    """
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    tensor = tensor.float()
    if structure == "element":
        return tensor.abs()
    return torch.linalg.vector_norm(units_first(tensor, unit_axis(structure, layout), layout.groups), dim=1)


def expand(units: Tensor, shape: torch.Size, structure: str, layout: Layout = DENSE) -> Tensor:
    """A unit mask (or score) broadcast to the weight's ``shape``."""
    if structure == "element":
        return units
    return expand_units(units, shape, unit_axis(structure, layout), layout.groups)


def top_count(scores: Tensor, count: int) -> Tensor:
    r"""Boolean mask of the ``count`` largest scores; ties go to the lower flat index, NaN ranks last.

    Deterministic, so every rank that sees the same scores picks the same units. A selection
    finds the ``count``-th largest score :math:`\tau` and a cumulative sum breaks the ties at it,
    without a host synchronisation:

    .. math::

        m_j = [s_j > \tau] \lor \big([s_j = \tau] \land \#\{i \le j : s_i = \tau\}
        \le k - \#\{i : s_i > \tau\}\big).

    On the CPU the selection is ``kthvalue`` (linear time; a full stable sort was several times
    slower on a 784x512 layer); on an accelerator it is ``topk`` of the smaller side, since
    ``kthvalue`` runs one long slice in a single block on CUDA (pytorch issue 75599). Both
    return the same :math:`\tau`, a value of ``scores``, so the masks are identical.

    Example:
        >>> top_count(torch.tensor([0.5, 2.0, 0.5, 1.0]), 2)
        tensor([False,  True, False,  True])
        >>> top_count(torch.tensor([0.5, 2.0, 0.5, 1.0]), 3)
        tensor([ True,  True, False,  True])
    """
    flat = torch.nan_to_num(scores.flatten().float(), nan=-math.inf)
    size = flat.numel()
    if count <= 0 or count >= size:
        return torch.full_like(scores, count > 0, dtype=torch.bool)
    if reads_are_free(flat):
        threshold = torch.kthvalue(flat, size - count + 1).values
    elif 2 * count <= size:  # the smallest of the count largest
        threshold = torch.topk(flat, count, sorted=False).values.min()
    else:  # the largest of the size - count + 1 smallest
        threshold = torch.topk(flat, size - count + 1, largest=False, sorted=False).values.max()
    above = flat > threshold
    ties = flat == threshold
    mask = above | (ties & (ties.cumsum(0) <= count - above.sum()))
    return mask.view_as(scores)


def drop_and_grow(mask: Tensor, magnitude: Tensor, growth: Tensor, count: int, active: int | None = None) -> Tensor:
    r"""One topology update at a constant active count.

    The ``count`` active units of smallest ``magnitude`` are dropped; then the ``count``
    inactive units (the just-dropped ones included, as in RigL) of largest ``growth`` score
    become active. The number of active units is unchanged.

    Args:
        mask: boolean unit mask.
        magnitude: the drop score of each unit (its weight magnitude).
        growth: the growth score of each unit (random, gradient magnitude, or with a bonus).
        count: how many to drop and grow; at most the number of active units.
        active: the number of active units of ``mask``, where the caller keeps it; by default it
            is counted, a host synchronisation.

    Example:
        >>> mask = torch.tensor([True, True, False, False])
        >>> drop_and_grow(mask, torch.tensor([0.1, 0.9, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.2, 0.7]), 1)
        tensor([False,  True, False,  True])
    """
    if active is None:
        active = int(mask.sum())
    survivors = top_count(torch.where(mask, magnitude.float(), -math.inf), active - count)
    grown = top_count(torch.where(survivors, -math.inf, growth.float()), count)
    return survivors | grown


def exploration_bonus(active_updates: Tensor, step: int, coefficient: float) -> Tensor:
    r"""The DST-EE exploration bonus :math:`c \sqrt{\ln t / (N_j + 1)}`.

    :math:`N_j` counts the topology updates unit :math:`j` has been active in; the ``+ 1``
    (the paper's :math:`\epsilon`) keeps the bonus of a never-active unit finite, at
    :math:`c\sqrt{\ln t}`. Huang et al., "Dynamic Sparse Training via Balancing the
    Exploration-Exploitation Trade-off", DAC 2023.

    Example:
        >>> exploration_bonus(torch.tensor([0, 3]), step=100, coefficient=1.0)
        tensor([2.1460, 1.0730])
    """
    return coefficient * torch.sqrt(math.log(max(step, 1)) / (active_updates.float() + 1.0))
