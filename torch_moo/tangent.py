"""ParetoTangentExplorer: walk along the Pareto set from a Pareto-stationary point."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._sharding import check_unsharded
from torch_moo._validation import Nonfinite, check_count, check_real, check_vector
from torch_moo.base import Losses
from torch_moo.descent import JacobianDescent
from torch_moo.distributed import mean_across_ranks
from torch_moo.engine import jacobian, objective_gradients, strided
from torch_moo.functional._scale import power_of_two, vector_norm
from torch_moo.functional.curvature import hessian_vector_product
from torch_moo.functional.krylov import MinresResult, minres
from torch_moo.functional.mgda import _scale_to_unit_, _unit_gram
from torch_moo.weightings.mgda import MGDA

__all__ = ["ParetoTangentExplorer"]


class ParetoTangentExplorer(JacobianDescent):
    r"""Continuous Pareto exploration: steps along the Pareto set, each one a matrix-free Krylov solve.

    Ma, Du & Matusik, *Efficient Continuous Pareto Exploration in Multi-Task Learning* (ICML
    2020). At a Pareto-stationary point :math:`x^\star` (:math:`\sum_i \alpha_i \nabla f_i = 0`
    with :math:`\alpha` the MGDA weights), the tangent directions of the Pareto set solve

    .. math::

        \Big(\sum_i \alpha_i \nabla^2 f_i(x^\star) + \delta I\Big)\, v = J^\top \beta ,
        \qquad x \leftarrow x - s\, \frac{v}{\|v\|},

    where :math:`J` holds the objectives' gradients as rows, :math:`\beta` says which
    objectives to trade toward (:math:`\beta = e_i` improves :math:`f_i` first, at the others'
    expense), :math:`\delta` is the damping and :math:`s` the step size. The move lowers
    :math:`\beta^\top f` to first order (its rate is :math:`-\beta^\top J v / \|v\| =
    -v^\top (H + \delta I) v / \|v\|`): where the damped Hessian is indefinite and that rate
    comes out positive, the step goes along :math:`+v / \|v\|` instead.
    :meth:`step` takes a closure that re-evaluates the loss vector; it computes :math:`J` and
    :math:`\alpha` there (one backward per objective, without a graph), then takes the gradient
    of :math:`\sum_i \alpha_i f_i` (:math:`\alpha` held constant) with its graph, one backward,
    and solves the system by MINRES (:func:`~torch_moo.functional.minres`, on the parameters'
    device) with one Hessian-vector product
    (:func:`~torch_moo.functional.hessian_vector_product`, a backward through that one
    gradient's graph) per iteration. It moves by :math:`s` along :math:`-v / \|v\|` (one
    ``foreach`` add over the parameters), then takes ``corrections`` MGDA steps with the base
    optimizer, each re-evaluating the closure, to return to the front. Memory: the forward
    graph and one gradient graph, about two backward passes' worth whatever :math:`k`. On a
    GPU a step reads the host once per ``check_every`` MINRES iterations, plus what the rest
    of the step reads (the losses' finiteness under ``nonfinite="raise"``, the min-norm solve).

    It composes the Jacobian engine (:mod:`torch_moo.engine`), the min-norm solve
    (:class:`~torch_moo.weightings.MGDA`, :attr:`weighting`), MINRES and MGDA corrector steps: as a
    :class:`~torch_moo.JacobianDescent` with the MGDA rule (full mode, no normalisation),
    ``opt.backward(losses)`` then ``opt.step()`` is an MGDA step with the base optimizer, the
    way to reach a Pareto-stationary point first; ``opt.step(closure)`` is an exploration step.
    :attr:`stationarity` is :math:`\|\sum_i \alpha_i \nabla f_i\|^2` at the last gradient
    evaluation (the start of the last step, or its last correction), and :attr:`tangent_solve`
    and :attr:`tangent_residual` tell how well the last system was solved.

    Under :mod:`torch.distributed` the Jacobian and every Hessian-vector product are averaged
    across ranks (one all-reduce per MINRES iteration), so every rank takes the same step.
    As for :class:`~torch_moo.MultiGradientDescent`'s full mode, evaluate the closure under
    ``model.no_sync()`` or on the unwrapped module. DTensor parameters (FSDP2, tensor parallelism)
    are refused at construction with a ValueError: the Hessian-vector products differentiate the
    gradients, which FSDP2 reduces outside autograd.

    Args:
        params: parameters or parameter groups.
        num_objectives: number of objectives :math:`k`.
        beta: :math:`\beta`, one entry per objective, not all zero; ``None`` is :math:`e_1`.
            Settable between steps (:attr:`beta`).
        step_size: :math:`s`, the length of each tangent move, > 0.
        damping: :math:`\delta \ge 0`; it keeps the system well posed where the Hessian is
            singular (flat directions of a Pareto set), at some cost in tangency.
        max_iter, tol: MINRES's iteration cap (Hessian-vector products per step) and relative
            residual tolerance.
        check_every: MINRES iterations between its convergence tests, each a host read on a
            GPU (see :func:`~torch_moo.functional.minres`); ``None``: every iteration on the
            CPU, where the read is free, and every 10 elsewhere (5 reads at ``max_iter=50``
            instead of 50, for at most 9 Hessian-vector products past convergence; the
            solution is the same).
        corrections: MGDA steps with the base optimizer after each tangent move.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`
            (with ``nonfinite="skip"``, an exploration step whose losses are not finite on some
            rank moves nothing and sets :attr:`skipped`); ``base`` defaults to
            :class:`torch.optim.SGD` (``lr=1e-2`` unless given), which the correction steps use.

    Example:
        >>> x = torch.tensor([0.5, -0.5], requires_grad=True)
        >>> def losses():  # f_i = ||x - p_i||^2; the Pareto set is the segment from p_1 to p_2
        ...     return torch.stack(
        ...         [(x - torch.tensor([0.0, 0.0])).square().sum(), (x - torch.tensor([1.0, -1.0])).square().sum()]
        ...     )
        >>> opt = ParetoTangentExplorer([x], num_objectives=2, beta=[1.0, 0.0], step_size=0.1, damping=0.0)
        >>> _ = opt.step(losses)  # from the middle of the segment toward p_1
        >>> x.detach()
        tensor([ 0.4293, -0.4293])
        >>> int(opt.tangent_solve.iterations), bool(opt.tangent_residual < 1e-6)  # H = 2 I: one Krylov step is exact
        (1, True)
    """

    _default_base = torch.optim.SGD

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        beta: Sequence[float] | Tensor | None = None,
        step_size: float = 0.1,
        damping: float = 0.1,
        max_iter: int = 50,
        tol: float = 1e-5,
        check_every: int | None = None,
        corrections: int = 0,
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.step_size = check_real("step_size", step_size, minimum=0.0, strict=True)
        self.damping = check_real("damping", damping, minimum=0.0)
        self.max_iter = check_count("max_iter", max_iter)
        self.tol = check_real("tol", tol, minimum=0.0, strict=True)
        self.check_every = None if check_every is None else check_count("check_every", check_every)
        self.corrections = check_count("corrections", corrections, minimum=0)
        builds_sgd = base is torch.optim.SGD or (base is None and not isinstance(params, Optimizer))
        if builds_sgd and "lr" not in base_kwargs:
            base_kwargs["lr"] = 1e-2
        super().__init__(
            params, num_objectives=num_objectives, weighting=MGDA(), nonfinite=nonfinite, base=base, **base_kwargs
        )
        check_unsharded(
            self._params(),
            type(self).__name__,
            "its Hessian-vector products differentiate the gradients, which FSDP2 reduces outside autograd; "
            "explore the unsharded model (one process, or DDP)",
        )
        self._beta = torch.zeros(num_objectives, device=self._device)
        self.beta = torch.eye(num_objectives)[0] if beta is None else beta
        # the last solve and its right-hand side's norm, changed in place (see base._Pending)
        self._solve_record: dict[str, Any] = {"solve": None, "rhs_norm": None}

    @property
    def beta(self) -> Tensor:
        r""":math:`\beta`, the trade-off direction of the next exploration steps (float32, on the device)."""
        return self._beta.clone()

    @beta.setter
    def beta(self, value: Sequence[float] | Tensor) -> None:
        beta = check_vector("beta", value, self.num_objectives)
        if not bool((beta != 0).any()):
            raise ValueError("beta must have a non-zero entry: it chooses which objectives to trade toward")
        self._beta.copy_(beta)

    @property
    def tangent_solve(self) -> MinresResult | None:
        r"""MINRES's ``(solution, residual_norm, iterations)`` at the last exploration step (``None`` before one).

        MINRES solves the system multiplied by a power of two :math:`s` near :math:`1 / \max |J|`,
        which leaves the solution as it is and keeps the solve accurate at any loss scale; the
        residual norm is that of the scaled system (:attr:`tangent_residual` is relative)."""
        return self._solve_record["solve"]

    @property
    def tangent_residual(self) -> Tensor | None:
        r"""The last solve's relative residual :math:`\|J^\top\beta - (H + \delta I) v\| / \|J^\top\beta\|`
        (MINRES's estimate; ``None`` before an exploration step)."""
        solve, rhs_norm = self._solve_record["solve"], self._solve_record["rhs_norm"]  # set together
        if solve is None or rhs_norm is None:
            return None
        return solve.residual_norm / torch.where(rhs_norm > 0, rhs_norm, 1.0)

    def step(self, closure: Callable[[], Losses] | None = None) -> Losses | None:  # type: ignore[override]
        """With a closure, one exploration step; without, the MGDA step of the last :meth:`backward`.

        Args:
            closure: re-evaluates the model and returns the loss vector, with its graph (no
                backward: the step takes the gradients it needs). Called once for the tangent
                and once per correction step. A closure that returns ``None`` (Lightning's,
                after its own :meth:`backward`) makes this the MGDA step.

        Returns:
            The closure's losses at the start of the step (detached), or ``None``.
        """
        losses = None
        if closure is not None:
            with torch.enable_grad():
                losses = closure()
        if closure is None or losses is None:  # no closure, or one that did its own backward (Lightning's)
            self._apply_pending()
            return None
        losses, values = self._loss_values(losses)
        self._pending.last_skipped = values is None
        if values is None:  # nonfinite="skip": the exploration step moves nothing
            return losses.detach()
        params = self._params()
        direction = self._tangent(losses, values, params)
        pieces = direction.split([p.numel() for p in params])
        pieces = [piece.view_as(p).to(p.dtype) for p, piece in zip(params, pieces)]
        with torch.no_grad():
            torch._foreach_add_(params, pieces, alpha=-self.step_size)
        for _ in range(self.corrections):
            self.zero_grad()
            with torch.enable_grad():
                self.backward(closure())
            self._apply_pending()
        return losses.detach()

    def _tangent(self, losses: Tensor, values: Tensor, params: list[Tensor]) -> Tensor:
        """The unit tangent direction :math:`v / \\|v\\|`, flattened over ``params`` (zeros if :math:`v = 0`)."""
        # J's rows without a graph (k backward passes that keep the forward graph), then the
        # gradient of alpha . f with its graph (alpha constant), where every Hessian-vector
        # product goes back through one gradient graph instead of k.
        rows = objective_gradients(losses, params, losses.new_ones(()), retain_graph=True)
        matrix = mean_across_ranks(jacobian(rows, params, range(len(params))))
        # J times s = 2^-e, 2^(e-1) <= max|J| < 2^e (exact, in place): the Gram matrix at unit scale
        exponent = _scale_to_unit_(matrix)
        weights = self._weigh(values)(_unit_gram([matrix], exponent), matrix.dtype)
        weighted = [  # dense: a sparse gradient (nn.Embedding(sparse=True)) is densified, differentiably
            strided(g)
            for g in torch.autograd.grad(
                weights.to(losses.dtype) @ losses, params, create_graph=True, allow_unused=True, materialize_grads=True
            )
        ]
        sizes = [p.numel() for p in params]

        linear = not any(g.requires_grad for g in weighted)  # the gradients are constants: H = 0

        def hessian_times(vector: Tensor) -> Tensor:
            if linear:
                return torch.zeros_like(vector)
            pieces = [piece.view_as(p) for piece, p in zip(vector.split(sizes), params)]
            product = hessian_vector_product(weighted, params, pieces)
            return mean_across_ranks(torch.cat([strided(h).reshape(-1) for h in product]))

        # MINRES runs on the system times s: the same solution v, with the right-hand side (from the
        # scaled J) and the Hessian's part of the operator near unit scale whatever the losses'
        # scale. s * damping is a tensor: the damping goes into the operator.
        scale = power_of_two(-exponent, matrix)
        rhs = self._beta.to(matrix.dtype) @ matrix

        def operator(vector: Tensor) -> Tensor:
            image = hessian_times(vector)
            return (image.add(vector, alpha=self.damping) if self.damping else image).mul_(scale)

        solve = minres(operator, rhs, tol=self.tol, max_iter=self.max_iter, check_every=self.check_every)
        self._solve_record.update(solve=solve, rhs_norm=vector_norm(rhs))
        v = solve.solution
        # -v lowers beta^T f to first order where H is positive definite; elsewhere flip it so it does.
        sign = torch.where(rhs @ v < 0, -1.0, 1.0)
        norm = vector_norm(v)
        return v * (sign / torch.where(norm > 0, norm, 1.0))

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "beta": self._beta.clone()}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        super()._load_method_state(state)
        self._beta.copy_(state["beta"])

    def _state_rules(self, state: dict[str, Any]) -> dict[str, tuple[bool | Tensor, str]]:
        beta = state["beta"]
        return {
            **super()._state_rules(state),
            "beta": ((torch.isfinite(beta).all() & (beta != 0).any()), "finite with a non-zero entry"),
        }

    def _settings(self) -> dict[str, Any]:
        return {
            "step_size": self.step_size,
            "damping": self.damping,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "check_every": self.check_every,
            "corrections": self.corrections,
        }
