"""MGDA's weights: the min-norm point of the convex hull of the (normalised) gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_choice
from torch_moo.functional.mgda import NORMALIZATIONS, Normalization, normalized_gram
from torch_moo.functional.min_norm import min_norm_weights
from torch_moo.weightings._base import GramWeighting

__all__ = ["MGDA"]


class MGDA(GramWeighting):
    r"""The weights of the min-norm element of the convex hull of the normalised gradients.

    Désidéri, *Multiple-gradient descent algorithm (MGDA)* (2012); Sener & Koltun, *Multi-Task
    Learning as Multi-Objective Optimization* (NeurIPS 2018):

    .. math::

        w = \arg\min_{w \in \Delta} w^\top \hat G w, \qquad \hat G = S^{-1} G S^{-1},

    solved exactly by :func:`~torch_moo.functional.min_norm_weights` (off the CPU on a host copy
    of the :math:`k \times k` matrix: one synchronisation), each call warm-started from the
    previous solution (fewer iterations, the same optimum); :math:`S` is the normalisation of
    :func:`~torch_moo.functional.normalized_gram`.
    With ``normalization="none"`` :math:`J^\top w` decreases every objective and vanishes
    exactly at a Pareto-stationary point. Invariant to :math:`G \to cG` (``"none"``, ``"l2"``).
    :attr:`gap` is the solver's duality gap at the last call (float64; 0 at the exact solution).

    Args:
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"`` (the last two read the
            loss values passed as ``losses``).

    Example:
        >>> MGDA()(torch.tensor([[1.0, 0.0], [0.0, 16.0]], dtype=torch.float64))
        tensor([0.9412, 0.0588], dtype=torch.float64)
    """

    gap: Tensor

    def __init__(self, normalization: Normalization = "none") -> None:
        super().__init__()
        self.normalization: Normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.register_buffer("gap", torch.zeros((), dtype=torch.float64), persistent=False)
        self._start: Tensor | None = None  # the warm start: the last solution

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        weights, gap = min_norm_weights(normalized_gram(gram, losses, self.normalization), start=self._start)
        self._start = weights
        self.gap.copy_(gap)
        return weights

    def config(self) -> dict[str, Any]:
        return {"normalization": self.normalization}
