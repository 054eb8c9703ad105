"""MultiGradientDescent: the common descent direction of MGDA, written into ``.grad``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.optim import Optimizer

from torch_moo._validation import Nonfinite, all_finite, check_choice, check_real, whole_numbers
from torch_moo.base import MultiObjectiveOptimizer
from torch_moo.distributed import mean_across_ranks, means_across_ranks
from torch_moo.functional._scale import power_of_two
from torch_moo.functional.mgda import (
    NORMALIZATIONS,
    Normalization,
    _gram_float64,
    _scale_to_unit_,
    _unit_gram,
    normalized_gram,
)
from torch_moo.functional.min_norm import min_norm_weights

__all__ = ["MultiGradientDescent"]

HeadGradient = Literal["own", "weighted"]
HEAD_GRADIENTS: tuple[str, ...] = ("own", "weighted")
_MOMENT_EPS = 1e-8  # Adam's epsilon in the per-objective moments' denominator


class MultiGradientDescent(MultiObjectiveOptimizer):
    r"""MGDA: descend along the min-norm element of the convex hull of the objectives' gradients.

    Désidéri, *Multiple-gradient descent algorithm (MGDA)* (2012); Sener & Koltun, *Multi-Task
    Learning as Multi-Objective Optimization* (NeurIPS 2018); the per-objective moments follow
    Reiners, Klamroth & Stiglmayr, *Efficient and Sparse Neural Networks by Pruning Weights in a
    Multiobjective Learning Approach* (2020). Each :meth:`backward` computes

    .. math::

        \alpha = \arg\min_{\alpha \in \Delta} \Big\| \sum_i \alpha_i \hat g_i \Big\|^2,
        \qquad d = \sum_i \alpha_i g_i ,

    exactly (:func:`~torch_moo.functional.min_norm_weights`, on the device), where
    :math:`g_i` is objective :math:`i`'s gradient over the *shared* parameters and
    :math:`\hat g_i` its normalisation (:func:`~torch_moo.functional.normalized_gram`), and
    writes :math:`d` into ``.grad``; the base optimizer then steps along it. With
    ``normalization="none"``, :math:`d` decreases every objective
    (:math:`\langle d, g_i \rangle \ge \|d\|^2`) and vanishes exactly at a Pareto-stationary
    point; :attr:`stationarity` reports :math:`\|d\|^2`.

    Two modes, chosen per call:

    * ``opt.backward(losses)``: the gradients over every parameter, one backward pass per
      objective (``torch.autograd.grad``). A parameter that two or more objectives reach is
      shared and gets :math:`d`; one that a single objective reaches (a task head) gets that
      objective's own gradient, as in MGDA (``heads="weighted"``: :math:`\alpha_i` times it);
      one that none reaches keeps its ``.grad``. A parameter listed twice counts once. Sparse
      gradients (``nn.Embedding(sparse=True)``) are densified, so ``.grad`` is dense: use a
      base that takes dense gradients (not :class:`torch.optim.SparseAdam`).
    * ``opt.backward(losses, features=z)``: MGDA-UB, the cheap mode. :math:`g_i` is the
      gradient with respect to the shared representation ``z``, and one backward pass of
      :math:`\sum_i L_i` runs with its gradient at ``z`` replaced by
      :math:`\sum_i \alpha_i \partial L_i / \partial z` (a tensor hook): the trunk receives
      the MGDA combination and each head its own gradient. Sener & Koltun show that
      :math:`\alpha` then minimises an upper bound of the shared-parameter problem. With
      separate heads the :math:`g_i` are recorded during that same pass, by hooks on the
      nodes that read ``z``; with a node after ``z`` that serves several objectives, or
      several feature tensors, one backward through the heads per objective comes first.
      Every objective must depend on ``z``.

    ``moments=(beta1, beta2)`` keeps Adam's moment estimates for every objective separately
    (the multi-objective Adam of Reiners et al.) and runs MGDA on the objectives' Adam
    directions :math:`u_i = \hat m_i / (\sqrt{\hat v_i} + 10^{-8})` instead of their raw
    gradients, so ``.grad`` holds :math:`\sum_i \alpha_i u_i` (:math:`u_i` for a parameter only
    objective :math:`i` reaches). Pair it with ``base=torch.optim.SGD`` (no momentum), which then
    steps by ``lr`` times that direction: Adam as the base would precondition twice. It costs
    two extra copies of the parameters per objective, is available in the full mode only, and
    takes one :meth:`backward` per :meth:`step`.

    Under :mod:`torch.distributed` every rank computes the same :math:`\alpha` and step, equal
    to single-process MGDA on the concatenated batch. The full mode takes its gradients with
    ``torch.autograd.grad``, which ``DistributedDataParallel``'s reducer does not see: call it
    under ``model.no_sync()`` (or on the unwrapped module); it averages the per-objective
    gradients itself (one all-reduce of :math:`k` times the shared parameters). The
    representation mode all-reduces the :math:`k \times k` Gram matrix, and its final backward
    is an ordinary one, which DDP averages as usual.

    Args:
        params: parameters or parameter groups.
        num_objectives: number of objectives :math:`k`.
        normalization: how the gradients are scaled for choosing :math:`\alpha` only:
            ``"none"``, ``"l2"`` (by :math:`\|g_i\|`), ``"loss"`` (by :math:`L_i`) or
            ``"loss+"`` (by :math:`L_i \|g_i\|`); the last two need positive losses.
        moments: ``(beta1, beta2)`` for per-objective Adam moments, or ``None``.
        heads: what a parameter that one objective alone reaches (a task head) receives:
            ``"own"`` (default), that objective's gradient :math:`g_i`, the update of
            Algorithm 2 of Sener & Koltun, which keeps each head's step independent of how
            much weight its task gets in the shared direction; or ``"weighted"``,
            :math:`\alpha_i g_i`, as their code does (it back-propagates
            :math:`\sum_i \alpha_i L_i`), which slows the heads of tasks with small weight.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    Example:
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(2))
        >>> params = [*trunk.parameters(), *heads.parameters()]
        >>> opt = MultiGradientDescent(params, num_objectives=2, lr=1e-2)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 2)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     z = trunk(x).relu()
        ...     losses = torch.stack([(head(z).squeeze(1) - y[:, i]).pow(2).mean() for i, head in enumerate(heads)])
        ...     alpha = opt.backward(losses, features=z)
        ...     opt.step()
        >>> alpha.shape, bool(torch.isclose(alpha.sum(), torch.tensor(1.0)))
        (torch.Size([2]), True)
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        normalization: Normalization = "none",
        moments: tuple[float, float] | None = None,
        heads: HeadGradient = "own",
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.normalization: Normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        if moments is not None:
            if not (isinstance(moments, Sequence) and len(moments) == 2):
                raise TypeError(f"moments must be None or a pair (beta1, beta2), got {moments!r}")
            for name, beta in zip(("beta1", "beta2"), moments):
                if not 0.0 <= check_real(f"moments {name}", beta) < 1.0:
                    raise ValueError(f"moments {name} must be in [0, 1), got {beta}")
            moments = (float(moments[0]), float(moments[1]))
        self.moments = moments
        self.heads = check_choice("heads", heads, HEAD_GRADIENTS)
        super().__init__(params, num_objectives=num_objectives, nonfinite=nonfinite, base=base, **base_kwargs)
        self._stationarity = torch.zeros((), dtype=torch.float64, device=self._device)
        self._gap = torch.zeros((), dtype=torch.float64, device=self._device)
        size = sum(p.numel() for p in self._params()) if moments else 0
        self._moment_steps = torch.zeros((), device=self._device)
        self._exp_avg = torch.zeros(num_objectives if moments else 0, size, device=self._device)
        self._exp_avg_sq = torch.zeros_like(self._exp_avg)
        self._pending_moments: tuple[Tensor, Tensor] | None = None
        self._previous_alpha: Tensor | None = None  # the solver's warm start: fewer iterations, same optimum

    @property
    def stationarity(self) -> Tensor:
        r""":math:`\|\sum_i \alpha_i g_i\|^2` at the last :meth:`backward`, over the shared parameters
        (or the features): the KKT residual of Pareto stationarity, 0 exactly at a
        Pareto-stationary point (with ``normalization="none"``; else of the normalised gradients).
        A float64 scalar: it is the square of the gradients' scale, which float32 cannot hold
        for gradients above about :math:`10^{19}` or below :math:`10^{-19}`."""
        return self._stationarity.clone()

    @property
    def gap(self) -> Tensor:
        """The min-norm solver's duality gap at the last :meth:`backward` (0 at the exact solution),
        for the normalised Gram matrix; a float64 scalar, as :attr:`stationarity`."""
        return self._gap.clone()

    # ----------------------------------------------------------------------------- combine
    def _params(self) -> list[Tensor]:
        """The parameters that require grad, each once (the first occurrence's order): a parameter
        listed twice (torch.optim warns) gets its gradient computed and written once."""
        return list({id(p): p for group in self.param_groups for p in group["params"] if p.requires_grad}.values())

    def _combine(self, losses, values, *, features, scaler, retain_graph):
        if self.normalization in ("loss", "loss+") and self._checks_finite and not bool((values > 0).all()):
            raise ValueError(f"normalization={self.normalization!r} needs positive losses, got {values.tolist()}")
        seed = losses.new_ones(())
        if scaler is not None:
            seed = scaler.scale(seed).reshape(()).to(losses.dtype)
        if features is None:
            return self._combine_parameters(
                _objective_roots(losses), seed, values, retain_graph, scaled=scaler is not None
            )
        if self.moments is not None:
            raise ValueError("moments need the per-parameter gradients: call backward(losses) without features")
        return self._combine_features(losses, seed, values, features, retain_graph)

    def _solve(self, gram: Tensor, values: Tensor, dtype: torch.dtype) -> Tensor:
        """The weights, in ``dtype`` (the gradients'), from the float64 Gram matrix of :func:`_gram_float64`."""
        alpha, self._gap = min_norm_weights(
            normalized_gram(gram, values, self.normalization), start=self._previous_alpha
        )
        alpha = alpha.to(dtype)
        self._previous_alpha = alpha
        applied = alpha.to(gram.dtype)
        self._stationarity = applied @ gram @ applied
        return alpha

    def _combine_parameters(
        self, roots: list, seed: Tensor, values: Tensor, retain_graph: bool, scaled: bool
    ) -> Tensor:
        params = self._params()
        k = self.num_objectives
        rows = [_gradients(root, params, seed, retain_graph or i < k - 1) for i, root in enumerate(roots)]
        reach = [[i for i in range(k) if rows[i][j] is not None] for j in range(len(params))]
        if self.moments is not None:
            return self._combine_moments(params, rows, reach, values, seed if scaled else None)
        shared = [j for j in range(len(params)) if len(reach[j]) > 1]
        own = [j for j in range(len(params)) if len(reach[j]) == 1]
        jacobian = _jacobian(rows, params, shared)
        jacobian, *own_grads = means_across_ranks([jacobian, *(rows[reach[j][0]][j] for j in own)])
        alpha, direction = self._combined(jacobian, values)
        _accumulate([params[j] for j in shared], direction.split([params[j].numel() for j in shared]))
        _accumulate([params[j] for j in own], self._head_gradients(alpha, [reach[j][0] for j in own], own_grads))
        return alpha

    def _head_gradients(self, alpha: Tensor, owners: Sequence[int], grads: Sequence[Tensor]) -> list[Tensor]:
        """The gradients of parameters that one objective reaches: their own, or ``alpha`` times it
        (``heads="weighted"``)."""
        if self.heads == "own":
            return list(grads)
        return [alpha[i].to(g.dtype) * g for i, g in zip(owners, grads)]

    def _combine_moments(
        self, params: list[Tensor], rows, reach: list[list[int]], values: Tensor, scale: Tensor | None
    ) -> Tensor:
        """The per-objective Adam directions combined; ``scale`` is GradScaler's factor, taken off the
        gradients before the moments and put back on the direction that ``scaler.step`` unscales."""
        if self._pending_moments is not None:
            raise RuntimeError("moments take one backward() per step(): call step() (or zero_grad()) first")
        if self._exp_avg.shape[1] != sum(p.numel() for p in params):
            raise RuntimeError(
                f"moments were sized for {self._exp_avg.shape[1]} parameter entries at construction, "
                f"the optimizer now has {sum(p.numel() for p in params)} "
                "(add_param_group is not supported with moments)"
            )
        beta1, beta2 = self.moments  # type: ignore[misc]
        jacobian = mean_across_ranks(_jacobian(rows, params, range(len(params))))
        if scale is not None:
            jacobian = jacobian / scale
        exp_avg = torch.lerp(self._exp_avg, jacobian, 1 - beta1)
        exp_avg_sq = torch.lerp(self._exp_avg_sq, jacobian.square(), 1 - beta2)
        self._pending_moments = (exp_avg, exp_avg_sq)
        t = self._moment_steps + 1
        directions = (exp_avg / (1 - beta1**t)) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + _MOMENT_EPS)
        columns = list(zip(params, directions.split([p.numel() for p in params], dim=1)))
        shared = [piece for (p, piece), objectives in zip(columns, reach) if len(objectives) > 1]
        alpha = self._solve(_gram_float64(shared or [directions[:, :0]]), values, directions.dtype)
        # shared entries: sum_i alpha_i u_i; an entry one objective reaches: that objective's u_i
        weights = alpha.to(directions.dtype)
        for (p, piece), objectives in zip(columns, reach):
            if objectives:
                if len(objectives) > 1:
                    direction = weights @ piece
                else:
                    (direction,) = self._head_gradients(alpha, objectives, [piece[objectives[0]]])
                _accumulate([p], [direction if scale is None else direction * scale])
        return alpha

    def _combine_features(
        self, losses: Tensor, seed: Tensor, values: Tensor, features: Tensor | Sequence[Tensor], retain_graph: bool
    ) -> Tensor:
        features = [features] if isinstance(features, Tensor) else list(features)
        if not features or not all(isinstance(f, Tensor) and f.requires_grad for f in features):
            raise ValueError(
                "features must be a tensor (or a sequence of tensors) that requires grad: the shared representation"
            )
        roots = _objective_roots(losses)
        # heads="weighted" needs alpha before the heads' backward: the per-objective passes first
        single = len(features) == 1 and self.heads == "own"
        consumers = _feature_consumers(roots, features[0]) if single else None
        if consumers is None:
            rows = [_gradients(root, features, seed, True) for root in roots]
            _check_reached([any(g is not None for g in row) for row in rows])
            return self._backward_with_features(losses, seed, values, features, retain_graph, rows)
        _check_reached([bool(nodes) for nodes in consumers])
        return self._backward_capturing_features(losses, seed, values, features[0], retain_graph, consumers)

    def _features_gradient(
        self, rows: Sequence[Sequence[Tensor | None]], features: Sequence[Tensor], values: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """MGDA-UB's weights from the objectives' feature gradients ``rows``, and the combined gradient per
        feature tensor."""
        jacobian = _jacobian(rows, features, range(len(features)))
        alpha, direction = self._combined(jacobian, values, reduce_gram=True)
        pieces = direction.split([f.numel() for f in features])
        return alpha, [piece.view_as(f) for piece, f in zip(pieces, features)]

    def _combined(self, jacobian: Tensor, values: Tensor, reduce_gram: bool = False) -> tuple[Tensor, Tensor]:
        r"""The weights :math:`\alpha` and :math:`d = \sum_i \alpha_i g_i` from the Jacobian, which the
        caller hands over: it is scaled in place by a power of two (exact; no copy), so that the Gram
        matrix neither overflows nor underflows. ``reduce_gram`` averages the Gram matrix across
        ranks (the representation mode)."""
        exponent = _scale_to_unit_(jacobian)
        gram = _unit_gram([jacobian], exponent)
        alpha = self._solve(mean_across_ranks(gram) if reduce_gram else gram, values, jacobian.dtype)
        return alpha, (alpha.to(jacobian.dtype) @ jacobian) * power_of_two(exponent, jacobian)

    def _backward_with_features(self, losses, seed, values, features, retain_graph, rows) -> Tensor:
        """One backward pass of the summed losses whose gradient at the features is replaced (tensor hooks)."""
        alpha, pieces = self._features_gradient(rows, features, values)
        handles = [f.register_hook(lambda _, piece=piece: piece) for f, piece in zip(features, pieces)]
        total = losses.sum() if self.heads == "own" else alpha.to(losses.device, losses.dtype) @ losses
        try:
            total.backward(seed, retain_graph=retain_graph)
        finally:
            for handle in handles:
                handle.remove()
        return alpha

    def _backward_capturing_features(self, losses, seed, values, feature, retain_graph, consumers) -> Tensor:
        """The same in a single backward pass: hooks on the nodes that consume ``feature`` record each
        objective's share of its gradient, and the hook on ``feature``, which runs once all of them
        have, replaces their sum by the MGDA combination."""
        shares: list[list[Tensor]] = [[] for _ in consumers]
        solved: list[Tensor] = []

        def combine(_: Tensor) -> Tensor:
            rows = [(functools.reduce(torch.add, parts),) for parts in shares]
            alpha, (piece,) = self._features_gradient(rows, [feature], values)
            solved.append(alpha)
            return piece

        handles = [
            node.register_hook(lambda grad_inputs, _, parts=parts, slot=slot: parts.append(grad_inputs[slot]))
            for parts, nodes in zip(shares, consumers)
            for node, slot in nodes
        ]
        handles.append(feature.register_hook(combine))
        try:
            losses.sum().backward(seed, retain_graph=retain_graph)
        finally:
            for handle in handles:
                handle.remove()
        return solved[0]

    # ------------------------------------------------------------------------------- state
    def _discard_pending(self) -> None:
        self._pending_moments = None

    def _advance(self, values: Tensor) -> None:
        if self._pending_moments is None:
            return
        exp_avg, exp_avg_sq = self._pending_moments
        self._pending_moments = None
        finite = all_finite(values) & all_finite(exp_avg_sq)  # inf/NaN gradients never enter the moments
        self._exp_avg.copy_(torch.where(finite, exp_avg, self._exp_avg))
        self._exp_avg_sq.copy_(torch.where(finite, exp_avg_sq, self._exp_avg_sq))
        self._moment_steps += finite

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "normalization": self.normalization, "moments": self.moments, "heads": self.heads}

    def _method_state(self) -> dict[str, Any]:
        return {
            "moment_steps": self._moment_steps.clone(),
            "exp_avg": self._exp_avg.clone(),
            "exp_avg_sq": self._exp_avg_sq.clone(),
        }

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self._moment_steps.copy_(state["moment_steps"])
        self._exp_avg.copy_(state["exp_avg"])
        self._exp_avg_sq.copy_(state["exp_avg_sq"])
        self._pending_moments = None

    def _state_rules(self, state: dict[str, Any]) -> dict[str, tuple[bool | Tensor, str]]:
        second = state["exp_avg_sq"]
        return {
            **super()._state_rules(state),
            "moment_steps": (whole_numbers(state["moment_steps"]), "a non-negative whole number"),
            "exp_avg_sq": ((torch.isfinite(second) & (second >= 0)).all(), "finite and non-negative"),
        }


