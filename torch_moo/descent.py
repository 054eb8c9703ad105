"""JacobianDescent: the objectives' gradients combined by a Gram-space weighting rule, written into ``.grad``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torch_moo import engine
from torch_moo._sharding import by_shard_weight, is_sharded, local, sharded_like
from torch_moo._validation import Nonfinite, all_finite, check_choice, check_real
from torch_moo.base import MultiObjectiveOptimizer
from torch_moo.distributed import mean_across_ranks, sum_across_ranks, world_size
from torch_moo.engine import HEAD_GRADIENTS, HeadGradient, Weigh
from torch_moo.functional.mgda import _gram_float64
from torch_moo.gramian import GramianEngine
from torch_moo.weightings import GramWeighting

__all__ = ["JacobianDescent"]

_MOMENT_EPS = 1e-8  # Adam's epsilon in the per-objective moments' denominator
MOMENT_KEYS = ("objective_exp_avg", "objective_exp_avg_sq", "objective_step")
"""The per-parameter optimizer state of ``moments``: each objective's Adam moments, shape ``(k, *p.shape)``,
and their step count."""


class JacobianDescent(MultiObjectiveOptimizer):
    r"""Jacobian descent: the update :math:`J^\top w` with :math:`w` from the Gram matrix :math:`G = J J^\top`.

    :math:`J` holds the objectives' gradients as rows; a
    :class:`~torch_moo.weightings.GramWeighting` (:class:`~torch_moo.weightings.MGDA`,
    :class:`~torch_moo.weightings.UPGrad`, :class:`~torch_moo.weightings.PCGrad`, ...) turns
    :math:`G` (float64, at its true scale) into :math:`w`; :math:`J^\top w` goes into ``.grad``
    and the base optimizer steps along it. Two modes, chosen per call (:mod:`torch_moo.engine`):

    * ``opt.backward(losses)``: the gradients over every parameter, one backward pass per
      objective. A parameter that two or more objectives reach is shared and gets
      :math:`J^\top w`; one that a single objective reaches (a task head) gets that objective's
      own gradient (``heads="weighted"``: :math:`w_i` times it); one that none reaches keeps its
      ``.grad``. Sparse gradients are densified. Under ``DistributedDataParallel`` call it under
      ``model.no_sync()``: the rows are averaged across ranks here (one all-reduce).
    * ``opt.backward(losses, features=z)``: :math:`J` holds the gradients with respect to the
      shared representation ``z`` (MGDA-UB's shortcut, Sener & Koltun 2018), and one backward
      pass of :math:`\sum_i L_i` runs with the gradient at ``z`` replaced by :math:`J^\top w`.

    ``trunk=module`` names the module that holds the shared parameters (every other parameter is a
    task head's). Forward hooks on its layers then let the full mode take the cheaper of two paths
    per call: the Jacobian path above, or :class:`~torch_moo.gramian.GramianEngine`, which forms
    :math:`G` from the layers' activations and output gradients without the :math:`k \times P`
    Jacobian and writes :math:`J^\top w` by one more backward pass. The engine is taken when the
    layers' outputs in the step are no more entries than the trunk's parameters (:math:`r \le 1`:
    for an MLP, a batch below the layers' mean fan-in; measured 1.1 to 13 times faster with 2 to
    32 times less memory there, slower above, see :mod:`torch_moo.gramian`), in a single process
    (under :mod:`torch.distributed` the Gram matrix of the averaged gradients needs the rows).

    With DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism, both) the full mode takes
    one ``backward`` per objective, which the sharding engine reduces into each rank's shard of
    ``.grad``, sums the shards' contributions to :math:`G` in one float64 all-reduce of
    :math:`k \times k` entries, and writes :math:`J^\top w` on the local shards: no gradient is
    gathered (:func:`torch_moo.engine.combine_sharded`). A parameter outside the optimizer that the
    losses reach receives every objective's gradient there. The representation mode runs as it is.

    ``moments=(beta1, beta2)`` keeps Adam's moment estimates for every objective separately
    (Reiners, Klamroth & Stiglmayr, 2020), as per-parameter optimizer state
    (``opt.state[p]["objective_exp_avg"]``, shape ``(k, *p.shape)``, which a
    :class:`~torch_moo.SparsityController` resets with the base's state on regrowth), and
    combines the objectives' Adam directions :math:`u_i = \hat m_i / (\sqrt{\hat v_i} + 10^{-8})`
    instead of their gradients. Pair it with ``base=torch.optim.SGD``; full mode only, one
    :meth:`backward` per :meth:`step`.

    Args:
        params: parameters or parameter groups, or a built optimizer (the base).
        num_objectives: number of objectives :math:`k`.
        weighting: a :class:`~torch_moo.weightings.GramWeighting`.
        heads: what a parameter one objective alone reaches receives: ``"own"`` (its gradient)
            or ``"weighted"`` (:math:`w_i` times it).
        moments: ``(beta1, beta2)`` for per-objective Adam moments, or ``None``.
        trunk: the module holding the shared parameters, for the Gramian path; ``None``: the
            Jacobian path always.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    Raises:
        ValueError: parameters on several devices (model parallelism): the objectives' gradients
            are rows of one matrix on one device; the loss-space methods take such models.


    Example:
        >>> from torch_moo.weightings import UPGrad
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(2))
        >>> opt = JacobianDescent(
        ...     [*trunk.parameters(), *heads.parameters()], num_objectives=2, weighting=UPGrad(), lr=1e-2
        ... )
        >>> x, y = torch.randn(32, 4), torch.randn(32, 2)
        >>> z = trunk(x).relu()
        >>> losses = torch.stack([(head(z).squeeze(1) - y[:, i]).pow(2).mean() for i, head in enumerate(heads)])
        >>> opt.backward(losses).shape
        torch.Size([2])
        >>> opt.step()
    """

    _weighting_kind = GramWeighting
    weighting: GramWeighting

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        weighting: GramWeighting,
        heads: HeadGradient = "own",
        moments: tuple[float, float] | None = None,
        trunk: nn.Module | None = None,
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        if trunk is not None and not isinstance(trunk, nn.Module):
            raise TypeError(f"trunk must be None or an nn.Module (the shared layers), got {type(trunk).__name__}")
        if moments is not None:
            if not (isinstance(moments, Sequence) and len(moments) == 2):
                raise TypeError(f"moments must be None or a pair (beta1, beta2), got {moments!r}")
            for name, beta in zip(("beta1", "beta2"), moments):
                if not 0.0 <= check_real(f"moments {name}", beta) < 1.0:
                    raise ValueError(f"moments {name} must be in [0, 1), got {beta}")
            moments = (float(moments[0]), float(moments[1]))
        self.moments = moments
        self.heads: HeadGradient = check_choice("heads", heads, HEAD_GRADIENTS)
        super().__init__(
            params, num_objectives=num_objectives, weighting=weighting, nonfinite=nonfinite, base=base, **base_kwargs
        )
        devices = sorted({str(p.device) for p in self._params()})
        if len(devices) > 1:
            raise ValueError(
                f"{type(self).__name__} needs its parameters on one device, got {', '.join(devices)}: the "
                "objectives' gradients are combined as rows of one matrix (a loss-space method, such as "
                "WeightedLossDescent, takes parameters on several devices)"
            )
        self._sharded = any(is_sharded(p) for p in self._params())
        self._stationarity = torch.zeros((), dtype=torch.float64, device=self._device)
        self._gramian = None if trunk is None else GramianEngine(trunk)

    @property
    def stationarity(self) -> Tensor:
        r""":math:`\|J^\top w\|^2` at the last :meth:`backward`, over the shared parameters (or the
        features); with :class:`~torch_moo.weightings.MGDA` (no normalisation) the KKT residual of
        Pareto stationarity, 0 exactly at a Pareto-stationary point. A float64 scalar: it is the
        square of the gradients' scale, which float32 cannot hold for gradients above about
        :math:`10^{19}` or below :math:`10^{-19}`."""
        return self._stationarity.clone()

    def _params(self) -> list[Tensor]:
        """The parameters that require grad, each once (the first occurrence's order): a parameter
        listed twice (torch.optim warns) gets its gradient computed and written once."""
        return list({id(p): p for group in self.param_groups for p in group["params"] if p.requires_grad}.values())

    def _weigh(self, values: Tensor, scale: Tensor | None = None) -> Weigh:
        """The engine's ``weigh``: the rule's weights, recording :math:`w^\\top G w` (in place). ``scale``
        is a GradScaler's factor on the gradients, taken off the Gram matrix (exactly: a power of two)
        for the rules whose weights depend on its scale."""

        def weigh(gram: Tensor, dtype: torch.dtype) -> Tensor:
            if scale is not None:
                gram = gram / scale.to(gram.dtype).square()
            weights = self.weighting(gram, values).to(dtype)
            applied = weights.to(gram.dtype)
            self._stationarity.copy_(applied @ gram @ applied)
            return weights

        return weigh

    def _combine(self, losses, values, *, features, scaler, retain_graph):
        seed = losses.new_ones(())
        if scaler is not None:
            seed = scaler.scale(seed).reshape(()).to(losses.dtype)
        gramian = self._gramian
        if gramian is not None:
            alone = world_size() == 1 and not self._sharded
            if features is None and self.moments is None and alone and gramian.output_ratio() <= 1:
                return self._combine_gramian(gramian, losses, seed, values, retain_graph)
            gramian.clear()
        weigh = self._weigh(values, None if scaler is None else seed)
        if features is not None:
            if self.moments is not None:
                raise ValueError("moments need the per-parameter gradients: call backward(losses) without features")
            return engine.combine_features(losses, features, seed, weigh, heads=self.heads, retain_graph=retain_graph)
        if self.moments is not None:
            return self._combine_moments(losses, seed, weigh, retain_graph, seed if scaler is not None else None)
        combine = engine.combine_sharded if self._sharded else engine.combine_parameters
        return combine(losses, self._params(), seed, weigh, heads=self.heads, retain_graph=retain_graph)

    def _combine_gramian(
        self, gramian: GramianEngine, losses: Tensor, seed: Tensor, values: Tensor, retain_graph: bool
    ) -> Tensor:
        """The Gramian path: :math:`G` from the trunk's layers, then :math:`J^\\top w` into the trunk's
        ``.grad`` by one backward pass of :math:`\\sum_i w_i L_i`, and the heads' gradients (their
        own, or weighted) by one more through the heads alone."""
        weights = self._weigh(values)(gramian.gram(losses), losses.dtype)
        trunk = {id(p) for p in gramian.parameters}
        params = self._params()
        shared = [p for p in params if id(p) in trunk]
        heads = [p for p in params if id(p) not in trunk]
        weighted = (weights * seed).to(losses.dtype)
        if self.heads == "weighted":
            shared, heads = shared + heads, []
        if shared:
            torch.autograd.backward(losses, weighted, retain_graph=retain_graph or bool(heads), inputs=shared)
        if heads:
            torch.autograd.backward(losses, seed.expand_as(losses), retain_graph=retain_graph, inputs=heads)
        return weights

    def _combine_moments(
        self, losses: Tensor, seed: Tensor, weigh: Weigh, retain_graph: bool, scale: Tensor | None
    ) -> Tensor:
        """The per-objective Adam directions combined; ``scale`` is GradScaler's factor, taken off the
        gradients before the moments and put back on the direction that ``scaler.step`` unscales."""
        pending = self._pending
        if pending.moments is not None:
            raise RuntimeError("moments take one backward() per step(): call step() (or zero_grad()) first")
        params = self._params()
        pieces, reach = self._objective_pieces(losses, params, seed, retain_graph, scale)
        beta1, beta2 = self.moments  # type: ignore[misc]
        k = self.num_objectives
        pending.moments = {}
        directions = []
        for p, piece in zip(params, pieces):
            state = self.state.get(p, {})
            seen = "objective_exp_avg" in state
            first, second = (
                (local(state["objective_exp_avg"]).view(k, -1), local(state["objective_exp_avg_sq"]).view(k, -1))
                if seen
                else (torch.zeros_like(piece),) * 2  # a parameter's first step
            )
            exp_avg = torch.lerp(first, piece, 1 - beta1)
            exp_avg_sq = torch.lerp(second, piece.square(), 1 - beta2)
            pending.moments[p] = (exp_avg, exp_avg_sq)
            t = state["objective_step"] + 1 if seen else torch.ones((), device=piece.device)
            directions.append((exp_avg / (1 - beta1**t)) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + _MOMENT_EPS))
        shared = [(u, p) for u, p, objectives in zip(directions, params, reach) if len(objectives) > 1]
        weights = weigh(self._shared_gram(shared, pieces[0]), pieces[0].dtype)
        # shared entries: sum_i w_i u_i; an entry one objective reaches: that objective's u_i
        for p, u, objectives in zip(params, directions, reach):
            if objectives:
                if len(objectives) > 1:
                    direction = weights @ u
                else:
                    (direction,) = engine.head_gradients(self.heads, weights, objectives, [u[objectives[0]]])
                direction = direction if scale is None else direction * scale
                if is_sharded(p):
                    direction = sharded_like(direction.view_as(local(p.detach())), p)
                engine.accumulate([p], [direction])
        return weights

    def _objective_pieces(
        self, losses: Tensor, params: list[Tensor], seed: Tensor, retain_graph: bool, scale: Tensor | None
    ) -> tuple[list[Tensor], list[list[int]]]:
        """Each parameter's ``k x n`` block of the Jacobian (its local shard's, for a DTensor; a plain
        parameter's averaged across ranks) divided by ``scale`` if given, and which objectives reach it."""
        if not self._sharded:
            rows = engine.objective_gradients(losses, params, seed, retain_graph)
            matrix = mean_across_ranks(engine.jacobian(rows, params, range(len(params))))
            if scale is not None:
                matrix = matrix / scale
            return list(matrix.split([p.numel() for p in params], dim=1)), engine.reached(rows)
        rows = engine.backward_gradients(losses, params, seed, retain_graph)
        shards = [local(p.detach()) for p in params]
        local_rows = [tuple(None if g is None else local(g) for g in row) for row in rows]
        plain = [j for j, p in enumerate(params) if not is_sharded(p)]
        averaged = mean_across_ranks(engine.jacobian(local_rows, shards, plain))  # as under DDP
        pieces = dict(zip(plain, averaged.split([shards[j].numel() for j in plain], dim=1)))
        pieces |= {j: engine.jacobian(local_rows, shards, [j]) for j, p in enumerate(params) if is_sharded(p)}
        blocks = [pieces[j] if scale is None else pieces[j] / scale for j in range(len(params))]
        return blocks, engine.reached(rows)

    def _shared_gram(self, shared: list[tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
        """The float64 Gram matrix of the shared parameters' directions ``(u, p)``; with DTensor parameters,
        each local block weighted by :func:`~torch_moo._sharding.shard_weight` and summed over the ranks."""
        gram = _gram_float64([u for u, p in shared if not is_sharded(p)] or [like[:, :0]])
        if not self._sharded:
            return gram
        groups = by_shard_weight([p for _, p in shared])
        blocks = (c * _gram_float64([shared[i][0] for i in group]) for c, group in groups.items())
        return gram + sum_across_ranks(sum(blocks, torch.zeros_like(gram)))

    def _commit(self, values: Tensor) -> None:
        """Store the step's moments where they exist, before the base step: a controller's regrowth in the
        base's pre-step hooks then resets them. Moments seen for the first time are created after the
        base step (:meth:`_advance`): a base such as Adam initialises its state only when it finds
        none. Inf/NaN gradients never enter the moments."""
        moments = self._pending.moments
        if moments is None:
            return
        finite = all_finite(values) & torch.stack([all_finite(second) for _, second in moments.values()]).all()
        self._pending.moments = {}
        for p, (exp_avg, exp_avg_sq) in moments.items():
            state = self.state.get(p, {})
            if "objective_exp_avg" not in state:
                self._pending.moments[p] = (exp_avg, exp_avg_sq)
                continue
            for key, new in (("objective_exp_avg", exp_avg), ("objective_exp_avg_sq", exp_avg_sq)):
                kept = local(state[key])
                kept.copy_(torch.where(finite, new.view_as(kept), kept))
            state["objective_step"] += finite
        self._pending.moments_finite = finite

    def _advance(self, values: Tensor) -> None:
        """Create the moments of parameters seen for the first time (see :meth:`_commit`)."""
        finite, moments = self._pending.moments_finite, self._pending.moments
        if finite is None or moments is None:
            return
        for p, (exp_avg, exp_avg_sq) in moments.items():
            state = self.state[p]
            state["objective_exp_avg"] = self._moment(p, torch.where(finite, exp_avg, 0.0))
            state["objective_exp_avg_sq"] = self._moment(p, torch.where(finite, exp_avg_sq, 0.0))
            state["objective_step"] = finite.to(torch.float32).clone()

    def _init_state(self) -> bool:
        """Zero moments for the parameters that have none yet, as a checkpoint to load into needs them
        (:mod:`torch_moo.checkpoint`); whether any were made. A step from zero moments at step 0 is the
        first step."""
        if self.moments is None:
            return False
        made = False
        for p in self._params():
            state = self.state[p]
            if "objective_exp_avg" not in state:
                shard = local(p.detach())
                for key in ("objective_exp_avg", "objective_exp_avg_sq"):
                    state[key] = self._moment(p, shard.new_zeros(self.num_objectives, shard.numel()))
                state["objective_step"] = torch.zeros((), device=shard.device)
                made = True
        return made

    def _moment(self, p: Tensor, values: Tensor) -> Tensor:
        """``values`` (``k`` rows over ``p``'s local entries) as ``p``'s moment state of shape ``(k, *p.shape)``;
        for a DTensor ``p``, a DTensor sharded like ``p`` along the parameter's dimensions."""
        if not is_sharded(p):
            return values.view(self.num_objectives, *p.shape)
        moment = torch.stack([torch.zeros_like(p.detach())] * self.num_objectives)  # DTensor placements, shifted
        local(moment).copy_(values.view_as(local(moment)))
        return moment

    def _settings(self) -> dict[str, Any]:
        return {"weighting": type(self.weighting).__name__, **self.weighting.config(), **self._mode()}

    def _mode(self) -> dict[str, Any]:
        """The settings of how :math:`J^\\top w` is formed, for the configuration."""
        return {"moments": self.moments, "heads": self.heads, "trunk": self._gramian is not None}
