"""The protocol every torch_moo optimizer follows: ``backward(losses)`` then ``step()``.

:class:`MultiObjectiveOptimizer` is the one optimizer shell: the protocol, the policy for
non-finite losses, :mod:`torch.distributed`, :class:`torch.amp.GradScaler`, the losses pending
between ``backward`` and ``step``, and checkpoints. What differs between methods is a weighting
rule (:mod:`torch_moo.weightings`) and how the objectives' gradients are combined: by weighting
the losses (:class:`WeightedLossDescent`) or their gradients (:class:`~torch_moo.JacobianDescent`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._base_optimizer import build_base
from torch_moo._checkpoint import check_base_state
from torch_moo._validation import (
    NONFINITE,
    Nonfinite,
    all_finite,
    check_choice,
    check_count,
    check_losses,
    check_saved_config,
    check_saved_count,
    check_saved_keys,
    check_saved_tensor,
    describe,
    nonfinite_error,
)
from torch_moo.distributed import mean_across_ranks, world_size
from torch_moo.weightings import LossWeighting, Weighting

__all__ = ["FORMAT_VERSION", "NONFINITE", "MultiObjectiveOptimizer", "WeightedLossDescent"]

Losses = Tensor | Sequence[Tensor | float]
STATE_KEY = "torch_moo"
FORMAT_VERSION = 2
"""The version of the ``state_dict()['torch_moo']`` format: 2 since the weighting rules became modules;
format 1, before them, had no ``'version'`` entry."""


@dataclass
class _Pending:
    """What :meth:`MultiObjectiveOptimizer.backward` recorded for the next ``step()``.

    One object changed in place, never rebound: Lightning's ``LightningOptimizer`` wraps an
    optimizer in an instance of a subclass of its class that reads every attribute from the
    wrapped one, so a method called through the wrapper that *assigned* an attribute would write
    it onto the wrapper, where the wrapped optimizer's step never sees it.
    """

    total: Tensor | None = None  # sum of the recorded (finite) loss values
    count: int = 0  # backward calls since the last step, skipped ones included
    skip: bool = False  # a backward since the last step skipped non-finite losses
    last_skipped: bool = False  # the last step() was a no-op because of that
    moments: dict[Tensor, tuple[Tensor, Tensor]] | None = None  # per-objective moments awaiting step()
    moments_finite: Tensor | None = None  # whether they enter the state (a boolean tensor)

    def reset(self) -> None:
        self.total, self.count, self.skip, self.moments, self.moments_finite = None, 0, False, None, None


class MultiObjectiveOptimizer(Optimizer):
    r"""A :class:`torch.optim.Optimizer` that owns a base optimizer and takes a loss vector.

    The base optimizer (``base``, built with ``**base_kwargs``) does the parameter update; this
    object shares its ``param_groups``, ``state`` and ``defaults``, so learning-rate schedulers,
    gradient clipping, ``add_param_group`` and step hooks work as with the base alone. A
    training step is::

        opt.zero_grad()
        opt.backward(losses)  # per-objective losses -> combined gradient in .grad
        opt.step()  # base update, then the method's own state

    A method is a weighting rule (:attr:`weighting`, a :class:`~torch_moo.weightings.Weighting`
    module whose buffers hold the method's state) and a way to fill ``.grad``: subclasses
    implement :meth:`_combine` and :meth:`_advance` (the rule's update after the base step).

    Args:
        params: parameters or parameter groups, as for any optimizer; or an optimizer already
            built (``MultiGradientDescent(torch.optim.Adam(model.parameters(), lr=1e-3),
            num_objectives=2)``), which becomes the base.
        num_objectives: length of the loss vector.
        weighting: the rule that gives the objective weights; moved to the parameters' device.
        nonfinite: what :meth:`backward` does when a loss is NaN or infinite (on any rank under
            :mod:`torch.distributed`: the check is made on the all-reduced losses, so every rank
            decides alike):

            * ``"raise"`` (the default): a :class:`ValueError`, before anything changes
              (``.grad``, the method's state, the recorded losses).
            * ``"skip"``: ``backward`` writes nothing into ``.grad`` and returns zero weights,
              :attr:`skipped` becomes ``True``, and the ``step()`` that follows is a no-op: no
              base step (so no step hooks of the base, such as a
              :class:`~torch_moo.SparsityController`'s), no method-state update.
            * ``"propagate"``: no check; the losses reach ``.grad`` as in plain PyTorch (where a
              :class:`torch.amp.GradScaler` skips the step) and never enter the method's state.

            ``"raise"`` and ``"skip"`` cost one host synchronisation per ``backward``.
        base: the optimizer that updates the parameters: a class (default
            :class:`torch.optim.Adam`), built on ``params`` with ``**base_kwargs``, or an instance
            built on the same parameters. One whose ``step`` needs a closure every time (such as
            :class:`torch.optim.LBFGS`) is refused: the combined gradient is written by
            :meth:`backward`, not by a closure the base could re-evaluate.
        **base_kwargs: passed to ``base`` (a class). A keyword that neither the method nor the
            base takes is a :class:`TypeError` that names the closest keyword of either.
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        weighting: Weighting,
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.num_objectives = check_count("num_objectives", num_objectives)
        kind = self._weighting_kind
        if not isinstance(weighting, kind):
            raise TypeError(f"weighting must be a {kind.__name__} (torch_moo.weightings), got {describe(weighting)}")
        sized = getattr(weighting, "num_objectives", None)
        if sized is not None and sized != num_objectives:
            raise ValueError(f"weighting was built for {sized} objectives, num_objectives is {num_objectives}")
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE)
        # True under "raise" and "skip": the losses that reach the method are finite.
        self._checks_finite = self.nonfinite != "propagate"
        self.base = build_base(type(self), params, base, base_kwargs, default=self._default_base)
        with warnings.catch_warnings():  # the base has warned of duplicate parameters already, as torch.optim does
            warnings.filterwarnings("ignore", "optimizer contains a parameter group with duplicate parameters")
            super().__init__(self.base.param_groups, self.base.defaults)
        self._share_base()
        first = self.param_groups[0]["params"][0]
        self._device = first.device
        self.weighting = weighting.to(self._device)
        self._pending = _Pending()

    _default_base: type[Optimizer] = torch.optim.Adam
    """The base optimizer class when ``base`` is not given."""
    _weighting_kind: type[Weighting] = Weighting
    """The kind of rule the method takes."""

    def _share_base(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = self.base.defaults

    # ----------------------------------------------------------------------------- protocol
    def backward(
        self,
        losses: Losses,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> Tensor:
        """Fill ``.grad`` (accumulating) with the method's combination of the objectives' gradients.

        Args:
            losses: the per-objective losses, unscaled and not yet backwarded: a 1-D tensor of
                length ``num_objectives`` or a sequence of scalars. A sequence is stacked on
                the device of its first tensor entry: entries on other devices are moved there
                (autograd carries their gradients back) and Python numbers (constants) are
                placed there in the entries' promoted floating dtype.
            features: the shared representation, used by gradient-space methods for their
                representation-gradient mode; loss-space methods ignore it.
            scaler: a :class:`torch.amp.GradScaler`; the backward pass is scaled by it.
            retain_graph: keep the graph, as in :meth:`torch.Tensor.backward`.

        Returns:
            The objective weights used (detached, float32, on the losses' device); zeros when
            ``nonfinite="skip"`` skipped the losses (see :attr:`skipped`).

        Raises:
            ValueError: non-finite losses with ``nonfinite="raise"``, on every rank alike; a
                loss vector of the wrong length or shape, or losses that do not require grad.
            TypeError: losses that are not a tensor or sequence of scalars, or not floating point.
            Nothing has changed when it raises.
        """
        losses, values = self._loss_values(losses)
        if values is None:
            return self._skip_backward(losses, scaler)
        weights = self._combine(losses, values, features=features, scaler=scaler, retain_graph=retain_graph)
        pending = self._pending
        if pending.count == 0:
            pending.last_skipped = False
        pending.total = values if pending.total is None else pending.total + values
        pending.count += 1
        return weights.to(losses.device, torch.float32)

    def _loss_values(self, losses: Losses) -> tuple[Tensor, Tensor | None]:
        """The checked loss vector and its float32 values averaged over the ranks; ``None`` values
        when ``nonfinite="skip"`` skips them (``"raise"`` raises).

        Checked after the all-reduce: a NaN on one rank makes the mean NaN on all of them, so
        every rank raises (or skips) together instead of one raising while the others wait.
        """
        losses = check_losses(losses, self.num_objectives, check_finite=False)
        if not losses.requires_grad:
            raise ValueError(
                "losses do not require grad: pass them before .detach() or .item() "
                "(use weights(losses) to compute weights without a backward pass)"
            )
        values = mean_across_ranks(losses.detach().to(self._device, torch.float32))
        if self._checks_finite and not bool(all_finite(values)):
            if self.nonfinite == "raise":
                raise nonfinite_error(losses, values, world_size())
            return losses, None
        return losses, values

    def _skip_backward(self, losses: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
        """Record a skipped backward (``nonfinite="skip"``): nothing reaches ``.grad``; zero weights."""
        if scaler is not None:
            # scaler.step() then finds gradients to check (none are inf: it calls step(), a no-op
            # here) and an initialised scale, as after any backward; existing .grad is left alone.
            scaler.scale(losses.detach().new_zeros(()))
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.requires_grad and p.grad is None:
                            p.grad = torch.zeros_like(p)
        self._pending.count += 1
        self._pending.skip = True
        return torch.zeros(self.num_objectives, device=losses.device)

    @property
    def skipped(self) -> bool:
        """Whether non-finite losses skip the pending step (``nonfinite="skip"``): ``True`` from a
        :meth:`backward` that skipped them to the next :meth:`zero_grad` or the next ``backward``
        after :meth:`step`; between a step and the next backward, whether that step was skipped."""
        pending = self._pending
        return pending.skip if pending.count else pending.last_skipped

    def step(self, closure: Callable[[], Losses] | None = None) -> Losses | None:  # type: ignore[override]
        """The base optimizer's step, then the method's state update.

        Args:
            closure: optional; re-evaluates the model and returns the loss vector (without
                calling backward, which ``step`` does), or ``None`` after calling :meth:`backward`
                itself. Not combinable with GradScaler.

        Returns:
            The closure's losses, or ``None``.
        """
        losses = None
        if closure is not None:
            with torch.enable_grad():
                losses = closure()
            if losses is not None:  # a closure returning None (Lightning's) has done the backward itself
                self.backward(losses)
        self._apply_pending()
        return losses

    def _apply_pending(self) -> None:
        """The base step and the method's state update for the backward calls since the last step.

        Separate from :meth:`step`, which :class:`torch.optim.Optimizer` wraps with its hooks,
        so that a subclass's own ``step`` can take several such steps with hooks run once.
        """
        pending = self._pending
        if pending.count == 0:
            raise RuntimeError(
                f"{type(self).__name__}.step() found no backward() since the last step() or zero_grad(): "
                "call opt.backward(losses) with the per-objective losses first, "
                "or pass step() a closure that returns them"
            )
        skip, total = pending.skip, pending.total
        if not (skip or total is None):  # nonfinite="skip": no base step (nor its hooks), no method state update
            mean = total if pending.count == 1 else total / pending.count  # (total is None only when all skipped)
            # Loss values are detached and the method's state needs no grad: no graph is recorded.
            self._commit(mean)
            self.base.step()
            self._advance(mean)
        pending.reset()
        pending.last_skipped = skip

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (through the base optimizer) and the losses recorded by :meth:`backward`."""
        self.base.zero_grad(set_to_none)
        self._pending.reset()

    # -------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus a ``"torch_moo"`` entry with the method's configuration and state."""
        state = super().state_dict()
        state[STATE_KEY] = self._entry()
        return state

    def _entry(self) -> dict[str, Any]:
        """The ``"torch_moo"`` entry of :meth:`state_dict`: the format version, configuration and method state."""
        return {"version": FORMAT_VERSION, "config": self._config(), "state": self._method_state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` of an identically configured optimizer.

        A load either succeeds entirely or changes nothing. Every entry is checked first: the
        configuration, the parameter groups and the base optimizer's state (what
        :meth:`torch.optim.Optimizer.load_state_dict` refuses, a hyperparameter of another kind, a
        state tensor of another shape than this optimizer's), and each entry of the method's state
        (type, shape, real dtype, its rule: a non-negative count, finite values, ...). Then the
        base's part is loaded, where the base class may refuse it too (Adam's upgrade of an
        older format, say), and only then the method's.

        Raises:
            ValueError: naming the first bad entry (``state_dict['torch_moo']['state']['penalty']``,
                ``state_dict['state'][3]['exp_avg']``, ...); nothing has changed then.
        """
        method_state = self._check_state_dict(state_dict)
        self._load_base_state({key: value for key, value in state_dict.items() if key != STATE_KEY})
        self._install(method_state)

    def _load_base_state(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's part; restore the base's state and groups if that raises.

        Torch's load builds new state and group objects and leaves the old ones untouched (it only
        rebinds ``state`` and ``param_groups``), so rebinding the old ones restores them.
        """
        previous: dict[str, Any] = {"state": self.base.state, "param_groups": self.base.param_groups}
        try:
            super().load_state_dict(state_dict)
            self.base.__setstate__({"state": self.state, "param_groups": self.param_groups})
            for number, (group, before) in enumerate(zip(self.param_groups, previous["param_groups"])):
                missing = sorted(map(str, set(before) - set(group)))
                if missing:
                    raise ValueError(
                        f"state_dict['param_groups'][{number}] lacks {missing}, which {type(self.base).__name__} reads"
                    )
        except Exception as error:
            self.base.__dict__.update(previous)  # as Optimizer.__setstate__ does, without the base's own upgrades
            self._share_base()
            if isinstance(error, ValueError):
                raise
            raise ValueError(
                f"{type(self.base).__name__} refuses state_dict's 'state' and 'param_groups': "
                f"{type(error).__name__}: {error}"
            ) from error
        self._share_base()

    def _check_state_dict(self, state_dict: object) -> dict[str, Any]:
        """Check a whole state dict; the method's state, ready for :meth:`_load_method_state`."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict must be a dict from {name}.state_dict(), got {describe(state_dict)}")
        if STATE_KEY not in state_dict:
            raise ValueError(
                f"state_dict has no {STATE_KEY!r} entry: it was not saved by a torch_moo optimizer "
                f"(load a plain optimizer's state into {name}.base instead)"
            )
        method_state = self._check_entry(state_dict[STATE_KEY])
        check_base_state(type(self).__name__, self.param_groups, self.state, state_dict)
        return method_state

    def _check_entry(self, entry: object) -> dict[str, Any]:
        """Check the ``"torch_moo"`` entry (format version, configuration, method state); the method's state."""
        name = type(self).__name__
        _check_version(entry, name)
        saved = check_saved_keys(f"state_dict[{STATE_KEY!r}]", entry, {"version", "config", "state"})
        check_saved_config(f"state_dict[{STATE_KEY!r}]['config']", saved["config"], self._config(), name)
        return self._check_method_state(saved["state"])

    def _install(self, method_state: dict[str, Any]) -> None:
        """Load checked method state; nothing is pending after a load."""
        self._load_method_state(method_state)
        self._pending.reset()
        self._pending.last_skipped = False

    def _check_method_state(self, saved: object) -> dict[str, Any]:
        """The saved method state, each entry checked against :meth:`_method_state`'s (a tensor of
        its shape and a real dtype, copied to its dtype and device; an int a non-negative count),
        then against the rules of :meth:`_state_rules`."""
        where = f"state_dict[{STATE_KEY!r}]['state']"
        current = self._method_state()
        saved = check_saved_keys(where, saved, set(current))
        checked = {
            key: check_saved_tensor(f"{where}[{key!r}]", saved[key], like)
            if isinstance(like, Tensor)
            else check_saved_count(f"{where}[{key!r}]", saved[key])
            for key, like in current.items()
        }
        for key, (holds, rule) in self._state_rules(checked).items():
            if not bool(holds):
                raise ValueError(f"{where}[{key!r}] must be {rule}, got {describe(checked[key])}")
        return checked

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer keeps only defaults, state and param_groups; the base and the method's state
        # must travel too (copy.deepcopy, pickling the whole optimizer). The hooks stay behind, as
        # torch.optim's own optimizers leave them: a copy is attached to nothing that hooked the
        # original (a SparsityController copied along with it attaches its copy itself).
        return {key: value for key, value in self.__dict__.items() if key not in _HOOKS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # empty hooks where state has none; step patched for profiling

    def __repr__(self) -> str:
        settings = {key: value for key, value in self._config().items() if key not in ("method", "base")}
        settings["nonfinite"] = self.nonfinite
        listed = ", ".join(f"{key}={value!r}" for key, value in settings.items())
        return f"{type(self).__name__}({listed}, base={self.base!r})"

    # ---------------------------------------------------------------------- for subclasses
    def _combine(
        self,
        losses: Tensor,
        values: Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None,
        scaler: torch.amp.GradScaler | None,
        retain_graph: bool,
    ) -> Tensor:
        """Fill ``.grad`` from ``losses``; ``values`` are their detached float32 values (all-reduced under DDP)."""
        raise NotImplementedError

    def _commit(self, values: Tensor) -> None:
        """Store per-parameter state that :meth:`backward` prepared, just before the base step (whose
        pre-step hooks, such as a :class:`~torch_moo.SparsityController`'s regrowth, may reset it)."""

    def _advance(self, values: Tensor) -> None:
        """Update the method's state after the base step, from the mean loss values of the backward calls."""
        raise NotImplementedError

    def _init_state(self) -> bool:
        """Make the per-parameter state the method keeps (zeros) where it does not exist yet, for a
        checkpoint to load into (:mod:`torch_moo.checkpoint`); whether any was made."""
        return False

    def _finite(self, values: Tensor) -> Tensor | None:
        """``None`` when :meth:`backward` has already rejected or skipped non-finite losses, else whether
        ``values`` are finite."""
        return None if self._checks_finite else all_finite(values)

    def _settings(self) -> dict[str, Any]:
        """The method's hyperparameters: by default the rule's, under the rule's name."""
        return {"weighting": type(self.weighting).__name__, **self.weighting.config()}

    def _config(self) -> dict[str, Any]:
        """Hyperparameters a saved state must agree with."""
        return {
            "method": type(self).__name__,
            "num_objectives": self.num_objectives,
            "base": type(self.base).__name__,
            **self._settings(),
        }

    def _method_state(self) -> dict[str, Any]:
        return self.weighting.method_state()

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.weighting.load_method_state(state)

    def _state_rules(self, state: dict[str, Any]) -> dict[str, tuple[bool | Tensor, str]]:
        """``{key: (holds, rule)}`` for a saved method state whose entries have the right types and
        shapes: the rule's."""
        return self.weighting.state_rules(state)


class WeightedLossDescent(MultiObjectiveOptimizer):
    r"""Descent on the weighted losses :math:`\sum_i w_i f_i`, the weights from a loss-space rule.

    One backward pass per step. The rule (:class:`~torch_moo.weightings.LossWeighting`) gives
    :math:`w` from the loss values and its state; after the base step it sees the step's mean
    loss values (:meth:`~torch_moo.weightings.LossWeighting.observe`) and updates its state, every
    step or every ``every`` steps. :class:`~torch_moo.ChebyshevALM`,
    :class:`~torch_moo.MinMaxWeighting` and :class:`~torch_moo.FixedWeighting` are this class with
    their rule built from their arguments.

    Args:
        params: parameters or parameter groups, or a built optimizer (the base).
        num_objectives: length of the loss vector.
        weighting: a :class:`~torch_moo.weightings.LossWeighting`, such as
            :class:`~torch_moo.weightings.Uncertainty` or :class:`~torch_moo.weightings.DWA`.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    Example:
        >>> from torch_moo.weightings import Uncertainty
        >>> model = torch.nn.Linear(3, 2)
        >>> rule = Uncertainty(2)
        >>> opt = WeightedLossDescent(model.parameters(), num_objectives=2, weighting=rule, lr=1e-2)
        >>> out = model(torch.randn(8, 3))
        >>> opt.backward(torch.stack([out[:, 0].square().mean(), out[:, 1].square().mean()]))  # exp(0.5) / 2
        tensor([0.8244, 0.8244])
        >>> opt.step()
    """

    _weighting_kind = LossWeighting
    weighting: LossWeighting

    def weights(self, losses: Losses) -> Tensor:
        """The objective weights for these losses under the current state; pure (changes nothing)."""
        losses = check_losses(losses, self.num_objectives, check_finite=self._checks_finite)
        with torch.no_grad():
            return self.weighting(losses.detach().to(self._device, torch.float32)).to(losses.device)

    def _combine(self, losses, values, *, features, scaler, retain_graph):
        weights = self.weighting.weigh_step(values)
        gradient = weights if scaler is None else scaler.scale(weights)
        losses.backward(gradient.to(losses.device, losses.dtype), retain_graph=retain_graph)
        return weights

    def _advance(self, values: Tensor) -> None:
        self.weighting.observe(values, self._finite(values))


def _check_version(saved: object, owner: str) -> None:
    """Refuse a ``state_dict['torch_moo']`` of another format, saying which."""
    if not isinstance(saved, Mapping):
        return  # check_saved_keys names it
    if "version" not in saved:
        if {"config", "state"} <= set(saved):
            raise ValueError(
                f"state_dict[{STATE_KEY!r}] is in format 1 (no 'version' entry: saved by a torch_moo from before "
                "the weighting rules); "
                f"{owner} reads format {FORMAT_VERSION}: retrain, or load the base optimizer's part into .base"
            )
        return  # check_saved_keys names what is missing
    version = saved["version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"state_dict[{STATE_KEY!r}]['version'] must be {FORMAT_VERSION} (this torch_moo's format), "
            f"got {describe(version)}"
        )


_HOOKS = frozenset(
    f"_optimizer_{kind}_hooks"
    for kind in (
        "step_pre",
        "step_post",
        "state_dict_pre",
        "state_dict_post",
        "load_state_dict_pre",
        "load_state_dict_post",
    )
)
"""The attributes in which :class:`torch.optim.Optimizer` keeps its hooks (its ``__setstate__`` recreates them
empty)."""


def rule_setting(name: str, doc: str) -> property:
    """A read-only property of a specialised optimizer that shows its rule's ``name``."""
    return property(lambda self: getattr(self.weighting, name), doc=doc)
