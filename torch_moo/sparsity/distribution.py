r"""How many weights (or groups) each layer keeps for a global sparsity target."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["layer_counts"]


def layer_counts(
    shapes: Sequence[Sequence[int]],
    sparsity: float | Sequence[float],
    *,
    distribution: str = "erk",
    sizes: Sequence[int] | None = None,
) -> list[int]:
    r"""Active units per layer, in whole numbers that sum exactly to the global budget.

    With :math:`n_l` units in layer :math:`l` and global sparsity :math:`s`, the budget is
    :math:`B = \operatorname{round}((1 - s) \sum_l n_l)`. ``"uniform"`` gives every layer density
    :math:`1 - s`; ``"erk"`` (Erdős–Rényi–Kernel, Evci et al., "Rigging the Lottery", ICML 2020)
    gives layer :math:`l` with weight shape :math:`(d_1, \dots, d_r)` the density

    .. math::

        \rho_l = \min\Big(1,\; \epsilon \, \frac{\sum_i d_i}{\prod_i d_i}\Big),

    with :math:`\epsilon` chosen so that :math:`\sum_l \rho_l n_l = B` (layers that would exceed
    density 1 are kept dense and the rest re-solved). The real-valued counts are rounded by the
    largest-remainder rule (ties to the earlier layer), so the counts sum to :math:`B` exactly.
    A sequence of per-layer sparsities gives :math:`\operatorname{round}((1 - s_l) n_l)` each.

    Args:
        shapes: the weight shapes (they set the ERK scores).
        sparsity: the global sparsity in ``[0, 1)``, or one sparsity per layer.
        distribution: ``"erk"`` or ``"uniform"`` (ignored for per-layer sparsities).
        sizes: units per layer (groups for structured masks); default the number of weights.

    Example:
        >>> layer_counts([(100, 10), (10, 10)], 0.5, distribution="uniform")
        [500, 50]
        >>> layer_counts([(100, 10), (10, 10)], 0.5)  # ERK: the small layer is denser
        [465, 85]
    """
    shapes = [tuple(shape) for shape in shapes]
    sizes = [math.prod(shape) for shape in shapes] if sizes is None else list(sizes)
    if not isinstance(sparsity, (int, float)):
        return [round((1.0 - s) * n) for s, n in zip(sparsity, sizes)]
    budget = round((1.0 - sparsity) * sum(sizes))
    if distribution == "uniform":
        scores = [1.0] * len(shapes)
    elif distribution == "erk":
        scores = [sum(shape) / math.prod(shape) for shape in shapes]
    else:
        raise ValueError(f"distribution must be 'erk' or 'uniform', got {distribution!r}")
    dense: set[int] = set()
    while True:
        free = [layer for layer in range(len(sizes)) if layer not in dense]
        remaining = budget - sum(sizes[layer] for layer in dense)
        scale = remaining / sum(scores[layer] * sizes[layer] for layer in free) if free else 0.0
        over = [layer for layer in free if scale * scores[layer] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda layer: (scores[layer], -layer)))
    desired = [float(n) if layer in dense else scale * scores[layer] * n for layer, n in enumerate(sizes)]
    return _largest_remainder(desired, budget, sizes)


def _largest_remainder(desired: list[float], total: int, caps: list[int]) -> list[int]:
    """Round ``desired`` (summing to ``total`` up to float error) to integers summing to ``total`` exactly."""
    counts = [min(cap, math.floor(value)) for value, cap in zip(desired, caps)]
    order = sorted(range(len(desired)), key=lambda layer: (-(desired[layer] - counts[layer]), layer))
    shortfall = total - sum(counts)
    for layer in order:
        if shortfall <= 0:
            break
        if counts[layer] < caps[layer]:
            counts[layer] += 1
            shortfall -= 1
    return counts
