r"""Pareto exploration as predictor-corrector continuation, with adaptive steps and a budget.

At a Pareto-stationary point :math:`x` with KKT weights :math:`\alpha \in \Delta`
(:math:`J^\top \alpha = 0`, :math:`J` the objectives' gradients as rows), differentiating
:math:`J(x)^\top \alpha = 0` along the Pareto set gives :math:`H_\alpha\, dx + J^\top d\alpha = 0`
with :math:`H_\alpha = \sum_i \alpha_i \nabla^2 f_i`. One continuation step toward objective
:math:`i` (:math:`\beta = e_i`, as in Ma, Du & Matusik, ICML 2020):

.. math::

    \text{predictor:}\quad (H_\alpha + \delta I)\, v = J^\top \beta, \quad
    x' = x - \sigma s \frac{v}{\|v\|}, \quad
    \alpha' = \Pi_\Delta\Big(\alpha + \sigma \frac{s}{\|v\|} \big(\beta - (\mathbf 1^\top \beta)\, \alpha\big)\Big),

    \text{corrector:}\quad (H_{\alpha'}(x') + \delta I)\, \Delta x = -J(x')^\top \alpha',
    \quad x' \leftarrow x' + \Delta x,

with :math:`\sigma = \pm 1` the sign that lowers :math:`\beta^\top f` and :math:`\Pi_\Delta` the
projection on the simplex (:func:`~torch_moo.functional.project_simplex`). The predictor's
:math:`d\alpha` solves the differentiated system exactly, so the corrector holds
:math:`\alpha'` fixed and takes Newton steps on the stationarity residual of
:math:`\alpha'^\top f` (Hillermeier, *Nonlinear Multiobjective Optimization*, 2001, ch. 4;
Allgower & Georg, *Introduction to Numerical Continuation Methods*, 1990). Newton's method
finds the stationary point whatever its curvature, so concave parts of the front, where
:math:`\alpha^\top f` has a saddle and weighted sums cannot go, are traced as well. Both linear
systems are solved by MINRES (:func:`~torch_moo.functional.minres`) on Hessian-vector products
to a relative tolerance; the tangent's solve is warm-started from the previous tangent.

On a network the starts are only as stationary as their training left them (a relative KKT
residual of 0.1-0.2 after Adam), and Newton's steps return to that local stationary set
instead of training on. Given ``trainer`` (the training optimizer), a step from a point above
the tolerance is corrected by ``train_steps`` steps of that optimizer on
:math:`\alpha'^\top f` instead (one backward each), the weights moving at most
``weight_step`` of the way to :math:`\beta` per step (:math:`\alpha' = \alpha + t(\beta - \alpha)`,
:math:`t \le` ``weight_step``); steps from points within tolerance are corrected by Newton,
so stationary problems are traced exactly as without it.

A step is accepted when the corrector brings the relative KKT residual
:math:`\min_{\alpha \in \Delta} \|J^\top \alpha\| / \max_i \|\nabla f_i\|` under the path's
tolerance (a trained point: whatever its residual) and :math:`f_i` went down; the step length
then grows if the corrector moved less than a quarter of it.
Otherwise the step is rejected and halved; a path stops when it falls under ``min_step`` (the
residual cannot be brought under tolerance, or the front bends back: past an end of the front
:math:`f_i` stops improving), where :math:`J^\top \beta = 0`, or when its budget is
spent. Cost, in backward-pass equivalents: each evaluation of :math:`J` is :math:`k`, the
gradient of :math:`\alpha^\top f` with its graph 1, each Hessian-vector product 2, each
training step 1; forward-only evaluations are free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torch_moo._validation import check_choice, check_count, check_real
from torch_moo.functional import hessian_vector_product, min_norm_weights, minres, project_simplex

__all__ = ["ContinuationPoint", "continue_front", "trace_path"]

State = dict[str, Tensor]
Corrector = Literal["newton", "mgda"]


@dataclass(frozen=True)
class ContinuationPoint:
    """One point a continuation path reached (or tried), with what it cost."""

    values: Tensor
    """The objective vector after correction, float64 on the host."""
    state: State | None
    """The model's ``state_dict()``, cloned; ``None`` for a rejected point."""
    start: int
    """Index of the starting model."""
    direction: int
    """Index of the objective traded toward (:math:`\\beta = e_i`); ``-1`` for a corrected start."""
    step: int
    """The step's number along its path, from 1 (0 for a start)."""
    step_size: float
    """The predictor's length in the parameters: :math:`s`, or less where ``weight_step`` capped it (0 at a start)."""
    kkt_residual: float
    r"""Relative KKT residual :math:`\min_{\alpha \in \Delta} \|J^\top\alpha\| / \max_i \|\nabla f_i\|`,
    after correction."""
    cost: int
    """Backward-pass equivalents spent on this point (predictor and corrector)."""
    hvps: int
    """Hessian-vector products among them (2 units each)."""
    accepted: bool
    """The traded objective improved and the residual is under the path's tolerance (or the point was trained)."""
    trained: bool = False
    """Corrected by the training optimizer (``trainer``) rather than by Newton or MGDA."""


