r"""``SparsityController``: weight masks kept exact on any optimizer, through step hooks."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torch_moo._layout import DENSE, Layout, parameter_layouts
from torch_moo._sharding import full, is_sharded, local, local_part, sharded_like
from torch_moo._validation import (
    check_choice,
    check_count,
    check_real,
    check_saved_config,
    check_saved_count,
    check_saved_keys,
    describe,
)
from torch_moo.base import MultiObjectiveOptimizer
from torch_moo.distributed import broadcast_from_first
from torch_moo.objectives import sparsifiable_parameters
from torch_moo.sparsity.distribution import layer_counts
from torch_moo.sparsity.export import to_sparse
from torch_moo.sparsity.masks import (
    STRUCTURES,
    drop_and_grow,
    expand,
    exploration_bonus,
    top_count,
    unit_count,
    unit_norms,
)
from torch_moo.sparsity.schedules import cosine_fraction

__all__ = ["SparsityController"]

REGROWTH = ("random", "gradient", "exploration")
_STATE_KEYS = {"config", "names", "shapes", "step", "active", "masks", "active_updates", "generator"}
# id(parameter) -> the attached controller masking it. Weak: a controller that is garbage (its
# optimizer, which holds its hooks, gone) leaves it; while it lives, it keeps its parameters
# alive, so their ids are not reused.
_ATTACHED: weakref.WeakValueDictionary[int, SparsityController] = weakref.WeakValueDictionary()
Schedule = Callable[[int], float]


class SparsityController:
    r"""Prune and regrow weight masks on any optimizer; pruned weights are exactly zero after every step.

    The controller attaches to the optimizer's step hooks (to the base optimizer of a torch_moo
    optimizer, and a re-masking hook to the torch_moo optimizer itself, whose exploration steps
    may move the weights outside the base's step), so the training loop is unchanged; :meth:`remove`
    detaches it. Before each step
    it zeroes the gradients of pruned weights (and, on an update step, changes the topology
    first); after the step it multiplies the weights by their masks. Whenever a unit is pruned
    or grown, its entries in the optimizer's state (momentum, Adam moments) are reset to zero,
    so nothing revives a pruned weight. A step that :class:`torch.amp.GradScaler` skips never
    calls the hooks, nor does one that a torch_moo optimizer skips for non-finite losses
    (``nonfinite="skip"``): masks and counters stay as they were.

    Modes:

    * **Dynamic sparse training** (``regrow`` set; ``sparsity`` a number): a random initial
      topology with the layer budgets of ``distribution``; every ``update_every`` steps until
      ``stop_after``, each layer drops the fraction :math:`f_t` of its active units with the
      smallest magnitude and grows as many inactive ones, so its active count never changes.
      :math:`f_t = \frac{\alpha}{2}(1 + \cos(\pi t / T))` with ``drop_schedule="cosine"`` and
      :math:`T` = ``stop_after`` (a constant :math:`\alpha` without ``stop_after``). Growth
      scores: ``"random"`` (SET, Mocanu et al. 2018), ``"gradient"`` (RigL, Evci et al. 2020:
      :math:`|\partial L / \partial w_j|` of the inactive weights, which are zero but have dense
      gradients), ``"exploration"`` (DST-EE, Huang et al. 2023):

      .. math::

          s_j = |\partial L / \partial w_j| + c \sqrt{\ln t / (N_j + 1)},

      :math:`N_j` the number of updates unit :math:`j` has been active in and :math:`c` =
      ``exploration``; :math:`c = 0` gives exactly the gradient masks. Grown weights start at 0.
    * **Pruning** (``regrow=None``): the largest-magnitude units are kept. A number prunes once,
      when the controller attaches (then masked training); a schedule such as
      :class:`~torch_moo.sparsity.CubicSparsity` prunes gradually every ``update_every`` steps
      (gradual magnitude pruning, Zhu & Gupta 2017). ``threshold`` additionally prunes, after
      every step, the units whose magnitude is at most it (the intra-training pruning of
      Reiners, Klamroth & Stiglmayr, arXiv:2008.13590); pruned units stay pruned.

    Units are single weights or, with ``structure``, whole rows (output neurons and channels)
    or columns (input neurons and channels), scored by their :math:`\ell_2` norm. With
    ``model``, where they lie follows the module that owns the weight: dimension 0 holds the
    outputs of ``nn.Linear`` and ``nn.ConvNd`` weights (``(out, in / groups, *kernel)``) and the
    inputs of ``nn.ConvTransposeNd`` weights (``(in, out / groups, *kernel)``) and ``nn.Embedding``
    tables (a lookup is a linear map of the one-hot index: a row of the table is an input
    unit, a column an output feature); with ``groups`` > 1 every channel along dimension 1 is its own
    unit. A parameter given by ``params`` that ``model`` does not own, and every parameter
    without ``model``, is taken to be laid out ``(out, in, ...)`` like a ``nn.Linear`` weight:
    pass ``model`` for transposed convolutions, embeddings and grouped convolutions.
    Gradients may be sparse (``nn.Embedding(sparse=True)`` with :class:`torch.optim.SparseAdam`).

    Under :mod:`torch.distributed` every rank applies rank 0's masks (one broadcast per
    topology update); ties in every score are broken by index, so equal scores give equal masks.
    The threshold rule needs no communication: under DDP the weights are equal on every rank.

    Parameters held as DTensors (FSDP2's ``fully_shard``, tensor parallelism, both on a 2-D mesh)
    are masked shard by shard: element masks, active-update counters and multipliers have the
    shape of the local shard (``p.to_local()``), and every step's work (re-masking weights and
    gradients, the element threshold rule, optimizer-state resets: Adam's moments are DTensors
    too) runs in the same foreach ops on the local shards. Structured masks (one entry per row or
    column) are small and held whole on every rank. A decision (the initial topology, an update,
    the structured threshold rule, whose unit norms cross shard boundaries) gathers what it needs
    one layer at a time (its weights, gradients, masks, counters), decides exactly as one
    process would on the full tensors, ties included, and keeps this rank's piece: peak
    transient memory is a few full copies of the largest masked layer. Random draws are rank
    0's (one broadcast of the layer's mask). As under DDP, every rank masks the same parameters
    (a copy or a piece of each: a DTensor's mesh may be a sub-mesh, such as the data-parallel
    one of a 2-D mesh). :attr:`masks` are then DTensors with the parameters' placements and
    :meth:`state_dict` saves them so (:mod:`torch.distributed.checkpoint` reshards them to another
    world size); :meth:`sparsity`, :meth:`layer_sparsity`, :meth:`coverage` and
    :meth:`load_state_dict` gather counts, so every rank must call them. :meth:`export` needs
    whole weights: gather them into a plain model first.

    On an accelerator no step waits for the device (no host read, topology updates included: the
    controller keeps each layer's active count); between updates a step adds two foreach
    multiplications, the threshold rule six more foreach ops.
    Each mask stays on its parameter's device.

    ``copy.deepcopy((model, optimizer, controller))`` (or pickling the three together) gives a
    copy whose controller masks the copied model through the copied optimizer's steps, as the
    original does. Copied alone, an optimizer keeps no hooks (as in torch.optim), so no
    controller reaches the copy: copy the controller with it.

    Args:
        optimizer: any :class:`torch.optim.Optimizer` or torch_moo optimizer.
        model: the model, for parameter names and :meth:`export`; by default its weight
            matrices and kernels are masked (:func:`~torch_moo.objectives.sparsifiable_parameters`).
        params: the parameters to mask instead (each must be in ``optimizer``); without
            ``model`` or ``params``, every parameter of two or more dimensions in ``optimizer``.
        sparsity: the fraction of units pruned, in ``[0, 1)``, or a schedule ``step -> sparsity``
            (pruning only).
        distribution: ``"erk"``, ``"uniform"`` or a dict ``{name: sparsity}`` that overrides
            named layers (the others are uniform); see :func:`~torch_moo.sparsity.layer_counts`.
        structure: ``"element"``, ``"row"`` or ``"column"``.
        update_every: steps between topology updates.
        drop_fraction: :math:`\alpha`, the fraction of active units a regrowth update moves.
        drop_schedule: ``"cosine"`` or ``"constant"``.
        stop_after: no topology update at or after this step (``None``: never stops).
        regrow: ``None``, ``"random"``, ``"gradient"`` or ``"exploration"``.
        exploration: the coefficient :math:`c` (``"exploration"`` only; default ``1e-3``).
        threshold: prune after every step the units with magnitude at most this (pruning only).
        generator: the random generator of the initial topology and of random regrowth (on the
            parameters' device), saved in :meth:`state_dict`; default the global one.
        state_dict: a :meth:`state_dict` to resume from: its masks are the starting topology
            (:meth:`load_state_dict` at construction). Use it when the weights are restored
            first (as Lightning does before ``configure_optimizers``): a controller built
            without it masks them by a new topology, which loses the weights outside it.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        >>> sparse = SparsityController(opt, model=model, sparsity=0.75, regrow="gradient", update_every=2)
        >>> for _ in range(4):
        ...     opt.zero_grad()
        ...     model(torch.randn(4, 8)).square().mean().backward()
        ...     opt.step()
        >>> [int((w != 0).sum()) for w in (model[0].weight, model[2].weight)]  # ERK budgets
        [23, 17]
        >>> round(sparse.sparsity(), 3)
        0.75
    """

    _boolean: list[Tensor]  # the masks (read through _masks)
    _kept: list[Tensor] | None  # the threshold rule's newest masks as float multipliers, until _masks is read

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        model: nn.Module | None = None,
        params: Iterable[Tensor] | None = None,
        sparsity: float | Schedule,
        distribution: str | Mapping[str, float] = "erk",
        structure: str = "element",
        update_every: int = 100,
        drop_fraction: float = 0.3,
        drop_schedule: str = "cosine",
        stop_after: int | None = None,
        regrow: str | None = None,
        exploration: float | None = None,
        threshold: float | None = None,
        generator: torch.Generator | None = None,
        state_dict: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.regrow = None if regrow is None else check_choice("regrow", regrow, REGROWTH)
        self.structure = check_choice("structure", structure, STRUCTURES)
        self.update_every = check_count("update_every", update_every)
        self.drop_fraction = _fraction("drop_fraction", drop_fraction, upper=1.0, closed=True)
        self.drop_schedule = check_choice("drop_schedule", drop_schedule, ("cosine", "constant"))
        self.stop_after = None if stop_after is None else check_count("stop_after", stop_after)
        if callable(sparsity):
            if self.regrow is not None:
                raise ValueError(
                    f"a sparsity schedule prunes gradually and cannot be combined with regrow={self.regrow!r} "
                    "(dynamic sparse training keeps a constant sparsity)"
                )
            self._schedule: Schedule | None = sparsity
            target = _fraction("sparsity(0)", sparsity(0))
        else:
            self._schedule = None
            target = _fraction("sparsity", sparsity)
        self._target = target
        if exploration is not None and self.regrow != "exploration":
            raise ValueError(f"exploration is the coefficient of regrow='exploration', got regrow={self.regrow!r}")
        self.exploration = check_real("exploration", 1e-3 if exploration is None else exploration, minimum=0.0)
        if threshold is not None and self.regrow is not None:
            raise ValueError(f"threshold prunes without regrowth; it cannot be combined with regrow={self.regrow!r}")
        self.threshold = None if threshold is None else check_real("threshold", threshold, minimum=0.0, strict=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

        self._optimizer = optimizer.base if isinstance(optimizer, MultiObjectiveOptimizer) else optimizer
        self.model = model
        self._params, self.names = _masked_parameters(self._optimizer, model, params)
        for name, param in zip(self.names, self._params):
            other = _ATTACHED.get(id(param))
            if other is not None:
                raise ValueError(
                    f"{name} (shape {tuple(param.shape)}) is already masked by {other!r}: two controllers on one "
                    "parameter would combine their masks and both report the wrong sparsity; "
                    "call remove() on that one first"
                )
        self._layouts = _layouts(model, self._params, self.structure)
        for name, param in zip(self.names, self._params):
            if self.structure != "element" and param.dim() < 2:
                raise ValueError(
                    f"structure={self.structure!r} needs parameters of 2+ dimensions; "
                    f"{name} has shape {tuple(param.shape)}"
                )
        # element masks of a DTensor are held per local shard; every other mask whole
        self._pieces = [is_sharded(p) and self.structure == "element" for p in self._params]
        self.distribution = _check_distribution(distribution, self.names)
        self.step_count = 0
        self._prepared = False

        self._active = self._counts(target)
        if state_dict is not None:  # placeholders of the right shapes: load_state_dict replaces them
            self._masks = [
                torch.ones(self._held_shape(i), dtype=torch.bool, device=p.device) for i, p in enumerate(self._params)
            ]
        elif self.regrow is None:
            with torch.no_grad():  # full() of a parameter: no graph
                self._masks = [
                    self._own(i, top_count(unit_norms(full(p), self.structure, layout), count))
                    for i, (p, layout, count) in enumerate(zip(self._params, self._layouts, self._active))
                ]
        else:
            self._masks = [
                self._own(
                    i,
                    top_count(
                        torch.rand(_unit_shape(p, self.structure, layout), generator=generator, device=p.device),
                        count,
                    ),
                    drawn=True,
                )
                for i, (p, layout, count) in enumerate(zip(self._params, self._layouts, self._active))
            ]
        self._active_updates = (
            None if self.regrow is None else [torch.zeros_like(m, dtype=torch.int32) for m in self._masks]
        )
        if state_dict is None:
            self._masks = _broadcast(self._masks, self._params)
            self._apply_topology(previous=None)
        else:
            self.load_state_dict(state_dict)
        self._wrapper = optimizer  # the optimizer given: a torch_moo optimizer, or self._optimizer itself
        self._attach()

    @property
    def _masks(self) -> list[Tensor]:
        """The boolean unit masks; after a threshold step, made from its float masks when first read."""
        if self._kept is not None:
            self._boolean, self._kept = [k > 0 for k in self._kept], None
        return self._boolean

    @_masks.setter
    def _masks(self, masks: list[Tensor]) -> None:
        self._boolean, self._kept = masks, None

    def _attach(self) -> None:
        """Register the step hooks (at construction, and on a copy: see :meth:`__setstate__`)."""
        self._handles = [
            self._optimizer.register_step_pre_hook(self._pre_step),
            self._optimizer.register_step_post_hook(self._post_step),
        ]
        if self._optimizer is not self._wrapper:
            # A torch_moo optimizer's step may move the weights outside its base's step (the
            # exploration step of ParetoTangentExplorer): mask them again after every step.
            self._handles.append(self._wrapper.register_step_post_hook(self._remask))
        _ATTACHED.update((id(p), self) for p in self._params)

    def __getstate__(self) -> dict[str, Any]:
        # The hook handles stay behind, as torch.optim leaves an optimizer's hooks behind when it
        # is copied or pickled; the copy attaches itself to the copied optimizer in __setstate__.
        state = {key: value for key, value in self.__dict__.items() if key != "_handles"}
        state["_attached"] = bool(self._handles)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a copy (:func:`copy.deepcopy`, unpickling) and attach it, if the original was attached,
        to its optimizer: ``copy.deepcopy((model, optimizer, controller))`` masks the copied model
        through the copied optimizer's steps."""
        state = dict(state)
        attached = state.pop("_attached")
        self.__dict__.update(state)
        self._handles = []
        if attached:
            self._attach()

    # ------------------------------------------------------------------------------ hooks
    def _pre_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # ``args`` starts with the optimizer itself: ``step(self, closure=None)``
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is None:
            self._prepare()
            return None

        def masked_closure() -> Any:
            loss = closure()
            self._prepare()
            return loss

        if len(args) > 1:
            return (args[0], masked_closure, *args[2:]), kwargs
        return args, {**kwargs, "closure": masked_closure}

    def _prepare(self) -> None:
        """Change the topology if an update is due (once per step), then zero pruned gradients."""
        if not self._prepared:
            self._prepared = True
            if self._update_due():
                self._update()
        pairs = [(local(p.grad), m) for p, m in zip(self._params, self._multipliers) if p.grad is not None]
        if pairs:
            grads, multipliers = zip(*pairs)
            torch._foreach_mul_(list(grads), list(multipliers))

    @torch.no_grad()
    def _remask(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        torch._foreach_mul_(self._shards(), self._multipliers)

    @torch.no_grad()
    def _post_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        torch._foreach_mul_(self._shards(), self._multipliers)
        if self.threshold is not None:
            self._prune_below(self.threshold)
        self.step_count += 1
        self._prepared = False

    def _prune_below(self, threshold: float) -> None:
        r"""Prune the units of magnitude at most ``threshold``, in foreach ops: for element masks a fixed
        number of launches, whatever the number of parameters.

        The weights are masked already, so a pruned unit has magnitude 0 and stays pruned; the new
        masks, as the multipliers :math:`\max(\operatorname{sign}(\|w_j\| - \tau), 0) = [\|w_j\| > \tau]`
        (a NaN unit is pruned: its sign is 0), multiply the weights and their optimizer state. The
        boolean masks are made from them when next read (:meth:`state_dict`, :meth:`sparsity`, ...).
        Element masks of DTensors are pruned on their local shards; a structured rule gathers each
        sharded layer (its unit norms cross shard boundaries).
        """
        if self.structure == "element":
            kept = list(torch._foreach_abs([w.float() for w in self._shards()]))
        else:
            kept = [unit_norms(full(p), self.structure, layout) for p, layout in zip(self._params, self._layouts)]
        torch._foreach_sub_(kept, threshold)
        torch._foreach_sign_(kept)
        torch._foreach_clamp_min_(kept, 0.0)
        self._multipliers = [self._multiplier(i, k) for i, k in enumerate(kept)]
        torch._foreach_mul_(self._shards(), self._multipliers)
        self._reset_state(self._multipliers)
        self._kept = kept

    # --------------------------------------------------------------------------- topology
    def _update_due(self) -> bool:
        t = self.step_count
        dynamic = self.regrow is not None or self._schedule is not None
        return dynamic and t > 0 and t % self.update_every == 0 and (self.stop_after is None or t < self.stop_after)

    @torch.no_grad()
    def _update(self) -> None:
        previous = self._masks
        t = self.step_count
        schedule, counters = self._schedule, self._active_updates  # counters exist exactly when regrow is set
        if schedule is not None:  # gradual magnitude pruning (never with regrow): keep the largest of the active units
            counts = self._counts(_fraction("sparsity schedule value", schedule(t)))
            self._active = [min(count, active) for count, active in zip(counts, self._active)]
            self._masks = [
                self._own(
                    i,
                    top_count(
                        torch.where(self._whole(i, m), unit_norms(full(p), self.structure, layout), -math.inf), count
                    ),
                )
                for i, (p, layout, m, count) in enumerate(zip(self._params, self._layouts, previous, self._active))
            ]
        elif counters is not None:
            fraction = self.drop_fraction
            if self.drop_schedule == "cosine" and self.stop_after is not None:
                fraction = cosine_fraction(t, self.drop_fraction, self.stop_after)
            masks, counted = [], []  # built aside: an error on the way leaves masks and counters as they were
            for i, (p, layout, m, active, active_updates) in enumerate(
                zip(self._params, self._layouts, previous, self._active, counters)
            ):
                counted.append(active_updates + m)
                growth = self._growth(i, counted[-1], t)
                magnitude = unit_norms(full(p), self.structure, layout)
                whole = drop_and_grow(self._whole(i, m), magnitude, growth, int(fraction * active), active)
                masks.append(self._own(i, whole, drawn=self.regrow == "random"))
            self._masks, self._active_updates = masks, counted
        self._masks = _broadcast(self._masks, self._params)
        self._apply_topology(previous)

    def _growth(self, index: int, active_updates: Tensor, step: int) -> Tensor:
        """The growth scores of parameter ``index``'s units, whole (a sharded layer's gathered)."""
        param, layout = self._params[index], self._layouts[index]
        shape = _unit_shape(param, self.structure, layout)
        if self.regrow == "random":
            return torch.rand(shape, generator=self.generator, device=param.device)
        gradient = (
            torch.zeros(shape, device=param.device)
            if param.grad is None
            else unit_norms(full(param.grad), self.structure, layout)
        )
        if self.regrow == "exploration" and self.exploration > 0:
            gradient = gradient + exploration_bonus(self._whole(index, active_updates), step, self.exploration)
        return gradient

    # ------------------------------------------------------------------------- sharding
    def _shards(self) -> list[Tensor]:
        """The masked parameters' local shards (views: writing them writes the parameters), taken afresh
        at each use (FSDP2 may move a shard's storage); the parameters themselves when not sharded."""
        return [local(p) for p in self._params]

    def _held_shape(self, index: int) -> tuple[int, ...]:
        """The shape of the mask held for parameter ``index``: its local shard's for element masks of a DTensor."""
        param = self._params[index]
        return (
            tuple(local(param).shape)
            if self._pieces[index]
            else _unit_shape(param, self.structure, self._layouts[index])
        )

    def _whole(self, index: int, held: Tensor) -> Tensor:
        """The full unit-shaped tensor of which ``held`` (a mask or counter) is this rank's piece (an all-gather)."""
        return full(sharded_like(held, self._params[index])) if self._pieces[index] else held

    def _own(self, index: int, whole: Tensor, *, drawn: bool = False) -> Tensor:
        """This rank's piece of ``whole``, a full unit mask decided on every rank from the same gathered
        tensors; ``drawn`` (from random draws, which differ across ranks): rank 0's, one broadcast.
        ``whole`` itself for a parameter that is not sharded (:func:`_broadcast` sends those, in one go)."""
        param = self._params[index]
        if not is_sharded(param):
            return whole
        if drawn:
            (whole,) = broadcast_from_first([whole])
        return local_part(whole, param) if self._pieces[index] else whole

    def _multiplier(self, index: int, units: Tensor) -> Tensor:
        """A held unit mask (or kept scores) as the multiplier of the parameter's local shard."""
        param, layout = self._params[index], self._layouts[index]
        weights = expand(units, param.shape, self.structure, layout)
        if is_sharded(param) and not self._pieces[index]:  # a whole structured mask: cut this rank's piece
            weights = local_part(weights, param)
        return weights.to(param.dtype)

    def _count(self, index: int, held: Tensor) -> Tensor:
        """The number of ``True`` units in the full tensor of which ``held`` is this rank's piece (0-d)."""
        return full(sharded_like(held, self._params[index]).sum()) if self._pieces[index] else held.sum()

    def _size(self, index: int) -> int:
        """The number of units of parameter ``index`` (all of them, whichever rank holds them)."""
        return math.prod(_unit_shape(self._params[index], self.structure, self._layouts[index]))

    def _take(self, index: int, saved: Tensor) -> Tensor:
        """The tensor to hold for parameter ``index`` from a saved full one: a plain tensor (the same on every
        rank) or a DTensor of any placements (as :mod:`torch.distributed.checkpoint` loads it); a copy on the
        parameter's device."""
        param = self._params[index]
        if is_sharded(saved):
            same = is_sharded(param) and (saved.device_mesh, saved.placements) == (
                param.device_mesh,
                param.placements,
            )
            if self._pieces[index] and same:
                return local(saved).to(param.device, copy=True)
            saved = full(saved)
        if self._pieces[index]:
            return local_part(saved.to(param.device, copy=True), param)
        return saved.to(param.device, copy=True)

    def _saved(self, index: int, held: Tensor) -> Tensor:
        """A copy of ``held`` to save: a DTensor with the parameter's placements for a per-shard one."""
        return sharded_like(held.clone(), self._params[index]) if self._pieces[index] else held.clone()

    @torch.no_grad()
    def _apply_topology(self, previous: list[Tensor] | None) -> None:
        """Rebuild the multipliers, zero pruned weights and reset optimizer state of changed units."""
        masks = self._masks
        self._multipliers = [self._multiplier(i, m) for i, m in enumerate(masks)]
        torch._foreach_mul_(self._shards(), self._multipliers)
        if previous is None:
            self._reset_state(self._multipliers)
        else:
            self._reset_state([self._multiplier(i, m & before) for i, (m, before) in enumerate(zip(masks, previous))])

    def _reset_state(self, keeps: list[Tensor]) -> None:
        """Zero the optimizer state where ``keeps`` (one multiplier per parameter) is 0: every state tensor
        shaped like its parameter (the base's) or ``k`` times it (per objective: JacobianDescent's moments),
        floating ones in one foreach multiplication; a DTensor's (Adam's moments of a sharded parameter)
        on its local shard."""
        values, multipliers = [], []
        for p, keep in zip(self._params, keeps):
            for value in self._optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.dim() - p.dim() in (0, 1) and value.shape[-p.dim() :] == p.shape:
                    if value.is_floating_point():
                        values.append(local(value))
                        multipliers.append(keep)
                    else:
                        local(value).masked_fill_(keep == 0, 0)
        if values:
            torch._foreach_mul_(values, multipliers)

    def _counts(self, sparsity: float) -> list[int]:
        shapes = [p.shape for p in self._params]
        sizes = [unit_count(p.shape, self.structure, layout) for p, layout in zip(self._params, self._layouts)]
        if isinstance(self.distribution, str):
            return layer_counts(shapes, sparsity, distribution=self.distribution, sizes=sizes)
        return layer_counts(shapes, [self.distribution.get(name, sparsity) for name in self.names], sizes=sizes)

    # ------------------------------------------------------------------------------ public
    def remove(self) -> None:
        """Detach from the optimizer: later steps leave the weights and their gradients alone, and
        another controller may mask these parameters (while one is attached, a second raises)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for p in self._params:
            if _ATTACHED.get(id(p)) is self:
                del _ATTACHED[id(p)]

    @property
    def masks(self) -> dict[str, Tensor]:
        """A copy of each parameter's boolean mask, shaped like the parameter, by name: for a DTensor
        parameter a DTensor with its placements (``mask.full_tensor()`` gathers it; ``mask.to_local()``
        is the local shard's)."""
        return {name: self._public_mask(i, m) for i, (name, m) in enumerate(zip(self.names, self._masks))}

    def _public_mask(self, index: int, held: Tensor) -> Tensor:
        param, layout = self._params[index], self._layouts[index]
        if not is_sharded(param):
            return expand(held, param.shape, self.structure, layout).clone()
        if self._pieces[index]:
            return sharded_like(held.clone(), param)
        return sharded_like(local_part(expand(held, param.shape, self.structure, layout), param), param)

    def layer_sparsity(self) -> dict[str, float]:
        """The fraction of pruned weights per masked parameter (a host synchronisation; for logging)."""
        return {
            name: 1.0 - (float(self._count(i, m)) / self._size(i) if self._pieces[i] else float(m.float().mean()))
            for i, (name, m) in enumerate(zip(self.names, self._masks))
        }

    def sparsity(self) -> float:
        """The fraction of pruned units over all masked parameters (a host synchronisation; for logging)."""
        total = sum(self._size(i) for i in range(len(self._params)))
        return 1.0 - _total([self._count(i, m) for i, m in enumerate(self._masks)]) / total

    def coverage(self) -> float:
        """The fraction of units ever active since the controller attached (dynamic sparse training only)."""
        if self._active_updates is None:
            raise RuntimeError("coverage() is tracked by dynamic sparse training; this controller has regrow=None")
        ever = _total([self._count(i, (n > 0) | m) for i, (n, m) in enumerate(zip(self._active_updates, self._masks))])
        return ever / sum(self._size(i) for i in range(len(self._params)))

    def export(self, *, layout: torch.layout = torch.sparse_csr, min_sparsity: float = 0.9) -> nn.Module:
        """A copy of ``model`` for inference whose sparse linear layers run on ``torch.sparse`` (see
        :func:`~torch_moo.sparsity.to_sparse`); the training model is left as it is.

        Raises:
            ValueError: without ``model``, or when its masked parameters are DTensors (each rank holds a
                piece): gather the weights into a plain model first (e.g.
                ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
                ``full_state_dict=True``, loaded into an unsharded copy) and call
                :func:`~torch_moo.sparsity.to_sparse` on it.
        """
        if self.model is None:
            raise ValueError("export() needs the model: pass model= when creating the SparsityController")
        sharded = [name for name, p in zip(self.names, self._params) if is_sharded(p)]
        if sharded:
            raise ValueError(
                f"export() needs whole weights, but {sharded} are DTensors (FSDP2 or tensor parallel shards): "
                "gather them into an unsharded model first (get_model_state_dict(model, "
                "options=StateDictOptions(full_state_dict=True)) loaded into a plain copy) and call to_sparse on it"
            )
        return to_sparse(self.model, layout=layout, min_sparsity=min_sparsity)

    def state_dict(self) -> dict[str, Any]:
        """Masks, update counters, the step count and the generator's state, with the configuration.

        The element masks and counters of a DTensor parameter are DTensors with its placements, so
        :mod:`torch.distributed.checkpoint` saves each piece once and loads them at another world size;
        structured masks are whole plain tensors, the same on every rank."""
        return {
            "config": self._config(),
            "names": list(self.names),
            "shapes": [tuple(p.shape) for p in self._params],
            "step": self.step_count,
            "active": list(self._active),
            "masks": [self._saved(i, m) for i, m in enumerate(self._masks)],
            "active_updates": None
            if self._active_updates is None
            else [self._saved(i, n) for i, n in enumerate(self._active_updates)],
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the weights are masked and pruned optimizer state reset again.

        Masks and counters may be plain tensors of the full shape (each rank keeps its piece of a
        sharded parameter's) or DTensors of any placements (as :mod:`torch.distributed.checkpoint`
        loads them into this controller's :meth:`state_dict`, resharded to this world size).

        Every entry is checked before anything changes, so a load either succeeds entirely or
        changes nothing (masks, counters, generator, weights, optimizer state).

        Raises:
            ValueError: naming the first bad entry: a state that is not a controller's, saved
                with another configuration, for other parameters or shapes, or holding what this
                controller could not have saved: masks that are not boolean of the unit shape,
                active counts that are not ints up to the unit count (equal to the mask's count
                under regrowth, at least it under pruning), active-update counters that are not
                non-negative integer tensors of the mask's shape (``None`` under pruning), a step
                that is not a non-negative int, or a generator state the generator refuses.
        """
        masks, active_updates = self._check_state_dict(state_dict)
        if self.generator is not None and state_dict["generator"] is not None:
            self.generator.set_state(state_dict["generator"])
        self._masks = masks
        self._active_updates = active_updates
        self._active = list(state_dict["active"])
        self.step_count = state_dict["step"]
        self._prepared = False
        self._apply_topology(previous=None)

    def _check_state_dict(self, state_dict: object) -> tuple[list[Tensor], list[Tensor] | None]:
        """Check a whole state dict; its masks and active-update counters, copied to the parameters' devices."""
        saved = check_saved_keys("state_dict", state_dict, _STATE_KEYS)
        check_saved_config("state_dict['config']", saved["config"], self._config(), "controller")
        names, shapes = saved["names"], saved["shapes"]
        expected = [tuple(p.shape) for p in self._params]
        if not (
            isinstance(names, (list, tuple))
            and list(names) == self.names
            and isinstance(shapes, (list, tuple))
            and [tuple(shape) if isinstance(shape, (list, tuple)) else shape for shape in shapes] == expected
        ):
            raise ValueError(
                f"state_dict masks {describe(names)} of shapes {describe(shapes)} do not match "
                f"this model's masked parameters {list(zip(self.names, expected))}"
            )
        count = len(self._params)
        for key in ("masks", "active"):
            if not isinstance(saved[key], (list, tuple)) or len(saved[key]) != count:
                raise ValueError(
                    f"state_dict[{key!r}] must hold one entry per masked parameter ({count}), "
                    f"got {describe(saved[key])}"
                )
        masks = []
        for index, (name, p, layout, mask, active) in enumerate(
            zip(self.names, self._params, self._layouts, saved["masks"], saved["active"])
        ):
            shape = _unit_shape(p, self.structure, layout)
            if not (isinstance(mask, Tensor) and tuple(mask.shape) == shape and mask.dtype == torch.bool):
                raise ValueError(
                    f"state_dict['masks'][{index}] ({name}) must be a boolean tensor of shape {shape}, "
                    f"got {describe(mask)}"
                )
            where = f"state_dict['active'][{index}] ({name})"
            check_saved_count(where, active, below=mask.numel() + 1)
            kept = int(full(mask.sum()))
            if kept != active if self.regrow is not None else kept > active:
                rule = "regrowth keeps them equal" if self.regrow is not None else "pruning keeps at most that many"
                raise ValueError(f"{where} is {active}, but its mask keeps {kept} units ({rule})")
            masks.append(self._take(index, mask))
        check_saved_count("state_dict['step']", saved["step"])
        generator = saved["generator"]
        if generator is not None:
            if not (isinstance(generator, Tensor) and generator.dtype == torch.uint8 and generator.dim() == 1):
                raise ValueError(
                    "state_dict['generator'] must be None or a generator state (a 1-D uint8 tensor), "
                    f"got {describe(generator)}"
                )
            if self.generator is not None:
                try:  # on a fresh generator of the same device: this one is left alone
                    torch.Generator(self.generator.device).set_state(generator)
                except RuntimeError as error:
                    raise ValueError(
                        f"state_dict['generator'] is not a state of this controller's generator: {error}"
                    ) from error
        return masks, self._check_active_updates(saved["active_updates"], saved["masks"])

    def _check_active_updates(self, saved: object, masks: list[Tensor]) -> list[Tensor] | None:
        """The saved active-update counters (checked against the saved ``masks``) as int32 copies, held as
        the masks are (``None`` under pruning, which keeps none)."""
        if self.regrow is None:
            if saved is not None:
                raise ValueError(
                    f"state_dict['active_updates'] must be None under pruning (regrow=None), got {describe(saved)}"
                )
            return None
        if not isinstance(saved, (list, tuple)) or len(saved) != len(masks):
            raise ValueError(
                f"state_dict['active_updates'] must hold one counter per masked parameter ({len(masks)}), "
                f"as dynamic sparse training keeps, got {describe(saved)}"
            )
        counters = []
        for index, (name, mask, counter) in enumerate(zip(self.names, masks, saved)):
            if not (
                isinstance(counter, Tensor)
                and counter.shape == mask.shape
                and not counter.is_floating_point()
                and not counter.is_complex()
                and counter.dtype != torch.bool
                and bool((local(counter) >= 0).all())
            ):
                raise ValueError(
                    f"state_dict['active_updates'][{index}] ({name}) must be a tensor of non-negative integers "
                    f"of shape {tuple(mask.shape)}, got {describe(counter)}"
                )
            counters.append(self._take(index, counter).to(torch.int32))
        return counters

    def _config(self) -> dict[str, Any]:
        return {
            "sparsity": self._target if self._schedule is None else _describe(self._schedule),
            "distribution": self.distribution if isinstance(self.distribution, str) else dict(self.distribution),
            "structure": self.structure,
            "update_every": self.update_every,
            "drop_fraction": self.drop_fraction,
            "drop_schedule": self.drop_schedule,
            "stop_after": self.stop_after,
            "regrow": self.regrow,
            "exploration": self.exploration,
            "threshold": self.threshold,
        }

    def __repr__(self) -> str:
        mode = f"regrow={self.regrow!r}" if self.regrow else "pruning"
        return (
            f"SparsityController({len(self._params)} parameters, {mode}, "
            f"structure={self.structure!r}, step={self.step_count})"
        )


def _broadcast(masks: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """Rank 0's masks (under :mod:`torch.distributed`), one broadcast per device: each stays on its parameter's.
    A DTensor parameter's mask is left as it is (decided on gathered tensors: ``SparsityController._own``)."""
    received = list(masks)
    by_device: dict[torch.device, list[int]] = {}
    for index, (mask, param) in enumerate(zip(masks, params)):
        if not is_sharded(param):
            by_device.setdefault(mask.device, []).append(index)
    for indices in by_device.values():
        for index, mask in zip(indices, broadcast_from_first([masks[i] for i in indices])):
            received[index] = mask
    return received


def _total(counts: list[Tensor]) -> float:
    """The sum of 0-d tensors on any devices, in one host read."""
    return float(torch.stack([count.to(counts[0].device) for count in counts]).sum())


def _fraction(name: str, value: object, *, upper: float = 1.0, closed: bool = False) -> float:
    value = check_real(name, value, minimum=0.0)
    if value > upper or (value == upper and not closed):
        raise ValueError(f"{name} must be in [0, {upper:g}{']' if closed else ')'}, got {value}")
    return value


def _unit_shape(param: Tensor, structure: str, layout: Layout) -> tuple[int, ...]:
    return tuple(param.shape) if structure == "element" else (unit_count(param.shape, structure, layout),)


def _layouts(model: nn.Module | None, params: list[Tensor], structure: str) -> list[Layout]:
    """Each masked parameter's layout, from the module that owns it in ``model``; :data:`DENSE`
    (``(out, in, ...)``) without a model, for element masks, and for parameters of other modules."""
    if model is None or structure == "element":
        return [DENSE] * len(params)
    owners = parameter_layouts(model)
    return [owners.get(id(p), (DENSE, ""))[0] for p in params]


def _describe(schedule: Schedule) -> str:
    """A description of a schedule that survives a restart: the repr of a dataclass, else its name."""
    if hasattr(schedule, "__dataclass_fields__"):
        return repr(schedule)
    return getattr(schedule, "__qualname__", type(schedule).__qualname__)


def _masked_parameters(
    optimizer: Optimizer, model: nn.Module | None, params: Iterable[Tensor] | None
) -> tuple[list[Tensor], list[str]]:
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    if params is not None:
        chosen = list(params)
    elif model is not None:
        chosen = list(sparsifiable_parameters(model))
    else:
        chosen = [p for p in optimized if p.dim() >= 2]
    if not chosen:
        raise ValueError(
            "SparsityController found no parameters to mask (pass params= or a model with weight matrices)"
        )
    names_by_id = {} if model is None else {id(p): name for name, p in model.named_parameters()}
    optimized_ids = {id(p) for p in optimized}
    names = []
    for index, param in enumerate(chosen):
        name = names_by_id.get(id(param), f"params[{index}]")
        if not isinstance(param, Tensor):
            raise TypeError(f"params[{index}] must be a tensor, got {type(param).__name__}")
        if id(param) not in optimized_ids:
            raise ValueError(f"{name} (shape {tuple(param.shape)}) is not in the optimizer's param_groups")
        names.append(name)
    if len({id(p) for p in chosen}) != len(chosen):
        raise ValueError("params holds a parameter more than once")
    return chosen, names


def _check_distribution(distribution: object, names: list[str]) -> str | dict[str, float]:
    if isinstance(distribution, Mapping):
        unknown = sorted(set(distribution) - set(names))
        if unknown:
            raise ValueError(f"distribution names {unknown}, which are not masked parameters; these are: {names}")
        return {name: _fraction(f"distribution[{name!r}]", value) for name, value in distribution.items()}
    return check_choice("distribution", distribution, ("erk", "uniform"))
