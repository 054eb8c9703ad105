r"""IMTL-G: the weights whose combination has equal projections on every unit gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings.simple import check_gram, unit_gram

__all__ = ["IMTLG"]

# torchjd's threshold on |sum(v)| below which the weights are all zero, applied here to the Gram
# matrix scaled to unit size (where v has the size of the inverse gradient norms).
_DEGENERATE = 1e-12


class IMTLG(GramWeighting):
    r"""Impartial multi-task learning, gradient part (Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021).

    In the generalisation of Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*
    (2024), which allows linearly dependent gradients, as torchjd's ``IMTLGWeighting``:

    .. math::

        v = G^{+} d, \quad d_i = \|g_i\| = \sqrt{G_{ii}}, \qquad w = v / \textstyle\sum_i v_i ,

    so that :math:`\langle J^\top w, g_i / \|g_i\| \rangle` is the same for every :math:`i` when
    :math:`G` is invertible. :math:`G^{+}` is ``torch.linalg.pinv`` (singular values below
    :math:`k \epsilon` times the largest count as zero). The weights are all zero when
    :math:`|\sum_i v_i| < 10^{-12}` on :math:`G` scaled by a power of two to a largest entry in
    :math:`[1/2, 1)`, so they are invariant to :math:`G \to cG` (torchjd applies that threshold at
    :math:`G`'s own scale: the two agree where it does not decide). The pseudo-inverse's SVD checks
    its convergence on the host (one synchronisation on an accelerator; PyTorch has no
    ``svd_ex``).

    Example:
        >>> IMTLG()(torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
        tensor([0.6667, 0.3333], dtype=torch.float64)
    """

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        unit, _ = unit_gram(check_gram(gram))
        v = torch.linalg.pinv(unit) @ unit.diagonal().clamp_min(0.0).sqrt()
        total = v.sum()
        degenerate = total.abs() < _DEGENERATE
        return torch.where(degenerate, 0.0, v / torch.where(degenerate, 1.0, total)).to(gram.dtype)
