r"""MGDA's objective weights from the objectives' gradients, with the gradient normalisations of
Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization* (NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from torch_moo._validation import check_choice
from torch_moo.functional.min_norm import min_norm_weights

__all__ = ["NORMALIZATIONS", "mgda_weights", "normalized_gram"]

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")


def normalized_gram(gram: Tensor, losses: Tensor | None = None, normalization: Normalization = "none") -> Tensor:
    r"""The Gram matrix of the normalised gradients :math:`\hat g_i = g_i / s_i`, from that of the :math:`g_i`.

    .. math::

        \hat G = S^{-1} G S^{-1}, \qquad S = \operatorname{diag}(s), \qquad
        s_i = \begin{cases}
            1 & \texttt{"none"} \\
            \|g_i\| = \sqrt{G_{ii}} & \texttt{"l2"} \\
            L_i & \texttt{"loss"} \\
            L_i \, \|g_i\| & \texttt{"loss+"}
        \end{cases}

    No gradient is touched: the normalisation is a congruence of the :math:`k \times k` matrix.
    A zero gradient keeps :math:`s_i = 1` under ``"l2"`` (it stays zero rather than becoming
    NaN), and so does a loss that is not positive under ``"loss"``/``"loss+"``.

    Args:
        gram: :math:`G = J J^\top`, shape ``(k, k)``.
        losses: the loss values :math:`L_i`, shape ``(k,)``; needed by ``"loss"`` and ``"loss+"``.
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.

    Example:
        >>> normalized_gram(torch.tensor([[4.0, 2.0], [2.0, 9.0]]), normalization="l2")
        tensor([[1.0000, 0.3333],
                [0.3333, 1.0000]])
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "none":
        return gram
    scale = torch.ones_like(gram[0])
    if normalization in ("l2", "loss+"):
        norms = gram.diagonal().clamp_min(0).sqrt()
        scale = torch.where(norms > 0, norms, 1.0)
    if normalization in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalization={normalization!r} needs the loss values")
        values = losses.detach().to(gram.dtype).reshape(-1)
        if values.shape != scale.shape:
            raise ValueError(f"losses must hold {scale.numel()} values, got shape {tuple(losses.shape)}")
        scale = scale * torch.where(values > 0, values, 1.0)
    return gram / (scale[:, None] * scale[None, :])


def mgda_weights(
    gradients: Tensor, losses: Tensor | None = None, normalization: Normalization = "none"
) -> tuple[Tensor, Tensor]:
    r"""MGDA's weights :math:`\alpha` for ``k`` gradients: the min-norm point of the normalised ones.

    .. math::

        \alpha = \arg\min_{\alpha \in \Delta} \Big\| \sum_i \alpha_i \hat g_i \Big\|^2,
        \qquad d = \sum_i \alpha_i g_i ,

    with :math:`\hat g_i` as in :func:`normalized_gram`; the normalisation serves the choice of
    :math:`\alpha` only, as in Sener & Koltun's code, and :math:`d` combines the raw gradients.
    With ``"none"``, :math:`d` is the min-norm element of their convex hull:
    :math:`\langle d, g_i\rangle \ge \|d\|^2` for every :math:`i` (a common descent direction),
    and :math:`d = 0` exactly at a Pareto-stationary point. Scale behaviour (for positive
    :math:`c`, :math:`c_i`): ``"none"`` is invariant to :math:`g \to c g`; ``"l2"`` to
    :math:`g_i \to c_i g_i`; ``"loss"`` to rescaling an objective, :math:`(g_i, L_i) \to c_i
    (g_i, L_i)`; ``"loss+"`` to :math:`g_i \to c_i g_i` and to :math:`L \to c L`.

    Args:
        gradients: the Jacobian :math:`J`, one row per objective, shape ``(k, n)``.
        losses: the loss values, shape ``(k,)``; needed by ``"loss"`` and ``"loss+"``.
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.

    Returns:
        ``(alpha, gap)`` as :func:`~torch_moo.functional.min_norm_weights` returns them for the
        normalised Gram matrix.

    Example:
        >>> jacobian = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> mgda_weights(jacobian)[0]  # the shorter gradient weighs more
        tensor([0.9412, 0.0588])
        >>> mgda_weights(jacobian, normalization="l2")[0]
        tensor([0.5000, 0.5000])
    """
    if not isinstance(gradients, Tensor) or gradients.dim() != 2:
        shape = tuple(gradients.shape) if isinstance(gradients, Tensor) else type(gradients).__name__
        raise ValueError(f"gradients must be a k x n matrix (one row per objective), got {shape}")
    return min_norm_weights(normalized_gram(gradients @ gradients.T, losses, normalization))
