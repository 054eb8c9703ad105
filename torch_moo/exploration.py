"""Pareto exploration from trained models: explored points and continuous local Pareto sets."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torch_moo._validation import check_count
from torch_moo.pareto import simplex_lattice
from torch_moo.tangent import ParetoTangentExplorer

__all__ = ["ExploredPoint", "explore", "interpolate_states", "local_pareto_set"]

State = dict[str, Tensor]


@dataclass(frozen=True)
class ExploredPoint:
    """A model reached by exploration: its objective values and a copy of its state dict."""

    values: Tensor
    """The objective vector, float64 on the host."""
    state: State
    """The model's ``state_dict()``, cloned."""
    start: int
    """Index of the model it was explored from."""
    direction: int
    """Index of the trade-off direction :math:`\\beta` (``-1`` for a starting model itself)."""
    step: int
    """Exploration steps taken from the start (0 for a starting model)."""
    tangent_iterations: int | None = None
    """MINRES iterations (Hessian-vector products) of the step that reached it (``None`` for a start)."""
    tangent_residual: float | None = None
    """That solve's relative residual (:attr:`~torch_moo.ParetoTangentExplorer.tangent_residual`)."""


def _evaluate(model: nn.Module, losses: Callable[[nn.Module], Tensor]) -> Tensor:
    with torch.no_grad():
        return torch.as_tensor(losses(model)).detach().to("cpu", torch.float64)


def _point(
    model: nn.Module,
    losses: Callable[[nn.Module], Tensor],
    start: int,
    direction: int,
    step: int,
    opt: ParetoTangentExplorer | None = None,
) -> ExploredPoint:
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    if opt is None:
        return ExploredPoint(_evaluate(model, losses), state, start, direction, step)
    solve, residual = opt.tangent_solve, opt.tangent_residual  # None while every step was skipped (nonfinite="skip")
    iterations = None if solve is None else int(solve.iterations)
    residual_value = None if residual is None else float(residual)
    return ExploredPoint(_evaluate(model, losses), state, start, direction, step, iterations, residual_value)


def explore(
    models: nn.Module | Sequence[nn.Module],
    losses: Callable[[nn.Module], Tensor],
    *,
    directions: Sequence[Sequence[float]] | Tensor | None = None,
    steps: int = 5,
    callback: Callable[[ExploredPoint], None] | None = None,
    **explorer_kwargs: Any,
) -> list[ExploredPoint]:
    r"""Explore the Pareto set from each starting model along each trade-off direction.

    For every model (ideally Pareto-stationary: trained by :class:`~torch_moo.MultiGradientDescent`
    or to convergence on a scalarization) and every :math:`\beta` in ``directions``, a copy of
    the model takes ``steps`` steps of :class:`~torch_moo.ParetoTangentExplorer` (Ma, Du &
    Matusik, ICML 2020); the starting models are left unchanged. The starts and every point
    reached are returned, in that order (a start, then its directions' points step by step).

    Args:
        models: one starting model or several.
        losses: ``losses(model)`` evaluates a model and returns its loss vector (with the graph,
            on a fixed batch or the whole training set: a varying batch makes a noisy front).
        directions: the :math:`\beta` vectors, one per row; default the unit vectors
            :math:`e_1, \dots, e_k` (trade toward each objective in turn).
        steps: exploration steps per start and direction.
        callback: called with each point as soon as it is reached, in the order of the returned
            list (a start before its directions' steps): to log, time or plot the exploration
            as it runs.
        **explorer_kwargs: passed to :class:`~torch_moo.ParetoTangentExplorer` (``step_size``,
            ``damping``, ``corrections``, the base optimizer's ``lr`` ...).

    Returns:
        The :class:`ExploredPoint` list.

    Example:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.5)  # the middle of the Pareto set [0, 1] of the two losses
        >>> def losses(model):
        ...     w = model.weight.squeeze()
        ...     return torch.stack([w.square(), (w - 1).square()])
        >>> points = explore(model, losses, steps=2, step_size=0.1, damping=0.0)
        >>> [round(p.state["weight"].item(), 2) for p in points]
        [0.5, 0.4, 0.3, 0.6, 0.7]
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("models must be an nn.Module or a non-empty sequence of them")
    check_count("steps", steps)
    points: list[ExploredPoint] = []

    def reached(point: ExploredPoint) -> None:
        points.append(point)
        if callback is not None:
            callback(point)

    for start, model in enumerate(models):
        reached(_point(model, losses, start, -1, 0))
        k = len(points[-1].values)
        table = torch.eye(k) if directions is None else torch.as_tensor(directions, dtype=torch.float32)
        if table.dim() != 2 or table.shape[1] != k:
            raise ValueError(f"directions must have shape (n, {k}) (one beta per row), got {tuple(table.shape)}")
        for direction, beta in enumerate(table):
            explorer_model = copy.deepcopy(model)
            opt = ParetoTangentExplorer(explorer_model.parameters(), num_objectives=k, beta=beta, **explorer_kwargs)
            for step in range(1, steps + 1):
                opt.step(functools.partial(losses, explorer_model))
                reached(_point(explorer_model, losses, start, direction, step, opt))
    return points


def interpolate_states(states: Sequence[State], weights: Sequence[float] | Tensor) -> State:
    r""":math:`\sum_j w_j \theta_j` over the floating-point entries of state dicts; other entries
    (integer buffers such as BatchNorm's step count) from the first.

    Example:
        >>> interpolate_states([{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}], [0.25, 0.75])
        {'w': tensor([1.5000])}
    """
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (len(states),) or not states:
        raise ValueError(f"weights must have one entry per state ({len(states)}), got shape {tuple(weights.shape)}")
    keys = list(states[0])
    if any(list(state) != keys for state in states[1:]):
        raise ValueError("states must have the same keys (state dicts of one architecture)")
    combined = {}
    for key in keys:
        first = states[0][key]
        if first.is_floating_point():
            total = sum(w * state[key].to(torch.float64) for w, state in zip(weights.tolist(), states))
            combined[key] = total.to(first.dtype)
        else:
            combined[key] = first.clone()
    return combined


def local_pareto_set(
    model: nn.Module,
    losses: Callable[[nn.Module], Tensor],
    center: State,
    neighbours: Sequence[State],
    *,
    divisions: int = 4,
) -> tuple[Tensor, Tensor, list[State]]:
    r"""The continuous local Pareto set around ``center``: convex combinations with its explored neighbours.

    .. math::

        \theta(w) = w_0 \theta_0 + \sum_{j \ge 1} w_j \theta_j, \qquad w \in \Delta,

    for :math:`w` on the simplex lattice with ``divisions`` steps
    (:func:`~torch_moo.pareto.simplex_lattice`), each evaluated with ``losses`` on a copy of
    ``model``. Ma, Du & Matusik (ICML 2020) build their continuous fronts this way from a point
    and the points explored from it in different directions.

    Returns:
        ``(weights, values, states)``: the combination weights ``(n, 1 + len(neighbours))``,
        the objective values ``(n, m)`` (float64, host) and the state dicts.
    """
    states = [center, *neighbours]
    weights = simplex_lattice(len(states), divisions)
    probe = copy.deepcopy(model)
    combined, values = [], []
    for w in weights:
        state = interpolate_states(states, w)
        probe.load_state_dict(state)
        combined.append(state)
        values.append(_evaluate(probe, losses))
    return weights, torch.stack(values), combined