@dataclass
class _Linearization:
    """The model at one point: losses, Jacobian, min-norm weights and relative KKT residual."""

    losses: Tensor
    jacobian: Tensor
    alpha: Tensor
    values: Tensor  # host float64
    residual: float


class _Path:
    """A model's parameters as one flat vector, and the linear algebra of the continuation on it."""

    def __init__(self, model: nn.Module, losses: Callable[[nn.Module], Tensor], damping: float) -> None:
        self.model, self.losses_of, self.damping = model, losses, damping
        self.params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        self.cost = 0
        self.hvps = 0

    def flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def assign(self, vector: Tensor) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.params, [v.view_as(p) for v, p in zip(vector.split(self._sizes()), self.params)])

    def _sizes(self) -> list[int]:
        return [p.numel() for p in self.params]

    def linearize(self) -> _Linearization:
        """Losses with their graph and :math:`J` (k backward passes): one host read for the decisions."""
        with torch.enable_grad():
            losses = torch.as_tensor(self.losses_of(self.model))
        rows = [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(f, self.params, retain_graph=True, materialize_grads=True)]
            )
            for f in losses
        ]
        self.cost += len(rows)
        jacobian = torch.stack(rows)
        alpha, _ = min_norm_weights(jacobian @ jacobian.T)
        scale = jacobian.norm(dim=1).max()
        residual = torch.linalg.vector_norm(alpha @ jacobian) / torch.where(scale > 0, scale, 1.0)
        # one host transfer: the path's accept/reject decisions need the values and the residual
        host = torch.cat([losses.detach().to(torch.float64), residual.reshape(1).to(torch.float64)]).cpu()
        return _Linearization(losses, jacobian, alpha, host[:-1], float(host[-1]))

    def operator(self, point: _Linearization, alpha: Tensor) -> Callable[[Tensor], Tensor]:
        r""":math:`v \mapsto (H_\alpha + \delta I) v` at ``point``: one create-graph gradient, one HVP per call."""
        weighted = torch.autograd.grad(
            alpha.to(point.losses.dtype) @ point.losses, self.params, create_graph=True, materialize_grads=True
        )
        self.cost += 1

        def apply(vector: Tensor) -> Tensor:
            self.hvps += 1
            self.cost += 2
            if not any(g.requires_grad for g in weighted):  # linear objectives: H = 0
                return vector * self.damping
            pieces = [v.view_as(p) for v, p in zip(vector.split(self._sizes()), self.params)]
            product = hessian_vector_product(weighted, self.params, pieces)
            return torch.cat([h.reshape(-1) for h in product]).add(vector, alpha=self.damping)

        return apply

    def solve(
        self, point: _Linearization, alpha: Tensor, rhs: Tensor, warm: Tensor | None, tol: float, max_iter: int
    ) -> Tensor:
        r""":math:`(H_\alpha + \delta I)^{-1}` rhs by MINRES, from ``warm`` if given."""
        operator = self.operator(point, alpha)
        if warm is None:
            return minres(operator, rhs, tol=min(1.0, tol), max_iter=max_iter).solution
        residual = rhs - operator(warm)
        ratio = torch.linalg.vector_norm(rhs) / torch.linalg.vector_norm(residual).clamp_min(1e-300)
        # the warm start's correction is solved to the tolerance relative to rhs, not to its own residual
        result = minres(operator, residual, tol=min(1.0, tol * float(ratio)), max_iter=max_iter)
        return warm + result.solution

    def train(self, optimizer: torch.optim.Optimizer, alpha: Tensor, steps: int) -> None:
        r"""``steps`` steps of ``optimizer`` on :math:`\alpha^\top f`, one backward each."""
        for _ in range(steps):
            optimizer.zero_grad()
            with torch.enable_grad():
                losses = torch.as_tensor(self.losses_of(self.model))
                (alpha.to(losses.dtype) @ losses).backward()
            optimizer.step()
            self.cost += 1

    def correction(self, point: _Linearization, alpha: Tensor, newton: bool, solve_tol: float, max_iter: int) -> Tensor:
        r"""Newton's step on :math:`\nabla(\alpha^\top f) = 0`, or MGDA's :math:`-c\, d`,
        :math:`d = J^\top \alpha^\star` with the min-norm weights and
        :math:`c = \|d\|^2 / d^\top (H + \delta I) d`, the minimum of the quadratic model along
        :math:`d` (one HVP; infinite where the curvature is not positive)."""
        if newton:
            return self.solve(point, alpha, -(alpha @ point.jacobian), None, solve_tol, max_iter)
        direction = point.alpha @ point.jacobian
        curvature = direction @ self.operator(point, point.alpha)(direction)
        length = direction @ direction / torch.where(curvature > 0, curvature, 0.0)
        return -length * direction


