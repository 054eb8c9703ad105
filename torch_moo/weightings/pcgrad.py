r"""PCGrad: each gradient's conflicts with the others projected away, in random order."""

from __future__ import annotations

import torch
from torch import Tensor

from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings.simple import check_gram, unit_gram

__all__ = ["PCGrad"]


class PCGrad(GramWeighting):
    r"""PCGrad (Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020, Algorithm 1).

    For each objective :math:`i`, start from :math:`g_i^{PC} = g_i` and, for :math:`j` over a
    random permutation of the objectives (skipping :math:`i`),

    .. math::

        g_i^{PC} \leftarrow g_i^{PC} - \frac{\min(0, \langle g_i^{PC}, g_j \rangle)}{\|g_j\|^2}\, g_j ,
        \qquad J^\top w = \sum_i g_i^{PC},

    carried out on the weights of :math:`g_i^{PC}` (row :math:`i` of :math:`W`, starting at
    :math:`e_i`): :math:`\langle g_i^{PC}, g_j \rangle = (W G)_{ij}`; :math:`w = \sum_i W_{i\cdot}`.
    The order convention is torchjd's ``PCGradWeighting``: objective :math:`i`'s permutation is the
    :math:`i`-th of :math:`k` calls of ``torch.randperm(k)`` on the global CPU generator, so with the
    same seed the weights are equal (up to rounding). The permutations are drawn on the host, as
    there, and sent in one copy (no synchronisation); the :math:`k` projections then run as one
    batch, :math:`k` masked steps on the Gram matrix's device. A zero gradient
    (:math:`\|g_j\| = 0`) projects nothing. Invariant to :math:`G \to cG` (run on :math:`G` scaled
    by a power of two to unit size).

    Example:
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> PCGrad()(gram)  # both conflicts removed: each gradient gets 1/2 of the other
        tensor([1.5000, 1.5000], dtype=torch.float64)
    """

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        unit, _ = unit_gram(gram)
        orders = torch.stack([torch.randperm(k) for _ in range(k)]).to(unit.device, non_blocking=True)
        index = torch.arange(k, device=unit.device)
        norms = unit.diagonal()
        norms = torch.where(norms > 0, norms, 1.0)
        weights = torch.eye(k, dtype=unit.dtype, device=unit.device)
        for step in range(k):
            other = orders[:, step]
            inner = (weights * unit.index_select(0, other)).sum(dim=1)
            change = torch.where((inner < 0) & (other != index), inner / norms.index_select(0, other), 0.0)
            weights = weights - change[:, None] * (index == other[:, None])
        return weights.sum(dim=0).to(gram.dtype)