def _objective_roots(losses: Tensor) -> list[Tensor | GradientEdge | None]:
    """Where each objective's backward pass starts.

    When ``losses`` is a ``torch.stack`` of the objectives' losses (as
    :class:`~torch_moo.MultiObjectiveOptimizer` builds it from a sequence), the stack's inputs:
    a pass from one of them reaches only the parameters that objective depends on, so a task
    head gets no gradient (``None``) from the other tasks. Otherwise ``losses[i]``, whose pass
    reaches every parameter ``losses`` depends on (zeros where objective ``i`` does not).
    ``None`` for an entry that needs no gradient.
    """
    node = losses.grad_fn
    if node is not None and node.name() == "StackBackward0" and len(node.next_functions) == losses.numel():
        return [None if fn is None else GradientEdge(fn, nr) for fn, nr in node.next_functions]
    return list(losses)


def _check_reached(reached: Sequence[bool]) -> None:
    for i, hit in enumerate(reached):
        if not hit:
            raise ValueError(
                f"objective {i} does not depend on the features; the representation mode needs every "
                "objective to pass through them (call backward(losses) without features instead)"
            )


def _feature_consumers(
    roots: Sequence[Tensor | GradientEdge | None], feature: Tensor
) -> list[list[tuple[Any, int]]] | None:
    """For each objective, the autograd nodes on its paths that take ``feature`` as an input, with the slot.

    ``None`` when the objectives' shares of the feature gradient cannot be told apart in one
    backward pass: a node that consumes ``feature`` lies on two objectives' paths (a layer
    shared after the representation), or the roots are not the stack's inputs (see
    :func:`_objective_roots`). The walk stops at ``feature``, so it covers the heads, not the trunk.
    """
    target = get_gradient_edge(feature)
    owner: dict[Any, int] = {}
    found: list[list[tuple[Any, int]]] = []
    for i, root in enumerate(roots):
        mine: list[tuple[Any, int]] = []
        found.append(mine)
        if not isinstance(root, GradientEdge):
            if root is None:
                continue
            return None
        if root.node is target.node:
            return None
        stack, seen = [root.node], {root.node}
        while stack:
            node = stack.pop()
            for slot, (child, output_nr) in enumerate(node.next_functions):
                if child is target.node and output_nr == target.output_nr:
                    if owner.setdefault(node, i) != i:
                        return None
                    mine.append((node, slot))
                elif child is not None and child not in seen:
                    seen.add(child)
                    stack.append(child)
    return found


