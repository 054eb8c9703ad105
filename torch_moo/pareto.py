"""Pareto-front tools for minimisation problems: dominance, indicators, knees, preference sweeps and plots.

Points are rows of an ``(n, m)`` array-like of objective values (smaller is better). The
indicators work on the host in float64: fronts are small, and exactness matters more than
device residency here.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from torch_moo._validation import check_count, check_real

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "non_dominated",
    "hypervolume",
    "igd",
    "knee_point",
    "simplex_lattice",
    "Front",
    "sweep",
    "weighted_sum_knee_search",
    "plot_front",
]


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
        raise ValueError(
            f"reference must have {values.shape[1]} entries (one per objective), got shape {tuple(ref.shape)}"
        )
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
    Pareto curve*, Struct. Optim. 1999). Depths within ``1e-9`` (rounding, in the scaled units)
    tie, and the first point wins. A front with fewer than :math:`m + 1` distinct non-dominated
    points, with linearly dependent extremes (one point best in two objectives: no unique
    hyperplane), or with no point deeper than that below the hyperplane has no knee: the point
    nearest the ideal point is returned.

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
    # Hyperplane through the extremes: normal n with extremes @ n = 1, unique when the extremes
    # are linearly independent (a point best in two objectives makes them dependent: no knee);
    # distance below it is (1 - x @ n) / ||n||.
    if len(torch.unique(scaled, dim=0)) > m and torch.linalg.matrix_rank(extremes) == m:
        normal = torch.linalg.solve(extremes, torch.ones(m, dtype=torch.float64))
        depth = (1 - scaled @ normal) / normal.norm()
        if depth.max() > 1e-9:  # otherwise every point lies on or above the hyperplane
            return int(candidates[(depth >= depth.max() - 1e-9).nonzero()[0, 0]])
    return int(candidates[scaled.norm(dim=1).argmin()])


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


@dataclass(frozen=True, eq=False)
class Front:
    """The outcome of a preference sweep: one row per training run, in run order.

    Args:
        preferences: ``(n, m)`` array-like, the preference (or weight) vector of each run.
        values: ``(n, m)`` array-like, the objective vector each run returned.
        payloads: ``n`` objects the runs returned beside their values (``None`` for a run that
            returned values only).

    Both arrays are stored as float64 tensors on the host, the payloads as a tuple.

    Example:
        >>> front = Front([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], [[0, 4], [1, 1], [4, 0]], [None] * 3)
        >>> front.non_dominated.tolist(), front.hypervolume([5, 5]), front.knee()
        ([True, True, True], 18.0, 1)
    """

    preferences: Tensor
    values: Tensor
    payloads: tuple[object, ...]

    def __post_init__(self) -> None:
        preferences, values = _points(self.preferences, "preferences"), _points(self.values, "values")
        payloads = tuple(self.payloads)
        if preferences.shape != values.shape or len(payloads) != len(values):
            raise ValueError(
                "preferences, values and payloads must describe the same runs, got shapes "
                f"{tuple(preferences.shape)} and {tuple(values.shape)} and {len(payloads)} payloads"
            )
        object.__setattr__(self, "preferences", preferences)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "payloads", payloads)

    @property
    def non_dominated(self) -> Tensor:
        """Boolean mask of the runs whose values no other run dominates (:func:`~torch_moo.pareto.non_dominated`)."""
        return non_dominated(self.values)

    def hypervolume(self, reference: object) -> float:
        """Hypervolume of the values bounded by ``reference`` (:func:`~torch_moo.pareto.hypervolume`)."""
        return hypervolume(self.values, reference)

    def knee(self) -> int:
        """Row of the knee of the values by Das's distance rule (:func:`~torch_moo.pareto.knee_point`)."""
        return knee_point(self.values)


def _objective_vector(values: object) -> Tensor:
    """``values`` as a float64 host tensor; tensors (also inside a list or tuple) are detached first."""
    if isinstance(values, (list, tuple)):
        values = [value.detach().cpu() if isinstance(value, Tensor) else value for value in values]
    elif isinstance(values, Tensor):
        values = values.detach().cpu()
    return torch.as_tensor(values, dtype=torch.float64)


