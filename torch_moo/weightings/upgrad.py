r"""UPGrad and DualProj: weights whose combination lies in the dual cone of the gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_real
from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings._dual_cone import project_dual_cone
from torch_moo.weightings.simple import check_gram, check_weights, preference

__all__ = ["DualProj", "UPGrad"]


class _DualConeWeighting(GramWeighting):
    """The hyperparameters UPGrad and DualProj share: a preference vector and the regularisation."""

    pref_vector: Tensor | None

    def __init__(self, pref_vector: Sequence[float] | Tensor | None, reg_eps: float) -> None:
        super().__init__()
        self.reg_eps = check_real("reg_eps", reg_eps, minimum=0.0, strict=True)
        given = None if pref_vector is None else check_weights("pref_vector", pref_vector)
        self.register_buffer("pref_vector", given, persistent=False)

    def config(self) -> dict[str, Any]:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return {"pref_vector": pref, "reg_eps": self.reg_eps}


class UPGrad(_DualConeWeighting):
    r"""Unconflicting projection of gradients: each gradient projected onto the dual cone, then combined.

    Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization* (2024):

    .. math::

        w = \sum_i v^{(i)}, \qquad
        v^{(i)} = \arg\min_{v \ge p_i e_i} v^\top Q v, \qquad
        Q = G / \operatorname{tr} G + \varepsilon I,

    so :math:`J^\top w = \sum_i \pi_J(p_i g_i)` and :math:`G w \ge 0` (every objective decreases
    to first order), with :math:`p` the preference vector (default :math:`1/k` each). The
    :math:`k` QPs are solved exactly as one batch by
    :func:`~torch_moo.weightings._dual_cone.project_dual_cone`, on the Gram matrix's device.
    Equal to torchjd's ``UPGradWeighting`` (``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)``)
    for :math:`\operatorname{tr} G \ge 10^{-4}`; below, torchjd treats :math:`G` as zero and
    returns :math:`p`, while these weights are invariant to :math:`G \to cG` at every scale
    (torchjd's absolute ``norm_eps`` has no counterpart).

    Args:
        pref_vector: the ``k`` weights :math:`p` (finite), or ``None`` for :math:`1/k` each.
        reg_eps: :math:`\varepsilon > 0`, added to the trace-normalised Gram matrix.

    Example:
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> UPGrad()(gram)  # g_i / 2 + g_j / 4 has no conflict with g_j
        tensor([0.7500, 0.7500], dtype=torch.float64)
    """

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None, reg_eps: float = 1e-4) -> None:
        super().__init__(pref_vector, reg_eps)

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        pref = preference(self.pref_vector, k, gram)
        return project_dual_cone(gram, torch.diag(pref), self.reg_eps).sum(dim=0)


class DualProj(_DualConeWeighting):
    r"""The preference-weighted gradient projected onto the dual cone of the gradients.

    Lopez-Paz & Ranzato, *Gradient Episodic Memory for Continual Learning* (NeurIPS 2017), eq. 11,
    as in torchjd's ``DualProjWeighting``:

    .. math::

        w = \arg\min_{v \ge p} v^\top Q v, \qquad Q = G / \operatorname{tr} G + \varepsilon I,

    so :math:`J^\top w = \pi_J(J^\top p)` and :math:`G w \ge 0`. The same solver, scale
    convention and equality with torchjd as :class:`UPGrad`; invariant to :math:`G \to cG`.

    Args:
        pref_vector: the ``k`` weights :math:`p` (finite), or ``None`` for :math:`1/k` each.
        reg_eps: :math:`\varepsilon > 0`, added to the trace-normalised Gram matrix.

    Example:
        >>> gram = torch.tensor([[1.0, -2.0], [-2.0, 9.0]], dtype=torch.float64)
        >>> DualProj()(gram)  # the mean conflicts with g_1; g_1 + g_2 / 2 is orthogonal to it (reg_eps: 0.999)
        tensor([0.9990, 0.5000], dtype=torch.float64)
    """

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None, reg_eps: float = 1e-4) -> None:
        super().__init__(pref_vector, reg_eps)

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        return project_dual_cone(gram, preference(self.pref_vector, k, gram)[None], self.reg_eps)[0]