def _gradients(root: Tensor | GradientEdge | None, inputs: Sequence[Tensor], seed: Tensor, retain_graph: bool) -> tuple:
    """The gradient of one objective (``seed`` times it) with respect to ``inputs``; ``None`` where it
    does not reach; dense where autograd gives a sparse one (``nn.Embedding(sparse=True)``)."""
    if root is None:
        return (None,) * len(inputs)
    grads = torch.autograd.grad(root, inputs, grad_outputs=seed, retain_graph=retain_graph, allow_unused=True)
    return tuple(None if g is None else _strided(g) for g in grads)


def _strided(tensor: Tensor) -> Tensor:
    """``tensor`` in the dense (strided) layout; a sparse COO one with its duplicate entries summed."""
    return tensor if tensor.layout == torch.strided else tensor.to_dense()


def _jacobian(rows: Sequence[Sequence[Tensor | None]], tensors: Sequence[Tensor], indices: Sequence[int]) -> Tensor:
    """The ``k x n`` matrix of the objectives' gradients over ``tensors[indices]``, flattened (zeros where unreached).

    One ``cat`` into one buffer: building rows first and stacking them costs a second copy, and
    on the CPU the fresh allocations page-fault (``benchmarks/README.md``, "MultiGradientDescent").
    """
    reference, zero = tensors[0], tensors[0].new_zeros(())
    pieces = [
        zero.expand(tensors[j].numel()) if (gradient := row[j]) is None else gradient.reshape(-1).to(reference.dtype)
        for row in rows
        for j in indices
    ]
    return torch.cat(pieces).view(len(rows), -1) if pieces else reference.new_zeros(len(rows), 0)


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Add ``grads`` into ``.grad``, as ``Tensor.backward`` does."""
    for p, g in zip(params, grads):
        g = g.view_as(p)
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.add_(g)