def _evaluate(run: Callable[[Tensor], object], preference: Tensor) -> tuple[Tensor, object]:
    """One run: its objective vector (one value per preference entry, finite) and its payload."""
    result = run(preference.clone())
    values, payload = result, None
    if isinstance(result, tuple) and len(result) == 2:
        first = result[0]
        if first is not None and not (isinstance(first, numbers.Real) or getattr(first, "ndim", None) == 0):
            values, payload = result
    call = f"run({preference.tolist()})"
    expected = f"{len(preference)} objective values (one per preference entry) or a pair (values, payload)"
    try:
        vector = _objective_vector(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{call} must return {expected}, got {type(values).__name__} values") from error
    if vector.shape != preference.shape:
        raise ValueError(f"{call} must return {expected}, got values of shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{call} returned non-finite values {vector.tolist()}")
    return vector, payload


def sweep(run: Callable[[Tensor], object], preferences: object) -> Front:
    r"""Train one model per preference and collect their objective vectors: a discrete front.

    ``run(k)`` gets each row :math:`k` as a float64 tensor of shape ``(m,)``, trains a model
    with whatever optimizer it builds from it (``ChebyshevALM(preference=k)``, Adam on the
    weighted sum :math:`\sum_i k_i f_i`, ...) and returns its objective vector: a sequence,
    array or 1-D tensor of :math:`m` values, or a pair ``(values, payload)`` whose payload (a
    state dict, the model) is kept in :attr:`Front.payloads`. A returned tuple is such a pair
    when it has two entries and the first is not a number. Runs are sequential, in row order;
    preferences are passed as given (not normalised).

    Args:
        run: trains one model for a preference and returns its objective values.
        preferences: ``(n, m)``, finite, every row non-negative and not all zero, e.g.
            :func:`simplex_lattice`.

    Example:
        >>> front = sweep(lambda k: k.flip(0) ** 2, simplex_lattice(2, 4))  # f = (k_2^2, k_1^2)
        >>> front.values[:, 0].tolist()
        [1.0, 0.5625, 0.25, 0.0625, 0.0]
        >>> front.knee()
        2
    """
    table = _points(preferences, "preferences")
    if len(table) == 0:
        raise ValueError("preferences must hold at least one row")
    for index, row in enumerate(table):
        if (row < 0).any() or not (row > 0).any():
            raise ValueError(f"every preference must be non-negative and not all zero; row {index} is {row.tolist()}")
    outcomes = [_evaluate(run, row) for row in table]
    return Front(table, torch.stack([values for values, _ in outcomes]), tuple(payload for _, payload in outcomes))


_SAME_WEIGHT = 1e-9  # weight vectors this close (max-norm) count as already run


def _weight(name: str, value: object) -> Tensor:
    """A bi-objective weight vector normalised to sum to one."""
    weight = torch.as_tensor(value, dtype=torch.float64)
    if weight.shape != (2,) or not torch.isfinite(weight).all() or (weight < 0).any() or weight.sum() <= 0:
        raise ValueError(f"{name} must be 2 finite non-negative weights, not both zero, got {value!r}")
    return weight / weight.sum()


def _front_path(values: Tensor) -> list[int]:
    """Rows of the distinct non-dominated points by increasing first objective (the earliest run of duplicates)."""
    table = values.tolist()
    rows = sorted(non_dominated(values).nonzero().squeeze(1).tolist(), key=lambda row: (table[row][0], row))
    path: list[int] = []
    for row in rows:
        if not path or table[path[-1]] != table[row]:
            path.append(row)
    return path


def _segments(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For consecutive points of a bi-objective front: tie weights, scaled lengths and scaled weight angles."""
    step = points[1:] - points[:-1]
    normals = torch.stack([-step[:, 1], step[:, 0]], dim=1)
    low, high = points.min(dim=0).values, points.max(dim=0).values
    scaled = step / (high - low)
    return normals / normals.sum(dim=1, keepdim=True), scaled.norm(dim=1), torch.atan2(-scaled[:, 1], scaled[:, 0])


def weighted_sum_knee_search(
    run: Callable[[Tensor], object],
    *,
    first: Sequence[float] = (1.0, 0.0),
    second: Sequence[float] = (0.9, 0.1),
    max_runs: int = 10,
    min_gap: float = 1e-2,
) -> tuple[Front, int]:
    r"""Adaptive weighted-sum search of a bi-objective front, and the knee where the weight ratio jumps most.

    Reiners, Klamroth & Stiglmayr, *Efficient and Sparse Neural Networks by Pruning Weights in
    a Multiobjective Learning Approach*, arXiv:2008.13590. ``run(w)`` trains a model on the
    weighted sum :math:`w_1 f_1 + w_2 f_2` (``w`` a float64 tensor on the simplex) and returns
    :math:`(f_1, f_2)` or a pair ``(values, payload)``, as for :func:`sweep`. After ``first`` and
    ``second`` (normalised to sum to one), let :math:`p_0, \dots, p_k` be the distinct
    non-dominated values found so far by increasing :math:`f_1` (dominated ones are dropped,
    duplicates stand for the earliest run) and :math:`\tilde p` the same points scaled to
    :math:`[0, 1]^2` by their range. Each new weight is the normal of a segment, the weight at
    which its ends tie:

    .. math::

        w^{(j)} = \frac{(p_{j,2} - p_{j+1,2},\; p_{j+1,1} - p_{j,1})}{p_{j,2} - p_{j+1,2} + p_{j+1,1} - p_{j,1}},
        \qquad w^{(j)} \cdot p_j = w^{(j)} \cdot p_{j+1},

    for the longest open segment by :math:`\|\tilde p_{j+1} - \tilde p_j\|_2` (as in adaptive
    weighted sums). A segment is open while that length is at least
    ``min_gap`` and :math:`w^{(j)}` has not been run (to within ``1e-9``): a run that finds no
    new point between the ends leaves the segment in place, now closed. The search stops after
    ``max_runs`` runs or when no segment is open. New weights lie between ``first`` and
    ``second``: the default pair explores the end of the front that favours :math:`f_1` (the
    paper's cross-entropy); ``second=(0.0, 1.0)`` spans the whole front.

    The knee: consecutive solutions :math:`p_j, p_{j+1}` tie at the weight ratio
    :math:`w^{(j)}_1 / w^{(j)}_2`, which shrinks along a convex front. Measured as the angle of
    the tie weight in the scaled objectives,
    :math:`\varphi_j = \arctan\big((\tilde p_{j,2} - \tilde p_{j+1,2}) / (\tilde p_{j+1,1} - \tilde p_{j,1})\big)`,
    the knee is the inner solution where it jumps most (the first on a tie),

    .. math::

        j^\star = \arg\max_{0 < j < k}\ \varphi_{j-1} - \varphi_j,

    the solution that stays the weighted-sum optimum over the widest cone of scaled weights (a
    sharp corner of the front concentrates the jump at one solution). Angles are bounded, symmetric in the objectives
    and independent of their units; raw ratio differences (the authors' code) grow without bound
    toward the :math:`f_1` end, where :math:`w_1 / w_2 \to \infty`. On a smooth front the rule
    is a discrete curvature: refined, it tends to where the scaled front bends most, which is an
    end where the front turns vertical or flat (such as :math:`f_2 = 1 - \sqrt{f_1}`); Das's
    rule, :meth:`Front.knee`, differs there. With fewer than three distinct non-dominated values
    the knee is :meth:`Front.knee`'s.

    Args:
        run: trains one model for a weight vector and returns its two objective values.
        first, second: the first two weight vectors, distinct after normalisation.
        max_runs: the most training runs, ``first`` and ``second`` included (at least 2).
        min_gap: the shortest segment, in the scaled objectives, still worth splitting.

    Returns:
        ``(front, knee)``: every run in run order (weights as preferences, dominated runs
        included) and the row of the knee; retrain with ``front.preferences[knee]``, as the
        authors do, to get the knee model in full.

    Example:
        >>> run = lambda w: (w[1] ** 2, w[0] ** 2)  # minimises w_1 u^2 + w_2 (1 - u)^2 on [0, 1]
        >>> front, knee = weighted_sum_knee_search(run, second=(0.0, 1.0), max_runs=7)
        >>> front.values[knee].tolist()
        [0.25, 0.25]
    """
    weights = [_weight("first", first), _weight("second", second)]
    if (weights[0] - weights[1]).abs().max() <= _SAME_WEIGHT:
        raise ValueError(f"first and second must be different weight vectors, got {first!r} and {second!r}")
    max_runs = check_count("max_runs", max_runs, minimum=2)
    min_gap = check_real("min_gap", min_gap, minimum=0.0)
    outcomes = [_evaluate(run, weight) for weight in weights]
    while len(outcomes) < max_runs:
        values = torch.stack([vector for vector, _ in outcomes])
        path = _front_path(values)
        if len(path) < 2:
            break
        ties, lengths, _ = _segments(values[path])
        untried = ((ties[:, None] - torch.stack(weights)).abs().amax(dim=-1) > _SAME_WEIGHT).all(dim=1)
        lengths = torch.where(untried & (lengths >= min_gap), lengths, -1.0)  # -1: closed
        if lengths.max() < 0:
            break
        weights.append(ties[lengths.argmax()])
        outcomes.append(_evaluate(run, weights[-1]))
    values = torch.stack([vector for vector, _ in outcomes])
    front = Front(torch.stack(weights), values, tuple(payload for _, payload in outcomes))
    path = _front_path(front.values)
    if len(path) < 3:
        return front, front.knee()
    _, _, angles = _segments(front.values[path])
    return front, path[1 + int((angles[:-1] - angles[1:]).argmax())]


def plot_front(
    points: object,
    *,
    ax: Axes | None = None,
    reference: object = None,
    labels: Sequence[str] | None = None,
    knee: int | None = None,
) -> Axes:
    """Scatter a 2-D or 3-D front: non-dominated points in colour, dominated ones faded.

    In 2-D the attainment staircase of the non-dominated points is drawn as well; with a
    ``reference`` it is closed at the reference point and the region it bounds, whose area is
    the :func:`hypervolume`, is shaded. Needs matplotlib (``pip install torch-moo[plot]``),
    imported on the first call.

    Args:
        points: ``(n, 2)`` or ``(n, 3)`` objective values, or a :class:`Front`.
        ax: the Axes to draw on (a ``projection="3d"`` one for three objectives); by default
            those of a new figure.
        reference: a reference point to mark (and, in 2-D, to bound the shaded hypervolume).
        labels: axis labels, one per objective; by default ``f1, f2[, f3]``.
        knee: the row of a point to mark as the knee, e.g. from :func:`weighted_sum_knee_search`.

    Returns:
        The Axes drawn on.

    Example::

        front, knee = weighted_sum_knee_search(run, second=(0.0, 1.0))
        ax = plot_front(front, reference=[1.1, 1.1], knee=knee, labels=["loss", "l1 norm"])
        ax.figure.savefig("front.png")
    """
    values = _points(points.values if isinstance(points, Front) else points)
    m = values.shape[1]
    if m not in (2, 3):
        raise ValueError(f"plot_front draws 2 or 3 objectives, got {m}")
    names = [f"f{i + 1}" for i in range(m)] if labels is None else list(labels)
    if len(names) != m:
        raise ValueError(f"labels must name the {m} objectives, got {len(names)}: {names!r}")
    if knee is not None and not 0 <= knee < len(values):
        raise ValueError(f"knee must be a row index in [0, {len(values)}), got {knee!r}")
    box = None if reference is None else torch.as_tensor(reference, dtype=torch.float64)
    if box is not None and box.shape != (m,):
        raise ValueError(f"reference must have {m} entries (one per objective), got shape {tuple(box.shape)}")
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_front needs matplotlib: pip install torch-moo[plot]") from error
    if ax is None:
        ax = plt.figure().add_subplot(projection="3d" if m == 3 else None)
    elif (ax.name == "3d") != (m == 3):
        raise ValueError(f"{m} objectives need {'3-D' if m == 3 else '2-D'} Axes, got {ax.name!r} Axes")

    mask = non_dominated(values)
    depth: dict[str, Any] = {"depthshade": False} if m == 3 else {}  # 3-D shading would fade distant points too
    ax.scatter(*values[mask].T.tolist(), color="C0", label="non-dominated", zorder=3, **depth)
    if not mask.all():
        ax.scatter(*values[~mask].T.tolist(), color="0.5", alpha=0.35, label="dominated", zorder=2, **depth)
    if m == 2:
        _draw_staircase(ax, values[mask], box)
    if knee is not None:
        # The star-arguments are the point's 2 or 3 coordinates; mypy cannot tell they never reach s.
        ax.scatter(*values[knee].tolist(), marker="*", s=200, color="C3", label="knee", zorder=4)  # type: ignore[misc]
    if box is not None:
        ax.scatter(*box.tolist(), marker="x", color="k", label="reference", zorder=4)
    for axis, name in zip("xyz", names):
        getattr(ax, f"set_{axis}label")(name)
    ax.legend()
    return ax


def _draw_staircase(ax: Axes, front: Tensor, reference: Tensor | None) -> None:
    """The attainment staircase of a 2-D non-dominated set, closed and shaded up to ``reference``."""
    if reference is not None:
        front = front[(front < reference).all(dim=1)]
    if len(front) == 0:
        return
    corners = sorted(map(tuple, front.tolist()))
    xs, ys = [corners[0][0]], [corners[0][1]]
    for x, y in corners[1:]:
        xs += [x, x]
        ys += [ys[-1], y]
    if reference is not None:
        right, top = reference.tolist()
        xs, ys = [xs[0], *xs, right], [top, *ys, ys[-1]]
        ax.fill([*xs, right], [*ys, top], color="C0", alpha=0.12, linewidth=0)
    ax.plot(xs, ys, color="C0", linewidth=1)