def _clone_state(model: nn.Module) -> State:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def trace_path(
    model: nn.Module,
    losses: Callable[[nn.Module], Tensor],
    objective: int,
    *,
    budget: int,
    tol: float,
    step_size: float = 0.1,
    min_step: float = 1e-3,
    max_step: float = 1.0,
    corrections: int = 3,
    damping: float = 1e-3,
    solve_tol: float = 0.1,
    max_iter: int = 20,
    corrector: Corrector = "newton",
    trainer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
    train_steps: int = 50,
    weight_step: float | None = None,
    start: int = 0,
) -> list[ContinuationPoint]:
    r"""Continue the Pareto set from ``model`` (Pareto-stationary, or near it with a ``trainer``) toward ``objective``.

    ``model`` is moved along the path and ends at its last accepted point. The steps are the
    module docstring's predictor and corrector; ``tol`` is the relative KKT residual a point
    must reach to be accepted. The path stops when the step falls under ``min_step``, at an end
    of the front, or before a step that would exceed ``budget`` (backward-pass equivalents;
    each step's cost is estimated from the last one's). Accepting, rejecting and sizing steps is
    control flow on the host, so a step reads it a few times: once per evaluation of :math:`J`
    (values and residual together), twice for the predictor (:math:`\|J^\top\beta\|`, then the
    tangent's sign and length), once per corrector move (its length), once per warm-started
    solve (its tolerance) and once per accepted step (how far the corrector moved); the solves
    read as :func:`~torch_moo.functional.minres` does, the training steps as ``trainer`` does.
    A trained step thus reads 5 times besides MINRES's checks (4 on a path's first step, whose
    solve is not warm-started): ``tests/unit/test_continuation.py`` counts them.

    ``corrector="newton"`` holds the predicted weights and takes up to ``corrections`` Newton
    steps (each a MINRES solve to ``solve_tol``), stopping once the residual is under ``tol``;
    ``"mgda"`` always takes ``corrections`` MGDA steps along the min-norm direction, each scaled
    by the curvature along it (one Hessian-vector product, so no learning rate): on a network,
    where the starts are not stationary, these also train the point, and they cost
    :math:`k + 3` units each against :math:`k + 1 + 2 \times` MINRES iterations.

    ``trainer`` (for instance ``lambda params: torch.optim.Adam(params, lr=1e-2)``) builds the
    path's training optimizer once, so its state carries from step to step. A step from a point
    whose residual is above ``tol`` then takes ``train_steps`` steps of it on
    :math:`\alpha'^\top f` after the predictor (fewer if the budget ends first) instead of the
    corrector above, and is accepted when :math:`f_i` went down, whatever its residual; the path's
    weights are then the predicted :math:`\alpha'` it was trained on, not the trained point's
    min-norm weights.
    On a damped, non-stationary point the tangent's length says little about how far the weights
    should move (:math:`\sigma s/\|v\|` can exceed 1, which would put :math:`\alpha'` on
    :math:`\beta` at once), so ``weight_step`` caps that fraction; a rejected step halves the
    step actually taken.

    Args:
        model, losses: the starting model, moved in place, and ``losses(model)``, the loss vector
            with its graph.
        objective: :math:`i`, the objective to trade toward.
        budget: backward-pass equivalents for the path.
        tol: relative KKT residual for acceptance.
        step_size, min_step, max_step: the first, smallest and largest step length :math:`s`.
        corrections: corrector steps per step, >= 1.
        damping: :math:`\delta \ge 0`.
        solve_tol, max_iter: MINRES's relative tolerance and iteration cap per solve.
        corrector: ``"newton"`` or ``"mgda"``.
        trainer: ``trainer(params)`` returns the optimizer that corrects steps from points above ``tol``;
            ``None``: every point is corrected by ``corrector``.
        train_steps: training steps per trained point, >= 1.
        weight_step: the largest fraction :math:`t` of the way to :math:`\beta` the weights move per step,
            > 0; ``None``: no cap.
        start: the index recorded in the points.

    Returns:
        The :class:`ContinuationPoint` of every step tried, accepted or not.
    """
    check_count("objective", objective, minimum=0)
    check_count("budget", budget, minimum=0)
    check_real("tol", tol, minimum=0.0, strict=True)
    check_real("step_size", step_size, minimum=0.0, strict=True)
    check_real("min_step", min_step, minimum=0.0, strict=True)
    if check_real("max_step", max_step) < step_size:
        raise ValueError(f"max_step must be >= step_size ({step_size}), got {max_step}")
    check_count("corrections", corrections)
    check_choice("corrector", corrector, ("newton", "mgda"))
    if trainer is not None and not callable(trainer):
        raise TypeError(f"trainer must be None or a callable returning an optimizer, got {type(trainer).__name__}")
    check_count("train_steps", train_steps)
    if weight_step is not None:
        check_real("weight_step", weight_step, minimum=0.0, strict=True)
    path = _Path(model, losses, check_real("damping", damping, minimum=0.0))
    here = path.linearize()
    k = here.jacobian.shape[0]
    if objective >= k:
        raise ValueError(f"objective must be an objective index below {k}, got {objective}")
    beta = torch.zeros(k, dtype=here.jacobian.dtype, device=here.jacobian.device)
    beta[objective] = 1.0
    x, alpha, tangent, size = path.flat(), here.alpha, None, step_size
    points: list[ContinuationPoint] = []
    charged, last_cost = (0, 0), path.cost  # the first point pays for the start's linearization
    optimizer = None if trainer is None else trainer(path.params)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"trainer must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
    while size >= min_step and path.cost + last_cost <= budget:
        rhs = beta @ here.jacobian
        if float(torch.linalg.vector_norm(rhs)) == 0.0:  # the traded objective is stationary: an end
            break
        tangent = path.solve(here, alpha, rhs, tangent, solve_tol, max_iter)
        slope, length = torch.stack([rhs @ tangent, torch.linalg.vector_norm(tangent)]).tolist()  # one read
        scale = size / length if weight_step is None else min(size / length, weight_step)
        taken = scale * length  # the step's length: under size where weight_step binds
        scale = scale if slope >= 0 else -scale
        predicted = project_simplex(alpha + scale * (beta - beta.sum() * alpha))
        guess = x - scale * tangent
        path.assign(guess)
        trained = optimizer is not None and here.residual > tol
        if optimizer is not None and trained:  # the path is off the stationary set: train
            path.train(optimizer, predicted, max(0, min(train_steps, budget - path.cost - k)))  # within the budget
            there = path.linearize()
        else:
            there = path.linearize()
            for _ in range(corrections):
                if there.residual <= tol and corrector == "newton":
                    break
                move = path.correction(there, predicted, corrector == "newton", solve_tol, max_iter)
                norm = float(torch.linalg.vector_norm(move))  # inf for MGDA along negative curvature
                path.assign(path.flat() + move * min(1.0, size / max(norm, 1e-300)))  # trust region: the step length
                there = path.linearize()
        accepted = (trained or there.residual <= tol) and bool(there.values[objective] < here.values[objective])
        last_cost = path.cost - charged[0]
        points.append(
            ContinuationPoint(
                there.values,
                _clone_state(model) if accepted else None,
                start,
                objective,
                len(points) + 1,
                taken,
                there.residual,
                last_cost,
                path.hvps - charged[1],
                accepted,
                trained,
            )
        )
        charged = (path.cost, path.hvps)
        if not accepted:  # back to x; its graph is rebuilt (the in-place moves invalidated it)
            path.assign(x)
            here = path.linearize()
            size = taken / 2
            continue
        corrected = float(torch.linalg.vector_norm(path.flat() - guess))
        x, here, alpha = path.flat(), there, predicted if trained else there.alpha
        size = min(max_step, size * 1.5) if corrected <= 0.25 * size else size  # the corrector barely moved
    path.assign(x)
    return points


