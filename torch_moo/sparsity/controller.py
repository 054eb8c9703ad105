r"""``SparsityController``: weight masks kept exact on any optimizer, through step hooks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torch_moo._validation import check_choice, check_count, check_real
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
Schedule = Callable[[int], float]


class SparsityController:
    r"""Prune and regrow weight masks on any optimizer; pruned weights are exactly zero after every step.

    The controller attaches to the optimizer's step hooks (to the base optimizer of a torch_moo
    optimizer, and a re-masking hook to the torch_moo optimizer itself, whose exploration steps
    may move the weights outside the base's step), so the training loop is unchanged; :meth:`remove` detaches it. Before each step
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
    or columns (input neurons and channels), scored by their :math:`\ell_2` norm.

    Under :mod:`torch.distributed` every rank applies rank 0's masks (one broadcast per
    topology update); ties in every score are broken by index, so equal scores give equal masks.
    The threshold rule needs no communication: under DDP the weights are equal on every rank.

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
            if self.structure != "element" and param.dim() < 2:
                raise ValueError(f"structure={self.structure!r} needs parameters of 2+ dimensions; {name} has shape {tuple(param.shape)}")
        self.distribution = _check_distribution(distribution, self.names)
        self.step_count = 0
        self._prepared = False

        self._active = self._counts(target)
        if state_dict is not None:  # placeholders of the right shapes: load_state_dict replaces them
            self._masks = [torch.ones(_unit_shape(p, self.structure), dtype=torch.bool, device=p.device) for p in self._params]
        elif self.regrow is None:
            self._masks = [top_count(unit_norms(p, self.structure), count) for p, count in zip(self._params, self._active)]
        else:
            self._masks = [
                top_count(torch.rand(_unit_shape(p, self.structure), generator=generator, device=p.device), count)
                for p, count in zip(self._params, self._active)
            ]
        self._active_updates = None if self.regrow is None else [torch.zeros_like(m, dtype=torch.int32) for m in self._masks]
        if state_dict is None:
            self._masks = broadcast_from_first(self._masks)
            self._apply_topology(previous=None)
        else:
            self.load_state_dict(state_dict)
        self._handles = [
            self._optimizer.register_step_pre_hook(self._pre_step),
            self._optimizer.register_step_post_hook(self._post_step),
        ]
        if self._optimizer is not optimizer:
            # A torch_moo optimizer's step may move the weights outside its base's step (the
            # exploration step of ParetoTangentExplorer): mask them again after every step.
            self._handles.append(optimizer.register_step_post_hook(self._remask))

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
        pairs = [(p.grad, m) for p, m in zip(self._params, self._multipliers) if p.grad is not None]
        if pairs:
            grads, multipliers = zip(*pairs)
            torch._foreach_mul_(list(grads), list(multipliers))

    @torch.no_grad()
    def _remask(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        torch._foreach_mul_(self._params, self._multipliers)

    @torch.no_grad()
    def _post_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        torch._foreach_mul_(self._params, self._multipliers)
        if self.threshold is not None:
            previous = self._masks
            self._masks = [m & (unit_norms(p, self.structure) > self.threshold) for p, m in zip(self._params, previous)]
            self._apply_topology(previous)
        self.step_count += 1
        self._prepared = False

    # --------------------------------------------------------------------------- topology
    def _update_due(self) -> bool:
        t = self.step_count
        dynamic = self.regrow is not None or self._schedule is not None
        return dynamic and t > 0 and t % self.update_every == 0 and (self.stop_after is None or t < self.stop_after)

    @torch.no_grad()
    def _update(self) -> None:
        previous = self._masks
        t = self.step_count
        if self.regrow is None:  # gradual magnitude pruning: keep the largest of the active units
            counts = self._counts(_fraction("sparsity schedule value", self._schedule(t)))
            self._active = [min(count, active) for count, active in zip(counts, self._active)]
            self._masks = [
                top_count(torch.where(m, unit_norms(p, self.structure), -math.inf), count)
                for p, m, count in zip(self._params, previous, self._active)
            ]
        else:
            fraction = self.drop_fraction
            if self.drop_schedule == "cosine" and self.stop_after is not None:
                fraction = cosine_fraction(t, self.drop_fraction, self.stop_after)
            self._masks = []
            for p, m, active, active_updates in zip(self._params, previous, self._active, self._active_updates):
                active_updates += m
                growth = self._growth(p, active_updates, t)
                self._masks.append(drop_and_grow(m, unit_norms(p, self.structure), growth, int(fraction * active)))
        self._masks = broadcast_from_first(self._masks)
        self._apply_topology(previous)

    def _growth(self, param: Tensor, active_updates: Tensor, step: int) -> Tensor:
        shape = _unit_shape(param, self.structure)
        if self.regrow == "random":
            return torch.rand(shape, generator=self.generator, device=param.device)
        gradient = torch.zeros(shape, device=param.device) if param.grad is None else unit_norms(param.grad, self.structure)
        if self.regrow == "exploration" and self.exploration > 0:
            gradient = gradient + exploration_bonus(active_updates, step, self.exploration)
        return gradient

    @torch.no_grad()
    def _apply_topology(self, previous: list[Tensor] | None) -> None:
        """Rebuild the multipliers, zero pruned weights and reset optimizer state of changed units."""
        self._multipliers = [expand(m, p.shape, self.structure).to(p.dtype) for p, m in zip(self._params, self._masks)]
        for index, (p, m) in enumerate(zip(self._params, self._masks)):
            keep = expand(m if previous is None else m & previous[index], p.shape, self.structure)
            p.masked_fill_(~expand(m, p.shape, self.structure), 0)
            for value in self._optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.masked_fill_(~keep, 0)

    def _counts(self, sparsity: float) -> list[int]:
        shapes = [p.shape for p in self._params]
        sizes = [unit_count(p.shape, self.structure) for p in self._params]
        if isinstance(self.distribution, str):
            return layer_counts(shapes, sparsity, distribution=self.distribution, sizes=sizes)
        return layer_counts(shapes, [self.distribution.get(name, sparsity) for name in self.names], sizes=sizes)

    # ------------------------------------------------------------------------------ public
    def remove(self) -> None:
        """Detach from the optimizer: later steps leave the weights and their gradients alone."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def masks(self) -> dict[str, Tensor]:
        """A copy of each parameter's boolean mask, shaped like the parameter, by name."""
        return {name: expand(m, p.shape, self.structure).clone() for name, p, m in zip(self.names, self._params, self._masks)}

    def layer_sparsity(self) -> dict[str, float]:
        """The fraction of pruned weights per masked parameter (a host synchronisation; for logging)."""
        return {name: 1.0 - float(m.float().mean()) for name, m in zip(self.names, self._masks)}

    def sparsity(self) -> float:
        """The fraction of pruned units over all masked parameters (a host synchronisation; for logging)."""
        return 1.0 - float(sum(m.sum() for m in self._masks)) / sum(m.numel() for m in self._masks)

    def coverage(self) -> float:
        """The fraction of units ever active since the controller attached (dynamic sparse training only)."""
        if self._active_updates is None:
            raise RuntimeError("coverage() is tracked by dynamic sparse training; this controller has regrow=None")
        ever = sum(((n > 0) | m).sum() for n, m in zip(self._active_updates, self._masks))
        return float(ever) / sum(m.numel() for m in self._masks)

    def export(self, *, layout: torch.layout = torch.sparse_csr, min_sparsity: float = 0.9) -> nn.Module:
        """A copy of ``model`` for inference whose sparse linear layers run on ``torch.sparse`` (see
        :func:`~torch_moo.sparsity.to_sparse`); the training model is left as it is."""
        if self.model is None:
            raise ValueError("export() needs the model: pass model= when creating the SparsityController")
        return to_sparse(self.model, layout=layout, min_sparsity=min_sparsity)

    def state_dict(self) -> dict[str, Any]:
        """Masks, update counters, the step count and the generator's state, with the configuration."""
        return {
            "config": self._config(),
            "names": list(self.names),
            "shapes": [tuple(p.shape) for p in self._params],
            "step": self.step_count,
            "active": list(self._active),
            "masks": [m.clone() for m in self._masks],
            "active_updates": None if self._active_updates is None else [n.clone() for n in self._active_updates],
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the weights are masked and pruned optimizer state reset again.

        Raises:
            ValueError: the state is not a controller's, was saved with another configuration,
                for other parameters or parameter shapes; nothing is changed then.
        """
        keys = {"config", "names", "shapes", "step", "active", "masks", "active_updates", "generator"}
        if not isinstance(state_dict, Mapping) or not keys <= set(state_dict):
            missing = sorted(keys - set(state_dict)) if isinstance(state_dict, Mapping) else sorted(keys)
            raise ValueError(f"state_dict is not a SparsityController's: it lacks {missing}")
        for key, value in state_dict["config"].items():
            if self._config().get(key) != value:
                raise ValueError(f"state_dict was saved with {key}={value!r}, but this controller has {key}={self._config().get(key)!r}")
        shapes = [tuple(p.shape) for p in self._params]
        if list(state_dict["names"]) != self.names or [tuple(s) for s in state_dict["shapes"]] != shapes:
            raise ValueError(
                f"state_dict masks {list(zip(state_dict['names'], map(tuple, state_dict['shapes'])))} do not match "
                f"this model's masked parameters {list(zip(self.names, shapes))}"
            )
        saved_masks = list(state_dict["masks"])
        if len(saved_masks) != len(self._params) or len(state_dict["active"]) != len(self._params):
            raise ValueError(f"state_dict holds {len(saved_masks)} masks for {len(self._params)} masked parameters")
        for name, p, m in zip(self.names, self._params, saved_masks):
            if not isinstance(m, Tensor) or tuple(m.shape) != _unit_shape(p, self.structure):
                shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"state_dict mask of {name} has shape {shape}, expected {_unit_shape(p, self.structure)}")
        if self._active_updates is not None and (
            state_dict["active_updates"] is None or len(state_dict["active_updates"]) != len(self._params)
        ):
            raise ValueError("state_dict lacks the active-update counters that dynamic sparse training keeps")
        device = self._params[0].device
        self._masks = [m.to(device, torch.bool) for m in saved_masks]
        if self._active_updates is not None:
            self._active_updates = [n.to(device, torch.int32) for n in state_dict["active_updates"]]
        if self.generator is not None and state_dict["generator"] is not None:
            self.generator.set_state(state_dict["generator"])
        self._active = list(state_dict["active"])
        self.step_count = int(state_dict["step"])
        self._prepared = False
        self._apply_topology(previous=None)

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
        return f"SparsityController({len(self._params)} parameters, {mode}, structure={self.structure!r}, step={self.step_count})"


def _fraction(name: str, value: object, *, upper: float = 1.0, closed: bool = False) -> float:
    value = check_real(name, value, minimum=0.0)
    if value > upper or (value == upper and not closed):
        raise ValueError(f"{name} must be in [0, {upper:g}{']' if closed else ')'}, got {value}")
    return value


def _unit_shape(param: Tensor, structure: str) -> tuple[int, ...]:
    return tuple(param.shape) if structure == "element" else (unit_count(param.shape, structure),)


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
        chosen = sparsifiable_parameters(model)
    else:
        chosen = [p for p in optimized if p.dim() >= 2]
    if not chosen:
        raise ValueError("SparsityController found no parameters to mask (pass params= or a model with weight matrices)")
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
