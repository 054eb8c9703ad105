"""The protocol every torch_moo optimizer follows: ``backward(losses)`` then ``step()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._validation import NONFINITE, all_finite, check_count, check_losses, check_nonfinite, nonfinite_error
from torch_moo.distributed import mean_across_ranks, world_size

__all__ = ["MultiObjectiveOptimizer", "LossSpaceOptimizer", "NONFINITE"]

Losses = Tensor | Sequence[Tensor | float]
STATE_KEY = "torch_moo"


class MultiObjectiveOptimizer(Optimizer):
    r"""A :class:`torch.optim.Optimizer` that owns a base optimizer and takes a loss vector.

    The base optimizer (``base``, built with ``**base_kwargs``) does the parameter update; this
    object shares its ``param_groups``, ``state`` and ``defaults``, so learning-rate schedulers,
    gradient clipping, ``add_param_group`` and step hooks work as with the base alone. A
    training step is::

        opt.zero_grad()
        opt.backward(losses)  # per-objective losses -> combined gradient in .grad
        opt.step()            # base update, then the method's own state

    Subclasses implement :meth:`_combine` (how ``.grad`` is filled), :meth:`_advance` (the
    method's state update after the base step) and the hooks that save that state.

    Args:
        params: parameters or parameter groups, as for any optimizer.
        num_objectives: length of the loss vector.
        check_finite: the older spelling of ``nonfinite``: ``True`` is ``"raise"``, ``False`` is
            ``"propagate"``. ``nonfinite``, when given, takes precedence (``check_finite=False``
            with ``nonfinite="raise"`` or ``"skip"`` is a contradiction and raises).
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
        base: the optimizer class that updates the parameters (one that needs a closure for
            every step, such as :class:`torch.optim.LBFGS`, is not supported).
        **base_kwargs: passed to ``base``.
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        check_finite: bool = True,
        nonfinite: str | None = None,
        base: type[Optimizer] = torch.optim.Adam,
        **base_kwargs: Any,
    ) -> None:
        self.num_objectives = check_count("num_objectives", num_objectives)
        self.nonfinite = check_nonfinite(check_finite, nonfinite)
        # True under "raise" and "skip": the losses that reach the method are finite.
        self.check_finite = self.nonfinite != "propagate"
        if not (isinstance(base, type) and issubclass(base, Optimizer)):
            raise TypeError(f"base must be a torch.optim.Optimizer subclass, got {base!r}")
        if issubclass(base, MultiObjectiveOptimizer):
            raise TypeError(f"base must be a single-objective optimizer, got {base.__name__}")
        self.base = base(params, **base_kwargs)
        super().__init__(self.base.param_groups, self.base.defaults)
        self._share_base()
        first = self.param_groups[0]["params"][0]
        self._device = first.device
        self._pending_sum: Tensor | None = None  # sum of the recorded (finite) loss values
        self._pending_count = 0  # backward calls since the last step, skipped ones included
        self._pending_skip = False  # a backward since the last step skipped non-finite losses
        self._last_skipped = False  # the last step() was a no-op because of that

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
                length ``num_objectives`` or a sequence of scalars.
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
        if self._pending_count == 0:
            self._last_skipped = False
        self._pending_sum = values if self._pending_sum is None else self._pending_sum + values
        self._pending_count += 1
        return weights.to(losses.device)

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
        if self.check_finite and not bool(all_finite(values)):
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
        self._pending_count += 1
        self._pending_skip = True
        return torch.zeros(self.num_objectives, device=losses.device)

    @property
    def skipped(self) -> bool:
        """Whether non-finite losses skip the pending step (``nonfinite="skip"``): ``True`` from a
        :meth:`backward` that skipped them to the next :meth:`zero_grad` or the next ``backward``
        after :meth:`step`; between a step and the next backward, whether that step was skipped."""
        return self._pending_skip if self._pending_count else self._last_skipped

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
        if self._pending_count == 0:
            raise RuntimeError(
                f"{type(self).__name__}.step() found no backward() since the last step() or zero_grad(): "
                "call opt.backward(losses) with the per-objective losses first, "
                "or pass step() a closure that returns them"
            )
        skip = self._pending_skip
        if skip:  # nonfinite="skip": no base step (nor its hooks), no method state update
            self._discard_pending()
        else:
            self.base.step()
            # Loss values are detached and the method's state needs no grad: no graph is recorded.
            self._advance(self._pending_sum if self._pending_count == 1 else self._pending_sum / self._pending_count)
        self._reset_pending()
        self._last_skipped = skip

    def _reset_pending(self) -> None:
        self._pending_sum, self._pending_count, self._pending_skip = None, 0, False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (through the base optimizer) and the losses recorded by :meth:`backward`."""
        self.base.zero_grad(set_to_none)
        self._discard_pending()
        self._reset_pending()

    # -------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus a ``"torch_moo"`` entry with the method's configuration and state."""
        state = super().state_dict()
        state[STATE_KEY] = {"config": self._config(), "state": self._method_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` of an identically configured optimizer.

        Raises:
            ValueError: the state dict lacks the method entry, was saved by another class, with
                another configuration or for another number of parameters; nothing is changed then.
        """
        name = type(self).__name__
        if STATE_KEY not in state_dict:
            raise ValueError(
                f"state_dict has no {STATE_KEY!r} entry: it was not saved by a torch_moo optimizer "
                f"(load a plain optimizer's state into {name}.base instead)"
            )
        saved = state_dict[STATE_KEY]
        if not (isinstance(saved, dict) and {"config", "state"} <= set(saved)):
            raise ValueError(f"state_dict[{STATE_KEY!r}] must hold 'config' and 'state', got {_describe(saved)}")
        current = self._config()
        for key in sorted(set(current) | set(saved["config"]), key=lambda key: (key != "method", key)):
            if saved["config"].get(key) != current.get(key):
                raise ValueError(
                    f"state_dict was saved with {key}={saved['config'].get(key)!r}, "
                    f"but this {name} has {key}={current.get(key)!r}"
                )
        saved_sizes = [len(group["params"]) for group in state_dict.get("param_groups", [])]
        sizes = [len(group["params"]) for group in self.param_groups]
        if saved_sizes != sizes:
            raise ValueError(
                f"state_dict was saved for parameter groups of {saved_sizes} parameters, "
                f"but this {name} has groups of {sizes}"
            )
        method_state = self._check_method_state(saved["state"])
        super().load_state_dict({key: value for key, value in state_dict.items() if key != STATE_KEY})
        self.base.__setstate__({"state": self.state, "param_groups": self.param_groups})
        self._share_base()
        self._load_method_state(method_state)
        self._reset_pending()
        self._last_skipped = False

    def _check_method_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        """The saved method state as float32 tensors on this optimizer's device, shapes checked."""
        current = self._method_state()
        if set(saved) != set(current):
            raise ValueError(
                f"state_dict holds method state {sorted(saved)}, expected {sorted(current)} for {type(self).__name__}"
            )
        checked = {}
        for key, value in saved.items():
            if isinstance(current[key], Tensor):
                if not isinstance(value, Tensor) or value.shape != current[key].shape:
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(
                        f"state_dict entry {key!r} has shape {shape}, expected {tuple(current[key].shape)}"
                    )
                value = value.to(self._device, torch.float32)
            checked[key] = value
        return checked

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning's LightningOptimizer wraps an optimizer by becoming an instance of a subclass
        # of its class that holds only ``_optimizer`` and reads every other attribute from it
        # (``__getattr__``). Methods called through it would write the method's bookkeeping
        # (what backward recorded, counters, beta) onto the wrapper, where the wrapped
        # optimizer's step never sees it: such writes go to the wrapped optimizer instead.
        wrapped = vars(self).get("_optimizer")
        if isinstance(wrapped, MultiObjectiveOptimizer) and name in vars(wrapped):
            setattr(wrapped, name, value)
        else:
            super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer keeps only defaults, state and param_groups; the base and the method's state
        # must travel too (copy.deepcopy, pickling the whole optimizer).
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_objectives={self.num_objectives}, base={self.base!r})"

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

    def _advance(self, values: Tensor) -> None:
        """Update the method's state after the base step, from the mean loss values of the backward calls."""
        raise NotImplementedError

    def _discard_pending(self) -> None:
        """Drop what :meth:`backward` prepared for the next step, at :meth:`zero_grad` or when non-finite
        losses skip that step (``nonfinite="skip"``)."""

    def _finite(self, values: Tensor) -> Tensor | None:
        """``None`` when :meth:`backward` has already rejected or skipped non-finite losses, else whether ``values`` are finite."""
        return None if self.check_finite else all_finite(values)

    def _config(self) -> dict[str, Any]:
        """Hyperparameters a saved state must agree with."""
        return {"method": type(self).__name__, "num_objectives": self.num_objectives, "base": type(self.base).__name__}

    def _method_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_method_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class LossSpaceOptimizer(MultiObjectiveOptimizer):
    r"""Methods whose weights come from the loss values and the method's state: one backward of
    :math:`\sum_i w_i f_i` per step. Subclasses implement :meth:`_weights`."""

    def weights(self, losses: Losses) -> Tensor:
        """The objective weights for these losses under the current state; pure (changes nothing)."""
        losses = check_losses(losses, self.num_objectives, check_finite=self.check_finite)
        with torch.no_grad():
            return self._weights(losses.detach().to(self._device, torch.float32)).to(losses.device)

    def _weights(self, values: Tensor) -> Tensor:
        raise NotImplementedError

    def _combine(self, losses, values, *, features, scaler, retain_graph):  # noqa: D102 (documented on the base)
        weights = self._weights(values)
        gradient = weights if scaler is None else scaler.scale(weights)
        losses.backward(gradient.to(losses.device, losses.dtype), retain_graph=retain_graph)
        return weights


def _describe(value: object) -> str:
    return f"{type(value).__name__} with keys {sorted(map(str, value))}" if isinstance(value, dict) else type(value).__name__