def continue_front(
    models: nn.Module | Sequence[nn.Module],
    losses: Callable[[nn.Module], Tensor],
    *,
    budget: int,
    tol: float = 1e-3,
    directions: Sequence[int] | Literal["extend", "fill"] | None = None,
    start_corrections: int = 3,
    **path_kwargs: Any,
) -> list[ContinuationPoint]:
    r"""Explore the front from a few starts by continuation, within a budget of backward-pass equivalents.

    Each start (a copy: the models are left unchanged) is first corrected onto the KKT set
    (``start_corrections`` Newton steps on :math:`\alpha^\top f` with its min-norm weights
    :math:`\alpha`, each solved to a relative 1e-3 in at most 50 Hessian-vector products; a
    step that does not lower the residual, or worsens every objective, is undone), then traced
    by :func:`trace_path` toward each objective in ``directions`` (default all, so from a middle
    start the paths reach both ends of a two-objective front).
    The budget, less the starts' corrections, is split evenly between the paths; what a path
    leaves unspent passes to the next. A path's tolerance is ``tol`` or the
    corrected start's own residual, whichever is larger: on a network the KKT residual of a
    trained model is rarely small, and a point is accepted when it is as stationary as its start.
    With a ``trainer`` (see :func:`trace_path`) the tolerance is ``tol`` itself and the starts are
    not Newton-corrected: a start above it is trained by its paths' steps instead.

    Args:
        models: the starting models (ideally near the front: trained on a scalarization).
        losses: ``losses(model)`` returns the loss vector with its graph (a fixed batch).
        budget: total backward-pass equivalents for the exploration (the starts' training not included).
        tol: relative KKT residual for acceptance.
        directions: objective indices to trade toward from each start; ``"extend"``: one path
            toward each objective, from the start where that objective is smallest (the ends of
            what the starts found, extended outward); ``"fill"``: from each start toward each objective
            that another start has lower (the paths run between the starts, whose extremes anchor
            the ends; a lone start goes both ways).
        start_corrections: Newton steps correcting each start (none with a ``trainer``).
        **path_kwargs: :func:`trace_path`'s ``step_size``, ``min_step``, ``max_step``, ``corrections``,
            ``damping``, ``solve_tol``, ``max_iter``, ``corrector``, ``trainer``, ``train_steps``,
            ``weight_step``.

    Returns:
        The corrected starts (``direction = -1``), then each path's points.

    Example:
        >>> from torch_moo.problems import cylinder, cylinder_point
        >>> class Point(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(cylinder_point(0.0, 0.3).detach())
        >>> points = continue_front(
        ...     Point(), lambda m: cylinder(m.x), budget=2000, tol=1e-8, step_size=0.2, damping=1e-8
        ... )
        >>> accepted = torch.stack([p.values for p in points if p.accepted])
        >>> bool(((accepted[:, 1] - (1 - accepted[:, 0] ** 2)).abs() < 1e-6).all())  # on f2 = 1 - f1^2
        True
        >>> round(accepted[:, 0].min().item(), 2), round(accepted[:, 0].max().item(), 2)  # both ends
        (0.0, 1.0)
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("models must be an nn.Module or a non-empty sequence of them")
    check_count("budget", budget)
    check_real("tol", tol, minimum=0.0, strict=True)
    check_count("start_corrections", start_corrections, minimum=0)
    if directions not in (None, "extend", "fill") and isinstance(directions, str):
        raise ValueError(f"directions must be None, 'extend', 'fill' or objective indices, got {directions!r}")
    trained = path_kwargs.get("trainer") is not None
    corrected: list[tuple[nn.Module, _Linearization]] = []
    points: list[ContinuationPoint] = []
    for index, model in enumerate(models):
        copied = copy.deepcopy(model)
        path = _Path(copied, losses, float(path_kwargs.get("damping", 1e-3)))
        here = path.linearize()
        for _ in range(0 if trained else start_corrections):
            if here.residual <= tol:
                break
            # tighter than the paths' solves (relative 1e-3, up to 50 HVPs): the start anchors its paths
            move = path.solve(here, here.alpha, -(here.alpha @ here.jacobian), None, 1e-3, 50)
            path.assign(path.flat() + move)
            candidate = path.linearize()
            worse = bool((candidate.values >= here.values).all()) and bool((candidate.values > here.values).any())
            if candidate.residual >= here.residual or worse:  # far from the set, Newton can do harm: keep the start
                path.assign(path.flat() - move)
                break
            here = candidate
        corrected.append((copied, here))
        points.append(
            ContinuationPoint(
                here.values, _clone_state(copied), index, -1, 0, 0.0, here.residual, path.cost, path.hvps, True
            )
        )
    k = len(points[0].values)
    lowest = [int(torch.stack([p.values[i] for p in points]).argmin()) for i in range(k)]  # host values
    if directions == "extend":  # toward each objective, from the start where it is smallest
        jobs = [(lowest[i], i) for i in range(k)]
    elif directions == "fill":  # toward each objective that another start has lower
        jobs = [(index, i) for index in range(len(models)) for i in range(k) if lowest[i] != index or len(models) == 1]
    else:
        chosen = list(range(k)) if directions is None else [check_count("directions", i, minimum=0) for i in directions]
        jobs = [(index, objective) for index in range(len(models)) for objective in chosen]
    spent = sum(p.cost for p in points)
    for number, (index, objective) in enumerate(jobs):
        walker = copy.deepcopy(corrected[index][0])
        found = trace_path(
            walker,
            losses,
            objective,
            budget=max((budget - spent) // (len(jobs) - number), 0),
            tol=tol if trained else max(tol, corrected[index][1].residual),
            start=index,
            **path_kwargs,
        )
        spent += sum(p.cost for p in found)
        points.extend(found)
    return points
