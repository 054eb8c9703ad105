"""Pareto-front tools for minimisation problems: dominance, indicators, knees and preference grids.

Points are rows of an ``(n, m)`` array-like of objective values (smaller is better). The
indicators work on the host in float64: fronts are small, and exactness matters more than
device residency here.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = ["non_dominated", "hypervolume", "igd", "knee_point", "simplex_lattice"]


def _points(points: object, name: str = "points") -> Tensor:
    values = torch.as_tensor(points, dtype=torch.float64).detach().cpu()
    if values.dim() != 2 or values.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, m) with m >= 1, got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} must be finite")
    return values


def non_dominated(points: object) -> Tensor:
    r"""Boolean mask of the points that no other point dominates.

    :math:`p` dominates :math:`q` when :math:`p_i \le q_i` for all :math:`i` and
    :math:`p \ne q`; equal points do not dominate each other, so duplicates are all kept.

    Example:
        >>> non_dominated([[1, 2], [2, 1], [2, 2], [1, 2]]).tolist()
        [True, True, False, True]
    """
    values = _points(points)
    weakly_better = (values[:, None, :] <= values[None, :, :]).all(dim=-1)
    strictly_somewhere = (values[:, None, :] < values[None, :, :]).any(dim=-1)
    dominated = (weakly_better & strictly_somewhere).any(dim=0)
    return ~dominated


def hypervolume(points: object, reference: object) -> float:
    r"""Exact hypervolume dominated by ``points`` and bounded by ``reference`` (minimisation).

    .. math::

        \operatorname{HV}(P, r) = \lambda\Big( \bigcup_{p \in P} [p_1, r_1] \times \dots \times [p_m, r_m] \Big)

    Points that do not lie strictly below ``reference`` in every objective add nothing. In two
    dimensions a sort and a sweep, :math:`O(n \log n)`; in more, hypervolume by slicing
    objectives (While, Hingston, Barone & Huband, IEEE TEC 2006): sweep the last objective and
    sum the :math:`(m-1)`-dimensional hypervolumes of the slices.

    Example:
        >>> hypervolume([[1, 2], [2, 1]], reference=[3, 3])
        3.0
    """
    values = _points(points)
    ref = torch.as_tensor(reference, dtype=torch.float64).detach().cpu()
    if ref.shape != (values.shape[1],):
        raise ValueError(f"reference must have {values.shape[1]} entries (one per objective), got shape {tuple(ref.shape)}")
    inside = values[(values < ref).all(dim=1)]
    if len(inside) == 0:
        return 0.0
    return _slice_volume(inside[non_dominated(inside)].tolist(), ref.tolist())


def _slice_volume(points: list[list[float]], reference: list[float]) -> float:
    """Hypervolume of points that all lie strictly inside the reference box."""
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in points)
    if len(reference) == 2:
        volume, ceiling = 0.0, reference[1]
        for x, y in sorted(points):
            if y < ceiling:
                volume += (reference[0] - x) * (ceiling - y)
                ceiling = y
        return volume
    ordered = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for index, point in enumerate(ordered):
        upper = ordered[index + 1][-1] if index + 1 < len(ordered) else reference[-1]
        if upper > point[-1]:
            volume += (upper - point[-1]) * _slice_volume([p[:-1] for p in ordered[: index + 1]], reference[:-1])
    return volume


def igd(points: object, reference_front: object) -> float:
    r"""Inverted generational distance: mean distance from each reference point to the nearest point.

    .. math::

        \operatorname{IGD}(P, R) = \frac{1}{|R|} \sum_{r \in R} \min_{p \in P} \|p - r\|_2

    Example:
        >>> igd([[0, 1], [1, 0]], [[0, 1], [1, 0]])
        0.0
    """
    values, front = _points(points), _points(reference_front, "reference_front")
    if values.shape[1] != front.shape[1]:
        raise ValueError(f"points have {values.shape[1]} objectives but reference_front has {front.shape[1]}")
    return torch.cdist(front, values).min(dim=1).values.mean().item()


def knee_point(points: object) -> int:
    r"""Index of the knee: the non-dominated point farthest below the hyperplane through the extremes.

    Objectives are scaled to :math:`[0, 1]` over the non-dominated points; the extremes are the
    points that are best in each objective; the knee maximises the distance to the hyperplane
    through them, on the side of the ideal point (Das, *On characterizing the "knee" of the
    Pareto curve*, Struct. Optim. 1999). A front with fewer than :math:`m + 1` distinct
    non-dominated points has no knee: the point nearest the ideal point is returned.

    Example:
        >>> knee_point([[0.0, 1.0], [0.1, 0.1], [0.6, 0.05], [1.0, 0.0]])
        1
    """
    values = _points(points)
    candidates = non_dominated(values).nonzero().squeeze(1)
    front = values[candidates]
    low, high = front.min(dim=0).values, front.max(dim=0).values
    scaled = (front - low) / torch.where(high > low, high - low, 1.0)
    m = values.shape[1]
    extremes = scaled[scaled.argmin(dim=0)]
    # Hyperplane through the extremes: normal n with extremes @ n = 1 (solvable when they are
    # affinely independent); distance below it is (1 - x @ n) / ||n||.
    normal = torch.linalg.lstsq(extremes, torch.ones(m, 1, dtype=torch.float64)).solution.squeeze(1)
    if len(torch.unique(scaled, dim=0)) <= m or not torch.allclose(extremes @ normal, torch.ones(m, dtype=torch.float64)):
        return candidates[scaled.norm(dim=1).argmin()].item()
    return candidates[((1 - scaled @ normal) / normal.norm()).argmax()].item()


def simplex_lattice(num_objectives: int, divisions: int) -> Tensor:
    r"""All preference vectors on the simplex with entries in :math:`\{0, 1/H, \dots, 1\}`.

    The Das-Dennis lattice (Das & Dennis, SIAM J. Optim. 1998): :math:`\binom{H + m - 1}{m - 1}`
    vectors for :math:`m` objectives and :math:`H` divisions, as rows of a float64 tensor (by
    stars and bars: each row places :math:`m - 1` bars among :math:`H + m - 1` slots).

    Example:
        >>> simplex_lattice(2, 4)[:, 0].tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    for name, value, minimum in (("num_objectives", num_objectives, 1), ("divisions", divisions, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    rows = [
        [b - a - 1 for a, b in zip((-1, *bars), (*bars, divisions + num_objectives - 1))]
        for bars in itertools.combinations(range(divisions + num_objectives - 1), num_objectives - 1)
    ]
    return torch.tensor(rows, dtype=torch.float64) / divisions
