r"""MGDA's objective weights from the objectives' gradients, with the gradient normalisations of
Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization* (NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from torch_moo._validation import check_choice
from torch_moo.functional._scale import binary_exponent, power_of_two
from torch_moo.functional.min_norm import min_norm_weights

__all__ = ["NORMALIZATIONS", "mgda_weights", "normalized_gram"]

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[Normalization, ...] = ("none", "l2", "loss", "loss+")


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
    return gram / scale[:, None] / scale[None, :]  # the product of two scales could overflow


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

    The Gram matrix is formed at unit scale by an exact power of two and kept in float64, so
    the weights do not depend on one positive factor on all gradients (and losses) anywhere in
    float32's range: see the scale behaviour above.

    Returns:
        ``(alpha, gap)``: the weights in ``gradients``' dtype, and the duality gap of
        :func:`~torch_moo.functional.min_norm_weights` for the normalised Gram matrix, in
        float64 (for float32 gradients near :math:`10^{19}` and above it exceeds float32's range).

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
    alpha, gap = min_norm_weights(normalized_gram(_gram_float64([gradients]), losses, normalization))
    return alpha.to(gradients.dtype), gap


def _gram_float64(blocks: Sequence[Tensor]) -> Tensor:
    r"""The Gram matrix :math:`\sum_b B_b B_b^\top` of ``k x n_b`` blocks, as float64, at any scale.

    .. math::

        G = 4^{e} \sum_b (2^{-e} B_b)(2^{-e} B_b)^\top,

    with :math:`e` from ``binary_exponent``, the products in the blocks' dtype, the factor
    :math:`4^e` applied in float64. Scaling by a power of two is exact, so the result is the
    blocks' Gram matrix rounded as if formed at unit scale: float32 gradients of any finite
    size give a finite, non-zero Gram matrix, where forming it directly overflows above about
    :math:`10^{19}` and underflows to zero below :math:`10^{-23}` (losses scaled by
    :math:`10^{20}` gave NaN weights, by :math:`10^{-30}` uniform ones). The large matrix
    product stays in the blocks' dtype: in float64 it would be many times slower on most GPUs.
    Non-finite entries give a non-finite result; no entries, a zero matrix. It copies the
    blocks; for a matrix the caller owns, :func:`_scale_to_unit_` and :func:`_unit_gram` scale
    it in place instead (one pass, no copy).
    """
    exponent = binary_exponent(blocks)
    scale = power_of_two(-exponent, blocks[0])
    return _unit_gram([block.detach() * scale for block in blocks], exponent)


def _scale_to_unit_(matrix: Tensor) -> Tensor:
    """Multiply ``matrix`` in place by :math:`2^{-e}` (exact), :math:`e` from ``binary_exponent``,
    so that its largest entry lies in :math:`[1/2, 1)`; return :math:`e`."""
    exponent = binary_exponent([matrix])
    matrix.mul_(power_of_two(-exponent, matrix))  # one multiply: ldexp_ took 15x as long on the CPU
    return exponent


def _unit_gram(blocks: Sequence[Tensor], exponent: Tensor) -> Tensor:
    r"""The float64 Gram matrix :math:`4^e \sum_b B_b B_b^\top` of blocks scaled by :math:`2^{-e}`."""
    gram = sum((block @ block.T for block in blocks[1:]), blocks[0] @ blocks[0].T)
    return torch.ldexp(gram.to(torch.float64), 2 * exponent)
