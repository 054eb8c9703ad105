r"""Aligned-MTL: the gradients' principal components rescaled to one size (a stable, balanced system)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from torch_moo._validation import check_choice
from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings.simple import check_gram, check_weights, preference, unit_gram

__all__ = ["AlignedMTL"]

ScaleMode = Literal["min", "median", "rmse"]
SCALE_MODES: tuple[ScaleMode, ...] = ("min", "median", "rmse")


class AlignedMTL(GramWeighting):
    r"""Aligned-MTL (Senushkin et al., *Independent Component Alignment for Multi-Task Learning*, CVPR 2023).

    With :math:`G = V \Lambda V^\top` (eigenvalues :math:`\lambda_1 \ge \dots`, rank :math:`r`:
    those above :math:`k \epsilon \lambda_1`), as torchjd's ``AlignedMTLWeighting``:

    .. math::

        w = B p, \qquad B = \sqrt{\sigma}\, V_r \Lambda_r^{-1/2} V_r^\top, \qquad
        \sigma = \lambda_r \ (\texttt{"min"}),\ \operatorname{median}(\lambda_{1..r})\ (\texttt{"median"},
        \text{the lower one}),\ \tfrac1r \textstyle\sum_{i \le r} \lambda_i\ (\texttt{"rmse"}),

    so the combined system :math:`J^\top B` has equal singular values :math:`\sqrt{\sigma}` on the
    gradients' span; :math:`p` is the preference vector (default :math:`1/k` each) and :math:`B = I`
    when :math:`G = 0`. The rank is kept as a mask, not a slice, so nothing is read on the host
    but the convergence flag of ``torch.linalg.eigh`` (one synchronisation on an accelerator).
    Invariant to :math:`G \to cG` (computed on :math:`G` scaled by a power of two to unit size).

    Args:
        pref_vector: the ``k`` weights :math:`p` (finite), or ``None`` for :math:`1/k` each.
        scale_mode: ``"min"`` (default), ``"median"`` or ``"rmse"`` (the original code's).

    Example:
        >>> AlignedMTL()(torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
        tensor([0.5000, 0.2500], dtype=torch.float64)
    """

    pref_vector: Tensor | None

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None, scale_mode: ScaleMode = "min") -> None:
        super().__init__()
        self.scale_mode: ScaleMode = check_choice("scale_mode", scale_mode, SCALE_MODES)
        given = None if pref_vector is None else check_weights("pref_vector", pref_vector)
        self.register_buffer("pref_vector", given, persistent=False)

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        unit, _ = unit_gram(gram)
        values, vectors = torch.linalg.eigh(unit, UPLO="U")  # ascending, as torchjd
        kept = values > values[-1] * k * torch.finfo(unit.dtype).eps
        rank = kept.sum()
        if self.scale_mode == "min":
            scale = torch.where(kept, values, torch.inf).min()
        elif self.scale_mode == "median":  # the lower median of the kept ones, the last r in ascending order
            scale = values.gather(0, ((k - rank) + (rank - 1).clamp_min(0) // 2).reshape(1))[0]
        else:
            scale = torch.where(kept, values, 0.0).sum() / rank.clamp_min(1)
        inverse_roots = torch.where(kept, values.clamp_min(torch.finfo(unit.dtype).tiny).rsqrt(), 0.0)
        balance = (vectors * inverse_roots) @ vectors.T * scale.clamp_min(0.0).sqrt()
        balance = torch.where(rank > 0, balance, torch.eye(k, dtype=unit.dtype, device=unit.device))
        return (balance @ preference(self.pref_vector, k, unit)).to(gram.dtype)

    def config(self) -> dict[str, Any]:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return {"pref_vector": pref, "scale_mode": self.scale_mode}
